// The EROFS builder: its encoders' field offsets, its layout choices and its refusals on their own,
// then images mounted by the kernel (file-backed, with blob devices) and read back entry by entry,
// checked by fsck.erofs, stacked under overlayfs, and compared with mkfs.erofs of the same tree.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvalidErofsTreeError } from '../src/errors.js';
import { buildErofs, type ErofsBuildOptions } from '../src/erofs/build.js';
import {
  BLOCK_SIZE, crc32c, encodeChunkIndex, encodeDev, encodeDeviceSlot, encodeInode, encodeSuperBlock, SUPER_MAGIC, SUPER_OFFSET,
} from '../src/erofs/format.js';
import type { ErofsEntry } from '../src/erofs/tree.js';
import { mountOverlay, unmount } from '../src/system-mounts.js';
import {
  assertInodes, erofsSkipReason, erofsWorkdir, expectedInodes, fsckErofs, walkInodes, withErofsMount, type BlobFile, type SeenInode,
} from './fixtures/erofs.js';
import { mustRun } from './fixtures/process.js';

const T = { seconds: 1_700_000_000, nanoseconds: 0 };
const MiB = 1 << 20;

function superblock(image: Buffer): { magic: number; checksum: number; compat: number; rootNid: number; inodes: bigint; buildTime: bigint; nsec: number; blocks: number; xattrBlk: number; uuid: Buffer; volume: string; incompat: number; devices: number; devtSlotOff: number } {
  const s = image.subarray(SUPER_OFFSET);
  return {
    magic: s.readUInt32LE(0), checksum: s.readUInt32LE(4), compat: s.readUInt32LE(8), rootNid: s.readUInt16LE(14),
    inodes: s.readBigUInt64LE(16), buildTime: s.readBigInt64LE(24), nsec: s.readUInt32LE(32), blocks: s.readUInt32LE(36),
    xattrBlk: s.readUInt32LE(44), uuid: s.subarray(48, 64), volume: s.subarray(64, 80).toString('utf8').replace(/\0+$/, ''),
    incompat: s.readUInt32LE(80), devices: s.readUInt16LE(86), devtSlotOff: s.readUInt16LE(88),
  };
}

/** The inode at `nid` (meta_blkaddr is 0): its format word, mode, size and i_u. */
function inodeAt(image: Buffer, nid: number): { extended: boolean; layout: number; mode: number; size: number; u: number; icount: number } {
  const at = nid * 32;
  const format = image.readUInt16LE(at);
  const extended = (format & 1) === 1;
  return {
    extended, layout: format >> 1, icount: image.readUInt16LE(at + 2), mode: image.readUInt16LE(at + 4),
    size: extended ? Number(image.readBigUInt64LE(at + 8)) : image.readUInt32LE(at + 8), u: image.readUInt32LE(at + 16),
  };
}

/** Dirents of a directory block: names in order, with their nids. */
function direntsOf(block: Buffer, used: number): { name: string; nid: number; type: number }[] {
  const count = block.readUInt16LE(8) / 12;
  const out = [];
  for (let i = 0; i < count; i++) {
    const off = block.readUInt16LE(i * 12 + 8);
    // The last name runs to the end of the used bytes, or to the zero padding of a full block.
    const end = i + 1 < count ? block.readUInt16LE((i + 1) * 12 + 8) : used;
    const name = block.subarray(off, end);
    out.push({ name: name.subarray(0, name.indexOf(0) < 0 ? name.length : name.indexOf(0)).toString('utf8'), nid: Number(block.readBigUInt64LE(i * 12)), type: block[i * 12 + 10]! });
  }
  return out;
}

function invalid(entries: ErofsEntry[], re: RegExp, opts: ErofsBuildOptions = {}): void {
  assert.throws(() => buildErofs(entries, { buildTime: T, ...opts }), (err: unknown) => {
    assert.ok(err instanceof InvalidErofsTreeError, `expected InvalidErofsTreeError, got ${String(err)}`);
    assert.equal(err.code, 'ERR_INVALID_EROFS_TREE');
    assert.match(err.message, re);
    return true;
  });
}

