// The eStargz table of contents: its JSON shape (as the estargz Go package writes it), a parser
// that validates every entry and builds a typed tree, and the serializer the converter uses.
// Pure: bytes in, values out; no I/O.

import { MalformedEstargzError } from '../errors.js';
import type { TarHeader } from './tar.js';
import { SHA256_DIGEST } from '../digest.js';

export const TOC_TAR_NAME = 'stargz.index.json';
export const TOC_DIGEST_ANNOTATION = 'containerd.io/snapshot/stargz/toc.digest';
export const UNCOMPRESSED_SIZE_ANNOTATION = 'io.containers.estargz.uncompressed-size';
export const PREFETCH_LANDMARK = '.prefetch.landmark';
export const NO_PREFETCH_LANDMARK = '.no.prefetch.landmark';
/** The one byte a landmark file holds. */
export const LANDMARK_CONTENTS = 0x0f;

/** Sizes beyond this are not a real file: a TOC that claims them is corrupt or hostile. */
export const MAX_ENTRY_SIZE = 2 ** 44; // 16 TiB
export const MAX_TOC_ENTRIES = 4_000_000;

export type TocEntryType = 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'chunk';
const TYPES = new Set<TocEntryType>(['dir', 'reg', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'chunk']);

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

function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

function baseOf(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function newNode(path: string, type: TocNode['type']): TocNode {
  return {
    path, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, userName: '', groupName: '', size: 0, mtime: 0,
    linkName: '', devMajor: 0, devMinor: 0, xattrs: new Map(), digest: undefined, chunks: [],
    children: type === 'dir' ? new Map() : undefined, numLink: 1,
  };
}

function int(e: Record<string, unknown>, key: string, where: string, max = Number.MAX_SAFE_INTEGER): number {
  const v = e[key];
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) {
    throw new MalformedEstargzError(where, `field "${key}" is ${JSON.stringify(v)}, not an integer in [0, ${max}]`);
  }
  return v;
}

function str(e: Record<string, unknown>, key: string, where: string): string {
  const v = e[key];
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') throw new MalformedEstargzError(where, `field "${key}" is not a string`);
  return v;
}

function parseModtime(s: string, where: string): number {
  if (s === '') return 0;
  const t = Date.parse(s);
  if (Number.isNaN(t)) throw new MalformedEstargzError(where, `modtime "${s}" is not an RFC 3339 time`);
  return Math.floor(t / 1000);
}

export interface ParseTocOptions {
  /** Offset of the TOC in the blob: every chunk must lie before it. */
  tocOffset: number;
}

/** Parses and validates TOC JSON bytes into a tree. Throws MalformedEstargzError naming the entry. */
export function parseToc(json: Buffer, opts: ParseTocOptions): Toc {
  let doc: unknown;
  try {
    doc = JSON.parse(json.toString('utf8'));
  } catch (err) {
    throw new MalformedEstargzError('TOC', `not valid JSON (${(err as Error).message})`);
  }
  return tocOfJson(doc, opts);
}

