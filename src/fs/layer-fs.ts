// The FUSE layer filesystem: one read-only mount per lazily pulled layer, serving the layer's TOC
// tree through our own FUSE session (fuse-session.ts). Whiteouts (.wh.NAME) appear as overlayfs
// whiteouts (character device 0/0) and opaque directories (.wh..wh..opq) carry
// trusted.overlay.opaque, so an overlayfs stack of these mounts shows what a full pull shows.
// Inode numbers follow the TOC's order, so another process building the same layer's tree gives
// every node the id the kernel already knows (a hand-over). Nothing here blocks: reads wait on
// promises.

import type { Toc, TocNode } from '../estargz/toc.js';
import { OPAQUE_XATTR, overlayChildren } from '../estargz/whiteouts.js';
import type { LazyLayer } from '../fetch/lazy-layer.js';
import { unmount } from '../system-mounts.js';
import { ERRNO, FuseErrno, FuseSession, type FuseAttr, type FuseConnection, type FuseDirEntry, type FuseFilesystem, type StatFs } from './fuse-session.js';

const S_IFMT = { dir: 0o040000, reg: 0o100000, symlink: 0o120000, char: 0o020000, block: 0o060000, fifo: 0o010000 } as const;
const DIR_SIZE = 4096;
/** How long an unmount waits for the kernel to end the connection before closing it anyway. */
const UNMOUNT_WAIT_MS = 2000;

interface FsEntry {
  /** undefined for a whiteout. */
  node: TocNode | undefined;
  attr: FuseAttr;
  children: Map<string, FsEntry> | undefined;
  /** ".", ".." and the children, built on the first readdir. */
  listing: FuseDirEntry[] | undefined;
  parent: FsEntry | undefined;
  opaque: boolean;
  path: string;
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

export class LayerFs implements FuseFilesystem {
  /** By inode number; hard links share their target's entry. */
  private readonly byIno = new Map<number, FsEntry>();
  private session: FuseSession | undefined;
  private dir: string | undefined;
  readonly stats: LayerFsStats = { reads: 0, bytesRead: 0, readErrors: 0 };
  private hasXattrs = false;

  constructor(private readonly toc: Toc, private readonly lazy: LazyLayer, private readonly onReadError?: (path: string, err: unknown) => void) {
    const inodes = new Map<TocNode, number>();
    const inoOf = (n: TocNode): number => {
      let ino = inodes.get(n);
      if (!ino) inodes.set(n, (ino = inodes.size + 1));
      return ino;
    };
    let whiteouts = 1 << 30;
    const add = (e: FsEntry): FsEntry => {
      if (!this.byIno.has(e.attr.ino)) this.byIno.set(e.attr.ino, e);
      return e;
    };
    const build = (path: string, node: TocNode, parent: FsEntry | undefined): FsEntry => {
      const e = add({ node, attr: attrOf(node, inoOf(node)), children: undefined, listing: undefined, parent, opaque: false, path });
      if (node.xattrs.size) this.hasXattrs = true;
      if (!node.children) return e;
      e.children = new Map();
      let subdirs = 0;
      const { opaque, children } = overlayChildren(node);
      if (opaque) e.opaque = this.hasXattrs = true;
      for (const { name, node: child } of children) {
        const childPath = path === '/' ? `/${name}` : `${path}/${name}`;
        if (!child) {
          const attr: FuseAttr = { ino: whiteouts++, mode: S_IFMT.char, nlink: 1, uid: 0, gid: 0, rdev: 0, size: 0, blocks: 0, mtime: 0 };
          e.children.set(name, add({ node: undefined, attr, children: undefined, listing: undefined, parent: e, opaque: false, path: childPath }));
          continue;
        }
        e.children.set(name, build(childPath, child, e));
        if (child.type === 'dir') subdirs++;
      }
      e.attr.nlink = 2 + subdirs;
      return e;
    };
    build('/', toc.root, undefined);
  }

  get mountpoint(): string | undefined {
    return this.dir;
  }

  /** The FUSE connection this mount is served on (to hand over to another process). */
  get connection(): FuseConnection | undefined {
    return this.session?.connection;
  }

  private entry(ino: number): FsEntry {
    const e = this.byIno.get(ino);
    if (!e) throw new FuseErrno(ERRNO.ENOENT);
    return e;
  }

  lookup(parent: number, name: string): FuseAttr | undefined {
    const dir = this.entry(parent);
    if (!dir.children) throw new FuseErrno(ERRNO.ENOTDIR);
    return dir.children.get(name)?.attr;
  }

  getattr(ino: number): FuseAttr {
    return this.entry(ino).attr;
  }

  readlink(ino: number): Buffer {
    const n = this.entry(ino).node;
    if (n?.type !== 'symlink') throw new FuseErrno(ERRNO.EINVAL);
    return Buffer.from(n.linkName);
  }

