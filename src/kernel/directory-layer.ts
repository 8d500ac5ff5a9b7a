// An unpacked layer directory (what containerd's overlay applier wrote into an Active snapshot:
// whiteouts as 0/0 character devices, opaque directories with trusted.overlay.opaque) turned into
// an EROFS image over the chunk store: each regular file is cut into chunks, each distinct chunk
// stored once in the store's packs, and the image's chunk indexes point at them. Small files are
// kept in the image itself (a 4 KiB block in a pack per tiny file would cost more than dedup saves).

import type { BigIntStats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { CodecPool, FilePiece } from '../codec/codec-pool.js';
import type { ErofsEntry } from '../erofs/tree.js';
import { MalformedLayerError } from '../errors.js';
import { OPAQUE_XATTR } from '../estargz/whiteouts.js';
import { isSysError, native } from '../native.js';
import type { PackLocation } from '../store/pack-files.js';
import { eachLimited, ImageChunks, type LayerImage } from './layer-image.js';

/** Files below this size live inside the image (tail-packed), not in packs. */
export const INLINE_MAX = 4096;

/** Where the layer's chunks go: the store, which keeps each distinct one once. */
export interface ChunkSink {
  /** Stores the chunk (the caller hashed it) unless stored already; where its bytes are. */
  storeChunk(digest: string, data: Uint8Array): Promise<PackLocation>;
  /** The current size of a pack (what the image's device table records). */
  packSize(pack: string): Promise<number>;
}

export interface DirectoryLayerImage extends LayerImage {
  /** The unpacked directory's disk usage as containerd counts it (snapshot/disk-usage.ts), from the same walk. */
  usage: { size: number; inodes: number };
}

const S_IFMT = 0o170000;
const TYPES: Record<number, ErofsEntry['type'] | undefined> = {
  0o040000: 'dir', 0o100000: 'reg', 0o120000: 'symlink', 0o020000: 'char', 0o060000: 'block', 0o010000: 'fifo',
};

/** glibc's major/minor of a dev_t. */
function devParts(rdev: bigint): { devMajor: number; devMinor: number } {
  return {
    devMajor: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)),
    devMinor: Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)),
  };
}

/**
 * A file's xattrs as the layer has them. Of overlayfs's own, only the opaque marker is the
 * layer's: the others (origin, impure, redirect) describe the upper directory it was unpacked in.
 */
function xattrsOf(path: string): Record<string, Buffer> {
  const r = native().readXattrs(path);
  if (isSysError(r)) throw new MalformedLayerError(path, `cannot read its extended attributes: ${r.call}: ${r.message}`);
  for (const name of Object.keys(r)) if (name.startsWith('trusted.overlay.') && name !== OPAQUE_XATTR) delete r[name];
  return r;
}

/** A regular file found by the walk: entry `index` gets its extents or inline bytes once it is read. */
interface FileJob {
  index: number;
  path: string;
  size: number;
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
function batchesOf(jobs: FileJob[], chunkSize: number): Piece[][] {
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
 * Builds the EROFS image of the layer unpacked at `root`, storing its file data in chunks of
 * `chunkSize` (a power of two, at least 4 KiB). Owners, modes, times to the nanosecond, xattrs,
 * hard links, devices and overlay whiteouts carry over as they are; sockets are left out (EROFS
 * images of layers have none: tar cannot hold them).
 */
export async function buildDirectoryLayer(root: string, chunkSize: number, sink: ChunkSink, pool: CodecPool): Promise<DirectoryLayerImage> {
  const entries: ErofsEntry[] = [];
  const jobs: FileJob[] = [];
  const inodes = new Map<string, string>(); // "dev:ino" -> first path, for hard links
  const seen = new Set<string>();
  let files = 0;
  let bytes = 0;
  let allocated = 0;
  /** A path's lstat, and its target when it is a symlink. */
  const inspect = async (path: string): Promise<{ st: BigIntStats; target?: string }> => {
    const st = await lstat(path, { bigint: true });
    return st.isSymbolicLink() ? { st, target: await readlink(path) } : { st };
  };
  const visit = async (rel: string, { st, target }: { st: BigIntStats; target?: string }): Promise<void> => {
    const path = rel ? join(root, rel) : root;
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      allocated += Number(st.blocks) * 512;
    }
    const type = TYPES[Number(st.mode) & S_IFMT];
    if (!type) return; // a socket
    const base: ErofsEntry = {
      path: rel, type, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid),
      mtime: Number(st.mtimeNs / 1_000_000_000n), mtimeNsec: Number(st.mtimeNs % 1_000_000_000n), xattrs: xattrsOf(path),
    };
    if (type === 'dir') {
      entries.push(base);
      // A directory's children are looked at all at once (one after another, each waited on the thread pool), then visited in order.
      const names = (await readdir(path)).sort();
      const found = await Promise.all(names.map((name) => inspect(join(path, name))));
      for (const [i, name] of names.entries()) await visit(rel ? `${rel}/${name}` : name, found[i]!);
      return;
    }
    if (type === 'reg' && st.nlink > 1n) {
      const first = inodes.get(id);
      if (first !== undefined) return void entries.push({ path: rel, type: 'hardlink', linkTarget: first });
      inodes.set(id, rel);
    }
    if (type === 'symlink') return void entries.push({ ...base, linkTarget: target! });
    if (type === 'char' || type === 'block') return void entries.push({ ...base, ...devParts(st.rdev) });
    if (type !== 'reg') return void entries.push(base);
    const size = Number(st.size);
    files++;
    bytes += size;
    jobs.push({ index: entries.length, path, size });
    entries.push(base);
  };
  await visit('', await inspect(root));
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
  return { ...await chunks.build(entries, chunkSize, (p) => sink.packSize(p)), files, bytes, usage: { size: allocated, inodes: seen.size } };
}
