// The EROFS image builder: validates the entries into a tree, then one layout pass assigns every
// inode its nid and every data block its address, and the encoders write the image. Layout:
//
//   block 0: [1024 zero bytes][superblock][device table] then the inodes, root first (its nid is
//   16 bits); every inode record (inode, xattr body, then its inline tail or chunk indexes) that
//   fits a block stays within one, as the kernel requires of inline data; then the shared xattrs
//   from a block boundary; then the data blocks of plain files and directories.
//
// Pure: entries in, image bytes out. The output is deterministic for the same input.

import { createHash } from 'node:crypto';
import { InvalidErofsTreeError } from '../errors.js';
import { direntBlockSize, encodeDirentBlock, packDirents, type Dirent } from './dir.js';
import {
  BLOCK_BITS, BLOCK_SIZE, CHUNK_FORMAT_INDEXES, CHUNK_INDEX_SIZE, COMPACT_INODE_SIZE, crc32c, DEVICE_SLOT_SIZE,
  encodeChunkIndex, encodeDev, encodeDeviceSlot, encodeInode, encodeSuperBlock, EXTENDED_INODE_SIZE,
  FEATURE_COMPAT_SB_CHKSUM, FEATURE_INCOMPAT_CHUNKED_FILE, FEATURE_INCOMPAT_DEVICE_TABLE, fileTypeOf, FT_DIR,
  INODE_SLOT_SIZE, LAYOUT_CHUNK_BASED, LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN, NULL_ADDR, S_IFBLK, S_IFCHR, S_IFMT,
  SUPER_OFFSET, SUPER_SIZE,
} from './format.js';
import { buildTree, chunkSizeProblem, type ErofsEntry, type TreeInode } from './tree.js';
import { SharedXattrs, xattrIcount } from './xattr.js';

export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;

/** An extra device: a blob file that chunk-based files point into, passed at mount as `device=PATH`. */
export interface ErofsDevice {
  /** Stored in the device table (at most 64 bytes): a name for the blob, e.g. its digest. */
  tag: string | Uint8Array;
  /** The blob's size in bytes: each extent's last 4 KiB block must lie within it. Recorded in blocks. */
  size: number;
}

export interface ErofsBuildOptions {
  /** Extra devices, in the order the mount names them; extents refer to them by index. */
  devices?: readonly ErofsDevice[];
  /** Chunk size of chunk-based files: a power of two, at least 4096. Default 4 MiB. */
  chunkSize?: number;
  /**
   * The superblock's build time, also the mtime of entries without one and of implied directories.
   * Default: the mtime most entries share, so that the most inodes can be compact.
   */
  buildTime?: { seconds: number; nanoseconds?: number };
  /** 16 bytes; default: derived from the image's content. */
  uuid?: Uint8Array;
  /** At most 16 bytes. */
  volumeName?: string;
  /** Write the superblock's crc32c (feature sb_chksum). Default true. */
  checksum?: boolean;
}

export interface ErofsImage {
  image: Buffer;
  /** Image size in 4 KiB blocks. */
  blocks: number;
  inodes: number;
  rootNid: number;
}

interface Placement {
  node: TreeInode;
  ino: number;
  nid: number;
  extended: boolean;
  layout: number;
  ibody: Buffer;
  /** After the inode and its xattrs: the inline tail, or the chunk indexes (from an 8-aligned offset). */
  tailOffset: number;
  tailSize: number;
  /** Those bytes, except a directory's (its dirents need every nid first). */
  tail: Buffer | undefined;
  /** Regular files and symlinks kept in the image: their bytes. */
  data: Buffer | undefined;
  /** Whole blocks in the data area (flat layouts). */
  dataBlocks: number;
  startblk: number;
  /** Directories: their dirent blocks. */
  dirBlocks: Dirent<TreeInode>[][] | undefined;
}

interface Options {
  devices: { tag: Buffer; size: number }[];
  chunkSize: number;
  buildTime: { seconds: number; nsec: number };
  uuid: Buffer | undefined;
  volumeName: Buffer;
  checksum: boolean;
}

function fail(why: string): never {
  throw new InvalidErofsTreeError('options', why);
}

