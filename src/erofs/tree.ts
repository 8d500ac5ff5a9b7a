// The builder's input (a list of entries, as a layer's tar or TOC lists them) and its validation
// into a tree of inodes. Missing parent directories are created as tar extractors do (0755, owned
// by root, with the build time), hard links become further names of their target's inode. Every
// refusal is an InvalidErofsTreeError naming the entry. Pure.

import { InvalidErofsTreeError } from '../errors.js';
import { BLOCK_BITS, BLOCK_SIZE, NAME_MAX, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG } from './format.js';
import { splitXattrName, XATTR_VALUE_MAX, type Xattr } from './xattr.js';

export type ErofsEntryType = 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

/** Bytes `[offset, offset + length)` of an extra device (a blob file) that hold part of a file. */
export interface ErofsExtent {
  /** Index into ErofsBuildOptions.devices. */
  device: number;
  /** Byte offset in that device, a multiple of 4096. */
  offset: number;
  length: number;
}

/** A run of zeros stored nowhere. */
export interface ErofsHole {
  hole: true;
  length: number;
}

export interface ErofsEntry {
  /** Relative to the image root ("a/b"; "", "." or "/" is the root itself); "..", NUL and empty names are refused. */
  path: string;
  type: ErofsEntryType;
  /** Permission, set-id and sticky bits; default 0755 for directories, 0777 for symlinks, 0644 otherwise. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch (may be negative); default: the build time. */
  mtime?: number;
  mtimeNsec?: number;
  /** Regular file: content written into the image itself. */
  data?: Uint8Array;
  /**
   * Regular file: content as consecutive extents of extra devices and holes. Each extent but the
   * last covers whole chunks (a multiple of the chunk size); the last ends the file.
   */
  extents?: readonly (ErofsExtent | ErofsHole)[];
  /** Regular file: when given, must equal the content's length. */
  size?: number;
  /** Chunk-based regular file: its own chunk size (a power of two from 4096), in place of the build's. */
  chunkSize?: number;
  /** Symlink: its target. Hard link: the path of the entry it is another name of. */
  linkTarget?: string;
  /** Character and block devices (a whiteout is a character device 0/0). */
  devMajor?: number;
  devMinor?: number;
  /** Full names ("user.x", "trusted.overlay.opaque", "security.capability", "system.posix_acl_access"). */
  xattrs?: Readonly<Record<string, Uint8Array | string>>;
}

export type FileContent =
  | { kind: 'none' }
  | { kind: 'inline'; data: Buffer }
  /** One element per chunk of 2^chunkBits bytes: a device id (1-based, as on disk) and block, or null for a hole. */
  | { kind: 'chunks'; chunkBits: number; chunks: ({ deviceId: number; blkaddr: number } | null)[] };

export interface TreeInode {
  /** The path it was first listed under (errors name it). */
  path: string;
  /** Full mode, file type included. */
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  mtimeNsec: number;
  size: number;
  content: FileContent;
  /** Directories: children by name (UTF-8 bytes as latin1 keys keep byte order sortable). */
  children: Map<string, TreeInode> | undefined;
  parent: TreeInode | undefined;
  rdev: { major: number; minor: number };
  xattrs: Xattr[];
  nlink: number;
}

export interface TreeLimits {
  chunkSize: number;
  /** Sizes of the extra devices, in bytes. */
  deviceSizes: readonly number[];
  defaultMtime: { seconds: number; nsec: number };
}

const FORMATS: Record<Exclude<ErofsEntryType, 'hardlink'>, number> = {
  dir: S_IFDIR, reg: S_IFREG, symlink: S_IFLNK, char: S_IFCHR, block: S_IFBLK, fifo: S_IFIFO,
};

/** "a//b/./c/" -> ["a", "b", "c"]; refuses ".." (it would escape the root). */
export function splitEntryPath(path: string): string[] {
  if (typeof path !== 'string') throw new InvalidErofsTreeError(String(path), 'path is not a string');
  if (path.includes('\0')) throw new InvalidErofsTreeError(path, 'path contains a NUL byte');
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new InvalidErofsTreeError(path, 'path escapes the image root ("..")');
    if (Buffer.byteLength(part) > NAME_MAX) throw new InvalidErofsTreeError(path, `name "${part.slice(0, 40)}…" is longer than ${NAME_MAX} bytes`);
    parts.push(part);
  }
  return parts;
}

