// The FUSE session without a kernel: a fake device feeds it request frames and every reply's
// bytes are read back against the protocol's layout (include/uapi/linux/fuse.h, 7.38). No root,
// no mount, no native addon.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ERRNO, FuseErrno, FuseSession, type FuseAttr, type FuseDevice, type FuseDirEntry, type FuseFilesystem } from '../src/fs/fuse-session.js';

const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, READLINK: 5, MKDIR: 9, OPEN: 14, READ: 15, STATFS: 17, RELEASE: 18, GETXATTR: 22, LISTXATTR: 23, FLUSH: 25, INIT: 26,
  OPENDIR: 27, READDIR: 28, INTERRUPT: 36, READDIRPLUS: 44,
};
const IN_HEADER = 40;
const OUT_HEADER = 16;
const ATTR = 88; // struct fuse_attr
const ENTRY_OUT = 40 + ATTR; // struct fuse_entry_out
const DIRENT = 24; // struct fuse_dirent up to its name (FUSE_NAME_OFFSET)
const DAY = 86_400n;
const FOPEN_KEEP_CACHE = 1 << 1;
const INIT_NO_OPEN_SUPPORT = 1 << 17;

/** A device that records what the session writes and delivers frames the test builds. */
class FakeDevice implements FuseDevice {
  readonly fd = -1;
  readonly replies: Buffer[] = [];
  closed = false;
  private deliver: ((request: Buffer | null, errno: number) => void) | undefined;
  private unique = 0n;
  private readonly waiting = new Map<bigint, (reply: Buffer) => void>();

  read(onMessage: (request: Buffer | null, errno: number) => void): { stop(): void } {
    this.deliver = onMessage;
    return { stop: () => setImmediate(() => onMessage(null, 0)) };
  }

  write(parts: Buffer[]): void {
    const reply = Buffer.concat(parts);
    this.replies.push(reply);
    const unique = reply.readBigUInt64LE(8);
    this.waiting.get(unique)?.(reply);
    this.waiting.delete(unique);
  }

  close(): void {
    this.closed = true;
  }

  /** Delivers one request (struct fuse_in_header + body); resolves with its reply. */
  request(opcode: number, nodeid: number, body: Buffer = Buffer.alloc(0)): { unique: bigint; reply: Promise<Buffer> } {
    const unique = ++this.unique;
    const header = Buffer.alloc(IN_HEADER);
    header.writeUInt32LE(IN_HEADER + body.length, 0);
    header.writeUInt32LE(opcode, 4);
    header.writeBigUInt64LE(unique, 8);
    header.writeBigUInt64LE(BigInt(nodeid), 16);
    const reply = new Promise<Buffer>((resolve) => this.waiting.set(unique, resolve));
    this.deliver!(Buffer.concat([header, body]), 0);
    return { unique, reply };
  }

  async call(opcode: number, nodeid: number, body?: Buffer): Promise<Buffer> {
    const { unique, reply } = this.request(opcode, nodeid, body);
    const out = await reply;
    assert.equal(out.readUInt32LE(0), out.length, 'fuse_out_header.len is the reply length');
    assert.equal(out.readBigUInt64LE(8), unique, 'fuse_out_header.unique is the request one');
    return out;
  }
}

const dir = (ino: number): FuseAttr => ({ ino, mode: 0o040755, nlink: 2, uid: 0, gid: 0, rdev: 0, size: 4096, blocks: 8, mtime: 1_700_000_000 });
const file = (ino: number, size: number): FuseAttr => ({ ino, mode: 0o100644, nlink: 1, uid: 1000, gid: 100, rdev: 0, size, blocks: 1, mtime: 1_600_000_000 });
const CONTENT = Buffer.from('hello, lazy world\n');
const NODES = new Map<number, FuseAttr>([[1, dir(1)], [2, file(2, CONTENT.length)], [3, dir(3)]]);
const ROOT: FuseDirEntry[] = [
  { name: '.', ino: 1, mode: 0o040755 },
  { name: '..', ino: 1, mode: 0o040755 },
  { name: 'hello.txt', ino: 2, mode: 0o100644 },
  { name: 'sub', ino: 3, mode: 0o040755 },
];

