// While a gzip-indexed layer is held whole: what readers' spans inflated to, least recently used
// first, up to a bound in tar bytes. A chunk read later in a kept span is cut out of it and
// verified, with no inflate.

import type { CodecPool } from '../codec/codec-pool.js';
import { MalformedEstargzError } from '../errors.js';
import type { TocChunk } from '../estargz/toc.js';
import { needs } from './layer-chunks.js';

/**
 * The layer's bytes [in, end) from the checkpoint at `in`, which inflate to the tar stream from
 * `out` on; `bytes` settles once they are in and inflated.
 */
export interface KeptSpan {
  in: number;
  end: number;
  out: number;
  bytes: Promise<Buffer>;
  /** Tar bytes, once inflated. */
  size: number;
}

export class KeptSpans {
  private kept: KeptSpan[] = [];

  constructor(private readonly maxBytes: number) {}

  /** A kept span the chunk's bytes lie in (made most recently used), if any. */
  of(c: TocChunk): KeptSpan | undefined {
    const at = this.kept.findIndex((k) => k.in <= c.offset && needs(c) <= k.end);
    if (at < 0) return undefined;
    const [span] = this.kept.splice(at, 1);
    this.kept.push(span!);
    return span;
  }

  /**
   * Keeps `span` (most recently used) instead of the kept ones it covers, dropping the least
   * recently used over the bound once its size is known.
   */
  keep(span: KeptSpan): void {
    this.kept = this.kept.filter((k) => k.in < span.in || k.end > span.end);
    this.kept.push(span);
    span.bytes.then((b) => {
      span.size = b.length;
      let total = this.kept.reduce((n, k) => n + k.size, 0);
      while (total > this.maxBytes && this.kept.length > 1) total -= this.kept.shift()!.size;
    }, () => (this.kept = this.kept.filter((k) => k !== span)));
  }

  clear(): void {
    this.kept = [];
  }
}

/** The chunk's bytes out of a kept span, in a buffer of their own, verified. */
export async function chunkFromSpan(span: KeptSpan, c: TocChunk, pool: CodecPool, where: string): Promise<Buffer> {
  const bytes = await span.bytes;
  const from = c.checkpointOut! + c.innerOffset - span.out;
  if (from + c.chunkSize > bytes.length) throw new MalformedEstargzError(where, `span holds ${bytes.length} bytes, chunk needs ${from + c.chunkSize}`);
  const own = new Uint8Array(c.chunkSize);
  own.set(bytes.subarray(from, from + c.chunkSize));
  return pool.verify(own, c.chunkDigest!, where);
}
