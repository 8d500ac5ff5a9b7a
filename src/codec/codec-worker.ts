// Worker side of the codec pool: the CPU-heavy steps (gzip a member, inflate and verify a chunk,
// verify a chunk read from the store, walk an unpacked layer, read and hash its files, build its
// EROFS image) run here so the main thread keeps serving I/O. The pool side is src/codec/codec-pool.ts.

import { closeSync, openSync, readSync } from 'node:fs';
import { constants, gunzipSync, gzipSync, inflateRawSync } from 'node:zlib';
import { join } from 'node:path';
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { buildErofs, type ErofsBuildOptions } from '../erofs/build.js';
import type { ErofsEntry } from '../erofs/tree.js';
import { InvalidErofsTreeError } from '../errors.js';
import { LayerWalkFailure, walkLayer, type LayerWalk } from './layer-walk.js';
import { sha256Digest } from '../digest.js';

export interface GzipTask {
  data: Uint8Array;
  level: number;
}

/** Compresses one eStargz member. */
export function gzip(task: GzipTask): Uint8Array {
  return move(gzipSync(task.data, { level: task.level })) as Uint8Array;
}

export interface InflateTask {
  member: Uint8Array;
  innerOffset: number;
  chunkSize: number;
  /** "sha256:<hex>" the chunk must hash to, or undefined for stargz chunks without digests. */
  expected: string | undefined;
}

/**
 * Inflates a chunk's member and checks its digest. Returns the bytes, or a string: the reason
 * they were refused (the pool turns it into a typed error; classes do not cross threads). Pure:
 * the pool also calls it on its own thread for members too small to be worth a worker's round trip.
 */
export function inflateChunk(task: InflateTask): Buffer | string {
  let out: Buffer;
  try {
    out = gunzipSync(task.member, { maxOutputLength: task.innerOffset + task.chunkSize + 64 * 1024 * 1024 });
  } catch (err) {
    return `inflate: ${(err as Error).message}`;
  }
  if (out.length < task.innerOffset + task.chunkSize) return `inflate: member holds ${out.length} bytes, chunk needs ${task.innerOffset + task.chunkSize}`;
  const data = out.subarray(task.innerOffset, task.innerOffset + task.chunkSize);
  if (task.expected) {
    const actual = sha256Digest(data);
    if (actual !== task.expected) return `digest: ${actual}`;
  }
  // Copy out only when the chunk is a small part of the member, so the transfer stays small.
  return data.length === out.length ? out : Buffer.from(data);
}

export interface SpanTask {
  /** Raw deflate data from a checkpoint of a gzip index. */
  member: Uint8Array;
  window: Uint8Array;
  /** Where each chunk begins in what the span inflates to, its size and digest. */
  chunks: { innerOffset: number; chunkSize: number; expected: string }[];
  /** Return all the span inflated to as well (a layer held whole keeps it for the chunks read next). */
  keep?: boolean;
}

export interface SpanResult {
  /** Per chunk its bytes or, as inflateChunk, the reason they were refused. */
  chunks: (Uint8Array | string)[];
  /** All the span inflated to, when the task asked to keep it and it inflated. */
  inflated?: Uint8Array;
}

/**
 * Inflates a span of a gzip-indexed layer once and takes each chunk out of it, checked against
 * its digest. Pure; also the worker task (its chunks are copied back: an array is not transferable).
 */
export function inflateSpan(task: SpanTask): SpanResult {
  const need = Math.max(...task.chunks.map((c) => c.innerOffset + c.chunkSize));
  let out: Buffer;
  try {
    out = inflateRawSync(task.member, { dictionary: task.window, finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: need + 64 * 1024 * 1024 });
  } catch (err) {
    return { chunks: task.chunks.map(() => `inflate: ${(err as Error).message}`) };
  }
  const chunks = task.chunks.map((c) => {
    if (out.length < c.innerOffset + c.chunkSize) return `inflate: span holds ${out.length} bytes, chunk needs ${c.innerOffset + c.chunkSize}`;
    const data = out.subarray(c.innerOffset, c.innerOffset + c.chunkSize);
    const bad = checkDigest({ data, expected: c.expected });
    return bad ? `digest: ${bad}` : Buffer.from(data);
  });
  return task.keep ? { chunks, inflated: out } : { chunks };
}

/** The worker task: inflateChunk, its result moved (not copied) back to the pool. */
export function inflate(task: InflateTask): Uint8Array | string {
  const r = inflateChunk(task);
  return typeof r === 'string' ? r : (move(r) as Uint8Array);
}