/** A root directory with one file and one subdirectory; ino 99 fails with a non-FuseErrno error. */
function filesystem(reads: { ino: number; offset: number; size: number }[] = []): FuseFilesystem {
  const attr = (ino: number): FuseAttr => {
    if (ino === 99) throw new Error('index gone');
    const a = NODES.get(ino);
    if (!a) throw new FuseErrno(ERRNO.ENOENT);
    return a;
  };
  return {
    lookup: (parent, name) => {
      const e = parent === 1 && name !== '.' && name !== '..' ? ROOT.find((d) => d.name === name) : undefined;
      return e && attr(e.ino);
    },
    getattr: attr,
    readlink: () => { throw new FuseErrno(ERRNO.EINVAL); },
    open: (ino) => void attr(ino),
    read: async (ino, offset, size) => {
      reads.push({ ino, offset, size });
      await new Promise((resolve) => setImmediate(resolve));
      return CONTENT.subarray(offset, offset + size);
    },
    readdir: (ino) => {
      if (attr(ino).mode & 0o100000) throw new FuseErrno(ERRNO.ENOTDIR);
      return ino === 1 ? ROOT : [ROOT[0]!, ROOT[1]!];
    },
    getxattr: (ino, name) => {
      if (ino === 2 && name === 'user.k') return Buffer.from('value');
      throw new FuseErrno(ERRNO.ENODATA);
    },
    listxattr: (ino) => (ino === 2 ? ['user.k', 'user.other'] : []),
    statfs: () => ({ blocks: 10, files: 3 }),
  };
}

function session(fs = filesystem(), onError?: (op: string, ino: number, err: unknown) => void): { dev: FakeDevice; s: FuseSession } {
  const dev = new FakeDevice();
  return { dev, s: FuseSession.serve(dev, fs, { onError }) };
}

function initIn(major: number, minor: number, maxReadahead: number, flags: number): Buffer {
  const b = Buffer.alloc(64); // struct fuse_init_in
  b.writeUInt32LE(major, 0);
  b.writeUInt32LE(minor, 4);
  b.writeUInt32LE(maxReadahead, 8);
  b.writeUInt32LE(flags, 12);
  return b;
}

function readIn(offset: number, size: number): Buffer {
  const b = Buffer.alloc(40); // struct fuse_read_in
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(size, 16);
  return b;
}

function openIn(flags: number): Buffer {
  const b = Buffer.alloc(8); // struct fuse_open_in
  b.writeUInt32LE(flags, 0);
  return b;
}

const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n), 0);
  return b;
};

/** An error reply: the header alone, error = -errno. */
function assertErrno(reply: Buffer, errno: number): void {
  assert.equal(reply.length, OUT_HEADER);
  assert.equal(reply.readInt32LE(4), -errno);
}

/** struct fuse_attr at `at`, against what the filesystem said. */
function assertAttr(b: Buffer, at: number, a: FuseAttr): void {
  assert.equal(b.readBigUInt64LE(at), BigInt(a.ino), 'ino');
  assert.equal(b.readBigUInt64LE(at + 8), BigInt(a.size), 'size');
  assert.equal(b.readBigUInt64LE(at + 16), BigInt(a.blocks), 'blocks');
  for (const [off, what] of [[24, 'atime'], [32, 'mtime'], [40, 'ctime']] as const) assert.equal(b.readBigUInt64LE(at + off), BigInt(a.mtime), what);
  for (const off of [48, 52, 56]) assert.equal(b.readUInt32LE(at + off), 0, 'nanoseconds');
  assert.equal(b.readUInt32LE(at + 60), a.mode, 'mode');
  assert.equal(b.readUInt32LE(at + 64), a.nlink, 'nlink');
  assert.equal(b.readUInt32LE(at + 68), a.uid, 'uid');
  assert.equal(b.readUInt32LE(at + 72), a.gid, 'gid');
  assert.equal(b.readUInt32LE(at + 76), a.rdev, 'rdev');
  assert.equal(b.readUInt32LE(at + 80), 4096, 'blksize');
  assert.equal(b.readUInt32LE(at + 84), 0, 'flags');
}

