// Pool side of the codec workers (piscina): gzip members for the converter, inflate and verify
// chunks for the fetcher, verify chunks read from the store, read and hash the files of an
// unpacked layer for kernel mode. One pool per process, sized to the machine.

import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { Piscina } from 'piscina';
import { sha256Digest } from '../digest.js';
import { ChunkDigestMismatchError, InvalidErofsTreeError, MalformedEstargzError, MalformedLayerError } from '../errors.js';
import type { ErofsBuildOptions } from '../erofs/build.js';
import type { ErofsEntry } from '../erofs/tree.js';
import { checkDigest, inflateChunk, inflateSpan, type FilePiece, type GzipTask, type InflateTask, type ReadFilePiecesResult, type SpanResult, type SpanTask, type VerifyTask, type WalkTask, type BuildImageTask, type EmptyFilesTask } from './codec-worker.js';
import type { LayerWalk } from './layer-walk.js';

export type { FilePiece } from './codec-worker.js';

const WORKER = fileURLToPath(new URL('./codec-worker.js', import.meta.url));

/**
 * Members up to this size are inflated on the calling thread: for a file of a few KiB, posting a
 * task to a worker costs more than the work (measured: a python layer of 1194 small chunks spent
 * more time in piscina's postTask than in zlib).
 */
const INLINE_MAX = 64 * 1024;

/**
 * The bytes of `view` in a buffer of their own, to be transferred to a worker: a view posted as it
 * is would be cloned with its whole backing buffer (a Range response of many chunks, a pooled
 * allocation) for every task.
 */
function ownCopy(view: Uint8Array): Uint8Array<ArrayBuffer> {
  const own = new Uint8Array(view.byteLength);
  own.set(view);
  return own;
}

/** The typed error for a worker's reason a chunk was refused. */
function refused(reason: string, expected: string, where: string): Error {
  return reason.startsWith('digest: ') ? new ChunkDigestMismatchError(expected, reason.slice('digest: '.length), where) : new MalformedEstargzError(where, reason);
}

export class CodecPool {
  private readonly pool: Piscina;

  constructor(threads = Math.max(1, availableParallelism())) {
    this.pool = new Piscina({ filename: WORKER, minThreads: 1, maxThreads: threads, idleTimeout: 30_000 });
  }

  get threads(): number {
    return this.pool.options.maxThreads;
  }