/** parseToc of a TOC already parsed from JSON (a gzip index carries one inside its own document). */
export function tocOfJson(doc: unknown, opts: ParseTocOptions): Toc {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new MalformedEstargzError('TOC', 'not a JSON object');
  const { version, entries } = doc as { version?: unknown; entries?: unknown };
  if (version !== 1) throw new MalformedEstargzError('TOC', `version ${JSON.stringify(version)} is not supported (expected 1)`);
  if (!Array.isArray(entries)) throw new MalformedEstargzError('TOC', '"entries" is not an array');
  if (entries.length > MAX_TOC_ENTRIES) throw new MalformedEstargzError('TOC', `${entries.length} entries is more than the ${MAX_TOC_ENTRIES} allowed`);

  const root = newNode('', 'dir');
  const nodes = new Map<string, TocNode>([['', root]]);
  const hardlinks = new Map<string, string>();
  const prefetchFiles: string[] = [];
  let prefetchLandmark = false;
  let lastReg: TocNode | undefined;
  let nextChunkOffset = 0;
  const allChunks: TocChunk[] = [];

  const ensureDir = (path: string, where: string): TocNode => {
    const existing = nodes.get(path);
    if (existing) {
      if (existing.type !== 'dir') throw new MalformedEstargzError(where, `parent "${path}" is a ${existing.type}, not a directory`);
      return existing;
    }
    const parent = ensureDir(parentOf(path), where);
    const dir = newNode(path, 'dir');
    nodes.set(path, dir);
    parent.children!.set(baseOf(path), dir);
    return dir;
  };

  for (let i = 0; i < entries.length; i++) {
    const raw = entries[i] as Record<string, unknown>;
    if (typeof raw !== 'object' || raw === null) throw new MalformedEstargzError(`TOC entry ${i}`, 'not an object');
    if (typeof raw.name !== 'string') throw new MalformedEstargzError(`TOC entry ${i}`, 'has no name');
    const where = `TOC entry ${i} ("${raw.name}")`;
    const type = raw.type as TocEntryType;
    if (!TYPES.has(type)) throw new MalformedEstargzError(where, `unknown type ${JSON.stringify(raw.type)}`);
    const path = cleanEntryName(raw.name, where);

    if (type === 'chunk') {
      if (!lastReg || lastReg.path !== path) throw new MalformedEstargzError(where, 'chunk does not follow its regular file');
      allChunks.push(chunkOf(raw, lastReg, nextChunkOffset, where, opts));
      nextChunkOffset = lastReg.chunks.at(-1)!.chunkOffset + lastReg.chunks.at(-1)!.chunkSize;
      continue;
    }
    if (lastReg && nextChunkOffset !== lastReg.size) {
      throw new MalformedEstargzError(`TOC entry for "${lastReg.path}"`, `chunks cover ${nextChunkOffset} of its ${lastReg.size} bytes`);
    }
    lastReg = undefined;

    if (path === PREFETCH_LANDMARK || path === NO_PREFETCH_LANDMARK) {
      if (path === PREFETCH_LANDMARK) prefetchLandmark = true;
      continue;
    }
    if (path === '') {
      if (type !== 'dir') throw new MalformedEstargzError(where, 'the layer root is not a directory');
      applyAttrs(root, raw, where);
      continue;
    }
    const parent = ensureDir(parentOf(path), where);

    if (type === 'hardlink') {
      const target = cleanEntryName(str(raw, 'linkName', where), where);
      const resolved = hardlinks.get(target) ?? target;
      const node = nodes.get(resolved);
      if (!node) throw new MalformedEstargzError(where, `hard link target "${target}" is not an earlier entry`);
      if (node.type === 'dir') throw new MalformedEstargzError(where, `hard link target "${target}" is a directory`);
      if (resolved === path) throw new MalformedEstargzError(where, 'hard link points to itself');
      replaceAt(nodes, hardlinks, parent, path);
      hardlinks.set(path, resolved);
      nodes.set(path, node);
      node.numLink++;
      parent.children!.set(baseOf(path), node);
      continue;
    }

    const existing = nodes.get(path);
    if (existing && existing.type === 'dir' && type === 'dir') {
      applyAttrs(existing, raw, where); // an implicit parent, now described
      continue;
    }
    replaceAt(nodes, hardlinks, parent, path);
    const node = newNode(path, type);
    applyAttrs(node, raw, where);
    if (type === 'symlink') {
      node.linkName = str(raw, 'linkName', where);
      if (node.linkName === '') throw new MalformedEstargzError(where, 'symlink has no target');
    }
    if (type === 'char' || type === 'block') {
      node.devMajor = int(raw, 'devMajor', where, 0xfffff);
      node.devMinor = int(raw, 'devMinor', where, 0xfffff);
    }
    if (type === 'reg') {
      node.size = int(raw, 'size', where, MAX_ENTRY_SIZE);
      const digest = str(raw, 'digest', where);
      if (digest !== '' && !SHA256_DIGEST.test(digest)) throw new MalformedEstargzError(where, `digest "${digest}" is not sha256:<64 hex>`);
      node.digest = digest || undefined;
      nextChunkOffset = 0;
      if (node.size > 0) {
        allChunks.push(chunkOf(raw, node, 0, where, opts));
        nextChunkOffset = node.chunks[0]!.chunkSize;
      }
      lastReg = node;
      if (!prefetchLandmark) prefetchFiles.push(path);
    }
    nodes.set(path, node);
    parent.children!.set(baseOf(path), node);
  }
  if (lastReg && nextChunkOffset !== lastReg.size) {
    throw new MalformedEstargzError(`TOC entry for "${lastReg.path}"`, `chunks cover ${nextChunkOffset} of its ${lastReg.size} bytes`);
  }

  // A chunk's compressed bytes run to the next member: the next larger chunk offset, or the TOC.
  const starts = [...new Set(allChunks.map((c) => c.offset))].sort((a, b) => a - b);
  for (const c of allChunks) {
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid]! <= c.offset) lo = mid + 1;
      else hi = mid;
    }
    c.compressedEnd = lo < starts.length ? starts[lo]! : opts.tocOffset;
  }
  const contentBytes = [...new Set(nodes.values())].reduce((n, node) => n + (node.type === 'reg' ? node.size : 0), 0);
  return {
    version: 1, nodes, root, hardlinks, prefetchLandmark,
    prefetchFiles: prefetchLandmark ? prefetchFiles : [], chunkCount: allChunks.length, contentBytes,
  };
}