/** struct fuse_entry_out at `at`. */
function assertEntry(b: Buffer, at: number, a: FuseAttr): void {
  assert.equal(b.readBigUInt64LE(at), BigInt(a.ino), 'nodeid');
  assert.equal(b.readBigUInt64LE(at + 8), 0n, 'generation');
  assert.equal(b.readBigUInt64LE(at + 16), DAY, 'entry_valid');
  assert.equal(b.readBigUInt64LE(at + 24), DAY, 'attr_valid');
  assertAttr(b, at + 40, a);
}

interface Dirent {
  ino: bigint;
  off: bigint;
  type: number;
  name: string;
  /** Where its struct fuse_entry_out starts (READDIRPLUS). */
  entryAt?: number;
}

/** Walks struct fuse_dirent (or fuse_direntplus) records, each padded to 8 bytes. */
function dirents(body: Buffer, plus: boolean): Dirent[] {
  const out: Dirent[] = [];
  const head = plus ? ENTRY_OUT : 0;
  for (let at = 0; at < body.length;) {
    const d = at + head;
    const namelen = body.readUInt32LE(d + 16);
    const end = d + DIRENT + namelen;
    const next = at + ((head + DIRENT + namelen + 7) & ~7);
    assert.ok(next <= body.length, 'a record ends inside the reply');
    assert.ok(body.subarray(end, next).every((x) => x === 0), 'padding is zeros');
    out.push({ ino: body.readBigUInt64LE(d), off: body.readBigUInt64LE(d + 8), type: body.readUInt32LE(d + 20), name: body.toString('utf8', d + DIRENT, end), ...(plus ? { entryAt: at } : {}) });
    at = next;
  }
  return out;
}