/** A whole number in [0, max]; `dflt` when absent, or absent is refused when there is no default. */
function uint(path: string, field: string, v: unknown, max: number, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (v === undefined) throw new InvalidErofsTreeError(path, `${field} is missing`);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) {
    throw new InvalidErofsTreeError(path, `${field} ${String(v)} is not an integer in [0, ${max}]`);
  }
  return v;
}

/** An inode with the defaults of an implied directory; an entry's fields replace them. */
function newInode(path: string, parent: TreeInode | undefined, dir: boolean, t: TreeLimits): TreeInode {
  return {
    path, mode: S_IFDIR | 0o755, uid: 0, gid: 0, mtime: t.defaultMtime.seconds, mtimeNsec: t.defaultMtime.nsec, size: 0,
    content: { kind: 'none' }, children: dir ? new Map() : undefined, parent, rdev: { major: 0, minor: 0 }, xattrs: [], nlink: 0,
  };
}

function parseXattrs(path: string, raw: ErofsEntry['xattrs']): Xattr[] {
  if (raw === undefined) return [];
  if (typeof raw !== 'object' || raw === null) throw new InvalidErofsTreeError(path, 'xattrs is not an object');
  return Object.entries(raw).map(([name, v]) => {
    const split = splitXattrName(name);
    if (typeof split === 'string') throw new InvalidErofsTreeError(path, split);
    if (typeof v !== 'string' && !(v instanceof Uint8Array)) throw new InvalidErofsTreeError(path, `xattr "${name}" value is neither a string nor bytes`);
    const value = typeof v === 'string' ? Buffer.from(v, 'utf8') : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    if (value.length > XATTR_VALUE_MAX) throw new InvalidErofsTreeError(path, `xattr "${name}" value is ${value.length} bytes, more than ${XATTR_VALUE_MAX}`);
    return { ...split, value };
  });
}

/** A power of two from 4096 to 4096 << 31 (the chunk format's 5 bits), or undefined. */
export function chunkSizeProblem(chunkSize: unknown): string | undefined {
  const bits = typeof chunkSize === 'number' ? Math.log2(chunkSize) : NaN;
  if (Number.isInteger(bits) && bits >= BLOCK_BITS && bits - BLOCK_BITS <= 31) return undefined;
  return `chunk size ${String(chunkSize)} is not a power of two from ${BLOCK_SIZE} to ${BLOCK_SIZE} << 31`;
}

function parseExtents(path: string, extents: NonNullable<ErofsEntry['extents']>, chunkSize: number | undefined, t: TreeLimits): { size: number; content: FileContent } {
  if (!Array.isArray(extents)) throw new InvalidErofsTreeError(path, 'extents is not an array');
  if (chunkSize !== undefined) {
    const problem = chunkSizeProblem(chunkSize);
    if (problem) throw new InvalidErofsTreeError(path, problem);
  }
  const chunk = chunkSize ?? t.chunkSize;
  const chunks: ({ deviceId: number; blkaddr: number } | null)[] = [];
  let size = 0;
  extents.forEach((e: ErofsExtent | ErofsHole, i) => {
    const where = `extent ${i}`;
    if (typeof e !== 'object' || e === null) throw new InvalidErofsTreeError(path, `${where} is not an object`);
    const length = uint(path, `${where} length`, e.length, Number.MAX_SAFE_INTEGER);
    if (length === 0) throw new InvalidErofsTreeError(path, `${where} is empty`);
    if (i < extents.length - 1 && length % chunk !== 0) {
      throw new InvalidErofsTreeError(path, `${where} is ${length} bytes, not a multiple of the chunk size ${chunk} (only the last extent may end inside a chunk)`);
    }
    const n = Math.ceil(length / chunk);
    if ('hole' in e && e.hole === true) {
      for (let k = 0; k < n; k++) chunks.push(null);
    } else {
      const ext = e as ErofsExtent;
      if (t.deviceSizes.length === 0) throw new InvalidErofsTreeError(path, `${where} names a device, and the build has none`);
      const device = uint(path, `${where} device`, ext.device, t.deviceSizes.length - 1);
      const offset = uint(path, `${where} offset`, ext.offset, Number.MAX_SAFE_INTEGER);
      if (offset % BLOCK_SIZE !== 0) throw new InvalidErofsTreeError(path, `${where} offset ${offset} is not aligned to ${BLOCK_SIZE} bytes`);
      // The kernel reads a chunk to the end of its last block and fails the read (EIO) where the blob is shorter.
      const end = offset + Math.ceil(length / BLOCK_SIZE) * BLOCK_SIZE;
      if (end > t.deviceSizes[device]!) {
        throw new InvalidErofsTreeError(path, `${where} [${offset}, ${end}) ends beyond device ${device} (${t.deviceSizes[device]} bytes): a blob must hold each extent's last block whole`);
      }
      for (let k = 0; k < n; k++) chunks.push({ deviceId: device + 1, blkaddr: (offset + k * chunk) / BLOCK_SIZE });
    }
    size += length;
  });
  return { size, content: size === 0 ? { kind: 'none' } : { kind: 'chunks', chunkBits: Math.log2(chunk), chunks } };
}