/** The mtime most entries carry (entries without one take the build time anyway). */
function commonMtime(entries: readonly ErofsEntry[]): { seconds: number; nsec: number } {
  const counts = new Map<string, number>();
  let best = { key: '0:0', n: 0 };
  for (const e of entries) {
    if (typeof e?.mtime !== 'number' || !Number.isSafeInteger(e.mtime)) continue;
    const key = `${e.mtime}:${Number.isSafeInteger(e.mtimeNsec) ? e.mtimeNsec : 0}`;
    const n = (counts.get(key) ?? 0) + 1;
    counts.set(key, n);
    if (n > best.n) best = { key, n };
  }
  const [seconds, nsec] = best.key.split(':').map(Number) as [number, number];
  return { seconds, nsec };
}

function validateOptions(entries: readonly ErofsEntry[], o: ErofsBuildOptions): Options {
  if (typeof o !== 'object' || o === null) fail('options is not an object');
  const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const problem = chunkSizeProblem(chunkSize);
  if (problem) fail(problem);
  if (o.devices !== undefined && !Array.isArray(o.devices)) fail('devices is not an array');
  const devices = (o.devices ?? []).map((d, i) => {
    const tag = typeof d?.tag === 'string' ? Buffer.from(d.tag, 'utf8') : d?.tag instanceof Uint8Array ? Buffer.from(d.tag) : fail(`device ${i} has no tag`);
    if (tag.length === 0 || tag.length > 64) fail(`device ${i} tag is ${tag.length} bytes, not 1 to 64`);
    if (!Number.isSafeInteger(d.size) || d.size < 0 || Math.ceil(d.size / BLOCK_SIZE) > 0xffffffff) fail(`device ${i} size ${String(d.size)} is not a byte count below 16 TiB`);
    return { tag, size: d.size };
  });
  // Root's nid is 16 bits and the root follows the device table.
  if (devices.length > 16_000) fail(`${devices.length} devices are more than the 16000 supported`);
  let buildTime = commonMtime(entries);
  if (o.buildTime !== undefined) {
    if (typeof o.buildTime !== 'object' || o.buildTime === null) fail('build time is not { seconds, nanoseconds }');
    const { seconds, nanoseconds = 0 } = o.buildTime;
    if (!Number.isSafeInteger(seconds)) fail(`build time ${String(seconds)} is not an integer number of seconds`);
    if (!Number.isInteger(nanoseconds) || nanoseconds < 0 || nanoseconds > 999_999_999) fail(`build time nanoseconds ${String(nanoseconds)} is out of range`);
    buildTime = { seconds, nsec: nanoseconds };
  }
  if (o.uuid !== undefined && (!(o.uuid instanceof Uint8Array) || o.uuid.length !== 16)) fail('uuid is not 16 bytes');
  if (o.volumeName !== undefined && typeof o.volumeName !== 'string') fail('volume name is not a string');
  const volumeName = Buffer.from(o.volumeName ?? '', 'utf8');
  if (volumeName.length > 16) fail(`volume name "${o.volumeName}" is longer than 16 bytes`);
  return { devices, chunkSize, buildTime, uuid: o.uuid && Buffer.from(o.uuid), volumeName, checksum: o.checksum ?? true };
}

/** Every inode once, breadth first from the root, children in name order; link counts filled in. */
function inodeOrder(root: TreeInode): { order: TreeInode[]; direntsOf: Map<TreeInode, Dirent<TreeInode>[]> } {
  const order: TreeInode[] = [root];
  const seen = new Set<TreeInode>([root]);
  const direntsOf = new Map<TreeInode, Dirent<TreeInode>[]>();
  for (let i = 0; i < order.length; i++) {
    const dir = order[i]!;
    if (!dir.children) continue;
    const dirents: Dirent<TreeInode>[] = [
      { name: Buffer.from('.'), fileType: FT_DIR, inode: dir },
      { name: Buffer.from('..'), fileType: FT_DIR, inode: dir.parent ?? dir },
    ];
    let subdirs = 0;
    for (const [key, child] of dir.children) {
      dirents.push({ name: Buffer.from(key, 'latin1'), fileType: fileTypeOf(child.mode), inode: child });
      if (child.children) subdirs++;
      else child.nlink++;
      if (!seen.has(child)) {
        seen.add(child);
        order.push(child);
      }
    }
    dir.nlink = 2 + subdirs;
    direntsOf.set(dir, dirents.sort((a, b) => Buffer.compare(a.name, b.name)));
  }
  return { order, direntsOf };
}

