// The committed image in the registry: the base image's layers referenced by digest (already in
// the target repository, or mounted from the base image's repository on the same registry; only
// a base on another registry is copied, blob by blob), the new eStargz layer, a config with the
// new diff_id and a history entry, and last the manifest under the target tag. Nothing is tagged
// before every blob it names is in place, so a push that fails leaves no image behind.

import { Readable } from 'node:stream';
import { MediaType, type Descriptor } from '../image/oci.js';
import { RegistryImage } from '../image/registry-image.js';
import type { RegistryClient } from '../registry/client.js';
import { sha256Digest } from '../digest.js';
import { TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION } from '../estargz/toc.js';
import type { ConvertedLayer } from '../convert/layer-converter.js';
import type { ContainerImage } from './containerd.js';

export type BlobTransfer = 'exists' | 'mounted' | 'uploaded';

export interface PushedImage {
  manifestDigest: string;
  configDigest: string;
  layer: Descriptor;
  /** How each base layer got into the target repository. */
  baseLayers: { digest: string; transfer: BlobTransfer }[];
}

const COPY_PIECE = 4 * 1024 * 1024;

/** Bytes [start, end) of a blob of another registry, read in Range pieces. */
function rangeStream(client: RegistryClient, src: RegistryImage, digest: string, start: number, end: number): Readable {
  return Readable.from((async function* pieces() {
    for (let off = start; off < end; off += COPY_PIECE) yield await client.getBlobRange(src.ref, digest, off, Math.min(end, off + COPY_PIECE));
  })());
}

/** The base config with the new layer on top: diff_ids, history, created. */
export function committedConfig(base: Buffer, diffId: string, baseLayers: number, createdBy: string, now = new Date()): Buffer {
  const config = JSON.parse(base.toString('utf8')) as { created?: string; rootfs: { diff_ids: string[] }; history?: { created?: string; created_by?: string; comment?: string; empty_layer?: boolean }[] };
  const created = now.toISOString();
  config.created = created;
  config.rootfs.diff_ids = [...config.rootfs.diff_ids, diffId];
  // One history entry per non-empty layer: made up for a base that had none.
  const history = config.history ?? Array.from({ length: baseLayers }, () => ({}));
  config.history = [...history, { created, created_by: createdBy, comment: 'dedup-snapshotter commit' }];
  return Buffer.from(JSON.stringify(config));
}

export async function pushCommitted(client: RegistryClient, baseName: string, base: ContainerImage, layer: ConvertedLayer, targetRef: string,
  createdBy: string): Promise<PushedImage> {
  const target = new RegistryImage(client, targetRef);
  const source = new RegistryImage(client, baseName);
  const sameRegistry = source.ref.host === target.ref.host;
  const baseLayers: PushedImage['baseLayers'] = [];
  for (const d of base.manifest.layers) {
    const transfer = await client.pushBlob(target.ref, d.digest, d.size, (start, end) => () => rangeStream(client, source, d.digest, start, end),
      { mountFrom: sameRegistry && source.ref.repository !== target.ref.repository ? source.ref.repository : undefined });
    baseLayers.push({ digest: d.digest, transfer });
  }
  const desc: Descriptor = {
    mediaType: MediaType.ociLayerGzip, digest: layer.digest, size: layer.size,
    annotations: { [TOC_DIGEST_ANNOTATION]: layer.tocDigest, [UNCOMPRESSED_SIZE_ANNOTATION]: String(layer.uncompressedSize) },
  };
  await target.putBlob(desc, { path: layer.path });
  const configBytes = committedConfig(base.configBytes, layer.diffId, base.manifest.layers.length, createdBy);
  const configDesc: Descriptor = { mediaType: MediaType.ociConfig, digest: sha256Digest(configBytes), size: configBytes.length };
  await target.putBlob(configDesc, { bytes: configBytes });
  const manifest = { schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDesc, layers: [...base.manifest.layers, desc] };
  const manifestDigest = await target.putManifest(Buffer.from(JSON.stringify(manifest)), MediaType.ociManifest);
  return { manifestDigest, configDigest: configDesc.digest, layer: desc, baseLayers };
}