function fileContent(path: string, e: ErofsEntry, t: TreeLimits): { size: number; content: FileContent } {
  if (e.data !== undefined && e.extents !== undefined) throw new InvalidErofsTreeError(path, 'has both data and extents');
  if (e.chunkSize !== undefined && e.extents === undefined) throw new InvalidErofsTreeError(path, 'has a chunk size and no extents');
  let r: { size: number; content: FileContent } = { size: 0, content: { kind: 'none' } };
  if (e.data !== undefined) {
    if (!(e.data instanceof Uint8Array)) throw new InvalidErofsTreeError(path, 'data is not bytes');
    const data = Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength);
    r = { size: data.length, content: data.length === 0 ? { kind: 'none' } : { kind: 'inline', data } };
  } else if (e.extents !== undefined) {
    r = parseExtents(path, e.extents, e.chunkSize, t);
  }
  if (e.size !== undefined && e.size !== r.size) throw new InvalidErofsTreeError(path, `size ${e.size} does not match its content's ${r.size} bytes`);
  return r;
}

function fillInode(node: TreeInode, e: ErofsEntry, path: string, t: TreeLimits): void {
  const type = e.type as Exclude<ErofsEntryType, 'hardlink'>;
  const perm = uint(path, 'mode', e.mode, 0o7777, type === 'dir' ? 0o755 : type === 'symlink' ? 0o777 : 0o644);
  node.mode = FORMATS[type] | perm;
  node.uid = uint(path, 'uid', e.uid, 0xffffffff, 0);
  node.gid = uint(path, 'gid', e.gid, 0xffffffff, 0);
  if (e.mtime !== undefined && (typeof e.mtime !== 'number' || !Number.isSafeInteger(e.mtime))) {
    throw new InvalidErofsTreeError(path, `mtime ${String(e.mtime)} is not an integer number of seconds`);
  }
  node.mtime = e.mtime ?? t.defaultMtime.seconds;
  node.mtimeNsec = uint(path, 'mtimeNsec', e.mtimeNsec, 999_999_999, e.mtime === undefined ? t.defaultMtime.nsec : 0);
  node.xattrs = parseXattrs(path, e.xattrs);
  if (type === 'reg') {
    Object.assign(node, fileContent(path, e, t));
  } else if (e.data !== undefined || e.extents !== undefined) {
    throw new InvalidErofsTreeError(path, `a ${type} has no content`);
  }
  if (type === 'symlink') {
    if (typeof e.linkTarget !== 'string' || e.linkTarget === '') throw new InvalidErofsTreeError(path, 'symlink has no target');
    const target = Buffer.from(e.linkTarget, 'utf8');
    if (target.length >= BLOCK_SIZE) throw new InvalidErofsTreeError(path, `symlink target is ${target.length} bytes, the limit is ${BLOCK_SIZE - 1}`);
    if (target.includes(0)) throw new InvalidErofsTreeError(path, 'symlink target contains a NUL byte');
    node.content = { kind: 'inline', data: target };
    node.size = target.length;
  }
  if (type === 'char' || type === 'block') {
    node.rdev = { major: uint(path, 'devMajor', e.devMajor, 0xfff, 0), minor: uint(path, 'devMinor', e.devMinor, 0xfffff, 0) };
  }
}

