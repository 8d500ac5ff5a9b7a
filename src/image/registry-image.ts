// ImageSource and ImageTarget over a registry repository.

import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import type { RegistryClient } from '../registry/client.js';
import { formatReference, parseReference, type ImageReference } from '../registry/reference.js';
import {
  configSchema, indexSchema, isIndexMediaType, manifestSchema, MANIFEST_ACCEPT, parseJson, selectPlatform,
  type Descriptor, type Platform, type ResolvedImage,
} from './oci.js';
import type { BlobBody, ImageSource, ImageTarget, RegistryLocation } from './source.js';
import { DigestMismatchError } from '../errors.js';
import { sha256Digest } from '../digest.js';

/** Old registries answer without a media type: an index is what has "manifests". */
function looksLikeIndex(bytes: Buffer): boolean {
  try {
    return Array.isArray((JSON.parse(bytes.toString('utf8')) as { manifests?: unknown }).manifests);
  } catch {
    return false; // the manifest parser reports the bad JSON
  }
}

export class RegistryImage implements ImageSource, ImageTarget {
  readonly ref: ImageReference;
  readonly name: string;
  readonly location: RegistryLocation;

  constructor(private readonly client: RegistryClient, ref: string | ImageReference) {
    this.ref = typeof ref === 'string' ? parseReference(ref, client.defaultRegistry) : ref;
    this.name = formatReference(this.ref);
    this.location = { host: this.ref.host, repository: this.ref.repository };
  }

  async resolve(platform: Platform): Promise<ResolvedImage> {
    const m = await this.resolveManifest(platform);
    const configBytes = await this.client.getBlob(this.ref, m.manifest.config.digest);
    const config = parseJson(configSchema, configBytes, `config of ${this.name}`);
    return { ...m, configBytes, config };
  }

  /**
   * The platform's manifest (through an index), without the config: all a lazy mount needs.
   * `digest` (a manifest's, when the caller knows it) is fetched instead of the reference.
   */
  async resolveManifest(platform: Platform, digest?: string): Promise<Omit<ResolvedImage, 'configBytes' | 'config'>> {
    const reference = digest ?? this.ref.digest ?? this.ref.tag!;
    let m = await this.client.getManifest(this.ref, reference, MANIFEST_ACCEPT);
    let what = digest ? `manifest ${digest} of ${this.name}` : `manifest of ${this.name}`;
    if (isIndexMediaType(m.mediaType) || (!m.mediaType && looksLikeIndex(m.bytes))) {
      const index = parseJson(indexSchema, m.bytes, `image index of ${this.name}`);
      const desc = selectPlatform(index, platform, `image index of ${this.name}`);
      m = await this.client.getManifest(this.ref, desc.digest, MANIFEST_ACCEPT);
      what = `manifest ${desc.digest} of ${this.name}`;
    }
    const manifest = parseJson(manifestSchema, m.bytes, what);
    return { name: this.name, manifestDigest: m.digest, manifestBytes: m.bytes, manifestMediaType: manifest.mediaType ?? m.mediaType, manifest };
  }

  blobStream(desc: Descriptor, range?: { start: number; end: number }): Readable {
    return this.client.blobStream(this.ref, desc.digest, range);
  }

  readBlobRange(desc: Descriptor, start: number, end: number): Promise<Buffer> {
    return this.client.getBlobRange(this.ref, desc.digest, start, end);
  }

  /** The last `length` bytes of a blob whose size is not known yet, and its size. */
  readBlobTail(digest: string, length: number): Promise<{ bytes: Buffer; size: number }> {
    return this.client.getBlobTail(this.ref, digest, length);
  }

  putBlob(desc: Descriptor, body: BlobBody, mountFrom?: RegistryLocation): Promise<'exists' | 'mounted' | 'uploaded'> {
    if ('bytes' in body && sha256Digest(body.bytes) !== desc.digest) {
      throw new DigestMismatchError(`blob to push to ${this.name}`, desc.digest, sha256Digest(body.bytes));
    }
    const from = mountFrom && mountFrom.host === this.ref.host && mountFrom.repository !== this.ref.repository ? mountFrom.repository : undefined;
    return this.client.pushBlob(this.ref, desc.digest, desc.size,
      (start, end) => ('bytes' in body ? body.bytes.subarray(start, end) : () => createReadStream(body.path, { start, end: end - 1 })),
      { mountFrom: from });
  }

  putManifest(bytes: Buffer, mediaType: string): Promise<string> {
    return this.client.putManifest(this.ref, this.ref.tag ?? this.ref.digest!, bytes, mediaType);
  }
}
