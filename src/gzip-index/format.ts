// The gzip index of an unmodified gzip layer (docs/gzip-index.md): decompression checkpoints at
// byte-aligned deflate block boundaries, each with the 32 KiB window that inflating from there
// needs, and the layer's tar entries as an eStargz TOC whose chunk offsets are offsets in the
// uncompressed tar stream, each chunk with its sha256. Encoded as gzip-compressed JSON; the
// encoded blob's digest is what a pull trusts. Pure: bytes in, values out; no I/O.

import { gunzipSync, gzipSync } from 'node:zlib';
import { z } from 'zod';
import { MalformedGzipIndexError } from '../errors.js';
import { tocOfJson } from '../estargz/toc-parser.js';
import { lastAtOrBefore, type Toc, type TocChunk, type TocJson } from '../estargz/toc.js';
import { digestSchema as digest } from '../digest.js';

export const GZIP_INDEX_MEDIA_TYPE = 'application/vnd.dedup-snapshotter.gzip-index.v1+json+gzip';
/** Deflate's window: the most a back-reference reaches. */
export const WINDOW_BYTES = 32 * 1024;
/** An index that claims more than this is not one (a layer of 16 TiB has about 4 M checkpoints at 4 MiB). */
const MAX_CHECKPOINTS = 4_000_000;
const MAX_INDEX_JSON_BYTES = 1024 * 1024 * 1024;

/** Where inflating can begin: a deflate block boundary on a byte boundary. */
export interface Checkpoint {
  /** Offset in the compressed layer of the block's first byte. */
  in: number;
  /** Offset in the uncompressed tar stream of the block's first byte. */
  out: number;
  /** The uncompressed bytes before `out` (up to 32 KiB): the block may refer back into them. */
  window: Buffer;
}

/**
 * A deflate block boundary of any kind (inside a byte too): the compressed bytes up to `in` (the
 * byte its last bits are in) inflate, from a checkpoint before it, to all of the tar stream up to `out`.
 */
export interface Mark {
  in: number;
  out: number;
}

export interface GzipIndex {
  version: 1;
  layer: { digest: string; size: number };
  uncompressedSize: number;
  /** Uncompressed bytes between checkpoints, at least (they sit at the next boundary after). */
  spacing: number;
  chunkSize: number;
  checkpoints: Checkpoint[];
  /** Optional (older indexes have none): where a read may stop short of the next checkpoint. */
  marks?: Mark[];
  /** eStargz TOC JSON of the layer; `offset` of a reg or chunk entry is in the uncompressed stream. */
  toc: TocJson;
}

const count = z.number().int().min(0).max(2 ** 53 - 1);
const documentSchema = z.object({
  version: z.literal(1),
  layer: z.object({ digest, size: count }),
  uncompressedSize: count,
  spacing: count,
  chunkSize: count.min(1),
  checkpoints: z.array(z.object({ in: count, out: count, window: z.string() })).max(MAX_CHECKPOINTS),
  marks: z.array(z.object({ in: count, out: count })).max(MAX_CHECKPOINTS * 64).optional(),
  toc: z.object({ version: z.literal(1), entries: z.array(z.unknown()) }),
});

export function encodeGzipIndex(index: GzipIndex): Buffer {
  const doc = { ...index, checkpoints: index.checkpoints.map((c) => ({ in: c.in, out: c.out, window: c.window.toString('base64') })) };
  return gzipSync(Buffer.from(JSON.stringify(doc)));
}

/** A parsed, checked index with its TOC as a tree whose chunks say what to fetch and inflate. */
export interface ParsedGzipIndex {
  index: GzipIndex;
  toc: Toc;
}

/**
 * Decodes an index and checks it against the layer it is for (`layer`: the descriptor the image
 * names): same digest and size, checkpoints in order inside the layer with whole windows, every
 * chunk inside the uncompressed stream. Throws MalformedGzipIndexError naming `where`.
 */