/** A later entry at the same path replaces an earlier one (tar semantics). */
function replaceAt(nodes: Map<string, TocNode>, hardlinks: Map<string, string>, parent: TocNode, path: string): void {
  const old = nodes.get(path);
  if (!old) return;
  if (old.type === 'dir') {
    for (const key of [...nodes.keys()]) if (key.startsWith(path + '/')) nodes.delete(key);
  }
  if (old.numLink > 1) old.numLink--;
  hardlinks.delete(path);
  nodes.delete(path);
  parent.children!.delete(baseOf(path));
}

function applyAttrs(node: TocNode, raw: Record<string, unknown>, where: string): void {
  node.mode = int(raw, 'mode', where, 0o7777777) & 0o7777;
  node.uid = int(raw, 'uid', where, 0xffffffff);
  node.gid = int(raw, 'gid', where, 0xffffffff);
  node.userName = str(raw, 'userName', where);
  node.groupName = str(raw, 'groupName', where);
  node.mtime = parseModtime(str(raw, 'modtime', where), where);
  const xattrs = raw.xattrs;
  if (xattrs !== undefined && xattrs !== null) {
    if (typeof xattrs !== 'object' || Array.isArray(xattrs)) throw new MalformedEstargzError(where, '"xattrs" is not an object');
    for (const [k, v] of Object.entries(xattrs)) {
      if (typeof v !== 'string') throw new MalformedEstargzError(where, `xattr "${k}" is not base64 text`);
      node.xattrs.set(k, Buffer.from(v, 'base64'));
    }
  }
}

function chunkOf(raw: Record<string, unknown>, file: TocNode, expectedOffset: number, where: string, opts: ParseTocOptions): TocChunk {
  const chunkOffset = int(raw, 'chunkOffset', where, MAX_ENTRY_SIZE);
  if (chunkOffset !== expectedOffset) {
    throw new MalformedEstargzError(where, `chunk starts at ${chunkOffset}, expected ${expectedOffset}`);
  }
  let chunkSize = int(raw, 'chunkSize', where, MAX_ENTRY_SIZE);
  // The last chunk of a file may leave chunkSize out: it runs to the end of the file.
  if (chunkSize === 0) chunkSize = file.size - chunkOffset;
  if (chunkSize <= 0 || chunkOffset + chunkSize > file.size) {
    throw new MalformedEstargzError(where, `chunk [${chunkOffset}, ${chunkOffset + chunkSize}) lies outside the file's ${file.size} bytes`);
  }
  const offset = int(raw, 'offset', where);
  if (offset >= opts.tocOffset) throw new MalformedEstargzError(where, `chunk offset ${offset} is not before the TOC at ${opts.tocOffset}`);
  const chunkDigest = str(raw, 'chunkDigest', where);
  if (chunkDigest !== '' && !SHA256_DIGEST.test(chunkDigest)) throw new MalformedEstargzError(where, `chunkDigest "${chunkDigest}" is not sha256:<64 hex>`);
  const chunk: TocChunk = {
    offset, compressedEnd: opts.tocOffset, innerOffset: int(raw, 'innerOffset', where), chunkOffset, chunkSize,
    chunkDigest: chunkDigest || undefined,
  };
  file.chunks.push(chunk);
  return chunk;
}

/** Serialises a TOC the way the estargz Go package does (tab-indented JSON). */
export function encodeToc(toc: TocJson): Buffer {
  return Buffer.from(JSON.stringify(toc, null, '\t'));
}
