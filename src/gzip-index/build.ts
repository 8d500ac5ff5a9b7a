// Builds the gzip index of a layer from its compressed bytes, in one pass: pako's inflate with
// Z_BLOCK stops at every deflate block boundary; at the first byte-aligned one after each
// `spacing` bytes of output a checkpoint is kept with the 32 KiB of output before it (a block
// boundary inside a byte would need the inflater primed with bits, which Node's zlib cannot be:
// byte-aligned ones let the read path use it). Between checkpoints, every MARKS_PER_SPACING-th of
// the spacing, the first block boundary of any kind is kept as a mark: input up to it inflates to
// all output before it, so a small read needs the span only that far. The output feeds the tar reader, whose entries
// become the TOC, each regular file cut into `chunkSize` chunks with their sha256. Pure: bytes in,
// index out.

import { createHash } from 'node:crypto';
import { constants } from 'node:zlib';
import { inflate, inflateEnd, inflateInit2 } from 'pako/lib/zlib/inflate.js';
import ZStream from 'pako/lib/zlib/zstream.js';
import { MalformedLayerError, MultipleGzipMembersError } from '../errors.js';
import { chunkFile } from '../estargz/file-chunks.js';
import { readTar } from '../estargz/tar-reader.js';
import { tocEntryOfTar, type TocEntryJson } from '../estargz/toc.js';
import { WINDOW_BYTES, type Checkpoint, type GzipIndex, type Mark } from './format.js';
import { hashDigest } from '../digest.js';

const OUT_BYTES = 256 * 1024;
/** data_type: +128 at a block boundary, +64 in the last block, the low 3 bits unused bits of the last input byte. */
const AT_BOUNDARY = 128;
const IN_LAST_BLOCK = 64;
const UNUSED_BITS = 7;
/** Marks between two checkpoints: a read of a small file then fetches about 1/16 of a span, not all of it. */
const MARKS_PER_SPACING = 16;

export interface GzipIndexOptions {
  spacing: number;
  chunkSize: number;
}

/** Keeps checkpoints while inflating a gzip stream; yields the uncompressed bytes. */
class CheckpointingInflater {
  readonly checkpoints: Checkpoint[] = [];
  readonly marks: Mark[] = [];
  /** The last output pieces, at least a window's worth once there is that much. */
  private recent: Buffer[] = [];
  private recentBytes = 0;
  compressedBytes = 0;
  readonly hash = createHash('sha256');

  constructor(private readonly layer: string, private readonly spacing: number) {}

  async *inflate(src: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
    const strm = new ZStream();
    inflateInit2(strm, 16 + 15); // gzip wrapper, 32 KiB window
    const out = new Uint8Array(OUT_BYTES);
    let ended = false;
    try {
      for await (const piece of src) {
        this.hash.update(piece);
        this.compressedBytes += piece.length;
        if (ended) {
          if (piece.some((b) => b !== 0)) throw new MultipleGzipMembersError(this.layer);
          continue;
        }
        strm.input = piece;
        strm.next_in = 0;
        strm.avail_in = piece.length;
        // Until this piece is used up and no output is left waiting for room (a full buffer).
        for (let full = false; (strm.avail_in > 0 || full) && !ended;) {
          strm.output = out;
          strm.next_out = 0;
          strm.avail_out = out.length;
          const ret = inflate(strm, constants.Z_BLOCK);
          if (ret !== constants.Z_OK && ret !== constants.Z_STREAM_END && ret !== constants.Z_BUF_ERROR) {
            throw new MalformedLayerError(this.layer, `cannot be decompressed at byte ${strm.total_in} (${strm.msg || `zlib ${ret}`})`);
          }
          full = strm.avail_out === 0;
          if (strm.next_out > 0) yield this.keep(Buffer.from(out.subarray(0, strm.next_out)));
          if (ret === constants.Z_STREAM_END) {
            ended = true;
            if (piece.subarray(strm.next_in).some((b) => b !== 0)) throw new MultipleGzipMembersError(this.layer);
          } else {
            this.checkpointAt(strm);
          }
        }
      }
      if (!ended) throw new MalformedLayerError(this.layer, `gzip stream ends early, after ${this.compressedBytes} bytes`);
    } finally {
      inflateEnd(strm);
    }
  }

  private checkpointAt(strm: ZStream): void {
    const t = strm.data_type;
    if (!(t & AT_BOUNDARY) || t & IN_LAST_BLOCK) return;
    // total_in counts the byte the block's last bits are in: the input up to it holds the whole block.
    const mark = this.marks.at(-1) ?? this.checkpoints.at(-1);
    if (mark && strm.total_out - mark.out >= this.spacing / MARKS_PER_SPACING && strm.total_in > mark.in) this.marks.push({ in: strm.total_in, out: strm.total_out });
    if ((t & UNUSED_BITS) !== 0) return;
    const last = this.checkpoints.at(-1);
    if (last && strm.total_out - last.out < this.spacing) return;
    if (last && strm.total_out === last.out) return;
    this.checkpoints.push({ in: strm.total_in, out: strm.total_out, window: this.window() });
  }

  private keep(piece: Buffer): Buffer {
    this.recent.push(piece);
    this.recentBytes += piece.length;
    while (this.recent.length > 1 && this.recentBytes - this.recent[0]!.length >= WINDOW_BYTES) this.recentBytes -= this.recent.shift()!.length;
    return piece;
  }

  private window(): Buffer {
    const all = this.recent.length === 1 ? this.recent[0]! : Buffer.concat(this.recent);
    return Buffer.from(all.subarray(Math.max(0, all.length - WINDOW_BYTES)));
  }
}

/**
 * The index of the gzip layer `layer` (its descriptor: the bytes are checked against its digest
 * and size) read from `src`. Throws MalformedLayerError for a stream that is not one gzip member
 * of a tar, or not the layer the descriptor names.
 */
export async function buildGzipIndex(src: AsyncIterable<Uint8Array>, layer: { digest: string; size: number }, opts: GzipIndexOptions): Promise<GzipIndex> {
  const inflater = new CheckpointingInflater(layer.digest, opts.spacing);
  const entries: TocEntryJson[] = [];
  let uncompressed = 0;
  const counted = async function* (): AsyncGenerator<Buffer> {
    for await (const piece of inflater.inflate(src)) {
      uncompressed += piece.length;
      yield piece;
    }
  };
  const tar = counted();
  try {
    for await (const entry of readTar(tar)) {
      const e = tocEntryOfTar(entry.header);
      entries.push(e);
      if (entry.header.type !== 'file' || entry.header.size === 0) continue;
      await chunkFile(entry, e, opts.chunkSize, (chunk) => entries.push(chunk), { read: (chunk, at) => void (chunk.offset = entry.offset + at) });
    }
    for await (const _ of tar); // the end blocks and padding after the last entry
  } catch (err) {
    if (err instanceof MalformedLayerError) throw err;
    throw new MalformedLayerError(layer.digest, (err as Error).message.replace(/^malformed eStargz /, ''), { cause: err });
  }
  const actual = hashDigest(inflater.hash);
  if (actual !== layer.digest || inflater.compressedBytes !== layer.size) {
    throw new MalformedLayerError(layer.digest, `the bytes read are ${actual} (${inflater.compressedBytes} bytes), not the layer (${layer.size} bytes)`);
  }
  return {
    version: 1, layer: { digest: layer.digest, size: layer.size }, uncompressedSize: uncompressed, spacing: opts.spacing, chunkSize: opts.chunkSize,
    checkpoints: inflater.checkpoints, marks: inflater.marks, toc: { version: 1, entries },
  };
}
