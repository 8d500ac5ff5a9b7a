// The EROFS on-disk structures we write (uncompressed, 4 KiB blocks), one small encoder each, with
// the field offsets of the kernel's fs/erofs/erofs_fs.h. Every encoder returns exactly its
// structure's size. Only the pre-48-bit layout is written, so kernels from 5.16 on (chunk indexes,
// device table) and erofs-utils 1.5 read it. Pure: values in, bytes out.

export const BLOCK_SIZE = 4096;
export const BLOCK_BITS = 12;
export const SUPER_OFFSET = 1024;
export const SUPER_SIZE = 128;
export const SUPER_MAGIC = 0xe0f5e1e2;
export const DEVICE_SLOT_SIZE = 128;
export const COMPACT_INODE_SIZE = 32;
export const EXTENDED_INODE_SIZE = 64;
/** Inodes are addressed by nid: their byte offset from the metadata start, in 32-byte slots. */
export const INODE_SLOT_SIZE = 32;
export const XATTR_IBODY_HEADER_SIZE = 12;
export const XATTR_ENTRY_HEADER_SIZE = 4;
export const CHUNK_INDEX_SIZE = 8;
export const DIRENT_SIZE = 12;
export const NAME_MAX = 255;
/** A block address that names no block: a hole in a chunk index, or "no data blocks". */
export const NULL_ADDR = 0xffffffff;

export const FEATURE_COMPAT_SB_CHKSUM = 0x1;
export const FEATURE_INCOMPAT_CHUNKED_FILE = 0x4;
export const FEATURE_INCOMPAT_DEVICE_TABLE = 0x8;

export const LAYOUT_FLAT_PLAIN = 0;
export const LAYOUT_FLAT_INLINE = 2;
export const LAYOUT_CHUNK_BASED = 4;
export const CHUNK_FORMAT_INDEXES = 0x20;
/** chunk size = block size << (format & this mask) */
export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;

export const S_IFMT = 0o170000;
export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFDIR = 0o040000;
export const S_IFBLK = 0o060000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;

export const FT_REG_FILE = 1;
export const FT_DIR = 2;
export const FT_CHRDEV = 3;
export const FT_BLKDEV = 4;
export const FT_FIFO = 5;
export const FT_SYMLINK = 7;

export function fileTypeOf(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFREG: return FT_REG_FILE;
    case S_IFDIR: return FT_DIR;
    case S_IFCHR: return FT_CHRDEV;
    case S_IFBLK: return FT_BLKDEV;
    case S_IFIFO: return FT_FIFO;
    case S_IFLNK: return FT_SYMLINK;
    default: throw new RangeError(`mode ${mode.toString(8)} has no EROFS file type`);
  }
}

/** The kernel's new_encode_dev: 12-bit major, 20-bit minor split around it. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export interface SuperBlock {
  featureCompat: number;
  featureIncompat: number;
  rootNid: number;
  inodes: number;
  buildTime: number;
  buildTimeNsec: number;
  blocks: number;
  metaBlkaddr: number;
  xattrBlkaddr: number;
  uuid: Uint8Array;
  volumeName: Uint8Array;
  extraDevices: number;
  /** Device table offset in 128-byte slots from the image start. */
  devtSlotOff: number;
}

/** The 128-byte superblock (sb_extslots 0), checksum field zero. */
export function encodeSuperBlock(sb: SuperBlock): Buffer {
  const b = Buffer.alloc(SUPER_SIZE);
  b.writeUInt32LE(SUPER_MAGIC, 0);
  b.writeUInt32LE(sb.featureCompat, 8);
  b.writeUInt8(BLOCK_BITS, 12);
  b.writeUInt16LE(sb.rootNid, 14);
  b.writeBigUInt64LE(BigInt(sb.inodes), 16);
  b.writeBigInt64LE(BigInt(sb.buildTime), 24);
  b.writeUInt32LE(sb.buildTimeNsec, 32);
  b.writeUInt32LE(sb.blocks, 36);
  b.writeUInt32LE(sb.metaBlkaddr, 40);
  b.writeUInt32LE(sb.xattrBlkaddr, 44);
  b.set(sb.uuid.subarray(0, 16), 48);
  b.set(sb.volumeName.subarray(0, 16), 64);
  b.writeUInt32LE(sb.featureIncompat, 80);
  b.writeUInt16LE(sb.extraDevices, 86);
  b.writeUInt16LE(sb.devtSlotOff, 88);
  return b;
}