export function decodeGzipIndex(bytes: Buffer, layer: { digest: string; size: number }, where: string): ParsedGzipIndex {
  let doc: unknown;
  try {
    doc = JSON.parse(gunzipSync(bytes, { maxOutputLength: MAX_INDEX_JSON_BYTES }).toString('utf8'));
  } catch (err) {
    throw new MalformedGzipIndexError(where, `not gzip-compressed JSON (${(err as Error).message})`);
  }
  const parsed = documentSchema.safeParse(doc);
  if (!parsed.success) throw new MalformedGzipIndexError(where, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  const d = parsed.data;
  if (d.layer.digest !== layer.digest || d.layer.size !== layer.size) {
    throw new MalformedGzipIndexError(where, `is for layer ${d.layer.digest} (${d.layer.size} bytes), not ${layer.digest} (${layer.size} bytes)`);
  }
  const checkpoints = d.checkpoints.map((c, i): Checkpoint => {
    const window = Buffer.from(c.window, 'base64');
    const prev = d.checkpoints[i - 1];
    if (prev && (c.in <= prev.in || c.out <= prev.out)) throw new MalformedGzipIndexError(where, `checkpoint ${i} is not after checkpoint ${i - 1}`);
    if (c.in >= d.layer.size || c.out > d.uncompressedSize) throw new MalformedGzipIndexError(where, `checkpoint ${i} lies outside the layer`);
    if (window.length !== Math.min(WINDOW_BYTES, c.out)) throw new MalformedGzipIndexError(where, `checkpoint ${i} has a window of ${window.length} bytes, not ${Math.min(WINDOW_BYTES, c.out)}`);
    return { in: c.in, out: c.out, window };
  });
  if (checkpoints[0]?.out !== 0) throw new MalformedGzipIndexError(where, 'has no checkpoint at the start of the stream');
  const marks = d.marks ?? [];
  marks.forEach((m, i) => {
    const prev = marks[i - 1];
    if (prev && (m.in <= prev.in || m.out <= prev.out)) throw new MalformedGzipIndexError(where, `mark ${i} is not after mark ${i - 1}`);
    if (m.in > d.layer.size || m.out > d.uncompressedSize) throw new MalformedGzipIndexError(where, `mark ${i} lies outside the layer`);
  });
  const index: GzipIndex = { ...d, layer: d.layer, checkpoints, marks, toc: d.toc as TocJson };
  let toc: Toc;
  try {
    toc = tocOfJson(d.toc, { tocOffset: d.uncompressedSize });
  } catch (err) {
    throw new MalformedGzipIndexError(where, (err as Error).message);
  }
  for (const node of new Set(toc.nodes.values())) {
    for (const c of node.chunks) placeChunk(index, c, where);
  }
  return { index, toc };
}

/**
 * Turns a chunk whose `offset` is its place in the uncompressed stream into what to fetch: the
 * compressed bytes from the last checkpoint at or before it to the first checkpoint at or after
 * its end (or the end of the deflate data), inflated with that checkpoint's window, of which the
 * chunk begins `innerOffset` bytes in; `dataEnd`: the first mark after its end, when there is one
 * before that checkpoint: the chunk alone needs the bytes only that far.
 */
function placeChunk(index: GzipIndex, c: TocChunk, where: string): void {
  const start = c.offset;
  const end = start + c.chunkSize;
  if (end > index.uncompressedSize) throw new MalformedGzipIndexError(where, `a chunk at ${start} runs past the stream's ${index.uncompressedSize} bytes`);
  const to = firstAtOrAfter(index.checkpoints, end);
  const cp = index.checkpoints[lastAtOrBefore(index.checkpoints, start, (c) => c.out)]!;
  const compressedEnd = to ? to.in : index.layer.size - GZIP_TRAILER_BYTES;
  const mark = firstAtOrAfter(index.marks ?? [], end);
  const dataEnd = mark && mark.in > cp.in && mark.in < compressedEnd ? mark.in : compressedEnd;
  Object.assign(c, { offset: cp.in, compressedEnd, dataEnd, innerOffset: start - cp.out, window: cp.window, checkpointOut: cp.out });
}

/** The first of `points` (in stream order) with `out` at or after `out`. */
function firstAtOrAfter<T extends { out: number }>(points: T[], out: number): T | undefined {
  if (points.length === 0) return undefined;
  const i = lastAtOrBefore(points, out, (p) => p.out);
  return points[i]!.out >= out ? points[i] : points[i + 1];
}

/** CRC-32 and size after the deflate data of a gzip member. */
const GZIP_TRAILER_BYTES = 8;


