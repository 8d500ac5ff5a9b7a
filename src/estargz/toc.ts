// The eStargz table of contents: its JSON shape (as the estargz Go package writes it), the typed
// tree a parsed TOC is (toc-parser.ts builds it), and the entries and serializer the converter
// writes. Pure: bytes in, values out; no I/O.

import { MalformedEstargzError } from '../errors.js';
import type { TarHeader } from './tar.js';

export const TOC_TAR_NAME = 'stargz.index.json';
export const TOC_DIGEST_ANNOTATION = 'containerd.io/snapshot/stargz/toc.digest';
export const UNCOMPRESSED_SIZE_ANNOTATION = 'io.containers.estargz.uncompressed-size';
export const PREFETCH_LANDMARK = '.prefetch.landmark';
export const NO_PREFETCH_LANDMARK = '.no.prefetch.landmark';
/** The one byte a landmark file holds. */
export const LANDMARK_CONTENTS = 0x0f;

export type TocEntryType = 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'chunk';

/** One TOC entry as JSON carries it (field names of the estargz Go package). */
export interface TocEntryJson {
  name: string;
  type: TocEntryType;
  size?: number;
  modtime?: string;
  linkName?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  userName?: string;
  groupName?: string;
  offset?: number;
  innerOffset?: number;
  devMajor?: number;
  devMinor?: number;
  xattrs?: Record<string, string>;
  digest?: string;
  chunkOffset?: number;
  chunkSize?: number;
  chunkDigest?: string;
}

export interface TocJson {
  version: number;
  entries: TocEntryJson[];
}

/** One chunk of a regular file: where its gzip member starts and which bytes of the file it holds. */
export interface TocChunk {
  /** Offset in the compressed blob of the gzip member that begins with this chunk. */
  offset: number;
  /** End (exclusive) of the compressed bytes to fetch for this chunk: the next member or the TOC. */
  compressedEnd: number;
  /** Offset inside the decompressed member where the chunk starts (0 for gzip eStargz). */
  innerOffset: number;
  /** Offset of the chunk within the file. */
  chunkOffset: number;
  chunkSize: number;
  /** sha256 of the chunk's uncompressed bytes ("sha256:…"), or undefined in old stargz. */
  chunkDigest: string | undefined;
  /**
   * A chunk of an unmodified gzip layer (src/gzip-index/): its bytes are raw deflate data from a
   * block boundary, inflated with this window as dictionary; absent for eStargz gzip members.
   */
  window?: Buffer;
  /**
   * A gzip-indexed chunk: where in the tar stream its checkpoint (`offset`) is. Inflating from an
   * earlier checkpoint at `from` reaches the chunk at innerOffset + checkpointOut - from.
   */
  checkpointOut?: number;
  /** A gzip-indexed chunk: the compressed bytes it needs end here (at or before compressedEnd, the span's end). */
  dataEnd?: number;
}

/** Index of the last of `sorted` (ascending by `key`) whose key is at most `value`; 0 when none is. */
export function lastAtOrBefore<T>(sorted: readonly T[], value: number, key: (t: T) => number): number {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (key(sorted[mid]!) <= value) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

export interface TocNode {
  /** Path relative to the layer root, without leading or trailing slash; "" is the root. */
  path: string;
  type: Exclude<TocEntryType, 'chunk'>;
  /** Permission and set-id/sticky bits (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  userName: string;
  groupName: string;
  /** Regular files: content size. */
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  /** Symlink target as written, or for a hardlink the path of the file it links to. */
  linkName: string;
  devMajor: number;
  devMinor: number;
  xattrs: Map<string, Buffer>;
  /** sha256 of the whole file content, when the TOC records it. */
  digest: string | undefined;
  chunks: TocChunk[];
  /** Directory children by name. */
  children: Map<string, TocNode> | undefined;
  /** Hard links: every path that names this node shares it; numLink counts them. */
  numLink: number;
}

export interface Toc {
  version: number;
  /** All nodes by path; hard links map to the node of their target. */
  nodes: Map<string, TocNode>;
  root: TocNode;
  /** Hard link paths and the path of the node each names. */
  hardlinks: Map<string, string>;
  /** Whether the TOC holds the prefetch landmark (files before it are the start-up set). */
  prefetchLandmark: boolean;
  /** Regular files listed before the prefetch landmark, in TOC order. */
  prefetchFiles: string[];
  /** Every chunk of the layer in blob order. */
  chunkCount: number;
  /** Sum of regular-file sizes (the bytes that chunks cover). */
  contentBytes: number;
}

/**
 * The TOC entry of a tar header (no offsets or digests yet), as the estargz Go package writes it:
 * names cleaned (MalformedEstargzError naming the entry for one that escapes the root),
 * directories with their trailing slash, the root as ".".
 */
export function tocEntryOfTar(h: TarHeader): TocEntryJson {
  const name = cleanEntryName(h.name, `entry "${h.name}"`);
  const linkName = h.type === 'link' ? cleanEntryName(h.linkname ?? '', `hard link "${h.name}"`) : h.type === 'symlink' ? h.linkname ?? '' : '';
  return tocEntryOf(h, name === '' ? '.' : h.type === 'directory' ? `${name}/` : name, linkName);
}

function tocEntryOf(h: TarHeader, name: string, linkName: string): TocEntryJson {
  const type = ({ file: 'reg', link: 'hardlink', symlink: 'symlink', 'character-device': 'char', 'block-device': 'block', directory: 'dir', fifo: 'fifo' } as const)[h.type];
  const e: TocEntryJson = { name, type };
  if (type === 'reg' && h.size > 0) e.size = h.size;
  e.modtime = new Date(h.mtime * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  if (linkName) e.linkName = linkName;
  if (h.mode & 0o7777) e.mode = h.mode & 0o7777;
  if (h.uid) e.uid = h.uid;
  if (h.gid) e.gid = h.gid;
  if (h.uname) e.userName = h.uname;
  if (h.gname) e.groupName = h.gname;
  if (type === 'char' || type === 'block') {
    if (h.devmajor) e.devMajor = h.devmajor;
    if (h.devminor) e.devMinor = h.devminor;
  }
  const keys = Object.keys(h.xattrs ?? {});
  if (keys.length > 0) e.xattrs = Object.fromEntries(keys.sort().map((k) => [k, h.xattrs![k]!.toString('base64')]));
  return e;
}

/** Normalises an entry name: no "./" or "/" at the start, no "/" at the end, and never "..". */
export function cleanEntryName(raw: string, where: string): string {
  if (raw.includes('\0')) throw new MalformedEstargzError(where, `name contains a NUL byte`);
  const parts: string[] = [];
  for (const part of raw.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw new MalformedEstargzError(where, `name "${raw}" escapes the layer root`);
    parts.push(part);
  }
  return parts.join('/');
}

/** Serialises a TOC the way the estargz Go package does (tab-indented JSON). */
export function encodeToc(toc: TocJson): Buffer {
  return Buffer.from(JSON.stringify(toc, null, '\t'));
}