  async gzip(data: Uint8Array, level = 6): Promise<Buffer> {
    const own = ownCopy(data);
    const out = (await this.pool.run({ data: own, level } satisfies GzipTask, { name: 'gzip', transferList: [own.buffer] })) as Uint8Array;
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  /**
   * Inflates a chunk from its compressed member and verifies it against `expected`.
   * `where` names the chunk for errors (layer and file).
   */
  async inflate(member: Uint8Array, chunk: { innerOffset: number; chunkSize: number }, expected: string | undefined, where: string): Promise<Buffer> {
    let out: Uint8Array | string;
    if (member.byteLength <= INLINE_MAX) {
      out = inflateChunk({ member, innerOffset: chunk.innerOffset, chunkSize: chunk.chunkSize, expected });
    } else {
      const own = ownCopy(member);
      const task: InflateTask = { member: own, innerOffset: chunk.innerOffset, chunkSize: chunk.chunkSize, expected };
      out = (await this.pool.run(task, { name: 'inflate', transferList: [own.buffer] })) as Uint8Array | string;
    }
    if (typeof out === 'string') throw refused(out, expected ?? '?', where);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  /**
   * The chunks of one span of a gzip-indexed layer (raw deflate from a checkpoint, inflated with
   * its window), inflated once: per chunk its verified bytes, or the error naming its `where`;
   * with `keep`, also all the span inflated to (unless it did not inflate).
   */
  async inflateSpan(span: Uint8Array, window: Uint8Array, chunks: { innerOffset: number; chunkSize: number; expected: string; where: string }[], keep = false): Promise<{ chunks: (Buffer | Error)[]; inflated?: Buffer }> {
    const task: SpanTask = { member: span, window, chunks: chunks.map(({ innerOffset, chunkSize, expected }) => ({ innerOffset, chunkSize, expected })), keep };
    let out: SpanResult;
    if (span.byteLength <= INLINE_MAX) out = inflateSpan(task);
    else {
      const own = ownCopy(span);
      out = (await this.pool.run({ ...task, member: own }, { name: 'inflateSpan', transferList: [own.buffer] })) as SpanResult;
    }
    const buffer = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    return {
      chunks: out.chunks.map((r, i) => (typeof r === 'string' ? refused(r, chunks[i]!.expected, chunks[i]!.where) : buffer(r))),
      ...(out.inflated ? { inflated: buffer(out.inflated) } : {}),
    };
  }

  /**
   * `data` if it hashes to `expected`, else a ChunkDigestMismatchError naming `where`. The pool
   * owns `data` from the call on: it is moved to a worker and back, not copied.
   */
  async verify(data: Uint8Array<ArrayBuffer>, expected: string, where: string): Promise<Buffer> {
    const out = data.byteLength <= INLINE_MAX ? checkDigest({ data, expected }) ?? data
      : (await this.pool.run({ data, expected } satisfies VerifyTask, { name: 'verify', transferList: [data.buffer] })) as Uint8Array | string;
    if (typeof out === 'string') throw new ChunkDigestMismatchError(expected, out, where);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  /**
   * Inflates and verifies one chunk on a worker, so that the first chunk a reader waits for does
   * not pay for the worker's first use (measured: the first 2 MB chunk 38 ms, the next ones 12).
   */
  async warm(): Promise<void> {
    const data = randomBytes(INLINE_MAX + 1); // incompressible: its member is big enough for a worker
    await this.inflate(gzipSync(data), { innerOffset: 0, chunkSize: data.length }, sha256Digest(data), 'the warm-up chunk');
  }

  /**
   * The bytes of each piece (views of one buffer), with its sha256 where asked for. A piece that
   * cannot be read whole is a MalformedLayerError naming its file.
   */
  async readFilePieces(pieces: FilePiece[]): Promise<{ data: Buffer; digest: string | undefined }[]> {
    const r = (await this.pool.run({ pieces }, { name: 'readFilePieces' })) as ReadFilePiecesResult;
    if (r.failed) throw new MalformedLayerError(pieces[r.failed.piece]!.path, r.failed.reason);
    const all = Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
    let at = 0;
    return pieces.map((p, i) => ({ data: all.subarray(at, (at += p.length)), digest: r.digests[i] }));
  }

  /** The walk of the layer unpacked at `root` (layer-walk.ts); a path it cannot look at is a MalformedLayerError naming it. */
  async walkLayer(root: string): Promise<LayerWalk> {
    const r = (await this.pool.run({ root } satisfies WalkTask, { name: 'walk' })) as LayerWalk | { failed: { path: string; reason: string } };
    if ('failed' in r) throw new MalformedLayerError(r.failed.path, r.failed.reason);
    return r;
  }

  /**
   * buildErofs's image of `entries` (src/erofs/), built on a worker: a Debian base layer's 6,000
   * entries took some 300 ms of the main thread. Refusals are InvalidErofsTreeError as there.
   */
  async buildErofs(entries: ErofsEntry[], options: ErofsBuildOptions): Promise<Buffer> {
    const r = (await this.pool.run({ entries, options } satisfies BuildImageTask, { name: 'buildImage' })) as Uint8Array | { invalid: { entry: string; why: string } };
    if ('invalid' in r) throw new InvalidErofsTreeError(r.invalid.entry, r.invalid.why);
    return Buffer.from(r.buffer, r.byteOffset, r.byteLength);
  }

  /** Creates each of `names` in `dir`, empty (codec-worker.ts emptyFiles). */
  async emptyFiles(dir: string, names: string[]): Promise<void> {
    await this.pool.run({ dir, names } satisfies EmptyFilesTask, { name: 'emptyFiles' });
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
