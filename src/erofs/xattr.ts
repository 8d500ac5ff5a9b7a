// Extended attributes: the name prefixes EROFS abbreviates to an index, the entry encoding (shared
// and inline alike), the shared table (a pair on two or more inodes is written once) and an inode's
// xattr body. Pure.

import { XATTR_ENTRY_HEADER_SIZE, XATTR_IBODY_HEADER_SIZE, NAME_MAX } from './format.js';

/** Name indexes of erofs_fs.h; the ACL names are whole names (an empty suffix). */
const PREFIXES: readonly (readonly [index: number, prefix: string, whole: boolean])[] = [
  [1, 'user.', false],
  [2, 'system.posix_acl_access', true],
  [3, 'system.posix_acl_default', true],
  [4, 'trusted.', false],
  [6, 'security.', false],
];

/** The on-disk value size is 16 bits. */
export const XATTR_VALUE_MAX = 0xffff;
/** h_shared_count is one byte: further shared pairs of an inode go inline. */
const MAX_SHARED_PER_INODE = 255;

export interface Xattr {
  index: number;
  suffix: Buffer;
  value: Buffer;
}

/** Splits a full name into its index and suffix, or says why EROFS cannot carry it. */
export function splitXattrName(name: string): { index: number; suffix: Buffer } | string {
  for (const [index, prefix, whole] of PREFIXES) {
    if (whole ? name !== prefix : !name.startsWith(prefix)) continue;
    const suffix = Buffer.from(name.slice(prefix.length), 'utf8');
    if (!whole && suffix.length === 0) return `xattr name "${name}" has nothing after its prefix`;
    if (suffix.length > NAME_MAX) return `xattr name "${name}" is longer than ${NAME_MAX} bytes after its prefix`;
    if (suffix.includes(0)) return `xattr name "${name}" contains a NUL byte`;
    return { index, suffix };
  }
  return `xattr name "${name}" is not in a namespace EROFS stores (user., trusted., security., system.posix_acl_access/default)`;
}

export function xattrEntrySize(x: Xattr): number {
  return (XATTR_ENTRY_HEADER_SIZE + x.suffix.length + x.value.length + 3) & ~3;
}

export function encodeXattrEntry(x: Xattr, out: Buffer, at: number): void {
  out.writeUInt8(x.suffix.length, at);
  out.writeUInt8(x.index, at + 1);
  out.writeUInt16LE(x.value.length, at + 2);
  x.suffix.copy(out, at + XATTR_ENTRY_HEADER_SIZE);
  x.value.copy(out, at + XATTR_ENTRY_HEADER_SIZE + x.suffix.length);
}

function keyOf(x: Xattr): string {
  return `${x.index}\0${x.suffix.toString('latin1')}\0${x.value.toString('latin1')}`;
}

function compareXattrs(a: Xattr, b: Xattr): number {
  return a.index - b.index || Buffer.compare(a.suffix, b.suffix) || Buffer.compare(a.value, b.value);
}

/** The shared xattr area: each pair that two or more inodes carry, once, with its id (offset / 4). */
export class SharedXattrs {
  private readonly ids = new Map<string, number>();
  readonly area: Buffer;

  constructor(perInode: readonly (readonly Xattr[])[]) {
    const counts = new Map<string, { x: Xattr; n: number }>();
    for (const list of perInode) {
      for (const x of list) {
        const k = keyOf(x);
        const c = counts.get(k);
        if (c) c.n++;
        else counts.set(k, { x, n: 1 });
      }
    }
    const shared = [...counts.values()].filter((c) => c.n > 1).map((c) => c.x).sort(compareXattrs);
    let size = 0;
    for (const x of shared) {
      this.ids.set(keyOf(x), size / 4);
      size += xattrEntrySize(x);
    }
    this.area = Buffer.alloc(size);
    for (const x of shared) encodeXattrEntry(x, this.area, this.ids.get(keyOf(x))! * 4);
  }

  /** An inode's xattr body (erofs_xattr_ibody_header, shared ids, inline entries), empty without xattrs. */
  ibody(list: readonly Xattr[]): Buffer {
    if (list.length === 0) return Buffer.alloc(0);
    const sharedIds: number[] = [];
    const inline: Xattr[] = [];
    for (const x of [...list].sort(compareXattrs)) {
      const id = this.ids.get(keyOf(x));
      if (id !== undefined && sharedIds.length < MAX_SHARED_PER_INODE) sharedIds.push(id);
      else inline.push(x);
    }
    const size = XATTR_IBODY_HEADER_SIZE + 4 * sharedIds.length + inline.reduce((s, x) => s + xattrEntrySize(x), 0);
    const b = Buffer.alloc(size);
    b.writeUInt8(sharedIds.length, 4);
    let at = XATTR_IBODY_HEADER_SIZE;
    for (const id of sharedIds) {
      b.writeUInt32LE(id, at);
      at += 4;
    }
    for (const x of inline) {
      encodeXattrEntry(x, b, at);
      at += xattrEntrySize(x);
    }
    return b;
  }
}

/** i_xattr_icount for a body of `size` bytes: the header counts as one 4-byte unit plus its 8 extra bytes. */
export function xattrIcount(size: number): number {
  return size === 0 ? 0 : (size - XATTR_IBODY_HEADER_SIZE) / 4 + 1;
}