function plan(node: TreeInode, ino: number, ibody: Buffer, dirents: Dirent<TreeInode>[] | undefined, o: Options): Placement {
  const dirBlocks = dirents && packDirents(dirents);
  if (dirBlocks) node.size = BLOCK_SIZE * (dirBlocks.length - 1) + direntBlockSize(dirBlocks[dirBlocks.length - 1]!);
  const extended = node.uid > 0xffff || node.gid > 0xffff || node.nlink > 0xffff || node.size > 0xffffffff ||
    node.mtime !== o.buildTime.seconds || node.mtimeNsec !== o.buildTime.nsec;
  const head = (extended ? EXTENDED_INODE_SIZE : COMPACT_INODE_SIZE) + ibody.length;
  const p: Placement = {
    node, ino, nid: 0, extended, layout: LAYOUT_FLAT_PLAIN, ibody, tailOffset: head, tailSize: 0, tail: undefined,
    data: node.content.kind === 'inline' ? node.content.data : undefined, dataBlocks: 0, startblk: NULL_ADDR, dirBlocks,
  };
  const c = node.content;
  if (c.kind === 'chunks') {
    p.layout = LAYOUT_CHUNK_BASED;
    p.tailOffset = (head + CHUNK_INDEX_SIZE - 1) & ~(CHUNK_INDEX_SIZE - 1);
    p.tail = Buffer.concat(c.chunks.map((ch) => (ch ? encodeChunkIndex(ch.deviceId, ch.blkaddr) : encodeChunkIndex(0, NULL_ADDR))));
    p.tailSize = p.tail.length;
  } else if (node.size > 0) {
    const tailSize = node.size % BLOCK_SIZE;
    if (tailSize > 0 && head + tailSize <= BLOCK_SIZE) {
      p.layout = LAYOUT_FLAT_INLINE;
      p.dataBlocks = Math.floor(node.size / BLOCK_SIZE);
      p.tailSize = tailSize;
      p.tail = p.data?.subarray(node.size - tailSize);
    } else {
      p.dataBlocks = Math.ceil(node.size / BLOCK_SIZE);
    }
  }
  return p;
}

function iU(p: Placement): number {
  const kind = p.node.mode & S_IFMT;
  if (kind === S_IFCHR || kind === S_IFBLK) return encodeDev(p.node.rdev.major, p.node.rdev.minor);
  if (p.node.content.kind === 'chunks') return CHUNK_FORMAT_INDEXES | (p.node.content.chunkBits - BLOCK_BITS);
  return p.dataBlocks > 0 ? p.startblk : NULL_ADDR;
}

