// The kernel's FUSE protocol (linux/fuse.h, 7.38 structs), read-only subset, spoken over a
// /dev/fuse descriptor we own. Owning the descriptor is the point: it can be handed to a new
// process (an upgrade) which carries on serving the same mount without the kernel noticing, since
// the connection's state is the descriptor, node ids are the filesystem's own stable inode
// numbers, and nothing else is kept per connection. libfuse cannot adopt a descriptor whose INIT
// another process answered, hence this module.

import { closeSync, constants as fsConstants, openSync, writevSync } from 'node:fs';
import { constants } from 'node:os';
import { MountError } from '../errors.js';
import { isSysError, native, type DeviceReader } from '../native.js';

/** What the kernel needs to know of a node. Times are seconds. */
export interface FuseAttr {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  blocks: number;
  mtime: number;
}

export interface FuseDirEntry {
  name: string;
  ino: number;
  mode: number;
}

export interface StatFs {
  blocks: number;
  files: number;
}

/** A failure the kernel should see as this errno. */
export class FuseErrno extends Error {
  constructor(readonly errno: number) {
    super(`errno ${errno}`);
  }
}

/** A read-only filesystem by inode number (1 is the root). Methods throw FuseErrno to fail. */
export interface FuseFilesystem {
  /** undefined: no such entry (the kernel caches that answer too). */
  lookup(parent: number, name: string): FuseAttr | undefined;
  getattr(ino: number): FuseAttr;
  readlink(ino: number): Buffer;
  open(ino: number, flags: number): void;
  read(ino: number, offset: number, size: number): Promise<Buffer>;
  readdir(ino: number): FuseDirEntry[];
  getxattr(ino: number, name: string): Buffer;
  listxattr(ino: number): string[];
  statfs(): StatFs;
}

export const ERRNO = constants.errno;
/** The filesystem type our mounts have in the mount table. */
export const FUSE_FSTYPE = 'fuse.dedup';

const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, READLINK: 5, OPEN: 14, READ: 15, STATFS: 17, RELEASE: 18, GETXATTR: 22, LISTXATTR: 23,
  FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, ACCESS: 34, INTERRUPT: 36, DESTROY: 38, BATCH_FORGET: 42,
  READDIRPLUS: 44,
} as const;
/** Operations that would change the filesystem (the mount is read-only; the VFS should not send them). */
const WRITES = new Set([4, 6, 8, 9, 10, 11, 12, 13, 16, 20, 21, 24, 35, 43, 45]);
const NO_REPLY = new Set<number>([OP.FORGET, OP.BATCH_FORGET, OP.INTERRUPT]);

const INIT_FLAGS = {
  ASYNC_READ: 1 << 0, DO_READDIRPLUS: 1 << 13, NO_OPEN_SUPPORT: 1 << 17, PARALLEL_DIROPS: 1 << 18, MAX_PAGES: 1 << 22, CACHE_SYMLINKS: 1 << 23, NO_OPENDIR_SUPPORT: 1 << 24,
} as const;
const FOPEN_KEEP_CACHE = 1 << 1;
const FOPEN_CACHE_DIR = 1 << 3;
const O_ACCMODE = 3;
const IN_HEADER = 40;
const OUT_HEADER = 16;
const ATTR_SIZE = 88;
const ENTRY_SIZE = 40 + ATTR_SIZE;
/** 1 MiB reads (libfuse 2 stops at 128 KiB): fewer round trips through this process. */
const MAX_PAGES = 256;
/** Big enough for any request of a read-only filesystem with max_write at its minimum. */
const READ_BUFFER = 128 * 1024;
/** Seconds the kernel may cache entries, negative ones included, and attributes: content never changes. */
const CACHE_TIMEOUT = 86_400;
const MS_RDONLY = 1;
const MS_NOSUID = 2;
const MS_NODEV = 4;

export interface FuseSessionOptions {
  /** An operation threw something other than FuseErrno: EIO went back. */
  onError?: (op: string, ino: number, err: unknown) => void;
}

/** What a process needs to serve a connection another process set up: its descriptor and INIT's kernel flags. */
export interface FuseConnection {
  fd: number;
  kernelFlags: number;
}

/**
 * The session's side of /dev/fuse: requests in, replies out. The real one is a descriptor
 * (deviceOf); a test passes its own to feed the session request frames without a kernel.
 */
export interface FuseDevice {
  readonly fd: number;
  /** Hands over each request read, then (null, errno) once: after stop(), or when the connection ends (errno not 0). */
  read(onMessage: (request: Buffer | null, errno: number) => void): DeviceReader;
  /** One reply, its parts in order; throws when the kernel refuses it. */
  write(parts: Buffer[]): void;
  close(): void;
}

