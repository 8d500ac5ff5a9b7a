// A lazily pulled eStargz layer whose chunks are all in the store, as an EROFS image: the tree the
// FUSE layer filesystem (src/fs/layer-fs.ts) shows, from the same TOC (whiteouts and opaque
// directories in overlay form, estargz/whiteouts.ts), with each file's chunk indexes pointing at
// the places in the packs where the lazy path stored its chunks, read back and verified first (the
// kernel reads them unchecked).
//
// EROFS wants one power-of-two chunk size per file, every chunk but the last of that size; an
// extent that is a multiple of it will do (it is contiguous in its pack and takes several
// indexes). So a file gets the largest power of two that divides each of its TOC chunks but the
// last. Where that is under 4 KiB (a chunk before the last whose size is not a multiple of 4 KiB:
// a TOC cut by another tool), the file's bytes are cut again into `chunkSize` chunks stored anew
// (the store then holds that file twice: its TOC chunks, which lazy mounts and other layers use,
// and the new ones).

import type { CodecPool } from '../codec/codec-pool.js';
import { BLOCK_SIZE } from '../erofs/format.js';
import type { ErofsEntry, ErofsExtent } from '../erofs/tree.js';
import { NotFoundError } from '../errors.js';
import { sha256Digest } from '../digest.js';
import { type Toc, type TocNode } from '../estargz/toc.js';
import { OPAQUE_XATTR, overlayChildren } from '../estargz/whiteouts.js';
import type { PackLocation } from '../store/pack-files.js';
import { eachLimited } from '../each-limited.js';
import { ImageChunks, type LayerImage } from './layer-image.js';

/** The largest chunk an EROFS chunk index can stand for (the chunk format's 5 bits over 4 KiB blocks). */
const MAX_CHUNK = BLOCK_SIZE * 2 ** 31;
/**
 * Chunks placeStoredMany did not place, asked of placeStored at once: a layer of many chunks the
 * store lacks (a lazy mount's chunk files) would otherwise wait for each in turn.
 */
const IN_FLIGHT = 8;

/** Where the layer's chunks are: the store. */
export interface StoredChunks {
  /** A stored chunk's place and verified bytes; undefined when it is not stored (or failed its check). */
  placeStored(digest: string, size: number): Promise<{ at: PackLocation; data: Buffer } | undefined>;
  /** The places of those of `chunks` stored, each verified (ChunkStore.placeStoredMany: read in runs); the others are asked of placeStored. */
  placeStoredMany(chunks: { digest: string; size: number }[]): Promise<Map<string, PackLocation>>;
  /** Stores a chunk cut anew (the caller hashed it) unless stored already; where its bytes are. */
  storeChunk(digest: string, data: Uint8Array): Promise<PackLocation>;
  /** The current size of a pack (what the image's device table records). */
  packSize(pack: string): Promise<number>;
}

export interface TocLayerImage extends LayerImage {
  /** Files whose TOC chunks EROFS cannot point at, cut again, and their bytes. */
  recut: { files: number; bytes: number };
}

/** The chunk size for a file whose TOC cuts it into `sizes`, or undefined when no power of two from 4 KiB fits. */
export function fileChunkSize(sizes: readonly number[]): number | undefined {
  if (sizes.length <= 1) return Math.min(MAX_CHUNK, 2 ** Math.ceil(Math.log2(Math.max(BLOCK_SIZE, sizes[0] ?? 0))));
  let c = MAX_CHUNK;
  for (let i = 0; i < sizes.length - 1; i++) while (sizes[i]! % c !== 0) c /= 2;
  return c >= BLOCK_SIZE ? c : undefined;
}

/**
 * Builds the EROFS image of `toc`'s layer over the store's packs (the image itself on the codec
 * pool: a python layer's 1,200 files took 100–300 ms of the calling thread). Refused
 * (NotFoundError) when a chunk is not stored, or no longer verifies; the caller tries again once it is.
 */