describe('FUSE session (fake device)', () => {
  it('answers INIT with fuse_init_out 7.38, the flags it wants of those offered, max_pages 256', async () => {
    const { dev, s } = session();
    const offered = 0xffffffff;
    const r = await dev.call(OP.INIT, 0, initIn(7, 38, 128 * 1024, offered));
    assert.equal(r.readInt32LE(4), 0);
    assert.equal(r.length, OUT_HEADER + 64);
    const b = r.subarray(OUT_HEADER);
    assert.equal(b.readUInt32LE(0), 7, 'major');
    assert.equal(b.readUInt32LE(4), 38, 'minor');
    assert.equal(b.readUInt32LE(8), 128 * 1024, 'max_readahead: as the kernel offered');
    // ASYNC_READ, DO_READDIRPLUS, PARALLEL_DIROPS, MAX_PAGES, CACHE_SYMLINKS
    assert.equal(b.readUInt32LE(12), (1 << 0) | (1 << 13) | (1 << 18) | (1 << 22) | (1 << 23), 'flags');
    assert.equal(b.readUInt16LE(16), 64, 'max_background');
    assert.equal(b.readUInt16LE(18), 48, 'congestion_threshold');
    assert.equal(b.readUInt32LE(20), 4096, 'max_write');
    assert.equal(b.readUInt32LE(24), 1_000_000_000, 'time_gran');
    assert.equal(b.readUInt16LE(28), 256, 'max_pages');
    assert.ok(b.subarray(30).every((x) => x === 0), 'the rest is zeros');
    // Of flags not offered, none is taken.
    const few = await dev.call(OP.INIT, 0, initIn(7, 38, 4096, 1 << 0));
    assert.equal(few.readUInt32LE(OUT_HEADER + 12), 1 << 0);
    assert.equal(s.connection.kernelFlags, 1 << 0, 'the kernel flags are kept for a hand-over');
    await s.close();
  });

  it('answers an INIT of another major version with its own version alone (the kernel retries or gives up)', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.INIT, 0, initIn(8, 0, 4096, 0));
    assert.equal(r.length, OUT_HEADER + 8);
    assert.equal(r.readInt32LE(4), 0);
    assert.deepEqual([r.readUInt32LE(OUT_HEADER), r.readUInt32LE(OUT_HEADER + 4)], [7, 38]);
    await s.close();
  });

  it('answers LOOKUP with fuse_entry_out, and a missing name with a negative entry (node id 0) cached a day', async () => {
    const { dev, s } = session();
    const hit = await dev.call(OP.LOOKUP, 1, Buffer.from('hello.txt\0'));
    assert.equal(hit.readInt32LE(4), 0);
    assert.equal(hit.length, OUT_HEADER + ENTRY_OUT);
    assertEntry(hit, OUT_HEADER, NODES.get(2)!);
    const miss = await dev.call(OP.LOOKUP, 1, Buffer.from('nothing\0'));
    assert.equal(miss.readInt32LE(4), 0);
    assert.equal(miss.length, OUT_HEADER + ENTRY_OUT);
    assert.equal(miss.readBigUInt64LE(OUT_HEADER), 0n, 'nodeid 0');
    assert.equal(miss.readBigUInt64LE(OUT_HEADER + 16), DAY, 'entry_valid');
    assert.ok(miss.subarray(OUT_HEADER + 40).every((x) => x === 0), 'no attributes');
    await s.close();
  });

  it('answers GETATTR with fuse_attr_out, and a FuseErrno as that negative errno', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.GETATTR, 2);
    assert.equal(r.length, OUT_HEADER + 16 + ATTR);
    assert.equal(r.readBigUInt64LE(OUT_HEADER), DAY, 'attr_valid');
    assert.equal(r.readUInt32LE(OUT_HEADER + 8), 0, 'attr_valid_nsec');
    assertAttr(r, OUT_HEADER + 16, NODES.get(2)!);
    assertErrno(await dev.call(OP.GETATTR, 42), ERRNO.ENOENT);
    await s.close();
  });

  it('answers an error other than FuseErrno with EIO and reports it by operation name', async () => {
    const seen: [string, number, unknown][] = [];
    const { dev, s } = session(filesystem(), (op, ino, err) => seen.push([op, ino, err]));
    assertErrno(await dev.call(OP.GETATTR, 99), ERRNO.EIO);
    assert.equal(seen.length, 1);
    assert.deepEqual(seen[0]!.slice(0, 2), ['getattr', 99]);
    assert.equal((seen[0]![2] as Error).message, 'index gone');
    await s.close();
  });

  it('answers READDIR with fuse_dirent records aligned to 8 bytes, each off the next index, and goes on from an offset', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.READDIR, 1, readIn(0, 4096));
    assert.equal(r.readInt32LE(4), 0);
    const all = dirents(r.subarray(OUT_HEADER), false);
    assert.deepEqual(all, [
      { ino: 1n, off: 1n, type: 4, name: '.' },
      { ino: 1n, off: 2n, type: 4, name: '..' },
      { ino: 2n, off: 3n, type: 8, name: 'hello.txt' },
      { ino: 3n, off: 4n, type: 4, name: 'sub' },
    ]);
    assert.equal(r.length - OUT_HEADER, 32 + 32 + 40 + 32, 'names padded: 1, 2, 9 and 3 bytes after 24');
    // A buffer too small for the next record ends the reply before it; the kernel asks again from its off.
    const part = dirents((await dev.call(OP.READDIR, 1, readIn(0, 32 + 32 + 39))).subarray(OUT_HEADER), false);
    assert.deepEqual(part.map((d) => d.name), ['.', '..']);
    const rest = dirents((await dev.call(OP.READDIR, 1, readIn(2, 4096))).subarray(OUT_HEADER), false);
    assert.deepEqual(rest.map((d) => [d.name, d.off]), [['hello.txt', 3n], ['sub', 4n]]);
    const end = await dev.call(OP.READDIR, 1, readIn(4, 4096));
    assert.equal(end.length, OUT_HEADER, 'past the last entry: an empty reply');
    await s.close();
  });

  it('answers READDIRPLUS with fuse_direntplus records: each entry_out then its dirent, "." and ".." without a node', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.READDIRPLUS, 1, readIn(0, 4096));
    const body = r.subarray(OUT_HEADER);
    const all = dirents(body, true);
    assert.deepEqual(all.map((d) => [d.name, d.ino, d.off, d.type]), [['.', 1n, 1n, 4], ['..', 1n, 2n, 4], ['hello.txt', 2n, 3n, 8], ['sub', 3n, 4n, 4]]);
    for (const d of all.slice(0, 2)) assert.ok(body.subarray(d.entryAt!, d.entryAt! + ENTRY_OUT).every((x) => x === 0), `${d.name}: nodeid 0, nothing to cache`);
    assertEntry(body, all[2]!.entryAt!, NODES.get(2)!);
    assertEntry(body, all[3]!.entryAt!, NODES.get(3)!);
    assert.equal(body.length, (ENTRY_OUT + 32) * 2 + (ENTRY_OUT + 40) + (ENTRY_OUT + 32));
    await s.close();
  });

  it('answers OPEN with fuse_open_out keeping the page cache, EROFS for writing, and ENOSYS once the kernel opens by itself', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.OPEN, 2, openIn(0));
    assert.equal(r.length, OUT_HEADER + 16);
    assert.equal(r.readBigUInt64LE(OUT_HEADER), 0n, 'fh');
    assert.equal(r.readUInt32LE(OUT_HEADER + 8), FOPEN_KEEP_CACHE, 'open_flags');
    assertErrno(await dev.call(OP.OPEN, 2, openIn(2 /* O_RDWR */)), ERRNO.EROFS);
    assertErrno(await dev.call(OP.OPEN, 42, openIn(0)), ERRNO.ENOENT);
    await dev.call(OP.INIT, 0, initIn(7, 38, 4096, INIT_NO_OPEN_SUPPORT));
    assertErrno(await dev.call(OP.OPEN, 2, openIn(0)), ERRNO.ENOSYS);
    await s.close();
  });

  it('answers READ with the bytes alone, after the filesystem delivers them, with the offset and size the kernel asked', async () => {
    const reads: { ino: number; offset: number; size: number }[] = [];
    const { dev, s } = session(filesystem(reads));
    const r = await dev.call(OP.READ, 2, readIn(7, 4));
    assert.equal(r.readInt32LE(4), 0);
    assert.equal(r.subarray(OUT_HEADER).toString(), 'lazy');
    const eof = await dev.call(OP.READ, 2, readIn(CONTENT.length, 4096));
    assert.equal(eof.length, OUT_HEADER, 'at the end: no bytes');
    assert.deepEqual(reads, [{ ino: 2, offset: 7, size: 4 }, { ino: 2, offset: CONTENT.length, size: 4096 }]);
    await s.close();
  });

  it('answers RELEASE with the header alone; FORGET and INTERRUPT get no reply', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.RELEASE, 2, Buffer.alloc(24));
    assert.equal(r.length, OUT_HEADER);
    assert.equal(r.readInt32LE(4), 0);
    const before = dev.replies.length;
    dev.request(OP.FORGET, 2, u64(1)); // struct fuse_forget_in
    dev.request(OP.INTERRUPT, 0, u64(1)); // struct fuse_interrupt_in
    await dev.call(OP.GETATTR, 1);
    assert.equal(dev.replies.length, before + 1, 'only GETATTR was answered');
    await s.close();
  });

  it('answers STATFS with fuse_statfs_out: 4 KiB blocks, 255-byte names', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.STATFS, 1);
    assert.equal(r.length, OUT_HEADER + 80);
    const b = r.subarray(OUT_HEADER);
    assert.deepEqual([b.readBigUInt64LE(0), b.readBigUInt64LE(8), b.readBigUInt64LE(16), b.readBigUInt64LE(24), b.readBigUInt64LE(32)], [10n, 0n, 0n, 3n, 0n], 'blocks, bfree, bavail, files, ffree');
    assert.deepEqual([b.readUInt32LE(40), b.readUInt32LE(44), b.readUInt32LE(48)], [4096, 255, 4096], 'bsize, namelen, frsize');
    await s.close();
  });

  it('answers GETXATTR and LISTXATTR with the size alone for size 0, the value when it fits, ERANGE when not', async () => {
    const { dev, s } = session();
    const getxattrIn = (size: number, name: string): Buffer => {
      const b = Buffer.alloc(8); // struct fuse_getxattr_in, then the name
      b.writeUInt32LE(size, 0);
      return Buffer.concat([b, Buffer.from(`${name}\0`)]);
    };
    const sizeOnly = await dev.call(OP.GETXATTR, 2, getxattrIn(0, 'user.k'));
    assert.equal(sizeOnly.length, OUT_HEADER + 8, 'struct fuse_getxattr_out');
    assert.equal(sizeOnly.readUInt32LE(OUT_HEADER), 5);
    assert.equal((await dev.call(OP.GETXATTR, 2, getxattrIn(64, 'user.k'))).subarray(OUT_HEADER).toString(), 'value');
    assertErrno(await dev.call(OP.GETXATTR, 2, getxattrIn(4, 'user.k')), ERRNO.ERANGE);
    assertErrno(await dev.call(OP.GETXATTR, 2, getxattrIn(64, 'user.none')), ERRNO.ENODATA);
    const names = 'user.k\0user.other\0';
    assert.equal((await dev.call(OP.LISTXATTR, 2, getxattrIn(0, ''))).readUInt32LE(OUT_HEADER), names.length);
    assert.equal((await dev.call(OP.LISTXATTR, 2, getxattrIn(64, ''))).subarray(OUT_HEADER).toString(), names);
    assertErrno(await dev.call(OP.LISTXATTR, 2, getxattrIn(3, '')), ERRNO.ERANGE);
    await s.close();
  });

  it('answers OPENDIR with fuse_open_out keeping the listing cached, ENOTDIR for a file; FLUSH with ENOSYS; READLINK with the filesystem\'s errno', async () => {
    const { dev, s } = session();
    const r = await dev.call(OP.OPENDIR, 1, openIn(0));
    assert.equal(r.length, OUT_HEADER + 16);
    assert.equal(r.readUInt32LE(OUT_HEADER + 8), FOPEN_KEEP_CACHE | (1 << 3) /* FOPEN_CACHE_DIR */);
    assertErrno(await dev.call(OP.OPENDIR, 2, openIn(0)), ERRNO.ENOTDIR);
    assertErrno(await dev.call(OP.FLUSH, 2, Buffer.alloc(24)), ERRNO.ENOSYS);
    assertErrno(await dev.call(OP.READLINK, 2), ERRNO.EINVAL);
    await s.close();
  });

  it('answers an unknown opcode with ENOSYS and a write operation with EROFS', async () => {
    const { dev, s } = session();
    assertErrno(await dev.call(4242, 1), ERRNO.ENOSYS);
    assertErrno(await dev.call(OP.MKDIR, 1, Buffer.from('\0\0\0\0\0\0\0\0new\0')), ERRNO.EROFS);
    await s.close();
  });

  it('close() waits for the reads in flight to be answered, then closes the device', async () => {
    const { dev, s } = session();
    const pending = dev.request(OP.READ, 2, readIn(0, 5));
    const closed = s.close();
    assert.equal(dev.closed, false);
    await closed;
    assert.equal(dev.closed, true);
    assert.equal((await pending.reply).subarray(OUT_HEADER).toString(), 'hello');
  });

  it('settles ended with the errno when the device reports the connection gone', async () => {
    let deliver!: (req: Buffer | null, errno: number) => void;
    const dev: FuseDevice = { fd: -1, read: (m) => ((deliver = m), { stop: () => {} }), write: () => {}, close: () => {} };
    const s = FuseSession.serve(dev, filesystem());
    deliver(null, ERRNO.ENODEV);
    assert.equal(await s.ended, ERRNO.ENODEV);
    await s.close();
  });
});