/** A /dev/fuse descriptor, read on the event loop. */
export function deviceOf(fd: number): FuseDevice {
  return {
    fd,
    read: (onMessage) => new (native().DeviceReader)(fd, READ_BUFFER, onMessage),
    write: (parts) => writevSync(fd, parts),
    close: () => closeSync(fd),
  };
}

/** One FUSE connection: the device, its reader (on the event loop) and the requests in flight. */
export class FuseSession {
  private reader: DeviceReader | undefined;
  private inFlight = 0;
  private drained: (() => void) | undefined;
  private readerEnded!: Promise<number>;
  private endReader!: (errno: number) => void;
  /** Settles when the kernel ends the connection (unmounted, aborted); value: the errno. */
  readonly ended: Promise<number>;
  private endConnection!: (errno: number) => void;

  private constructor(private readonly device: FuseDevice, private kernelFlags: number, private readonly fs: FuseFilesystem, private readonly opts: FuseSessionOptions) {
    this.ended = new Promise((resolve) => (this.endConnection = resolve));
  }

  /**
   * Opens /dev/fuse, mounts it read-only at `mountpoint` (the kernel then sends INIT, which this
   * session answers) and starts serving.
   */
  static mount(mountpoint: string, fs: FuseFilesystem, name: string, opts: FuseSessionOptions = {}): FuseSession {
    const fd = openSync('/dev/fuse', fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
    const data = `fd=${fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions`;
    const r = native().mount(`dedup:${name}`, mountpoint, FUSE_FSTYPE, MS_RDONLY | MS_NOSUID | MS_NODEV, data);
    if (isSysError(r)) {
      closeSync(fd);
      throw new MountError(`cannot mount FUSE at ${mountpoint}: ${r.call}: ${r.message}`);
    }
    return FuseSession.serve(deviceOf(fd), fs, opts);
  }

  /** Serves a connection another process set up and answered INIT for (a hand-over). */
  static adopt(conn: FuseConnection, fs: FuseFilesystem, opts: FuseSessionOptions = {}): FuseSession {
    return FuseSession.serve(deviceOf(conn.fd), fs, opts, conn.kernelFlags);
  }

  /** Serves whatever `device` delivers; `kernelFlags`: INIT's, where another process answered it. */
  static serve(device: FuseDevice, fs: FuseFilesystem, opts: FuseSessionOptions = {}, kernelFlags = 0): FuseSession {
    const s = new FuseSession(device, kernelFlags, fs, opts);
    s.start();
    return s;
  }

  get fd(): number {
    return this.device.fd;
  }

  get connection(): FuseConnection {
    return { fd: this.fd, kernelFlags: this.kernelFlags };
  }

  private start(): void {
    this.readerEnded = new Promise((resolve) => (this.endReader = resolve));
    this.reader = this.device.read((req, errno) => {
      if (req) return this.handle(req);
      this.reader = undefined;
      this.endReader(errno);
      if (errno !== 0) this.endConnection(errno);
    });
  }

  /**
   * Stops taking requests and waits until every request already taken has been answered, so the
   * descriptor can be closed or left to another process without stranding a reader in the kernel.
   */
  async stop(): Promise<void> {
    this.reader?.stop();
    await this.readerEnded;
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.drained = resolve));
  }

  /** Stops and closes the descriptor: the kernel ends the connection if no other process holds it. */
  async close(): Promise<void> {
    await this.stop();
    this.device.close();
  }

  private handle(req: Buffer): void {
    const opcode = req.readUInt32LE(4);
    if (NO_REPLY.has(opcode)) return; // node ids are inode numbers: nothing to forget
    const unique = req.readBigUInt64LE(8);
    const ino = Number(req.readBigUInt64LE(16));
    const body = req.subarray(IN_HEADER);
    this.inFlight++;
    let pending: Promise<Buffer> | undefined;
    try {
      const out = this.dispatch(opcode, ino, body);
      if (out instanceof Promise) pending = out;
      else this.reply(unique, 0, out);
    } catch (err) {
      this.fail(unique, opcode, ino, err);
    }
    pending?.then((out) => this.reply(unique, 0, out), (err: unknown) => this.fail(unique, opcode, ino, err));
  }

  private fail(unique: bigint, opcode: number, ino: number, err: unknown): void {
    if (!(err instanceof FuseErrno)) this.opts.onError?.(opName(opcode), ino, err);
    this.reply(unique, err instanceof FuseErrno ? err.errno : ERRNO.EIO, undefined);
  }

  private reply(unique: bigint, errno: number, out: Buffer | undefined): void {
    const header = Buffer.alloc(OUT_HEADER);
    header.writeUInt32LE(OUT_HEADER + (errno ? 0 : (out?.length ?? 0)), 0);
    header.writeInt32LE(-errno, 4);
    header.writeBigUInt64LE(unique, 8);
    try {
      this.device.write(errno || !out?.length ? [header] : [header, out]);
    } catch {
      // ENOENT: the request was interrupted meanwhile; ENODEV: the connection is gone.
    }
    if (--this.inFlight === 0) this.drained?.();
  }

  private dispatch(opcode: number, ino: number, body: Buffer): Buffer | Promise<Buffer> {
    const fs = this.fs;
    switch (opcode) {
      case OP.INIT:
        this.kernelFlags = body.readUInt32LE(12);
        return initReply(body);
      case OP.LOOKUP:
        return entryOut(fs.lookup(ino, cString(body, 0)));
      case OP.GETATTR: {
        const out = Buffer.alloc(16 + ATTR_SIZE);
        out.writeBigUInt64LE(BigInt(CACHE_TIMEOUT), 0);
        writeAttr(out, 16, fs.getattr(ino));
        return out;
      }
      case OP.READLINK:
        return fs.readlink(ino);
      // Where the kernel can do without them, opens cost no round trip: ENOSYS once makes it open
      // every file with FOPEN_KEEP_CACHE (and directories with FOPEN_CACHE_DIR) on its own, and
      // send no RELEASE either. The mount is read-only, so no open for writing gets this far.
      case OP.OPEN:
        if (this.kernelFlags & INIT_FLAGS.NO_OPEN_SUPPORT) throw new FuseErrno(ERRNO.ENOSYS);
        if ((body.readUInt32LE(0) & O_ACCMODE) !== 0) throw new FuseErrno(ERRNO.EROFS);
        fs.open(ino, body.readUInt32LE(0));
        return openOut(FOPEN_KEEP_CACHE);
      case OP.OPENDIR:
        if (this.kernelFlags & INIT_FLAGS.NO_OPENDIR_SUPPORT) throw new FuseErrno(ERRNO.ENOSYS);
        fs.readdir(ino); // ENOTDIR / ENOENT now rather than at the first readdir
        return openOut(FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR);
      case OP.READ:
        return fs.read(ino, Number(body.readBigUInt64LE(8)), body.readUInt32LE(16));
      case OP.READDIR:
        return direntsOut(fs.readdir(ino), Number(body.readBigUInt64LE(8)), body.readUInt32LE(16));
      // Listings carry each entry's attributes, so the kernel knows every name of a directory it
      // has listed: an interpreter that lists its path, then opens what it found, costs no lookup.
      case OP.READDIRPLUS:
        return direntsOut(fs.readdir(ino), Number(body.readBigUInt64LE(8)), body.readUInt32LE(16), (e) => fs.getattr(e.ino));
      // Nothing to flush on a read-only mount: ENOSYS once and the kernel sends no FLUSH on close
      // again, a round trip less per file a reader closes.
      case OP.FLUSH:
        throw new FuseErrno(ERRNO.ENOSYS);
      case OP.RELEASE:
      case OP.RELEASEDIR:
      case OP.ACCESS: // default_permissions: the kernel checks permissions itself
      case OP.DESTROY:
        return Buffer.alloc(0);
      case OP.STATFS:
        return statfsOut(fs.statfs());
      case OP.GETXATTR:
        return sized(fs.getxattr(ino, cString(body, 8)), body.readUInt32LE(0));
      case OP.LISTXATTR:
        return sized(Buffer.from(fs.listxattr(ino).map((n) => `${n}\0`).join('')), body.readUInt32LE(0));
      default:
        throw new FuseErrno(WRITES.has(opcode) ? ERRNO.EROFS : ERRNO.ENOSYS);
    }
  }
}