/**
 * Validates the entries and links them into a tree. An entry for an existing directory (the root,
 * or one created for a deeper path before it) sets that directory's metadata; any other repeated
 * path is refused, as is a path under a non-directory.
 */
export function buildTree(entries: readonly ErofsEntry[], t: TreeLimits): TreeInode {
  if (!Array.isArray(entries)) throw new InvalidErofsTreeError('options', 'entries is not an array');
  const root = newInode('', undefined, true, t);
  const byPath = new Map<string, TreeInode>([['', root]]);
  /** Directories that an entry of their own described (a second one is a duplicate). */
  const described = new Set<TreeInode>();
  const links: { path: string; parts: string[]; target: string }[] = [];

  const parentFor = (parts: string[], path: string): TreeInode => {
    let dir = root;
    for (let i = 0; i < parts.length - 1; i++) {
      const name = Buffer.from(parts[i]!, 'utf8').toString('latin1');
      let next = dir.children!.get(name);
      if (!next) {
        next = newInode(parts.slice(0, i + 1).join('/'), dir, true, t);
        dir.children!.set(name, next);
        byPath.set(next.path, next);
      } else if (!next.children) {
        throw new InvalidErofsTreeError(path, `parent "${next.path}" is not a directory`);
      }
      dir = next;
    }
    return dir;
  };

  for (const e of entries) {
    if (typeof e !== 'object' || e === null) throw new InvalidErofsTreeError('options', 'an entry is not an object');
    const parts = splitEntryPath(e.path);
    const path = parts.join('/');
    if (!Object.hasOwn(FORMATS, e.type) && e.type !== 'hardlink') throw new InvalidErofsTreeError(path, `type "${String(e.type)}" is not one of dir, reg, symlink, hardlink, char, block, fifo`);
    if (e.type === 'hardlink') {
      if (typeof e.linkTarget !== 'string') throw new InvalidErofsTreeError(path, 'hard link has no target');
      if (path === '') throw new InvalidErofsTreeError(path, 'the root cannot be a hard link');
      links.push({ path, parts, target: splitEntryPath(e.linkTarget).join('/') });
      continue;
    }
    if (path === '' && e.type !== 'dir') throw new InvalidErofsTreeError(path, `the root must be a directory, not a ${e.type}`);
    const existing = byPath.get(path);
    if (existing) {
      if (!existing.children || described.has(existing)) throw new InvalidErofsTreeError(path, 'is listed twice');
      if (e.type !== 'dir') throw new InvalidErofsTreeError(path, `is a ${e.type}, but entries listed before it are inside it`);
      fillInode(existing, e, path, t);
      described.add(existing);
      continue;
    }
    const parent = parentFor(parts, path);
    const node = newInode(path, parent, e.type === 'dir', t);
    fillInode(node, e, path, t);
    if (e.type === 'dir') described.add(node);
    parent.children!.set(Buffer.from(parts[parts.length - 1]!, 'utf8').toString('latin1'), node);
    byPath.set(path, node);
  }

  // Hard links last, so a link may come before its target in the list (tar puts it after).
  const linkTargets = new Map(links.map((l) => [l.path, l.target]));
  for (const l of links) {
    let target = l.target;
    const seen = new Set<string>([l.path]);
    while (linkTargets.has(target) && !byPath.has(target)) {
      if (seen.has(target)) throw new InvalidErofsTreeError(l.path, 'hard links form a cycle');
      seen.add(target);
      target = linkTargets.get(target)!;
    }
    const node = byPath.get(target);
    if (!node) throw new InvalidErofsTreeError(l.path, `hard link target "${l.target}" is not in the tree`);
    if (node.children) throw new InvalidErofsTreeError(l.path, `hard link target "${l.target}" is a directory`);
    if (byPath.has(l.path)) throw new InvalidErofsTreeError(l.path, 'is listed twice');
    const parent = parentFor(l.parts, l.path);
    parent.children!.set(Buffer.from(l.parts[l.parts.length - 1]!, 'utf8').toString('latin1'), node);
    byPath.set(l.path, node);
  }
  return root;
}
