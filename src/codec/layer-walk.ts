// The walk of an unpacked layer directory (what containerd's overlay applier wrote into an Active
// snapshot), with blocking calls: it runs on a codec worker (codec-worker.ts, walkLayer).
// On the main thread, a Debian base layer's 6,000 entries cost some 450 ms of CPU in promise
// round trips for their lstat, readdir and readlink calls; here the same calls take a fraction of it.

import { lstatSync, readdirSync, readlinkSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import type { ErofsEntry } from '../erofs/tree.js';
import { OPAQUE_XATTR } from '../estargz/whiteouts.js';
import { isSysError, native } from '../native.js';
import { devParts } from '../system-mounts.js';

/** A regular file found by the walk: entry `index` gets its extents or inline bytes once it is read. */
export interface WalkedFile {
  index: number;
  path: string;
  size: number;
}

export interface LayerWalk {
  /** Every entry in tree order (parents first, names sorted); regular files without content yet. */
  entries: ErofsEntry[];
  /** The regular files to read, one per inode (hard links are entries of type `hardlink`). */
  files: WalkedFile[];
  /** The directory's disk usage as containerd counts it (snapshot/disk-usage.ts). */
  usage: { size: number; inodes: number };
}

/** A walk that stopped: the path it could not look at, and why. */
export class LayerWalkFailure {
  constructor(readonly path: string, readonly reason: string) {}
}

const S_IFMT = 0o170000;
const TYPES: Record<number, ErofsEntry['type'] | undefined> = {
  0o040000: 'dir', 0o100000: 'reg', 0o120000: 'symlink', 0o020000: 'char', 0o060000: 'block', 0o010000: 'fifo',
};

/**
 * A file's xattrs as the layer has them. Of overlayfs's own, only the opaque marker is the
 * layer's: the others (origin, impure, redirect) describe the upper directory it was unpacked in.
 */
function xattrsOf(path: string): Record<string, Buffer> {
  const r = native().readXattrs(path);
  if (isSysError(r)) throw new LayerWalkFailure(path, `cannot read its extended attributes: ${r.call}: ${r.message}`);
  for (const name of Object.keys(r)) if (name.startsWith('trusted.overlay.') && name !== OPAQUE_XATTR) delete r[name];
  return r;
}

/**
 * Walks the layer unpacked at `root`: owners, modes, times to the nanosecond, xattrs, hard links,
 * devices and overlay whiteouts as they are; sockets are left out (tar cannot hold them). Throws
 * LayerWalkFailure.
 */
export function walkLayer(root: string): LayerWalk {
  const entries: ErofsEntry[] = [];
  const files: WalkedFile[] = [];
  const inodes = new Map<string, string>(); // "dev:ino" -> first path, for hard links
  const seen = new Set<string>();
  let allocated = 0;
  const visit = (rel: string): void => {
    const path = rel ? join(root, rel) : root;
    let st: BigIntStats;
    try {
      st = lstatSync(path, { bigint: true });
    } catch (err) {
      throw new LayerWalkFailure(path, (err as Error).message);
    }
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
      let names: string[];
      try {
        names = readdirSync(path).sort();
      } catch (err) {
        throw new LayerWalkFailure(path, (err as Error).message);
      }
      for (const name of names) visit(rel ? `${rel}/${name}` : name);
      return;
    }
    if (type === 'reg' && st.nlink > 1n) {
      const first = inodes.get(id);
      if (first !== undefined) return void entries.push({ path: rel, type: 'hardlink', linkTarget: first });
      inodes.set(id, rel);
    }
    if (type === 'symlink') {
      try {
        return void entries.push({ ...base, linkTarget: readlinkSync(path) });
      } catch (err) {
        throw new LayerWalkFailure(path, (err as Error).message);
      }
    }
    if (type === 'char' || type === 'block') return void entries.push({ ...base, ...devParts(st.rdev) });
    if (type === 'reg') files.push({ index: entries.length, path, size: Number(st.size) });
    entries.push(base);
  };
  visit('');
  return { entries, files, usage: { size: allocated, inodes: seen.size } };
}
