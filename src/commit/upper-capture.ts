// A point-in-time copy of a container's writable layer (the overlayfs upperdir) that keeps the
// container's pause short: pre-copy passes while it runs copy every regular file's data into a
// staging directory, and the final pass, while it is frozen, walks the tree once more and copies
// only what changed since. A file counts as unchanged when its inode, size, mtime and ctime are
// those seen before its copy was taken; ctime cannot be set from user space and moves on every
// write, chmod, chown, xattr change or rename. Timestamps are coarse (a clock tick) on some
// filesystems, so a copy taken within RACY_NS of the file's ctime is not trusted and taken again
// (git's "racily clean" rule). Metadata (mode, owners, times, link targets, xattrs) is the final
// pass's own, so the result is exactly the layer as it was at the freeze.

import { closeSync, constants, copyFileSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, type BigIntStats } from 'node:fs';
import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UnsupportedError } from '../errors.js';
import { isSysError, native } from '../native.js';

export type CapturedType = 'file' | 'directory' | 'symlink' | 'character-device' | 'block-device' | 'fifo' | 'whiteout';

export interface CapturedNode {
  /** Relative to the layer's root, no leading or trailing slash. */
  path: string;
  type: CapturedType;
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch. */
  mtime: number;
  size: number;
  ino: bigint;
  nlink: number;
  rdev: bigint;
  target?: string;
  /** The file's xattrs without overlayfs's own (trusted.overlay.*). */
  xattrs: Record<string, Buffer>;
  /** overlayfs hides what lower layers have in this directory. */
  opaque: boolean;
  /** The staged copy of a regular file's data (hard links share one). */
  data?: string;
}

/** A copy taken this close to the file's ctime may miss a write in the same clock tick. */
export const RACY_NS = 500_000_000n;
const OVERLAY_XATTR = 'trusted.overlay.';
/** What the final pass may hold in memory instead of copying inside the freeze. */
const FREEZE_READ_BYTES = 256 * 1024 * 1024;
const ENOENT = 2;
const EOPNOTSUPP = 95;

interface Meta {
  ino: bigint;
  ctimeNs: bigint;
  racy: boolean;
  xattrs: Record<string, Buffer>;
  target?: string;
}

interface Staged {
  file: string;
  sig: string;
  racy: boolean;
}

interface Copy {
  src: string;
  ino: bigint;
  staged: Staged;
  size: number;
}

function typeOf(st: BigIntStats): CapturedType | undefined {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  // overlayfs's whiteout: a character device 0/0.
  if (st.isCharacterDevice()) return st.rdev === 0n ? 'whiteout' : 'character-device';
  if (st.isBlockDevice()) return 'block-device';
  if (st.isFIFO()) return 'fifo';
  return undefined; // a socket: a layer cannot hold one (containerd's differ skips them too)
}

/**
 * A file's bytes, read without updating its access time: an atime update dirties the inode, and
 * a journaling filesystem can make that wait for a journal commit, inside the freeze.
 */
function readNoAtime(path: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOATIME);
  } catch (err) {
    // O_NOATIME needs the file's owner or CAP_FOWNER.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
    fd = openSync(path, constants.O_RDONLY);
  }
  try {
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}

const gone = (err: unknown): boolean => (err as NodeJS.ErrnoException).code === 'ENOENT';

export interface PassResult {
  nodes: CapturedNode[];
  /** Bytes of file data this pass copied. */
  copiedBytes: number;
  copiedFiles: number;
}

export class UpperCapture {
  private readonly meta = new Map<string, Meta>();
  private readonly staged = new Map<bigint, Staged>();
  private files = 0;
  private readonly held: { file: string; data: Buffer }[] = [];
  private heldBytes = 0;

  constructor(readonly upper: string, readonly stageDir: string) {}

  /** One pass while the container runs: copies what changed since the last pass. */
  async precopy(): Promise<PassResult> {
    const { nodes, copies } = this.scan();
    let copiedBytes = 0;
    let copiedFiles = 0;
    for (const c of copies) {
      try {
        await copyFile(c.src, c.staged.file, constants.COPYFILE_FICLONE);
      } catch (err) {
        if (!gone(err)) throw err;
        this.staged.delete(c.ino); // deleted meanwhile: the next pass decides again
        continue;
      }
      this.staged.set(c.ino, c.staged);
      copiedBytes += c.size;
      copiedFiles++;
    }
    return { nodes, copiedBytes, copiedFiles };
  }