  open(ino: number): void {
    this.entry(ino);
  }

  async read(ino: number, offset: number, size: number): Promise<Buffer> {
    const e = this.entry(ino);
    const n = e.node;
    if (n?.type !== 'reg') throw new FuseErrno(ERRNO.EIO);
    this.stats.reads++;
    try {
      const data = await this.lazy.read(n, offset, size);
      this.stats.bytesRead += data.length;
      return data.length > size ? data.subarray(0, size) : data;
    } catch (err) {
      this.stats.readErrors++;
      this.onReadError?.(e.path, err);
      throw new FuseErrno(ERRNO.EIO);
    }
  }

  /**
   * A layer with no extended attribute anywhere (no xattrs in its TOC, no opaque directory)
   * answers ENOSYS, upon which the kernel asks this mount no more: overlayfs looks up
   * trusted.overlay.* on nearly every file it meets, a round trip each, and takes "not supported"
   * as "not set".
   */
  private xattrsOrNone(): void {
    if (!this.hasXattrs) throw new FuseErrno(ERRNO.ENOSYS);
  }

  readdir(ino: number): FuseDirEntry[] {
    const e = this.entry(ino);
    if (!e.children) throw new FuseErrno(ERRNO.ENOTDIR);
    // Entry types let overlayfs find whiteouts (it only looks among DT_CHR).
    e.listing ??= [
      { name: '.', ino: e.attr.ino, mode: e.attr.mode },
      { name: '..', ino: (e.parent ?? e).attr.ino, mode: S_IFMT.dir },
      ...[...e.children].map(([name, c]) => ({ name, ino: c.attr.ino, mode: c.attr.mode })),
    ];
    return e.listing;
  }

  getxattr(ino: number, name: string): Buffer {
    this.xattrsOrNone();
    const e = this.entry(ino);
    if (e.opaque && name === OPAQUE_XATTR) return Buffer.from('y');
    const v = e.node?.xattrs.get(name);
    if (!v) throw new FuseErrno(ERRNO.ENODATA);
    return v;
  }

  listxattr(ino: number): string[] {
    this.xattrsOrNone();
    const e = this.entry(ino);
    return [...(e.node?.xattrs.keys() ?? []), ...(e.opaque ? [OPAQUE_XATTR] : [])];
  }

  statfs(): StatFs {
    return { blocks: Math.ceil(this.toc.contentBytes / 4096), files: this.byIno.size };
  }

  private serve(session: FuseSession, mountpoint: string): void {
    this.session = session;
    this.dir = mountpoint;
  }

  /** Failures other than the expected errnos (a read's are reported in read()). */
  private readonly sessionOptions = {
    onError: (op: string, ino: number, err: unknown) => this.onReadError?.(`${this.byIno.get(ino)?.path ?? `inode ${ino}`} (${op})`, err),
  };

  mount(mountpoint: string, name: string): void {
    this.serve(FuseSession.mount(mountpoint, this, name, this.sessionOptions), mountpoint);
  }

  /** Serves a mount another process made, over its FUSE connection (a hand-over). */
  adopt(mountpoint: string, conn: FuseConnection): void {
    this.serve(FuseSession.adopt(conn, this, this.sessionOptions), mountpoint);
  }

  /**
   * Settles when the kernel ends the connection (ENODEV: the mount is gone, even one detached
   * behind our back); never after release(), whose successor serves on.
   */
  get ended(): Promise<number> {
    return this.session?.ended ?? new Promise(() => undefined);
  }

  /** Stops serving without unmounting: another process has taken the mount over. */
  async release(): Promise<void> {
    await this.session?.close();
    this.session = undefined;
  }

  async unmount(): Promise<void> {
    const session = this.session;
    if (!session || !this.dir) return;
    await unmount(this.dir);
    await Promise.race([session.ended, new Promise((resolve) => setTimeout(resolve, UNMOUNT_WAIT_MS).unref())]);
    await session.close();
    this.session = undefined;
  }
}

/** Directories get their link count once their subdirectories are known. */
function attrOf(n: TocNode, ino: number): FuseAttr {
  const size = n.type === 'symlink' ? Buffer.byteLength(n.linkName) : n.type === 'dir' ? DIR_SIZE : n.size;
  return {
    // Directories report one 4 KiB block, as ext4 and a full pull show them.
    ino, mode: S_IFMT[n.type === 'hardlink' ? 'reg' : n.type] | n.mode, uid: n.uid, gid: n.gid,
    nlink: n.type === 'dir' ? 2 : n.numLink,
    rdev: n.type === 'char' || n.type === 'block' ? makedev(n.devMajor, n.devMinor) : 0,
    size, blocks: Math.ceil(size / 512), mtime: n.mtime,
  };
}
