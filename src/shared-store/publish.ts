// Publishing an image into a shared store, and removing one (docs/shared-store.md). A publisher
// writes only under tmp/ and makes each thing visible by one rename, layer by layer: the layer's
// new chunks as one pack (synced, then renamed into packs/), then its directory (EROFS image and
// record, synced, renamed into layers/), and once every layer is there, the image record. A
// publisher killed at any point leaves complete layers (reused by the next publish), temp files
// and at most an unreferenced pack: never an image a reader would take. Chunks any layer in the
// store has already are pointed at, not written again.

import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { NotFoundError } from '../errors.js';
import type { ResolvedImage } from '../image/oci.js';
import type { CodecPool } from '../codec/codec-pool.js';
import { buildDirectoryLayer } from '../kernel/directory-layer.js';
import { alignUp, type PackLocation } from '../store/pack-files.js';
import { imageRecordSchema, layerRecordSchema, LAYOUT_VERSION, readRecord, StoreLayout, type ImageRecord, type LayerRecord } from './layout.js';
import { sha256Digest } from '../digest.js';

/** Temp files and unreferenced packs or layers this old are a dead publisher's (a live one renames within its run). */
export const STALE_MS = 10 * 60_000;

/** One layer of the image to publish: its identity, and a directory holding its files (a mounted layer). */
export interface LayerSource {
  digest: string;
  diffId: string;
  chainId: string;
  open(): Promise<{ dir: string; close(): Promise<void> }>;
}

export interface PublishReport {
  ref: string;
  store: string;
  manifestDigest: string;
  layers: { diffId: string; reused: boolean; chunks: number; newChunks: number; bytesWritten: number }[];
  bytesWritten: number;
  seconds: number;
}

type Placed = LayerRecord['chunks'][number];

/** The chunks of every layer in the store (whose record reads), by digest: what a publish need not write again. */
async function storedChunks(layout: StoreLayout): Promise<Map<string, Placed>> {
  const known = new Map<string, Placed>();
  for (const name of await readdir(layout.layers).catch(() => [] as string[])) {
    const rec = await readRecord(layerRecordSchema, join(layout.layers, name, 'layer.json')).catch(() => undefined);
    for (const c of rec?.chunks ?? []) if (!known.has(c.digest)) known.set(c.digest, c);
  }
  return known;
}

/** A pack being written under tmp/ by this publisher: appended at aligned offsets, then synced and renamed into packs/. */
class NewPack {
  readonly name = `${randomBytes(16).toString('hex')}.pack`;
  private opened: Promise<FileHandle> | undefined;
  end = 0;

  constructor(private readonly layout: StoreLayout) {}

  private get tmp(): string {
    return join(this.layout.tmp, this.name);
  }

  /** Where `data` goes, taken before any wait: the layer builder places chunks at once. */
  async append(data: Uint8Array): Promise<number> {
    const offset = this.end;
    this.end = alignUp(offset + data.length);
    const fh = await (this.opened ??= open(this.tmp, 'wx'));
    for (let done = 0; done < data.length;) done += (await fh.write(data, done, data.length - done, offset + done)).bytesWritten;
    return offset;
  }

  /** Makes it visible (false when nothing was written): ends on a block boundary, synced, renamed. */
  async publish(): Promise<boolean> {
    if (!this.opened) return false;
    const fh = await this.opened;
    this.opened = undefined;
    await fh.truncate(this.end); // the kernel reads a chunk's last block whole
    await fh.sync();
    await fh.close();
    await rename(this.tmp, this.layout.pack(this.name));
    return true;
  }

  async discard(): Promise<void> {
    const opened = this.opened;
    this.opened = undefined;
    await (await opened?.catch(() => undefined))?.close();
    await rm(this.tmp, { force: true });
  }
}