export async function buildTocLayer(toc: Toc, chunkSize: number, store: StoredChunks, pool: CodecPool): Promise<TocLayerImage> {
  const entries: ErofsEntry[] = [];
  const chunks = new ImageChunks();
  const firstPath = new Map<TocNode, string>(); // hard links: the first name the walk meets
  const recut = { files: 0, bytes: 0 };
  let files = 0;
  let bytes = 0;

  const stored = async (node: TocNode, digest: string, size: number): Promise<{ at: PackLocation; data: Buffer }> => {
    const got = await store.placeStored(digest, size);
    if (!got) throw new NotFoundError(`chunk ${digest} of "${node.path}" in the store`, 'fetched and verified');
    return got;
  };

  /** The file's bytes cut again into `chunkSize` chunks, each stored. */
  const cutAgain = async (node: TocNode): Promise<ErofsExtent[]> => {
    const extents: ErofsExtent[] = [];
    let pending = Buffer.alloc(0);
    const emit = async (n: number): Promise<void> => {
      const piece = pending.subarray(0, n);
      const digest = sha256Digest(piece);
      extents.push(chunks.extent(digest, n, await store.storeChunk(digest, piece)));
      pending = pending.subarray(n);
    };
    for (const c of node.chunks) {
      pending = Buffer.concat([pending, (await stored(node, c.chunkDigest!, c.chunkSize)).data]);
      while (pending.length >= chunkSize) await emit(chunkSize);
    }
    if (pending.length) await emit(pending.length);
    recut.files++;
    recut.bytes += node.size;
    return extents;
  };

  /** Files whose extents are filled in once the walk is over: their chunks as they are, or cut again. */
  const fitting: { entry: ErofsEntry; node: TocNode }[] = [];
  const unfit: { entry: ErofsEntry; node: TocNode }[] = [];
  const file = (node: TocNode, entry: ErofsEntry): ErofsEntry => {
    files++;
    bytes += node.size;
    if (node.size === 0) return { ...entry, data: Buffer.alloc(0) };
    const fit = fileChunkSize(node.chunks.map((c) => c.chunkSize));
    const e = { ...entry, chunkSize: fit ?? chunkSize };
    (fit === undefined ? unfit : fitting).push({ entry: e, node });
    return e;
  };

  /**
   * The places of every fitting file's chunks, in file order: the stored ones read and verified
   * all at once, any other asked of placeStored, IN_FLIGHT at a time; a chunk that occurs more
   * than once is read and verified once.
   */
  const placeAll = async (): Promise<PackLocation[]> => {
    const todo = fitting.flatMap(({ node }) => node.chunks.map((c) => ({ node, c })));
    const found = await store.placeStoredMany(todo.map(({ c }) => ({ digest: c.chunkDigest!, size: c.chunkSize })));
    const places: PackLocation[] = new Array(todo.length);
    const placed = new Map<string, Promise<PackLocation>>();
    await eachLimited([...todo.keys()], IN_FLIGHT, async (i) => {
      const { node, c } = todo[i]!;
      const known = found.get(c.chunkDigest!);
      if (known) return void (places[i] = known);
      let at = placed.get(c.chunkDigest!);
      if (!at) placed.set(c.chunkDigest!, (at = stored(node, c.chunkDigest!, c.chunkSize).then((r) => r.at)));
      places[i] = await at;
    });
    return places;
  };

  const visit = async (path: string, node: TocNode): Promise<void> => {
    const first = firstPath.get(node);
    if (first !== undefined) return void entries.push({ path, type: 'hardlink', linkTarget: first });
    firstPath.set(node, path);
    const base = {
      path, mode: node.mode, uid: node.uid, gid: node.gid, mtime: node.mtime, xattrs: Object.fromEntries(node.xattrs),
    };
    switch (node.type) {
      case 'dir': {
        const { opaque, children } = overlayChildren(node);
        entries.push({ ...base, type: 'dir', xattrs: opaque ? { ...base.xattrs, [OPAQUE_XATTR]: 'y' } : base.xattrs });
        for (const c of children) {
          const at = path ? `${path}/${c.name}` : c.name;
          // A whiteout as the FUSE layer shows it: a 0/0 character device, root's, of time 0.
          if (!c.node) entries.push({ path: at, type: 'char', mode: 0, uid: 0, gid: 0, mtime: 0, devMajor: 0, devMinor: 0 });
          else await visit(at, c.node);
        }
        return;
      }
      case 'symlink':
        return void entries.push({ ...base, type: 'symlink', linkTarget: node.linkName });
      case 'char':
      case 'block':
        return void entries.push({ ...base, type: node.type, devMajor: node.devMajor, devMinor: node.devMinor });
      case 'fifo':
        return void entries.push({ ...base, type: 'fifo' });
      default:
        return void entries.push(file(node, { ...base, type: 'reg' }));
    }
  };
  await visit('', toc.root);
  const places = await placeAll();
  let k = 0;
  for (const { entry, node } of fitting) entry.extents = node.chunks.map((c) => chunks.extent(c.chunkDigest!, c.chunkSize, places[k++]!));
  for (const { entry, node } of unfit) entry.extents = await cutAgain(node);
  return { ...await chunks.build(entries, chunkSize, (p) => store.packSize(p), (e, o) => pool.buildErofs(e, o)), files, bytes, recut };
}
