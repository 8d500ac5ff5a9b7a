// OCI and Docker image JSON: media types, and zod schemas that validate what a registry or a
// layout directory hands us before anything else reads it.

import { z } from 'zod';
import { MalformedManifestError } from '../errors.js';
import { parseValidatedJson } from '../validated-json.js';
import { digestSchema } from '../digest.js';

export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export const MANIFEST_ACCEPT = [MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerManifestList, MediaType.dockerManifest];

export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** Compression of a layer by media type; throws for media types that are not image layers. */
export function layerCompression(mediaType: string, where: string): LayerCompression {
  switch (mediaType) {
    case MediaType.ociLayerGzip:
    case MediaType.dockerLayerGzip:
      return 'gzip';
    case MediaType.ociLayerZstd:
      return 'zstd';
    case MediaType.ociLayer:
      return 'none';
    default:
      throw new MalformedManifestError(where, `layer media type "${mediaType}" is not a tar, tar+gzip or tar+zstd layer`);
  }
}

export const descriptorSchema = z.object({
  mediaType: z.string().min(1),
  digest: digestSchema,
  size: z.number().int().nonnegative(),
  annotations: z.record(z.string()).optional(),
  urls: z.array(z.string()).optional(),
  platform: z.object({
    architecture: z.string(),
    os: z.string(),
    variant: z.string().optional(),
    'os.version': z.string().optional(),
  }).passthrough().optional(),
}).passthrough();
export type Descriptor = z.infer<typeof descriptorSchema>;

export const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
  annotations: z.record(z.string()).optional(),
}).passthrough();
export type ImageManifest = z.infer<typeof manifestSchema>;

export const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
  annotations: z.record(z.string()).optional(),
}).passthrough();
export type ImageIndex = z.infer<typeof indexSchema>;

export const configSchema = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  rootfs: z.object({ type: z.literal('layers'), diff_ids: z.array(digestSchema) }),
}).passthrough();
export type ImageConfig = z.infer<typeof configSchema>;

/** Parses JSON bytes against a schema, naming `where` and the failing path on error. */
export function parseJson<T>(schema: z.ZodType<T>, bytes: Buffer, where: string): T {
  return parseValidatedJson(schema, bytes.toString('utf8'), (why) => new MalformedManifestError(where, why));
}

export function isIndexMediaType(mt: string | undefined): boolean {
  return mt === MediaType.ociIndex || mt === MediaType.dockerManifestList;
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export function parsePlatform(s: string): Platform {
  const [os, architecture, variant] = s.split('/');
  if (!os || !architecture) throw new MalformedManifestError('platform', `"${s}" is not OS/ARCH[/VARIANT]`);
  return variant ? { os, architecture, variant } : { os, architecture };
}

/** Picks the index entry for a platform, as containerd does (variant only when asked for). */
export function selectPlatform(index: ImageIndex, platform: Platform, where: string): Descriptor {
  const match = index.manifests.find((m) => m.platform && m.platform.os === platform.os && m.platform.architecture === platform.architecture
    && (!platform.variant || m.platform.variant === platform.variant));
  if (!match) {
    const have = index.manifests.map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}${m.platform.variant ? '/' + m.platform.variant : ''}` : '?')).join(', ');
    throw new MalformedManifestError(where, `no manifest for platform ${platform.os}/${platform.architecture}${platform.variant ? '/' + platform.variant : ''} (has: ${have || 'none'})`);
  }
  return match;
}

/** An image resolved to one platform's manifest, with its config. */
export interface ResolvedImage {
  /** What the user named: a registry reference or oci:DIR[:TAG]. */
  name: string;
  manifestDigest: string;
  manifestBytes: Buffer;
  manifestMediaType: string;
  manifest: ImageManifest;
  configBytes: Buffer;
  config: ImageConfig;
}