/** One device table slot: the blob's tag (at most 64 bytes) and its size in blocks. */
export function encodeDeviceSlot(tag: Uint8Array, blocks: number): Buffer {
  const b = Buffer.alloc(DEVICE_SLOT_SIZE);
  b.set(tag.subarray(0, 64), 0);
  b.writeUInt32LE(blocks, 64);
  // mapped_blkaddr (68) stays 0: chunks name their device, nothing is addressed through a unified space.
  return b;
}

export interface InodeCore {
  extended: boolean;
  layout: number;
  xattrIcount: number;
  /** Full mode, file type bits included. */
  mode: number;
  nlink: number;
  size: number;
  /** startblk (flat layouts), the chunk format (chunk-based) or the encoded rdev (devices). */
  u: number;
  /** The chunk-based layout keeps a 16-bit format and 16 reserved bits in i_u. */
  uIsChunkFormat: boolean;
  ino: number;
  uid: number;
  gid: number;
  mtime: number;
  mtimeNsec: number;
}

/**
 * A compact (32-byte) or extended (64-byte) inode. A compact inode has no mtime of its own: readers
 * give it the superblock's build time, so the caller uses compact only where the mtime equals that.
 */
export function encodeInode(i: InodeCore): Buffer {
  const b = Buffer.alloc(i.extended ? EXTENDED_INODE_SIZE : COMPACT_INODE_SIZE);
  b.writeUInt16LE((i.extended ? 1 : 0) | (i.layout << 1), 0);
  b.writeUInt16LE(i.xattrIcount, 2);
  b.writeUInt16LE(i.mode, 4);
  const writeU = (): void => {
    if (i.uIsChunkFormat) b.writeUInt16LE(i.u, 16);
    else b.writeUInt32LE(i.u, 16);
  };
  if (i.extended) {
    b.writeBigUInt64LE(BigInt(i.size), 8);
    writeU();
    b.writeUInt32LE(i.ino, 20);
    b.writeUInt32LE(i.uid, 24);
    b.writeUInt32LE(i.gid, 28);
    b.writeBigInt64LE(BigInt(i.mtime), 32);
    b.writeUInt32LE(i.mtimeNsec, 40);
    b.writeUInt32LE(i.nlink, 44);
  } else {
    b.writeUInt16LE(i.nlink, 6);
    b.writeUInt32LE(i.size, 8);
    writeU();
    b.writeUInt32LE(i.ino, 20);
    b.writeUInt16LE(i.uid, 24);
    b.writeUInt16LE(i.gid, 26);
  }
  return b;
}

/** An 8-byte chunk index: device 0 is the image itself, k the k-th device table slot. */
export function encodeChunkIndex(deviceId: number, blkaddr: number): Buffer {
  const b = Buffer.alloc(CHUNK_INDEX_SIZE);
  b.writeUInt16LE(deviceId, 2);
  b.writeUInt32LE(blkaddr, 4);
  return b;
}

export function writeDirent(block: Buffer, at: number, nid: number, nameoff: number, fileType: number): void {
  block.writeBigUInt64LE(BigInt(nid), at);
  block.writeUInt16LE(nameoff, at + 8);
  block.writeUInt8(fileType, at + 10);
}

const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC32C as the kernel's crc32c(seed, …) computes it: no final inversion (EROFS seeds with ~0). */
export function crc32c(seed: number, data: Uint8Array): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC32C_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}
