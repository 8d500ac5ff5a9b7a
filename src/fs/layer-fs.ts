// The FUSE layer filesystem: one read-only mount per lazily pulled layer, serving the layer's TOC
// tree. Whiteouts (.wh.NAME) appear as overlayfs whiteouts (character device 0/0) and opaque
// directories (.wh..wh..opq) carry trusted.overlay.opaque, so an overlayfs stack of these mounts
// shows what a full pull shows. Content never changes: long kernel cache timeouts.
// All ops run on the main thread; none of them blocks (reads wait on promises).

import Fuse, { type Ops, type Stat } from 'fuse-native';
import type { Toc, TocNode } from '../estargz/toc.js';
import type { LazyLayer } from '../fetch/lazy-layer.js';

const S_IFMT = { dir: 0o040000, reg: 0o100000, symlink: 0o120000, char: 0o020000, block: 0o060000, fifo: 0o010000 } as const;
const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';
export const OPAQUE_XATTR = 'trusted.overlay.opaque';
/** Seconds the kernel may cache entries and attributes: the content is immutable. */
const CACHE_TIMEOUT = 86_400;
const O_ACCMODE = 3;
const DIR_SIZE = 4096;

interface FsEntry {
  ino: number;
  /** undefined for a whiteout. */
  node: TocNode | undefined;
  children: Map<string, FsEntry> | undefined;
  opaque: boolean;
  subdirs: number;
}

/** glibc's makedev for the dev_t the kernel gets. */
function makedev(major: number, minor: number): number {
  return ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & ~0xff) << 12);
}

export interface LayerFsStats {
  reads: number;
  bytesRead: number;
  readErrors: number;
}

/** libfuse's high-level API makes up inode numbers unless told to use ours (hard links share one); and the mount is read-only. */
class InodeFuse extends Fuse {
  protected override _fuseOptions(): string {
    const base = super._fuseOptions();
    return base ? `${base},use_ino,ro` : '-ouse_ino,ro';
  }
}

export class LayerFs {
  private readonly entries = new Map<string, FsEntry>();
  private fuse: InodeFuse | undefined;
  readonly stats: LayerFsStats = { reads: 0, bytesRead: 0, readErrors: 0 };
  private nextFd = 1;

  constructor(private readonly toc: Toc, private readonly lazy: LazyLayer, private readonly onReadError?: (path: string, err: unknown) => void) {
    const inodes = new Map<TocNode, number>();
    const inoOf = (n: TocNode): number => {
      let ino = inodes.get(n);
      if (!ino) inodes.set(n, (ino = inodes.size + 1));
      return ino;
    };
    let whiteouts = 1 << 30;
    const build = (path: string, node: TocNode): FsEntry => {
      const e: FsEntry = { ino: inoOf(node), node, children: undefined, opaque: false, subdirs: 0 };
      this.entries.set(path, e);
      if (node.children) {
        e.children = new Map();
        for (const [name, child] of node.children) {
          if (name === OPAQUE_MARKER) {
            e.opaque = true;
            continue;
          }
          const childPath = path === '/' ? `/${name}` : `${path}/${name}`;
          if (name.startsWith(WHITEOUT_PREFIX) && name.length > WHITEOUT_PREFIX.length) {
            const hidden = name.slice(WHITEOUT_PREFIX.length);
            if (node.children.has(hidden)) continue; // the entry itself wins over its whiteout
            const w: FsEntry = { ino: whiteouts++, node: undefined, children: undefined, opaque: false, subdirs: 0 };
            e.children.set(hidden, w);
            this.entries.set(path === '/' ? `/${hidden}` : `${path}/${hidden}`, w);
            continue;
          }
          const ce = build(childPath, child);
          e.children.set(name, ce);
          if (child.type === 'dir') e.subdirs++;
        }
      }
      return e;
    };
    build('/', toc.root);
  }

  get mountpoint(): string | undefined {
    return this.fuse?.mnt;
  }

