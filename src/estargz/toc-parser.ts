// Parsing a TOC: every entry validated (types, names that stay in the layer root, integer ranges,
// digests, chunks that cover their file in order and lie before the TOC), the typed tree built
// with tar semantics (a later entry replaces an earlier one, hard links share their target's node).
// Throws MalformedEstargzError naming the entry. Pure: no I/O.

import { SHA256_DIGEST } from '../digest.js';
import { MalformedEstargzError } from '../errors.js';
import { cleanEntryName, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, type Toc, type TocChunk, type TocEntryType, type TocNode } from './toc.js';

/** Sizes beyond this are not a real file: a TOC that claims them is corrupt or hostile. */
export const MAX_ENTRY_SIZE = 2 ** 44; // 16 TiB
export const MAX_TOC_ENTRIES = 4_000_000;

const TYPES = new Set<TocEntryType>(['dir', 'reg', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'chunk']);

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
  const next = new Map(starts.map((s, i) => [s, starts[i + 1] ?? opts.tocOffset]));
  for (const c of allChunks) c.compressedEnd = next.get(c.offset)!;
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