function opName(opcode: number): string {
  return Object.entries(OP).find(([, v]) => v === opcode)?.[0].toLowerCase() ?? `op${opcode}`;
}

function cString(b: Buffer, at: number): string {
  const end = b.indexOf(0, at);
  return b.toString('utf8', at, end < 0 ? b.length : end);
}

function initReply(body: Buffer): Buffer {
  const major = body.readUInt32LE(0);
  const maxReadahead = body.readUInt32LE(8);
  const kernelFlags = body.readUInt32LE(12);
  const out = Buffer.alloc(64);
  out.writeUInt32LE(7, 0);
  out.writeUInt32LE(38, 4);
  if (major !== 7) return out.subarray(0, 8); // the kernel retries with our version or gives up
  const wanted = INIT_FLAGS.ASYNC_READ | INIT_FLAGS.PARALLEL_DIROPS | INIT_FLAGS.MAX_PAGES | INIT_FLAGS.CACHE_SYMLINKS | INIT_FLAGS.DO_READDIRPLUS;
  out.writeUInt32LE(maxReadahead, 8);
  out.writeUInt32LE((kernelFlags & wanted) >>> 0, 12);
  out.writeUInt16LE(64, 16); // max_background: concurrent reads the kernel may queue
  out.writeUInt16LE(48, 18); // congestion_threshold
  out.writeUInt32LE(4096, 20); // max_write: nothing is written
  out.writeUInt32LE(1_000_000_000, 24); // time_gran: whole seconds, as the TOC has them
  out.writeUInt16LE(MAX_PAGES, 28);
  return out;
}

