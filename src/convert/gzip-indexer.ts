// Gzip indexes of unmodified images (docs/gzip-index.md): the index of every gzip layer of an
// image, built from the registry (or an OCI layout) without changing the image, kept in the state
// root under indexes/, and pushed to the image's repository as an artifact about its manifest.

import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { MultipleGzipMembersError, NotFoundError } from '../errors.js';
import { buildGzipIndex } from '../gzip-index/build.js';
import { decodeGzipIndex, encodeGzipIndex, GZIP_INDEX_MEDIA_TYPE, type ParsedGzipIndex } from '../gzip-index/format.js';
import { sha256Digest } from '../digest.js';
import { TOC_DIGEST_ANNOTATION } from '../estargz/toc.js';
import { findArtifact, pushArtifact, type FoundArtifact } from '../image/artifacts.js';
import { layerCompression, type Descriptor, type Platform, type ResolvedImage } from '../image/oci.js';
import type { RegistryImage } from '../image/registry-image.js';
import type { ImageSource } from '../image/source.js';
import type { RegistryClient } from '../registry/client.js';

export const GZIP_INDEX_ARTIFACT_TYPE = 'application/vnd.dedup-snapshotter.gzip-index.v1';
/** On each index blob of the artifact: the layer it indexes. */
export const INDEXED_LAYER_ANNOTATION = 'dev.dedup-snapshotter.gzip-index.layer';
const TAG_SUFFIX = 'dedup-gzip-index';

export interface IndexedLayer {
  layer: string;
  layerSize: number;
  /** Digest and size of the encoded index blob. */
  index: string;
  indexSize: number;
  checkpoints: number;
  entries: number;
  uncompressedSize: number;
}

/** What indexes/images/<manifest hex>.json records for one image. */
export interface ImageIndexRecord {
  image: string;
  manifestDigest: string;
  manifestMediaType: string;
  manifestSize: number;
  spacing: number;
  chunkSize: number;
  createdAt: string;
  layers: IndexedLayer[];
  /** Layers left out and why (eStargz, not gzip, more than one gzip member). */
  skipped: { layer: string; reason: string }[];
}

export interface IndexImageOptions {
  platform: Platform;
  spacing: number;
  chunkSize: number;
  /** Layers read at once. */
  parallel: number;
  onProgress?: (done: number, total: number) => void;
}

const recordsDir = (root: string): string => join(root, 'indexes', 'images');
const blobPath = (root: string, digest: string): string => join(root, 'indexes', 'blobs', 'sha256', digest.replace(/^sha256:/, ''));

/**
 * Builds the index of every gzip layer of the image and keeps them in `root` (blobs first, then
 * the image's record: a crash leaves at most blobs no record names, which `removeIndexes` and the
 * next create clean up or reuse). Returns the record.
 */
export async function indexImage(source: ImageSource, root: string, opts: IndexImageOptions): Promise<ImageIndexRecord> {
  const resolved = await source.resolve(opts.platform);
  const total = resolved.manifest.layers.reduce((n, l) => n + l.size, 0);
  const done = new Map<string, number>();
  const report = (): void => opts.onProgress?.([...done.values()].reduce((a, b) => a + b, 0), total);
  const layers: IndexedLayer[] = [];
  const skipped: ImageIndexRecord['skipped'] = [];
  const todo = [...resolved.manifest.layers];
  const worker = async (): Promise<void> => {
    for (let desc = todo.shift(); desc; desc = todo.shift()) {
      const why = notIndexable(desc);
      if (why) {
        skipped.push({ layer: desc.digest, reason: why });
        continue;
      }
      try {
        layers.push(await indexLayer(source, desc, root, opts, (n) => {
          done.set(desc!.digest, n);
          report();
        }));
      } catch (err) {
        if (!(err instanceof MultipleGzipMembersError)) throw err;
        skipped.push({ layer: desc.digest, reason: 'more than one gzip member' });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.parallel) }, worker));
  const order = new Map(resolved.manifest.layers.map((l, i) => [l.digest, i]));
  layers.sort((a, b) => order.get(a.layer)! - order.get(b.layer)!);
  const record: ImageIndexRecord = {
    image: source.name, manifestDigest: resolved.manifestDigest, manifestMediaType: resolved.manifestMediaType, manifestSize: resolved.manifestBytes.length,
    spacing: opts.spacing, chunkSize: opts.chunkSize, createdAt: new Date().toISOString(), layers, skipped,
  };
  await mkdir(recordsDir(root), { recursive: true });
  await writeFileAtomic(join(recordsDir(root), `${resolved.manifestDigest.slice(7)}.json`), Buffer.from(JSON.stringify(record, null, 2)));
  return record;
}

function notIndexable(desc: Descriptor): string | undefined {
  if (desc.annotations?.[TOC_DIGEST_ANNOTATION]) return 'eStargz: served lazily through its own TOC';
  const compression = layerCompression(desc.mediaType, `layer ${desc.digest}`);
  return compression === 'gzip' ? undefined : `${compression} layer: only gzip layers are indexed`;
}

