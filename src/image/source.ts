// Where images come from and go to: a registry repository or an OCI image layout directory.
// The converter and the store only see these two interfaces.

import type { Readable } from 'node:stream';
import type { Descriptor, Platform, ResolvedImage } from './oci.js';

export interface RegistryLocation {
  host: string;
  repository: string;
}

export interface ImageSource {
  /** The name the user gave (for messages). */
  readonly name: string;
  /** Set for registry sources: lets a push to the same registry mount blobs instead of copying. */
  readonly location: RegistryLocation | undefined;
  resolve(platform: Platform): Promise<ResolvedImage>;
  /**
   * The whole blob, verified against its digest by the end of the stream; with `range`, bytes
   * [start, end) of it, which the consumer verifies (chunk digests) as it cannot be checked whole.
   */
  blobStream(desc: Descriptor, range?: { start: number; end: number }): Readable;
  /** Bytes [start, end) of a blob. */
  readBlobRange(desc: Descriptor, start: number, end: number): Promise<Buffer>;
}

export type BlobBody = { path: string } | { bytes: Buffer };

export interface ImageTarget {
  readonly name: string;
  readonly location: RegistryLocation | undefined;
  /** Stores a blob unless the target has it; `mountFrom` is a repository on the same registry. */
  putBlob(desc: Descriptor, body: BlobBody, mountFrom?: RegistryLocation): Promise<'exists' | 'mounted' | 'uploaded'>;
  /** Stores the manifest under the target's tag; returns its digest. */
  putManifest(bytes: Buffer, mediaType: string): Promise<string>;
}
