// An unpacked layer directory (what containerd's overlay applier wrote into an Active snapshot:
// whiteouts as 0/0 character devices, opaque directories with trusted.overlay.opaque) turned into
// an EROFS image over the chunk store: each regular file is cut into chunks, each distinct chunk
// stored once in the store's packs, and the image's chunk indexes point at them. Small files are
// kept in the image itself (a 4 KiB block in a pack per tiny file would cost more than dedup saves).

import type { CodecPool, FilePiece } from '../codec/codec-pool.js';
import type { PackLocation } from '../store/pack-files.js';
import { eachLimited } from '../each-limited.js';
import { ImageChunks, type LayerImage } from './layer-image.js';
import type { WalkedFile } from '../codec/layer-walk.js';

/** Files below this size live inside the image (tail-packed), not in packs. */
export const INLINE_MAX = 4096;

/** Where the layer's chunks go: the store, which keeps each distinct one once. */
export interface ChunkSink {
  /** Stores the chunk (the caller hashed it) unless stored already; where its bytes are. */
  storeChunk(digest: string, data: Uint8Array): Promise<PackLocation>;
  /** The current size of a pack (what the image's device table records). */
  packSize(pack: string): Promise<number>;
  /** Flushes the chunks stored so far to disk; run while the image is built (the publish syncs again, then with little left). */
  flush?(): Promise<void>;
}

export interface DirectoryLayerImage extends LayerImage {
  /** The unpacked directory's disk usage as containerd counts it (snapshot/disk-usage.ts), from the same walk. */
  usage: { size: number; inodes: number };
}

/** A piece of a file for the codec pool's readers, and whose it is: chunk `chunk` of job `job`, or (-1) a small file whole. */
interface Piece extends FilePiece {
  job: number;
  chunk: number;
}

/**
 * The files are read and hashed on the codec pool, in batches of up to BATCH_BYTES or
 * BATCH_PIECES pieces (one task for many small files: on the main thread, a Debian base layer's
 * 5,000 files cost some 25,000 fs calls, and the commit was mostly waiting on them), with
 * BATCHES_AT_ONCE in flight, which bounds the bytes held.
 */
const BATCH_BYTES = 8 * 1024 * 1024;
const BATCH_PIECES = 256;
const BATCHES_AT_ONCE = 4;

/** The files' pieces in batches, in file order: small files whole, the others in `chunkSize` chunks. */
function batchesOf(jobs: WalkedFile[], chunkSize: number): Piece[][] {
  const batches: Piece[][] = [];
  let batch: Piece[] = [];
  let bytes = 0;
  const add = (p: Piece): void => {
    if (batch.length && (bytes + p.length > BATCH_BYTES || batch.length >= BATCH_PIECES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(p);
    bytes += p.length;
  };
  jobs.forEach((j, job) => {
    if (j.size < INLINE_MAX) return add({ path: j.path, offset: 0, length: j.size, hash: false, job, chunk: -1 });
    for (let off = 0, chunk = 0; off < j.size; off += chunkSize, chunk++) {
      add({ path: j.path, offset: off, length: Math.min(chunkSize, j.size - off), hash: true, job, chunk });
    }
  });
  if (batch.length) batches.push(batch);
  return batches;
}

/**
 * Builds the EROFS image of the layer unpacked at `root` (walked on the codec pool: codec/layer-walk.ts),
 * storing its file data in chunks of `chunkSize` (a power of two, at least 4 KiB).
 */
export async function buildDirectoryLayer(root: string, chunkSize: number, sink: ChunkSink, pool: CodecPool): Promise<DirectoryLayerImage> {
  const { entries, files: jobs, usage } = await pool.walkLayer(root);
  // One place per distinct chunk of the layer: batches stored at once may share a chunk, and one
  // this build placed needs no read-back to be pointed at again.
  const placed = new Map<string, Promise<PackLocation>>();
  const place = (digest: string, data: Uint8Array): Promise<PackLocation> => {
    let at = placed.get(digest);
    if (!at) placed.set(digest, (at = sink.storeChunk(digest, data)));
    return at;
  };
  // Each file's chunks by chunk number, pointed at in file order once all are placed.
  const placesOf: { digest: string; size: number; at: PackLocation }[][] = jobs.map(() => []);
  await eachLimited(batchesOf(jobs, chunkSize), BATCHES_AT_ONCE, async (batch) => {
    const read = await pool.readFilePieces(batch);
    await Promise.all(batch.map(async (p, i) => {
      const { data, digest } = read[i]!;
      const job = jobs[p.job]!;
      if (p.chunk < 0) return void (entries[job.index] = { ...entries[job.index]!, data });
      placesOf[p.job]![p.chunk] = { digest: digest!, size: p.length, at: await place(digest!, data) };
    }));
  });
  const chunks = new ImageChunks();
  jobs.forEach((j, i) => {
    if (j.size >= INLINE_MAX) entries[j.index] = { ...entries[j.index]!, size: j.size, extents: placesOf[i]!.map((c) => chunks.extent(c.digest, c.size, c.at)) };
  });
  const [built] = await Promise.all([chunks.build(entries, chunkSize, (p) => sink.packSize(p), (e, o) => pool.buildErofs(e, o)), sink.flush?.()]);
  return { ...built, files: jobs.length, bytes: jobs.reduce((n, j) => n + j.size, 0), usage };
}