async function indexLayer(source: ImageSource, desc: Descriptor, root: string, opts: IndexImageOptions, progress: (bytes: number) => void): Promise<IndexedLayer> {
  let read = 0;
  const stream = source.blobStream(desc);
  const counted = async function* (): AsyncGenerator<Uint8Array> {
    for await (const piece of stream) {
      read += (piece as Buffer).length;
      progress(read);
      yield piece as Buffer;
    }
  };
  const index = await buildGzipIndex(counted(), desc, { spacing: opts.spacing, chunkSize: opts.chunkSize });
  const bytes = encodeGzipIndex(index);
  const digest = sha256Digest(bytes);
  await mkdir(join(root, 'indexes', 'blobs', 'sha256'), { recursive: true });
  await writeFileAtomic(blobPath(root, digest), bytes);
  return {
    layer: desc.digest, layerSize: desc.size, index: digest, indexSize: bytes.length, checkpoints: index.checkpoints.length,
    entries: index.toc.entries.length, uncompressedSize: index.uncompressedSize,
  };
}

export async function listIndexes(root: string): Promise<ImageIndexRecord[]> {
  const names = await readdir(recordsDir(root)).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  const records = await Promise.all(names.filter((n) => n.endsWith('.json')).map(async (n) => JSON.parse(await readFile(join(recordsDir(root), n), 'utf8')) as ImageIndexRecord));
  return records.sort((a, b) => a.image.localeCompare(b.image) || a.createdAt.localeCompare(b.createdAt));
}

/** The records of `image` (its name as indexed, or its manifest digest). */
export async function indexesOf(root: string, image: string): Promise<ImageIndexRecord[]> {
  const found = (await listIndexes(root)).filter((r) => r.image === image || r.manifestDigest === image);
  if (found.length === 0) throw new NotFoundError(`a gzip index of ${image} in ${join(root, 'indexes')}`);
  return found;
}

export function readIndexBlob(root: string, digest: string): Promise<Buffer> {
  return readFile(blobPath(root, digest));
}

/** Forgets the indexes of `image` and deletes the blobs no other record names; returns the records removed. */
export async function removeIndexes(root: string, image: string): Promise<ImageIndexRecord[]> {
  const gone = await indexesOf(root, image);
  for (const r of gone) await rm(join(recordsDir(root), `${r.manifestDigest.slice(7)}.json`), { force: true });
  const kept = new Set((await listIndexes(root)).flatMap((r) => r.layers.map((l) => l.index)));
  const blobs = await readdir(join(root, 'indexes', 'blobs', 'sha256')).catch(() => [] as string[]);
  for (const b of blobs) if (!kept.has(`sha256:${b}`)) await rm(join(root, 'indexes', 'blobs', 'sha256', b), { force: true });
  return gone;
}

/** Pushes the indexes of `record` to `image`'s repository as one artifact about its manifest. */
export async function pushIndexes(client: RegistryClient, image: RegistryImage, root: string, record: ImageIndexRecord): Promise<{ tag: string; digest: string }> {
  const blobs = await Promise.all(record.layers.map(async (l) => ({
    mediaType: GZIP_INDEX_MEDIA_TYPE, bytes: await readIndexBlob(root, l.index), annotations: { [INDEXED_LAYER_ANNOTATION]: l.layer },
  })));
  const subject = { mediaType: record.manifestMediaType, digest: record.manifestDigest, size: record.manifestSize };
  return pushArtifact(client, image, subject, GZIP_INDEX_ARTIFACT_TYPE, blobs, TAG_SUFFIX);
}

/** The gzip index artifact pushed for the image `resolved` is, if there is one. */
export function findIndexes(client: RegistryClient, image: RegistryImage, resolved: Pick<ResolvedImage, 'manifestDigest'>): Promise<FoundArtifact | undefined> {
  return findArtifact(client, image, resolved.manifestDigest, GZIP_INDEX_ARTIFACT_TYPE, TAG_SUFFIX);
}

/** Whether a layer is one a gzip index can serve: gzip, and not eStargz (which has its own TOC). */
export function indexable(desc: Descriptor): boolean {
  return notIndexable(desc) === undefined;
}

/** How a mount finds an image's index artifact and its blobs (a caller mounting several layers shares them). */
export interface IndexLookup {
  find(): Promise<FoundArtifact | undefined>;
  /** An index blob of the artifact, by digest, checked against it as it is read. */
  blob(digest: string): Promise<Buffer>;
}

/**
 * The gzip index of `layer` of the image `manifestDigest` names: from the state root's indexes if
 * it has one, else from the artifact pushed beside the image (its blob is checked against its
 * digest as it is read); decoded and checked against the layer. Undefined when there is none;
 * MalformedGzipIndexError for one that is broken or for another layer.
 */
export async function layerIndex(client: RegistryClient, image: RegistryImage, root: string, manifestDigest: string, layer: Descriptor,
  lookup: Partial<IndexLookup> = {}): Promise<ParsedGzipIndex & { digest: string } | undefined> {
  const { find = () => findIndexes(client, image, { manifestDigest }), blob: fetchBlob = (d: string) => client.getBlob(image.ref, d) } = lookup;
  const record = await readFile(join(recordsDir(root), `${manifestDigest.slice(7)}.json`), 'utf8').then((t) => JSON.parse(t) as ImageIndexRecord, () => undefined);
  const local = record?.layers.find((l) => l.layer === layer.digest);
  if (local) return { ...decodeGzipIndex(await readIndexBlob(root, local.index), layer, `${blobPath(root, local.index)} (local index of ${image.name})`), digest: local.index };
  const found = await find();
  const blob = found?.manifest.layers.find((l) => l.annotations?.[INDEXED_LAYER_ANNOTATION] === layer.digest);
  if (!found || !blob) return undefined;
  const bytes = await fetchBlob(blob.digest);
  return { ...decodeGzipIndex(bytes, layer, `${blob.digest} (the gzip index artifact of ${image.name}, found by ${found.via})`), digest: blob.digest };
}