describe('EROFS format', () => {
  it('computes crc32c as the kernel does (seeded, not inverted)', () => {
    // The standard check value of CRC-32C("123456789") is 0xe3069283, after a final inversion.
    assert.equal((~crc32c(0xffffffff, Buffer.from('123456789')) >>> 0), 0xe3069283);
  });

  it('encodes each structure at its erofs_fs.h size', () => {
    const core = { extended: false, layout: 0, xattrIcount: 0, mode: 0o100644, nlink: 1, size: 1, u: 0, uIsChunkFormat: false, ino: 1, uid: 0, gid: 0, mtime: 0, mtimeNsec: 0 };
    assert.equal(encodeInode(core).length, 32);
    assert.equal(encodeInode({ ...core, extended: true }).length, 64);
    assert.equal(encodeChunkIndex(1, 2).length, 8);
    assert.equal(encodeDeviceSlot(Buffer.from('t'), 1).length, 128);
    assert.equal(encodeSuperBlock({
      featureCompat: 0, featureIncompat: 0, rootNid: 0, inodes: 0, buildTime: 0, buildTimeNsec: 0, blocks: 0, metaBlkaddr: 0,
      xattrBlkaddr: 0, uuid: Buffer.alloc(16), volumeName: Buffer.alloc(0), extraDevices: 0, devtSlotOff: 0,
    }).length, 128);
    // The kernel's new_encode_dev: minor's low byte, 12 bits of major, then minor's high bits.
    assert.equal(encodeDev(8, 1), 0x801);
    assert.equal(encodeDev(0xfff, 0xfffff), 0xffffffff);
    assert.equal(encodeDev(1, 0x100), 0x100100);
  });

  it('writes the superblock fields at their offsets, with a checksum over the rest of block 0', () => {
    const uuid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const { image, blocks, inodes, rootNid } = buildErofs([{ path: 'f', type: 'reg', data: Buffer.from('x') }], {
      buildTime: { seconds: 1_700_000_000, nanoseconds: 5 }, uuid, volumeName: 'vol-1',
      devices: [{ tag: 'blob-a', size: 10 * BLOCK_SIZE }], chunkSize: MiB,
    });
    const sb = superblock(image);
    assert.equal(sb.magic, SUPER_MAGIC);
    assert.equal(image.length, blocks * BLOCK_SIZE);
    assert.equal(sb.blocks, blocks);
    assert.equal(sb.inodes, BigInt(inodes));
    assert.equal(inodes, 2);
    assert.equal(sb.rootNid, rootNid);
    assert.equal(sb.buildTime, 1_700_000_000n);
    assert.equal(sb.nsec, 5);
    assert.deepEqual(sb.uuid, uuid);
    assert.equal(sb.volume, 'vol-1');
    assert.equal(image[SUPER_OFFSET + 12], 12, 'blkszbits');
    assert.equal(sb.compat, 1, 'sb_chksum');
    assert.equal(sb.incompat, 0x8, 'device_table, and no chunked_file without a chunk-based inode');
    assert.equal(sb.devices, 1);
    // The device table follows the superblock: slot 9 = byte 1152, tag then blocks.
    assert.equal(sb.devtSlotOff, 9);
    assert.equal(image.subarray(1152, 1158).toString(), 'blob-a');
    assert.equal(image.readUInt32LE(1152 + 64), 10);
    assert.equal(rootNid * 32 >= 1152 + 128, true, 'the root comes after the device table');
    const copy = Buffer.from(image.subarray(SUPER_OFFSET, BLOCK_SIZE));
    copy.writeUInt32LE(0, 4);
    assert.equal(sb.checksum, crc32c(0xffffffff, copy));
    assert.equal(superblock(buildErofs([], { buildTime: T, checksum: false }).image).compat, 0);
  });

  it('uses compact inodes where they can hold everything, extended ones where not', () => {
    const entries: ErofsEntry[] = [
      { path: 'compact', type: 'reg', data: Buffer.from('a'), mtime: T.seconds },
      { path: 'big-uid', type: 'reg', data: Buffer.from('a'), mtime: T.seconds, uid: 70_000 },
      { path: 'own-mtime', type: 'reg', data: Buffer.from('a'), mtime: 5 },
      { path: 'own-nsec', type: 'reg', data: Buffer.from('a'), mtime: T.seconds, mtimeNsec: 1 },
      { path: 'huge', type: 'reg', extents: [{ hole: true, length: 5 * 1024 * MiB }], mtime: T.seconds },
    ];
    const { image, rootNid } = buildErofs(entries, { buildTime: T });
    const root = inodeAt(image, rootNid);
    // The root's dirents are inline (one small block): they follow the 32-byte compact inode.
    assert.equal(root.layout, 2);
    assert.equal(root.extended, false);
    const dirents = direntsOf(image.subarray(rootNid * 32 + 32), root.size);
    assert.deepEqual(dirents.map((d) => d.name), ['.', '..', 'big-uid', 'compact', 'huge', 'own-mtime', 'own-nsec']);
    const ext = Object.fromEntries(dirents.map((d) => [d.name, inodeAt(image, d.nid)]));
    assert.equal(ext.compact!.extended, false);
    assert.equal(ext['big-uid']!.extended, true);
    assert.equal(ext['own-mtime']!.extended, true);
    assert.equal(ext['own-nsec']!.extended, true);
    assert.equal(ext.huge!.extended, true);
    assert.equal(ext.huge!.layout, 4, 'chunk-based');
    assert.equal(ext.huge!.size, 5 * 1024 * MiB);
    assert.equal(ext.huge!.u & 0xffff, 0x20 | 10, 'chunk indexes, 4 MiB = 4 KiB << 10');
    assert.equal(superblock(image).incompat, 0x4, 'chunked_file');
  });

  it('packs small tails inline and keeps whole blocks and tails that do not fit as plain data', () => {
    const sizes = [0, 1, 4095, 4096, 4097, 3 * 4096 + 10];
    const entries: ErofsEntry[] = sizes.map((n) => ({ path: `f${n}`, type: 'reg', data: randomBytes(n), mtime: T.seconds }));
    const { image, rootNid } = buildErofs(entries, { buildTime: T });
    const root = inodeAt(image, rootNid);
    const byName = Object.fromEntries(direntsOf(image.subarray(rootNid * 32 + 32), root.size).map((d) => [d.name, d.nid]));
    const layouts = sizes.map((n) => inodeAt(image, byName[`f${n}`]!).layout);
    // 0: plain, no blocks; 1, 4097 and 3 blocks + 10: an inline tail; 4095: the tail and a 32-byte
    // inode do not fit one block, so plain; 4096: a whole block, plain.
    assert.deepEqual(layouts, [0, 2, 0, 0, 2, 2]);
    const f4097 = inodeAt(image, byName.f4097!);
    const data = entries[4]!.data!;
    assert.deepEqual(image.subarray(f4097.u * BLOCK_SIZE, f4097.u * BLOCK_SIZE + 4096), Buffer.from(data.subarray(0, 4096)));
    assert.deepEqual(image.subarray(byName.f4097! * 32 + 32, byName.f4097! * 32 + 33), Buffer.from(data.subarray(4096)));
    assert.equal(inodeAt(image, byName.f0!).u, 0xffffffff);
  });

  it('sorts dirents by bytes across blocks, "." and ".." among them, and sizes the directory by its last block', () => {
    const names = Array.from({ length: 400 }, (_, i) => `${'n'.repeat(40)}${String(i).padStart(3, '0')}`);
    names.push('!first', '-dash', 'Z');
    const { image, rootNid } = buildErofs(names.map((n) => ({ path: n, type: 'fifo', mtime: T.seconds })), { buildTime: T });
    const root = inodeAt(image, rootNid);
    const blocks = Math.ceil(root.size / BLOCK_SIZE);
    assert.ok(blocks >= 5, `${blocks} blocks`);
    const all: string[] = [];
    for (let b = 0; b < blocks; b++) {
      const used = b < blocks - 1 ? BLOCK_SIZE : root.size - b * BLOCK_SIZE;
      const at = root.layout === 2 && b === blocks - 1 ? null : (root.u + b) * BLOCK_SIZE;
      const block = at === null ? image.subarray(rootNid * 32 + 32) : image.subarray(at, at + BLOCK_SIZE);
      all.push(...direntsOf(block, used).map((d) => d.name));
    }
    const sorted = [...names, '.', '..'].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    assert.deepEqual(all, sorted);
    assert.equal(all[0], '!first');
  });

  it('is deterministic, and takes the most common mtime as the build time by default', () => {
    const entries: ErofsEntry[] = [
      { path: 'a', type: 'reg', data: Buffer.from('1'), mtime: 100 },
      { path: 'b', type: 'reg', data: Buffer.from('2'), mtime: 200 },
      { path: 'c', type: 'reg', data: Buffer.from('3'), mtime: 200 },
    ];
    const one = buildErofs(entries).image;
    assert.deepEqual(buildErofs(entries).image, one);
    assert.equal(superblock(one).buildTime, 200n);
    assert.notDeepEqual(superblock(one).uuid, Buffer.alloc(16));
  });

  it('shares an xattr that several inodes carry and keeps the others inline', () => {
    const entries: ErofsEntry[] = ['a', 'b', 'c'].map((p) => ({ path: p, type: 'dir', mtime: T.seconds, xattrs: { 'trusted.overlay.opaque': 'y', [`user.${p}`]: p } }));
    const { image } = buildErofs(entries, { buildTime: T });
    const sb = superblock(image);
    assert.ok(sb.xattrBlk > 0);
    const area = image.subarray(sb.xattrBlk * BLOCK_SIZE, sb.xattrBlk * BLOCK_SIZE + 32);
    // One shared entry: the name after "trusted." (index 4), then the value; the user.* ones stay inline.
    assert.equal(area[1], 4);
    assert.equal(area.subarray(4, 4 + area[0]!).toString(), 'overlay.opaque');
    assert.equal(area.subarray(4 + area[0]!, 5 + area[0]!).toString(), 'y');
    assert.equal(area.subarray(20).equals(Buffer.alloc(12)), true, 'nothing else is shared');
  });
});