export interface VerifyTask {
  data: Uint8Array;
  expected: string;
}

/** Checks bytes against their digest: undefined when they match, else the digest they have. Pure, like inflateChunk. */
export function checkDigest(task: VerifyTask): string | undefined {
  const actual = sha256Digest(task.data);
  return actual === task.expected ? undefined : actual;
}

/** The worker task: the bytes moved back when they match, else the digest they have. */
export function verify(task: VerifyTask): Uint8Array | string {
  return checkDigest(task) ?? (move(task.data) as Uint8Array);
}

/** A byte range of a file; `hash`: its sha256 is wanted too. */
export interface FilePiece {
  path: string;
  offset: number;
  length: number;
  hash: boolean;
}

export interface ReadFilePiecesTask {
  pieces: FilePiece[];
}

export interface ReadFilePiecesResult {
  /** The pieces' bytes, one after another. */
  data: Uint8Array;
  /** Per piece read, "sha256:<hex>" where asked for. */
  digests: (string | undefined)[];
  /** The first piece that could not be read whole, and why; those after it are not read. */
  failed?: { piece: number; reason: string };
}

/** Reads `length` bytes at `offset` of the open file into `view`; fewer where the file ends sooner. */
function readFully(fd: number, view: Uint8Array, offset: number): number {
  let got = 0;
  for (let n; got < view.length && (n = readSync(fd, view, got, view.length - got, offset + got)) > 0;) got += n;
  return got;
}

/**
 * Reads (and hashes) file pieces with blocking calls, consecutive pieces of a file through one
 * descriptor: on a worker, the many small reads of a layer's files cost the main thread one task.
 */
export function readFilePieces(task: ReadFilePiecesTask): unknown {
  const data = new Uint8Array(task.pieces.reduce((n, p) => n + p.length, 0));
  const out: ReadFilePiecesResult = { data, digests: [] };
  let file: { path: string; fd: number } | undefined;
  let at = 0;
  try {
    for (const [i, p] of task.pieces.entries()) {
      try {
        if (file?.path !== p.path) {
          if (file) closeSync(file.fd);
          file = undefined;
          file = { path: p.path, fd: openSync(p.path, 'r') };
        }
        const view = data.subarray(at, at + p.length);
        const got = readFully(file.fd, view, p.offset);
        if (got !== p.length) {
          out.failed = { piece: i, reason: `it changed while it was read (${got} of ${p.length} bytes at ${p.offset})` };
          break;
        }
        out.digests.push(p.hash ? sha256Digest(view) : undefined);
        at += p.length;
      } catch (err) {
        out.failed = { piece: i, reason: (err as Error).message };
        break;
      }
    }
  } finally {
    if (file) closeSync(file.fd);
  }
  // The bytes are moved back, not copied.
  return move({ get [transferableSymbol]() { return [data.buffer]; }, get [valueSymbol]() { return out; } });
}

export interface WalkTask {
  root: string;
}

/** The worker task: walkLayer, or where and why it stopped (classes do not cross threads). */
export function walk(task: WalkTask): LayerWalk | { failed: { path: string; reason: string } } {
  try {
    return walkLayer(task.root);
  } catch (err) {
    if (err instanceof LayerWalkFailure) return { failed: { path: err.path, reason: err.reason } };
    throw err;
  }
}

export interface EmptyFilesTask {
  dir: string;
  names: string[];
}

/**
 * Creates each of `names` in `dir`, empty, with blocking calls: a lazy EROFS layer of a thousand
 * small files needs a thousand, and one by one through libuv's four threads, beside the layer's
 * other work, they took most of a second of its mount.
 */
export function emptyFiles(task: EmptyFilesTask): void {
  for (const name of task.names) closeSync(openSync(join(task.dir, name), 'w', 0o644));
}

export interface BuildImageTask {
  entries: ErofsEntry[];
  options: ErofsBuildOptions;
}

/** The worker task: buildErofs, the image moved back; or why an entry was refused (classes do not cross threads). */
export function buildImage(task: BuildImageTask): Uint8Array | { invalid: { entry: string; why: string } } {
  try {
    return move(buildErofs(task.entries, task.options).image) as Uint8Array;
  } catch (err) {
    if (err instanceof InvalidErofsTreeError) return { invalid: { entry: err.entry, why: err.why } };
    throw err;
  }
}