  /**
   * The pass inside the freeze: synchronous. Changed files are read into memory (up to
   * FREEZE_READ_BYTES in all; beyond that copied file to file) and written to the staging
   * directory by writeHeld(), after the thaw: a read from the page cache is a fraction of a
   * copy's system calls.
   */
  final(): PassResult {
    const { nodes, copies } = this.scan();
    let copiedBytes = 0;
    for (const c of copies) {
      if (this.heldBytes + c.size <= FREEZE_READ_BYTES) {
        const data = readNoAtime(c.src);
        this.held.push({ file: c.staged.file, data });
        this.heldBytes += data.length;
      } else {
        copyFileSync(c.src, c.staged.file, constants.COPYFILE_FICLONE);
      }
      this.staged.set(c.ino, c.staged);
      copiedBytes += c.size;
    }
    for (const n of nodes) if (n.type === 'file') n.data = this.staged.get(n.ino)!.file;
    return { nodes, copiedBytes, copiedFiles: copies.length };
  }

  /** Writes what the final pass read into memory to its staged files. */
  async writeHeld(): Promise<void> {
    for (const h of this.held.splice(0)) await writeFile(h.file, h.data);
    this.heldBytes = 0;
  }

  /** Walks the upperdir (parents before children, names sorted) and lists the copies it needs. */
  private scan(): { nodes: CapturedNode[]; copies: Copy[] } {
    const started = BigInt(Date.now()) * 1_000_000n;
    const nodes: CapturedNode[] = [];
    const copies: Copy[] = [];
    const inodes = new Set<bigint>();
    const visit = (rel: string): void => {
      let names: string[];
      try {
        names = readdirSync(rel ? join(this.upper, rel) : this.upper).sort();
      } catch (err) {
        if (gone(err) && rel) return;
        throw err;
      }
      for (const name of names) {
        const path = rel ? `${rel}/${name}` : name;
        const abs = join(this.upper, path);
        let st: BigIntStats;
        let type: CapturedType | undefined;
        let m: Meta;
        try {
          st = lstatSync(abs, { bigint: true });
          type = typeOf(st);
          if (!type) continue;
          m = this.metaOf(path, abs, st, type, started);
        } catch (err) {
          if (gone(err)) continue; // removed since the listing (only while the container runs)
          throw err;
        }
        const x = m.xattrs;
        if (x['trusted.overlay.redirect'] || x['trusted.overlay.metacopy']) {
          throw new UnsupportedError(`${abs} is an overlayfs ${x['trusted.overlay.redirect'] ? 'redirect' : 'metacopy'} entry (redirect_dir/metacopy on): its data lives in a lower layer`);
        }
        if (type === 'file' && x['trusted.overlay.whiteout']) type = 'whiteout'; // overlayfs's xattr whiteout
        const xattrs: Record<string, Buffer> = {};
        for (const [k, v] of Object.entries(x)) if (!k.startsWith(OVERLAY_XATTR)) xattrs[k] = v;
        nodes.push({
          path, type, mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), mtime: Number(st.mtimeNs / 1_000_000_000n),
          size: type === 'file' ? Number(st.size) : 0, ino: st.ino, nlink: Number(st.nlink), rdev: st.rdev, target: m.target, xattrs,
          opaque: type === 'directory' && x['trusted.overlay.opaque']?.toString() === 'y',
        });
        if (type === 'file' && !inodes.has(st.ino)) {
          inodes.add(st.ino);
          const sig = `${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
          const s = this.staged.get(st.ino);
          if (!s || s.sig !== sig || s.racy) {
            copies.push({ src: abs, ino: st.ino, size: Number(st.size),
              staged: { file: s?.file ?? join(this.stageDir, String(this.files++)), sig, racy: started - st.ctimeNs < RACY_NS } });
          }
        }
        if (type === 'directory') visit(path);
      }
    };
    visit('');
    return { nodes, copies };
  }

  /** xattrs and link target, read again only when the entry changed since they were read. */
  private metaOf(path: string, abs: string, st: BigIntStats, type: CapturedType, started: bigint): Meta {
    const known = this.meta.get(path);
    if (known && known.ino === st.ino && known.ctimeNs === st.ctimeNs && !known.racy) return known;
    let xattrs: Record<string, Buffer> = {};
    if (type !== 'whiteout') {
      const r = native().readXattrs(abs);
      // ENOENT: removed since the lstat; EOPNOTSUPP: a filesystem without xattrs.
      if (isSysError(r) && r.errno !== EOPNOTSUPP) throw Object.assign(new Error(`${r.call} ${abs}: ${r.message}`), { code: r.errno === ENOENT ? 'ENOENT' : 'EIO' });
      if (!isSysError(r)) xattrs = r;
    }
    const m: Meta = { ino: st.ino, ctimeNs: st.ctimeNs, racy: started - st.ctimeNs < RACY_NS, xattrs, target: type === 'symlink' ? readlinkSync(abs) : undefined };
    this.meta.set(path, m);
    return m;
  }
}
