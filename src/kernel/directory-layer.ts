// An unpacked layer directory (what containerd's overlay applier wrote into an Active snapshot:
// whiteouts as 0/0 character devices, opaque directories with trusted.overlay.opaque) turned into
// an EROFS image over the chunk store: each regular file is cut into chunks, each distinct chunk
// stored once in the store's packs, and the image's chunk indexes point at them. Small files are
// kept in the image itself (a 4 KiB block in a pack per tiny file would cost more than dedup saves).

import { createHash } from 'node:crypto';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { ErofsEntry, ErofsExtent } from '../erofs/tree.js';
import { MalformedLayerError } from '../errors.js';
import { OPAQUE_XATTR } from '../estargz/whiteouts.js';
import { isSysError, native } from '../native.js';
import type { PackLocation } from '../store/pack-files.js';
import { ImageChunks, type LayerImage } from './layer-image.js';


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

/** Cuts `path` into `chunkSize` chunks, storing each; the extents that point at them. */
async function storeFile(path: string, size: number, chunkSize: number, sink: ChunkSink, chunks: ImageChunks): Promise<ErofsExtent[]> {
  const fh = await open(path, 'r');
  try {
    const extents: ErofsExtent[] = [];
    for (let off = 0; off < size; off += chunkSize) {
      const want = Math.min(chunkSize, size - off);
      const buf = Buffer.allocUnsafeSlow(want);
      const { bytesRead } = await fh.read(buf, 0, want, off);
      if (bytesRead !== want) throw new MalformedLayerError(path, `it changed while it was read (${bytesRead} of ${want} bytes at ${off})`);
      const digest = 'sha256:' + createHash('sha256').update(buf).digest('hex');
      extents.push(chunks.extent(digest, want, await sink.storeChunk(digest, buf)));
    }
    return extents;
  } finally {
    await fh.close();
  }
}

/**
 * Builds the EROFS image of the layer unpacked at `root`, storing its file data in chunks of
 * `chunkSize` (a power of two, at least 4 KiB). Owners, modes, times to the nanosecond, xattrs,
 * hard links, devices and overlay whiteouts carry over as they are; sockets are left out (EROFS
 * images of layers have none: tar cannot hold them).
 */
export async function buildDirectoryLayer(root: string, chunkSize: number, sink: ChunkSink): Promise<DirectoryLayerImage> {
  const entries: ErofsEntry[] = [];
  const chunks = new ImageChunks();
  const inodes = new Map<string, string>(); // "dev:ino" -> first path, for hard links
  const seen = new Set<string>();
  let files = 0;
  let bytes = 0;
  let allocated = 0;
  const visit = async (rel: string): Promise<void> => {
    const path = rel ? join(root, rel) : root;
    const st = await lstat(path, { bigint: true });
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
      for (const name of (await readdir(path)).sort()) await visit(rel ? `${rel}/${name}` : name);
      return;
    }
    if (type === 'reg' && st.nlink > 1n) {
      const first = inodes.get(id);
      if (first !== undefined) return void entries.push({ path: rel, type: 'hardlink', linkTarget: first });
      inodes.set(id, rel);
    }
    if (type === 'symlink') return void entries.push({ ...base, linkTarget: await readlink(path) });
    if (type === 'char' || type === 'block') return void entries.push({ ...base, ...devParts(st.rdev) });
    if (type !== 'reg') return void entries.push(base);
    const size = Number(st.size);
    files++;
    bytes += size;
    if (size < INLINE_MAX) {
      const fh = await open(path, 'r');
      try {
        const data = Buffer.alloc(size);
        const { bytesRead } = await fh.read(data, 0, size, 0);
        if (bytesRead !== size) throw new MalformedLayerError(path, 'it changed while it was read');
        entries.push({ ...base, data });
      } finally {
        await fh.close();
      }
      return;
    }
    entries.push({ ...base, size, extents: await storeFile(path, size, chunkSize, sink, chunks) });
  };
  await visit('');
  return { ...await chunks.build(entries, chunkSize, (p) => sink.packSize(p)), files, bytes, usage: { size: allocated, inodes: seen.size } };
}