function writeAttr(out: Buffer, at: number, a: FuseAttr): void {
  out.writeBigUInt64LE(BigInt(a.ino), at);
  out.writeBigUInt64LE(BigInt(a.size), at + 8);
  out.writeBigUInt64LE(BigInt(a.blocks), at + 16);
  for (const off of [24, 32, 40]) out.writeBigInt64LE(BigInt(a.mtime), at + off);
  out.writeUInt32LE(a.mode, at + 60);
  out.writeUInt32LE(a.nlink, at + 64);
  out.writeUInt32LE(a.uid, at + 68);
  out.writeUInt32LE(a.gid, at + 72);
  out.writeUInt32LE(a.rdev, at + 76);
  out.writeUInt32LE(4096, at + 80);
}

/** fuse_entry_out; node id 0 is a negative entry the kernel caches for the timeout. */
function entryOut(a: FuseAttr | undefined, out = Buffer.alloc(ENTRY_SIZE), at = 0): Buffer {
  out.writeBigUInt64LE(BigInt(a?.ino ?? 0), at);
  out.writeBigUInt64LE(BigInt(CACHE_TIMEOUT), at + 16);
  out.writeBigUInt64LE(BigInt(CACHE_TIMEOUT), at + 24);
  if (a) writeAttr(out, at + 40, a);
  return out;
}

function openOut(flags: number): Buffer {
  const out = Buffer.alloc(16);
  out.writeUInt32LE(flags, 8);
  return out;
}

/**
 * Directory entries from index `offset` on, as many as fit in `size`; each entry's off is the next
 * index. With `attrOf` (READDIRPLUS) each comes after its fuse_entry_out; "." and ".." get node id
 * 0 there, which the kernel takes as "no entry to cache".
 */
function direntsOut(entries: FuseDirEntry[], offset: number, size: number, attrOf?: (e: FuseDirEntry) => FuseAttr): Buffer {
  const parts: Buffer[] = [];
  let used = 0;
  const head = attrOf ? ENTRY_SIZE : 0;
  for (let i = offset; i < entries.length; i++) {
    const e = entries[i]!;
    const name = Buffer.from(e.name);
    const len = (head + 24 + name.length + 7) & ~7;
    if (used + len > size) break;
    const d = Buffer.alloc(len);
    if (attrOf && e.name !== '.' && e.name !== '..') entryOut(attrOf(e), d, 0);
    d.writeBigUInt64LE(BigInt(e.ino), head);
    d.writeBigUInt64LE(BigInt(i + 1), head + 8);
    d.writeUInt32LE(name.length, head + 16);
    d.writeUInt32LE((e.mode >>> 12) & 0xf, head + 20);
    name.copy(d, head + 24);
    parts.push(d);
    used += len;
  }
  return Buffer.concat(parts, used);
}

function statfsOut(s: StatFs): Buffer {
  const out = Buffer.alloc(80);
  out.writeBigUInt64LE(BigInt(s.blocks), 0);
  out.writeBigUInt64LE(BigInt(s.files), 24);
  out.writeUInt32LE(4096, 40);
  out.writeUInt32LE(255, 44);
  out.writeUInt32LE(4096, 48);
  return out;
}

/** getxattr/listxattr: size 0 asks for the length; a smaller buffer than the value is ERANGE. */
function sized(value: Buffer, size: number): Buffer {
  if (size === 0) {
    const out = Buffer.alloc(8);
    out.writeUInt32LE(value.length, 0);
    return out;
  }
  if (value.length > size) throw new FuseErrno(ERRNO.ERANGE);
  return value;
}