/** Builds an uncompressed EROFS image (4 KiB blocks) of `entries`; see docs/erofs.md for the subset written. */
export function buildErofs(entries: readonly ErofsEntry[], options: ErofsBuildOptions = {}): ErofsImage {
  const o = validateOptions(entries, options);
  const root = buildTree(entries, {
    chunkSize: o.chunkSize, deviceSizes: o.devices.map((d) => d.size), defaultMtime: o.buildTime,
  });
  const { order, direntsOf } = inodeOrder(root);
  const shared = new SharedXattrs(order.map((n) => n.xattrs));
  const placements = order.map((node, i) => {
    const ibody = shared.ibody(node.xattrs);
    if (xattrIcount(ibody.length) > 0xffff) throw new InvalidErofsTreeError(node.path, `xattrs take ${ibody.length} bytes, more than an inode holds`);
    return plan(node, i + 1, ibody, direntsOf.get(node), o);
  });

  // Inode records, root first.
  const devtSlotOff = (SUPER_OFFSET + SUPER_SIZE) / DEVICE_SLOT_SIZE;
  let pos = SUPER_OFFSET + SUPER_SIZE + DEVICE_SLOT_SIZE * o.devices.length;
  const nidOf = new Map<TreeInode, number>();
  for (const p of placements) {
    pos = Math.ceil(pos / INODE_SLOT_SIZE) * INODE_SLOT_SIZE;
    const size = p.tailOffset + p.tailSize;
    if (pos % BLOCK_SIZE !== 0 && (pos % BLOCK_SIZE) + size > BLOCK_SIZE) pos = Math.ceil(pos / BLOCK_SIZE) * BLOCK_SIZE;
    p.nid = pos / INODE_SLOT_SIZE;
    nidOf.set(p.node, p.nid);
    pos += size;
  }
  const xattrBlkaddr = shared.area.length > 0 ? Math.ceil(pos / BLOCK_SIZE) : 0;
  let nextBlock = shared.area.length > 0 ? xattrBlkaddr + Math.ceil(shared.area.length / BLOCK_SIZE) : Math.ceil(pos / BLOCK_SIZE);
  for (const p of placements) {
    if (p.dataBlocks === 0) continue;
    p.startblk = nextBlock;
    nextBlock += p.dataBlocks;
  }
  if (nextBlock > 0xffffffff) fail(`the image would take ${nextBlock} blocks, more than 32-bit block addresses reach`);

  const image = Buffer.alloc(nextBlock * BLOCK_SIZE);
  o.devices.forEach((d, i) => encodeDeviceSlot(d.tag, Math.ceil(d.size / BLOCK_SIZE)).copy(image, (devtSlotOff + i) * DEVICE_SLOT_SIZE));
  shared.area.copy(image, xattrBlkaddr * BLOCK_SIZE);
  let chunked = false;
  for (const p of placements) {
    const n = p.node;
    const at = p.nid * INODE_SLOT_SIZE;
    encodeInode({
      extended: p.extended, layout: p.layout, xattrIcount: xattrIcount(p.ibody.length), mode: n.mode, nlink: n.nlink,
      size: n.size, u: iU(p), uIsChunkFormat: p.layout === LAYOUT_CHUNK_BASED, ino: p.ino, uid: n.uid, gid: n.gid,
      mtime: n.mtime, mtimeNsec: n.mtimeNsec,
    }).copy(image, at);
    p.ibody.copy(image, at + (p.extended ? EXTENDED_INODE_SIZE : COMPACT_INODE_SIZE));
    chunked ||= p.layout === LAYOUT_CHUNK_BASED;
    if (p.dirBlocks) {
      p.dirBlocks.forEach((block, k) => {
        const bytes = encodeDirentBlock(block, (inode) => nidOf.get(inode)!);
        bytes.copy(image, k < p.dataBlocks ? (p.startblk + k) * BLOCK_SIZE : at + p.tailOffset);
      });
    } else {
      p.tail?.copy(image, at + p.tailOffset);
      if (p.dataBlocks > 0) p.data!.copy(image, p.startblk * BLOCK_SIZE, 0, Math.min(n.size, p.dataBlocks * BLOCK_SIZE));
    }
  }

  const uuid = o.uuid ?? deriveUuid(image);
  const sb = encodeSuperBlock({
    featureCompat: o.checksum ? FEATURE_COMPAT_SB_CHKSUM : 0,
    featureIncompat: (chunked ? FEATURE_INCOMPAT_CHUNKED_FILE : 0) | (o.devices.length > 0 ? FEATURE_INCOMPAT_DEVICE_TABLE : 0),
    rootNid: placements[0]!.nid, inodes: placements.length, buildTime: o.buildTime.seconds, buildTimeNsec: o.buildTime.nsec,
    blocks: nextBlock, metaBlkaddr: 0, xattrBlkaddr, uuid, volumeName: o.volumeName, extraDevices: o.devices.length,
    devtSlotOff: o.devices.length > 0 ? devtSlotOff : 0,
  });
  sb.copy(image, SUPER_OFFSET);
  // The checksum covers the superblock's block from the superblock on, with the checksum field zero.
  if (o.checksum) image.writeUInt32LE(crc32c(0xffffffff, image.subarray(SUPER_OFFSET, BLOCK_SIZE)), SUPER_OFFSET + 4);
  return { image, blocks: nextBlock, inodes: placements.length, rootNid: placements[0]!.nid };
}

/** A UUID (RFC 4122 layout, version 4 bits) from the image's bytes, so the same input gives the same image. */
function deriveUuid(image: Buffer): Buffer {
  const u = createHash('sha256').update(image).digest().subarray(0, 16);
  u[6] = (u[6]! & 0x0f) | 0x40;
  u[8] = (u[8]! & 0x3f) | 0x80;
  return u;
}