async function writeSynced(path: string, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'wx');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A layer's directory made under tmp/ and renamed into layers/; false when another publisher's got there first. */
async function placeLayer(layout: StoreLayout, record: LayerRecord, image: Buffer): Promise<boolean> {
  const tmp = join(layout.tmp, `layer-${randomBytes(8).toString('hex')}`);
  await mkdir(tmp);
  try {
    await writeSynced(join(tmp, 'layer.erofs'), image);
    await writeSynced(join(tmp, 'layer.json'), Buffer.from(JSON.stringify(record)));
    await rename(tmp, layout.layer(record.diffId));
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ENOTEMPTY') return false;
    throw err;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The record of a layer already in the store, or undefined; a directory whose record does not read is moved out of the way. */
async function existingLayer(layout: StoreLayout, diffId: string): Promise<LayerRecord | undefined> {
  const dir = layout.layer(diffId);
  if (!(await stat(dir).catch(() => undefined))) return undefined;
  const rec = await readRecord(layerRecordSchema, layout.layerRecord(diffId)).catch(() => undefined);
  const image = await stat(layout.layerImage(diffId)).catch(() => undefined);
  if (rec && rec.diffId === diffId && image?.size === rec.image.size) return rec;
  const aside = join(layout.tmp, `bad-${randomBytes(8).toString('hex')}`);
  await rename(dir, aside);
  await rm(aside, { recursive: true, force: true });
  return undefined;
}

/**
 * Publishes `image` (resolved: manifest and config) into the store at `dir`, its layers read
 * from `sources` (bottom first, as in the manifest) and built into EROFS images of `chunkSize`
 * chunks. Layers the store has already are kept as they are.
 */
export async function publishImage(dir: string, image: ResolvedImage, sources: LayerSource[], chunkSize: number, pool: CodecPool,
  onLayer?: (i: number, reused: boolean) => void): Promise<PublishReport> {
  const started = performance.now();
  const layout = new StoreLayout(dir);
  for (const d of [layout.tmp, layout.packs, layout.layers, layout.images, join(dir, 'blobs', 'sha256')]) await mkdir(d, { recursive: true });
  const known = await storedChunks(layout);
  const report: PublishReport = { ref: image.name, store: dir, manifestDigest: image.manifestDigest, layers: [], bytesWritten: 0, seconds: 0 };
  for (const [i, src] of sources.entries()) {
    const had = await existingLayer(layout, src.diffId);
    if (had) {
      report.layers.push({ diffId: src.diffId, reused: true, chunks: had.chunks.length, newChunks: 0, bytesWritten: 0 });
      onLayer?.(i, true);
      continue;
    }
    const pack = new NewPack(layout);
    const mine = new Map<string, Placed>();
    try {
      const from = await src.open();
      let layer;
      try {
        layer = await buildDirectoryLayer(from.dir, chunkSize, {
          storeChunk: async (digest, data): Promise<PackLocation> => {
            const at = known.get(digest) ?? mine.get(digest);
            if (at) return { pack: at.pack, offset: at.offset };
            const placed = { digest, size: data.length, pack: pack.name, offset: await pack.append(data) };
            mine.set(digest, placed);
            return placed;
          },
          packSize: async (name) => (name === pack.name ? pack.end : (await stat(layout.pack(name))).size),
        }, pool);
      } finally {
        await from.close();
      }
      await pack.publish();
      const chunks = [...new Map(layer.chunks.map((c) => [c.digest, { digest: c.digest, size: c.size, pack: c.at.pack, offset: c.at.offset }])).values()];
      const record: LayerRecord = {
        version: LAYOUT_VERSION, diffId: src.diffId, image: { digest: sha256Digest(layer.image), size: layer.image.length }, chunkSize,
        devices: layer.devices, chunks, files: layer.files, bytes: layer.bytes, usage: layer.usage,
      };
      const placed = await placeLayer(layout, record, layer.image);
      for (const c of chunks) if (!known.has(c.digest)) known.set(c.digest, c);
      const written = placed ? [...mine.values()].reduce((n, c) => n + c.size, 0) : 0;
      report.layers.push({ diffId: src.diffId, reused: !placed, chunks: chunks.length, newChunks: placed ? mine.size : 0, bytesWritten: written });
      report.bytesWritten += written;
      onLayer?.(i, !placed);
    } catch (err) {
      await pack.discard();
      throw err;
    }
  }
  for (const [digest, bytes] of [[image.manifestDigest, image.manifestBytes], [image.manifest.config.digest, image.configBytes]] as const) {
    if (!(await stat(layout.blob(digest)).catch(() => undefined))) await writeFileAtomic(layout.blob(digest), bytes, join(layout.tmp, `blob-${randomBytes(8).toString('hex')}`));
  }
  const record: ImageRecord = {
    version: LAYOUT_VERSION, ref: image.name, manifestDigest: image.manifestDigest, configDigest: image.manifest.config.digest,
    layers: sources.map((s) => ({ digest: s.digest, diffId: s.diffId, chainId: s.chainId })), publishedAt: new Date().toISOString(),
  };
  await writeFileAtomic(layout.imageRecord(image.name), Buffer.from(JSON.stringify(record)), join(layout.tmp, `image-${randomBytes(8).toString('hex')}`));
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

export interface UnpublishReport {
  ref: string;
  store: string;
  layersRemoved: number;
  packsRemoved: number;
  bytesFreed: number;
}

/** Every image record that reads. */
export async function listPublished(dir: string): Promise<ImageRecord[]> {
  const layout = new StoreLayout(dir);
  const out: ImageRecord[] = [];
  for (const n of await readdir(layout.images)) {
    if (n.endsWith('.json')) out.push(...await readRecord(imageRecordSchema, join(layout.images, n)).then((r) => [r], () => []));
  }
  return out;
}

/**
 * Removes image `ref` from the store at `dir`: its record first (readers stop taking it), then
 * the layers no other image uses, the packs no remaining layer points into, and what dead
 * publishers left (older than STALE_MS). A host that has the image mounted keeps reading the
 * files it opened.
 */
export async function unpublishImage(dir: string, ref: string): Promise<UnpublishReport> {
  const layout = new StoreLayout(dir);
  const record = await readRecord(imageRecordSchema, layout.imageRecord(ref)).catch(() => {
    throw new NotFoundError(`image ${ref} in shared store ${dir}`);
  });
  await rm(layout.imageRecord(ref));
  const report: UnpublishReport = { ref, store: dir, layersRemoved: 0, packsRemoved: 0, bytesFreed: 0 };
  const stale = async (path: string): Promise<boolean> => ((await stat(path).catch(() => undefined))?.mtimeMs ?? Infinity) < Date.now() - STALE_MS;
  const images = await listPublished(dir);
  const liveLayers = new Set(images.flatMap((i) => i.layers.map((l) => l.diffId)));
  const mine = new Set(record.layers.map((l) => l.diffId.slice('sha256:'.length)));
  const livePacks = new Set<string>();
  const freedPacks = new Set<string>();
  for (const name of await readdir(layout.layers)) {
    const diffId = `sha256:${name}`;
    const rec = await readRecord(layerRecordSchema, layout.layerRecord(diffId)).catch(() => undefined);
    // Another publisher's layer not yet named by its image is young: left alone.
    if (liveLayers.has(diffId) || (!mine.has(name) && !(await stale(join(layout.layers, name))))) {
      for (const p of rec?.devices ?? []) livePacks.add(p);
      continue;
    }
    for (const p of rec?.devices ?? []) freedPacks.add(p);
    const aside = join(layout.tmp, `gone-${randomBytes(8).toString('hex')}`);
    await rename(join(layout.layers, name), aside);
    await rm(aside, { recursive: true, force: true });
    report.layersRemoved++;
  }
  for (const name of await readdir(layout.packs)) {
    // A pack no layer names is garbage once stale (a young one may be a publisher's, its layer not placed yet).
    if (livePacks.has(name) || !(freedPacks.has(name) || await stale(layout.pack(name)))) continue;
    report.bytesFreed += (await stat(layout.pack(name))).blocks * 512;
    await rm(layout.pack(name), { force: true });
    report.packsRemoved++;
  }
  const liveBlobs = new Set(images.flatMap((i) => [i.manifestDigest, i.configDigest]));
  for (const d of [record.manifestDigest, record.configDigest]) if (!liveBlobs.has(d)) await rm(layout.blob(d), { force: true });
  for (const name of await readdir(layout.tmp)) if (await stale(join(layout.tmp, name))) await rm(join(layout.tmp, name), { recursive: true, force: true });
  return report;
}
