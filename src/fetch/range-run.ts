// What one Range request brings: the chunk that goes next plus the queued chunks around it whose
// bytes the same request can carry, and for a reader the missing ones just after it (cross-file
// read-ahead). One walk over the layer's positions serves eStargz members and gzip-index spans:
// a request is one contiguous byte range, so what joins it is decided by where bytes begin and end.

import type { TocChunk } from '../estargz/toc.js';
import type { ChunkQueue, Pending } from './chunk-queue.js';
import { needs, type ChunkRef, type LayerChunks } from './layer-chunks.js';

export interface RunBounds {
  /** Largest request, in compressed bytes. */
  maxBytes: number;
  /** Bytes nobody needs that the request may carry to reach the next queued chunk (they are dropped). */
  slack: number;
  /**
   * A reader's request may go on to here for chunks nobody asked for yet (with `along`); none
   * when undefined.
   */
  reach?: number;
  /** The pending entry for a chunk the reader's request brings along, if it is missing. */
  along?: (ref: ChunkRef) => Pending | undefined;
}

const chunkOf = (r: ChunkRef): TocChunk => r.file.chunks[r.index]!;

/**
 * `first` (out of the queue already) and what its request brings, in blob order: the first
 * entry's position is where the request begins. In a gzip index, the queued chunks of earlier spans
 * whose bytes run into the first's join (one inflate from the earliest checkpoint serves them);
 * then those that follow within the bounds.
 */
export function takeRun(first: Pending, queue: ChunkQueue, layer: LayerChunks, bounds: RunBounds): Pending[] {
  const run = [first];
  const c0 = first.chunk;
  const max = bounds.maxBytes;
  let start = c0.offset;
  // Only spans walk back: their bytes overlap, so the later one fetched alone would bring shared bytes twice.
  for (let p = c0.window ? layer.prev(start) : undefined; p !== undefined && needs(c0) - p <= max; p = layer.prev(p)) {
    const [from, to] = [p, start];
    if (!layer.startingAt(p).some((r) => needs(chunkOf(r)) >= to && needs(chunkOf(r)) - from <= max && queue.has(chunkOf(r).chunkDigest ?? ''))) break;
    start = p;
  }
  let end = needs(c0);
  /** Visits the positions from `start` while `goOn`, adding what `join` gives for their chunks. */
  const walk = (goOn: (at: number) => boolean, join: (ref: ChunkRef) => Pending | undefined): void => {
    for (let at: number | undefined = start; at !== undefined && goOn(at); at = layer.next(at)) {
      for (const ref of layer.startingAt(at)) {
        const p = join(ref);
        if (!p) continue;
        run.push(p);
        end = Math.max(end, needs(p.chunk));
      }
    }
  };
  walk((at) => at <= end + bounds.slack, (ref) => (needs(chunkOf(ref)) - start <= max ? queue.take(ref) : undefined));
  if (bounds.reach !== undefined && bounds.along) {
    const reach = Math.max(end, bounds.reach);
    const along = bounds.along;
    // A gzip-indexed request inflates through whatever lies before a chunk it brings, so it walks
    // to `reach`; an eStargz one stops where a chunk is not taken: its bytes would be dropped.
    const spans = c0.window !== undefined;
    walk((at) => at <= end || (spans && at < reach), (ref) => (needs(chunkOf(ref)) > reach ? undefined : queue.take(ref) ?? along(ref)));
  }
  return run.sort((a, b) => a.chunk.offset - b.chunk.offset);
}
