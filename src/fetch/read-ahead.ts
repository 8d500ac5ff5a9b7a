// Read-ahead for readers: the file's next chunks while a reader moves through it, and the chunks
// that follow a small file in the layer (files stored together tend to be read together), within
// a window of compressed bytes that starts small and doubles each time such a chunk is then read.

import type { TocChunk, TocNode } from '../estargz/toc.js';

export class ReadAhead {
  private window: number;
  /** Chunks brought by cross-file read-ahead that no reader has asked for yet. */
  private readonly brought = new Set<string>();

  /**
   * @param chunks chunks of a file fetched ahead of a reader
   * @param bounds the cross-file window's low and high bound
   */
  constructor(private readonly chunks: number, private readonly bounds: [number, number]) {
    this.window = bounds[0];
  }

  /** A reader asked for `digest`: if read-ahead across files brought it, that paid off: widen the window. */
  read(digest: string): void {
    if (this.brought.delete(digest)) this.window = Math.min(this.bounds[1], this.window * 2);
  }

  /** The chunks of `file` to fetch ahead of a reader whose read ends in chunk `last`. */
  inFile(file: TocNode, last: number): number[] {
    const out: number[] = [];
    for (let i = last + 1; i < Math.min(file.chunks.length, last + 1 + this.chunks); i++) out.push(i);
    return out;
  }

  /**
   * How far a reader's request for chunk `c` of `file` may run on for the chunks after it: an
   * eStargz request by the window past a one-chunk file's chunk (a larger file has its own
   * read-ahead); a gzip-indexed one past the chunk's own bytes, as far as its span goes.
   */
  reach(file: TocNode, c: TocChunk): number | undefined {
    if (c.window) return Math.min(c.compressedEnd, c.offset + this.window);
    return file.chunks.length === 1 ? c.offset + this.window : undefined;
  }

  /** Read-ahead across files brought `digest`. */
  took(digest: string): void {
    this.brought.add(digest);
  }
}
