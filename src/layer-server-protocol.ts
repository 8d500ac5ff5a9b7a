// The layer server's control protocol (dedup-fused's control socket): what a mount and an
// open-ahead ask for, and what a mount reports. Below fused/ (which serves it) and snapshot/
// (which asks), so the snapshotter depends on the protocol, not on the server.

import { z } from 'zod';
import { digestSchema } from './digest.js';
import { descriptorSchema } from './image/oci.js';

export const mountRequestSchema = z.object({
  mountpoint: z.string().startsWith('/'),
  image: z.string().min(1),
  manifestDigest: z.string().min(1),
  layer: descriptorSchema,
  /** Fetch the rest of the layer in the background once mounted. */
  background: z.boolean().default(false),
}).strict();

export type MountRequest = z.infer<typeof mountRequestSchema>;

/** Layers of an image that mounts will ask for soon, by digest: an image has at most 127 layers. */
export const openAheadRequestSchema = z.object({
  image: z.string().min(1),
  layers: z.array(digestSchema).max(128),
}).strict();

export type OpenAheadRequest = z.infer<typeof openAheadRequestSchema>;

export interface MountInfo extends MountRequest {
  mountedAt: string;
  /** Chunks of the layer not in the store yet, and their bytes. */
  missingBytes: number;
  reads: number;
  readErrors: number;
  /** How the layer is served (config mount_mode; a layer EROFS cannot hold is FUSE's). */
  mode: 'fuse' | 'erofs';
}
