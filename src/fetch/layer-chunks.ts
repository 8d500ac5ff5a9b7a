// A layer's chunks laid out by where their compressed bytes begin, which is what coalescing walks.
// An eStargz chunk is a gzip member of its own; a gzip-indexed layer's chunks are inflated from a
// checkpoint, several from the same one. Both are "positions" here: the offsets chunks start at,
// in blob order, each with the chunks that start there.

import type { Toc, TocChunk, TocNode } from '../estargz/toc.js';

/** A chunk of a file, by position in the TOC. */
export interface ChunkRef {
  file: TocNode;
  index: number;
}

/** The end of the compressed bytes a chunk needs: a gzip-indexed one's may stop short of its span's end. */
export const needs = (c: TocChunk): number => c.dataEnd ?? c.compressedEnd;

/** Every chunk of every regular file of the layer, hard links once, in blob order (by where its compressed bytes begin). */
export function everyChunk(toc: Toc): ChunkRef[] {
  const out: ChunkRef[] = [];
  for (const node of new Set(toc.nodes.values())) {
    if (node.type === 'reg') node.chunks.forEach((_, index) => out.push({ file: node, index }));
  }
  return out.sort((a, b) => a.file.chunks[a.index]!.offset - b.file.chunks[b.index]!.offset);
}

export class LayerChunks {
  /** Every chunk of the layer, hard links once, in blob order. */
  readonly refs: ChunkRef[];
  private readonly at = new Map<number, ChunkRef[]>();
  private readonly nextAt = new Map<number, number>();
  private readonly prevAt = new Map<number, number>();

  constructor(toc: Toc) {
    this.refs = everyChunk(toc);
    for (const r of this.refs) {
      const offset = r.file.chunks[r.index]!.offset;
      const here = this.at.get(offset);
      if (here) here.push(r);
      else this.at.set(offset, [r]);
    }
    const starts = [...this.at.keys()].sort((a, b) => a - b);
    starts.forEach((offset, i) => {
      if (i + 1 < starts.length) this.nextAt.set(offset, starts[i + 1]!);
      if (i > 0) this.prevAt.set(offset, starts[i - 1]!);
    });
  }

  /** The chunks whose compressed bytes begin at `offset` (one in eStargz; those of one checkpoint in a gzip index). */
  startingAt(offset: number): readonly ChunkRef[] {
    return this.at.get(offset) ?? [];
  }

  /** The next position after `offset` in the blob, if any. */
  next(offset: number): number | undefined {
    return this.nextAt.get(offset);
  }

  /** The position before `offset` in the blob, if any. */
  prev(offset: number): number | undefined {
    return this.prevAt.get(offset);
  }

  /** Compressed bytes of the chunks `stored` lacks. */
  missingBytes(stored: ReadonlySet<string>): number {
    // A gzip-indexed span's chunks share its compressed bytes from their checkpoint (their offset):
    // counted once, to the span's end (their compressedEnd; a read may stop short of it, needs()).
    const ends = new Map<number, number>();
    for (const r of this.refs) {
      const c = r.file.chunks[r.index]!;
      if (!stored.has(c.chunkDigest ?? '')) ends.set(c.offset, Math.max(ends.get(c.offset) ?? 0, c.compressedEnd));
    }
    let n = 0;
    for (const [offset, end] of ends) n += end - offset;
    return n;
  }
}

/** A chunk named for messages: its file, its place in it, its layer. */
export function chunkWhere(layer: string, file: TocNode, c: TocChunk): string {
  return `"${file.path}" at ${c.chunkOffset} in layer ${layer}`;
}