  private stat(e: FsEntry): Stat {
    const n = e.node;
    if (!n) {
      return { mode: S_IFMT.char, uid: 0, gid: 0, size: 0, nlink: 1, ino: e.ino, rdev: 0, blksize: 4096, blocks: 0, mtime: 0, atime: 0, ctime: 0 };
    }
    const t = n.mtime * 1000;
    return {
      // Directories report one 4 KiB block, as ext4 and a full pull show them.
      mode: S_IFMT[n.type === 'hardlink' ? 'reg' : n.type] | n.mode, uid: n.uid, gid: n.gid,
      size: n.type === 'symlink' ? Buffer.byteLength(n.linkName) : n.type === 'dir' ? DIR_SIZE : n.size,
      nlink: n.type === 'dir' ? 2 + e.subdirs : n.numLink, ino: e.ino,
      rdev: n.type === 'char' || n.type === 'block' ? makedev(n.devMajor, n.devMinor) : 0,
      blksize: 4096, blocks: Math.ceil((n.type === 'dir' ? DIR_SIZE : n.size) / 512), mtime: t, atime: t, ctime: t,
    };
  }

  private ops(): Ops {
    return {
      getattr: (path, cb) => {
        const e = this.entries.get(path);
        if (!e) return cb(Fuse.ENOENT);
        cb(0, this.stat(e));
      },
      readdir: (path, cb) => {
        const e = this.entries.get(path);
        if (!e) return cb(Fuse.ENOENT);
        if (!e.children) return cb(Fuse.ENOTDIR);
        // Stats give the kernel each entry's type: overlayfs only looks for whiteouts among DT_CHR.
        cb(0, [...e.children.keys()], [...e.children.values()].map((c) => this.stat(c)));
      },
      open: (path, flags, cb) => {
        const e = this.entries.get(path);
        if (!e) return cb(Fuse.ENOENT);
        if ((flags & O_ACCMODE) !== 0) return cb(Fuse.EROFS);
        cb(0, this.nextFd++);
      },
      release: (_path, _fd, cb) => cb(0),
      read: (path, _fd, buf, len, pos, cb) => {
        const n = this.entries.get(path)?.node;
        if (!n || n.type !== 'reg') return cb(Fuse.EIO);
        this.stats.reads++;
        this.lazy.read(n, pos, len).then((data) => {
          data.copy(buf, 0, 0, Math.min(len, data.length));
          this.stats.bytesRead += data.length;
          cb(data.length);
        }, (err: unknown) => {
          this.stats.readErrors++;
          this.onReadError?.(path, err);
          cb(Fuse.EIO);
        });
      },
      readlink: (path, cb) => {
        const n = this.entries.get(path)?.node;
        if (!n || n.type !== 'symlink') return cb(Fuse.EINVAL);
        cb(0, n.linkName);
      },
      getxattr: (path, name, _position, cb) => {
        const e = this.entries.get(path);
        if (!e) return cb(Fuse.ENOENT);
        if (e.opaque && name === OPAQUE_XATTR) return cb(0, Buffer.from('y'));
        const v = e.node?.xattrs.get(name);
        if (!v) return cb(Fuse.ENODATA);
        cb(0, v);
      },
      listxattr: (path, cb) => {
        const e = this.entries.get(path);
        if (!e) return cb(Fuse.ENOENT);
        cb(0, [...(e.node?.xattrs.keys() ?? []), ...(e.opaque ? [OPAQUE_XATTR] : [])]);
      },
      statfs: (_path, cb) => cb(0, {
        bsize: 4096, frsize: 4096, blocks: Math.ceil(this.toc.contentBytes / 4096), bfree: 0, bavail: 0,
        files: this.entries.size, ffree: 0, favail: 0, fsid: 0, flag: 1, namemax: 255,
      }),
    };
  }

  mount(mountpoint: string, name: string): Promise<void> {
    const fuse = new InodeFuse(mountpoint, this.ops(), {
      allowOther: true, defaultPermissions: true, kernelCache: true, maxRead: 128 * 1024, fsname: `dedup:${name}`, subtype: 'dedup',
      entryTimeout: CACHE_TIMEOUT, attrTimeout: CACHE_TIMEOUT,
      // A read may wait on the registry through its retries; the fetcher bounds that, not FUSE.
      timeout: { default: 15_000, read: 600_000 },
    });
    return new Promise((resolve, reject) => fuse.mount((err) => {
      if (err) return reject(err);
      this.fuse = fuse;
      resolve();
    }));
  }

  unmount(): Promise<void> {
    const fuse = this.fuse;
    if (!fuse) return Promise.resolve();
    return new Promise((resolve, reject) => fuse.unmount((err) => {
      if (err) return reject(err);
      this.fuse = undefined;
      resolve();
    }));
  }
}