describe('EROFS builder input', () => {
  const dev = { devices: [{ tag: 'b0', size: 64 * BLOCK_SIZE }], chunkSize: 2 * BLOCK_SIZE };
  const cases: [string, ErofsEntry[], RegExp, ErofsBuildOptions?][] = [
    ['a path that escapes', [{ path: 'a/../../etc', type: 'dir' }], /escapes the image root/],
    ['a duplicate', [{ path: 'a', type: 'reg' }, { path: './a', type: 'reg' }], /"a": is listed twice/],
    ['a directory listed twice', [{ path: 'd', type: 'dir' }, { path: 'd/', type: 'dir' }], /is listed twice/],
    ['a file where a directory is needed', [{ path: 'f', type: 'reg' }, { path: 'f/g', type: 'reg' }], /parent "f" is not a directory/],
    ['a file replacing an implied directory', [{ path: 'd/g', type: 'reg' }, { path: 'd', type: 'reg' }], /is a reg, but entries listed before it are inside it/],
    ['a root that is no directory', [{ path: '/', type: 'reg' }], /the root must be a directory/],
    ['an unknown type', [{ path: 'x', type: 'socket' as 'reg' }], /type "socket"/],
    ['a name over 255 bytes', [{ path: 'é'.repeat(128), type: 'reg' }], /longer than 255 bytes/],
    ['a NUL in a path', [{ path: 'a\0b', type: 'reg' }], /NUL/],
    ['an unaligned extent', [{ path: 'f', type: 'reg', extents: [{ device: 0, offset: 100, length: 10 }] }], /offset 100 is not aligned to 4096/, dev],
    ['a chunk size mismatch', [{ path: 'f', type: 'reg', extents: [{ device: 0, offset: 0, length: 4096 }, { device: 0, offset: 8192, length: 10 }] }], /extent 0 is 4096 bytes, not a multiple of the chunk size 8192/, dev],
    ['a file\'s chunk size its extents do not fit', [{ path: 'f', type: 'reg', chunkSize: 16384, extents: [{ device: 0, offset: 0, length: 8192 }, { device: 0, offset: 8192, length: 10 }] }], /extent 0 is 8192 bytes, not a multiple of the chunk size 16384/, dev],
    ['a file\'s chunk size that is no power of two', [{ path: 'f', type: 'reg', chunkSize: 12288, extents: [{ device: 0, offset: 0, length: 10 }] }], /entry "f": chunk size 12288 is not a power of two/, dev],
    ['a chunk size without extents', [{ path: 'f', type: 'reg', chunkSize: 4096, data: Buffer.from('x') }], /has a chunk size and no extents/],
    ['an extent beyond its device', [{ path: 'f', type: 'reg', extents: [{ device: 0, offset: 63 * 4096, length: 8192 }] }], /ends beyond device 0/, dev],
    // The kernel reads a chunk to the end of its last block, and fails (EIO) where the blob ends sooner.
    ['an extent whose last block the device does not hold whole', [{ path: 'f', type: 'reg', extents: [{ device: 0, offset: 0, length: 100 }] }], /\[0, 4096\) ends beyond device 0 \(4000 bytes\)/, { devices: [{ tag: 'b0', size: 4000 }] }],
    ['an unknown device', [{ path: 'f', type: 'reg', extents: [{ device: 1, offset: 0, length: 1 }] }], /extent 0 device 1 is not an integer in \[0, 0\]/, dev],
    ['an empty extent', [{ path: 'f', type: 'reg', extents: [{ hole: true, length: 0 }] }], /extent 0 is empty/, dev],
    ['data and extents', [{ path: 'f', type: 'reg', data: Buffer.from('x'), extents: [] }], /both data and extents/],
    ['a size that disagrees', [{ path: 'f', type: 'reg', data: Buffer.from('x'), size: 2 }], /size 2 does not match its content's 1 bytes/],
    ['content on a directory', [{ path: 'd', type: 'dir', data: Buffer.from('x') }], /a dir has no content/],
    ['a symlink without a target', [{ path: 's', type: 'symlink' }], /symlink has no target/],
    ['a symlink target of 4096 bytes', [{ path: 's', type: 'symlink', linkTarget: 'x'.repeat(4096) }], /the limit is 4095/],
    ['a hard link to nothing', [{ path: 'h', type: 'hardlink', linkTarget: 'nope' }], /hard link target "nope" is not in the tree/],
    ['a hard link to a directory', [{ path: 'd', type: 'dir' }, { path: 'h', type: 'hardlink', linkTarget: 'd' }], /is a directory/],
    ['hard links in a cycle', [{ path: 'h1', type: 'hardlink', linkTarget: 'h2' }, { path: 'h2', type: 'hardlink', linkTarget: 'h1' }], /cycle/],
    ['an xattr namespace EROFS lacks', [{ path: 'f', type: 'reg', xattrs: { 'system.foo': 'x' } }], /xattr name "system.foo" is not in a namespace/],
    ['an xattr prefix alone', [{ path: 'f', type: 'reg', xattrs: { 'user.': 'x' } }], /nothing after its prefix/],
    ['an xattr value over 64 KiB', [{ path: 'f', type: 'reg', xattrs: { 'user.big': Buffer.alloc(65536) } }], /65536 bytes, more than 65535/],
    ['mode bits beyond 07777', [{ path: 'f', type: 'reg', mode: 0o100644 }], /mode 33188 is not an integer/],
    ['a device major over 12 bits', [{ path: 'c', type: 'char', devMajor: 4096 }], /devMajor 4096/],
    ['a fractional mtime', [{ path: 'f', type: 'reg', mtime: 1.5 }], /mtime 1.5 is not an integer/],
    ['a chunk size that is no power of two', [], /chunk size 12288/, { chunkSize: 3 * 4096 }],
    ['a chunk size under a block', [], /chunk size 2048/, { chunkSize: 2048 }],
    ['a device tag over 64 bytes', [], /tag is 65 bytes/, { devices: [{ tag: 'x'.repeat(65), size: 0 }] }],
    ['a volume name over 16 bytes', [], /volume name/, { volumeName: 'x'.repeat(17) }],
  ];
  for (const [what, entries, re, opts] of cases) it(`refuses ${what}`, () => invalid(entries, re, opts));

  it('creates missing parents as tar does, and lets a later entry describe one', () => {
    const { image, inodes } = buildErofs([
      { path: 'a/b/c', type: 'reg', data: Buffer.from('c') },
      { path: 'a', type: 'dir', mode: 0o700, uid: 3 },
      { path: 'h', type: 'hardlink', linkTarget: 'a/b/c' },
    ], { buildTime: T });
    assert.equal(inodes, 4);
    assert.ok(image.length > 0);
  });
});

const skip = erofsSkipReason();

describe('EROFS images mounted by the kernel', { skip }, () => {
  let work: { dir: string; cleanup: () => Promise<void> };
  let blobs: BlobFile[];
  before(async () => {
    work = await erofsWorkdir();
    blobs = [];
    for (const [i, size] of [3 * MiB + 123, 2 * MiB].entries()) {
      const path = join(work.dir, `blob${i}`);
      const bytes = randomBytes(size);
      await writeFile(path, bytes);
      blobs.push({ path, bytes });
    }
  });
  after(async () => {
    await work?.cleanup();
  });
  const devices = (): ErofsBuildOptions['devices'] => blobs.map((b, i) => ({ tag: `blob${i}`, size: b.bytes.length }));
  const acl = (): Buffer => {
    // posix_acl_xattr: version 2, then (tag, perm, id): user::rw-, user:1000:r--, group::r--, mask::r--, other::r--.
    const b = Buffer.alloc(4 + 5 * 8);
    b.writeUInt32LE(2, 0);
    [[1, 6, 0xffffffff], [2, 4, 1000], [4, 4, 0xffffffff], [0x10, 4, 0xffffffff], [0x20, 4, 0xffffffff]].forEach(([tag, perm, id], i) => {
      b.writeUInt16LE(tag!, 4 + i * 8);
      b.writeUInt16LE(perm!, 6 + i * 8);
      b.writeUInt32LE(id!, 8 + i * 8);
    });
    return b;
  };

  const everything = (): ErofsEntry[] => [
    { path: '', type: 'dir', mode: 0o755, mtime: T.seconds },
    { path: 'etc', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T.seconds - 10, mtimeNsec: 123_456_789 },
    { path: 'etc/hostname', type: 'reg', mode: 0o644, data: Buffer.from('box\n'), mtime: T.seconds },
    { path: 'etc/hosts.link', type: 'hardlink', linkTarget: 'etc/hostname' },
    { path: 'etc/motd', type: 'symlink', linkTarget: '/run/motd.dynamic', mtime: T.seconds },
    { path: 'etc/long.link', type: 'symlink', linkTarget: 'a/'.repeat(1500) + 'x', mtime: T.seconds },
    { path: 'usr/bin/tool', type: 'reg', mode: 0o4755, uid: 100_000, gid: 100_001, extents: [{ device: 0, offset: 0, length: MiB }, { device: 1, offset: MiB, length: 1000 }], mtime: -5 },
    { path: 'usr/lib/sparse', type: 'reg', extents: [{ hole: true, length: 2 * MiB }, { device: 0, offset: 2 * MiB, length: MiB }, { hole: true, length: 7 }], mtime: T.seconds },
    { path: 'usr/lib/small', type: 'reg', data: randomBytes(5000), mtime: T.seconds, xattrs: { 'security.capability': Buffer.from('0100000200200000000000000000000000000000', 'hex') } },
    { path: 'usr/lib/empty', type: 'reg', mtime: T.seconds },
    { path: 'dev/null', type: 'char', mode: 0o666, devMajor: 1, devMinor: 3, mtime: T.seconds },
    { path: 'dev/sda1', type: 'block', mode: 0o660, devMajor: 8, devMinor: 1, gid: 6, mtime: T.seconds },
    { path: 'dev/big-minor', type: 'char', devMajor: 4095, devMinor: 0xfffff, mtime: T.seconds },
    { path: 'dev/null.link', type: 'hardlink', linkTarget: 'dev/null' },
    { path: 'run/fifo', type: 'fifo', mode: 0o600, mtime: T.seconds },
    { path: 'var/gone', type: 'char', mode: 0, devMajor: 0, devMinor: 0, mtime: T.seconds },
    { path: 'var/opaque', type: 'dir', mtime: T.seconds, xattrs: { 'trusted.overlay.opaque': 'y' } },
    { path: 'var/opaque/kept', type: 'reg', data: Buffer.from('kept'), mtime: T.seconds },
    { path: 'var/acl', type: 'reg', data: Buffer.from('acl'), mtime: T.seconds, xattrs: { 'system.posix_acl_access': acl(), 'user.note': '' } },
    { path: 'var/acl-dir', type: 'dir', mtime: T.seconds, xattrs: { 'system.posix_acl_default': acl(), 'trusted.overlay.opaque': 'y' } },
    { path: 'var/many-xattrs', type: 'reg', data: Buffer.from('m'), mtime: T.seconds, xattrs: Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`user.attr-${i}`, 'v'.repeat(i * 7)])) },
    { path: 'var/unicode-ünï', type: 'reg', data: Buffer.from('u'), mtime: T.seconds },
    { path: 'var/' + 'L'.repeat(255), type: 'reg', data: Buffer.from('long name'), mtime: T.seconds },
  ];

  it('reads back every entry: content, modes, owners, times, links, devices, xattrs, whiteouts', async () => {
    const entries = everything();
    const { image, blocks } = buildErofs(entries, { buildTime: T, devices: devices(), chunkSize: MiB, volumeName: 'everything' });
    await fsckErofs(work.dir, image, blobs);
    await withErofsMount(work.dir, image, blobs, async (mnt) => {
      await assertInodes(mnt, await walkInodes(mnt), expectedInodes(entries, T, blobs));
      const st = await statfs(mnt);
      // The kernel counts the image's blocks and every device's.
      assert.equal(st.blocks, blocks + blobs.reduce((s, b) => s + Math.ceil(b.bytes.length / BLOCK_SIZE), 0));
    });
  });

  it('serves a chunk-based file over 4 GiB (extended inode, holes, data in a blob)', async () => {
    // 4 GiB + 4 MiB of holes, then 5 bytes of blob 1: the last chunk ends the file.
    const entries: ErofsEntry[] = [{ path: 'huge', type: 'reg', mtime: T.seconds, extents: [
      { hole: true, length: 4 * 1024 * MiB + 4 * MiB }, { device: 1, offset: BLOCK_SIZE, length: 5 },
    ] }];
    const { image } = buildErofs(entries, { buildTime: T, devices: devices(), chunkSize: 4 * MiB });
    await fsckErofs(work.dir, image, blobs);
    await withErofsMount(work.dir, image, blobs, async (mnt) => {
      const seen = await walkInodes(mnt);
      assert.equal(seen.get('huge')!.size, 4 * 1024 * MiB + 4 * MiB + 5);
      await assertInodes(mnt, seen, expectedInodes(entries, T, blobs));
    });
  });

  it('points chunks into 30 devices, with a device table that runs past block 0', async () => {
    const many: BlobFile[] = [];
    for (let i = 0; i < 30; i++) {
      const path = join(work.dir, `many-${i}`);
      const bytes = randomBytes(3 * BLOCK_SIZE);
      await writeFile(path, bytes);
      many.push({ path, bytes });
    }
    const entries: ErofsEntry[] = many.map((_, i) => ({
      path: `f${i}`, type: 'reg', mtime: T.seconds, extents: [{ device: i, offset: (i % 3) * BLOCK_SIZE, length: BLOCK_SIZE }, { device: 29 - i, offset: 0, length: 100 }],
    }));
    const { image, rootNid } = buildErofs(entries, { buildTime: T, devices: many.map((b, i) => ({ tag: `many-${i}`, size: b.bytes.length })), chunkSize: BLOCK_SIZE });
    assert.ok(rootNid * 32 > BLOCK_SIZE, 'the 30 slots end in block 1, the root after them');
    await fsckErofs(work.dir, image, many);
    await withErofsMount(work.dir, image, many, async (mnt) => {
      await assertInodes(mnt, await walkInodes(mnt), expectedInodes(entries, T, many));
    });
  });

  it('keeps an inode\'s shared xattrs beyond the 255 it can list inline', async () => {
    const xattrs = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`trusted.common-${i}`, `value ${i}`]));
    const entries: ErofsEntry[] = ['a', 'b', 'c'].map((p) => ({ path: p, type: 'reg', data: Buffer.from(p), mtime: T.seconds, xattrs }));
    const { image } = buildErofs(entries, { buildTime: T });
    await fsckErofs(work.dir, image, []);
    await withErofsMount(work.dir, image, [], async (mnt) => {
      await assertInodes(mnt, await walkInodes(mnt), expectedInodes(entries, T, []));
    });
  });

  it('stacks under overlayfs: its whiteout hides a lower file, its opaque directory hides a lower directory', async () => {
    const lower = join(work.dir, 'lower');
    await mkdir(join(lower, 'var/opaque'), { recursive: true });
    await writeFile(join(lower, 'var/gone'), 'below');
    await writeFile(join(lower, 'var/opaque/hidden'), 'below');
    await writeFile(join(lower, 'var/seen'), 'below');
    const entries = everything();
    const { image } = buildErofs(entries, { buildTime: T, devices: devices(), chunkSize: MiB });
    await withErofsMount(work.dir, image, blobs, async (mnt) => {
      const merged = join(work.dir, 'merged');
      await mkdir(merged, { recursive: true });
      await mountOverlay(merged, [mnt, lower]);
      try {
        const names = await readdir(join(merged, 'var'));
        assert.ok(!names.includes('gone'), 'the whiteout hides var/gone');
        assert.ok(names.includes('seen'));
        assert.deepEqual(await readdir(join(merged, 'var/opaque')), ['kept']);
        assert.equal(await readFile(join(merged, 'etc/hostname'), 'utf8'), 'box\n');
      } finally {
        await unmount(merged);
      }
    });
  });

  it('reads back what mkfs.erofs reads back from the same tree', async () => {
    // mkfs.erofs (erofs-utils) packs a directory; ours packs the same tree given as entries.
    const src = join(work.dir, 'src');
    const entries: ErofsEntry[] = [
      { path: '', type: 'dir', mode: 0o755, mtime: T.seconds },
      { path: 'd', type: 'dir', mode: 0o750, uid: 7, gid: 8, mtime: T.seconds },
      { path: 'd/f', type: 'reg', mode: 0o640, data: randomBytes(10_000), mtime: T.seconds },
      { path: 'd/h', type: 'hardlink', linkTarget: 'd/f' },
      { path: 'd/s', type: 'symlink', linkTarget: 'f', mtime: T.seconds },
      { path: 'd/p', type: 'fifo', mode: 0o600, mtime: T.seconds },
      { path: 'x', type: 'reg', data: Buffer.from('x'), mtime: T.seconds, xattrs: { 'user.a': '1', 'trusted.b': '2' } },
      ...Array.from({ length: 300 }, (_, i) => ({ path: `many/${'m'.repeat(60)}${i}`, type: 'reg' as const, data: Buffer.from(String(i)), mtime: T.seconds })),
    ];
    await mkdir(join(src, 'd'), { recursive: true });
    await mkdir(join(src, 'many'));
    for (const e of entries) {
      const p = join(src, e.path);
      if (e.type === 'reg') await writeFile(p, e.data!, { mode: e.mode ?? 0o644 });
      if (e.type === 'hardlink') await mustRun('ln', [join(src, e.linkTarget!), p]);
      if (e.type === 'symlink') await mustRun('ln', ['-s', e.linkTarget!, p]);
      if (e.type === 'fifo') await mustRun('mkfifo', [p]);
      if (e.mode !== undefined) await mustRun('chmod', [e.mode.toString(8), p]);
      if (e.uid !== undefined) await mustRun('chown', [`${e.uid}:${e.gid}`, p]);
      for (const [k, v] of Object.entries(e.xattrs ?? {})) await mustRun('setfattr', ['-n', k, '-v', String(v), p]);
    }
    await mustRun('chmod', ['755', src]);
    await mustRun('touch', ['-h', '-d', `@${T.seconds}`, ...entries.filter((e) => e.type !== 'hardlink').map((e) => join(src, e.path)), join(src, 'many')]);
    const ref = join(work.dir, 'mkfs.erofs');
    await mustRun('mkfs.erofs', ['--quiet', `-T${T.seconds}`, ref, src]);
    const theirs = await withErofsMount(work.dir, await readFile(ref), [], (mnt) => walkInodes(mnt));
    const { image } = buildErofs(entries, { buildTime: T });
    const ours = await withErofsMount(work.dir, image, [], (mnt) => walkInodes(mnt));
    // Inode numbers (nids) and directory sizes depend on each builder's layout; everything else must agree.
    const strip = (m: Map<string, SeenInode>): unknown =>
      [...m].map(([p, v]) => [p, { ...v, ino: undefined, size: v.type === 'dir' ? undefined : v.size }]).sort();
    assert.deepEqual(strip(ours), strip(theirs));
    assert.equal(ours.get('d/f')!.ino, ours.get('d/h')!.ino);
  });
});
