// The chunks of a layer waiting for a Range request, one entry per digest (another place in the
// layer with the same digest holds the same bytes), each with its priority and queue order.

import type { TocChunk } from '../estargz/toc.js';
import type { ChunkRef } from './layer-chunks.js';

export type Priority = 0 | 1 | 2;
/** On-demand reads first, then read-ahead, then prefetch. */
export const PRIORITY = { demand: 0, readahead: 1, prefetch: 2 } as const;

/** A chunk a request is to bring, with whoever waits for it. */
export interface Pending extends ChunkRef {
  chunk: TocChunk;
  priority: Priority;
  /** Queue order: replay keeps the order it was given. */
  seq: number;
  resolve(b: Buffer): void;
  reject(e: unknown): void;
}

export class ChunkQueue {
  private seq = 0;
  private readonly queued = new Map<string, Pending>();

  /** A pending chunk, not queued: the caller puts it in a run (or in the queue with `add`). */
  make(ref: ChunkRef, priority: Priority): { pending: Pending; settled: Promise<Buffer> } {
    let pending!: Pending;
    const chunk = ref.file.chunks[ref.index]!;
    const settled = new Promise<Buffer>((resolve, reject) => {
      pending = { file: ref.file, index: ref.index, chunk, priority, seq: this.seq++, resolve, reject };
    });
    return { pending, settled };
  }

  /** Queues the chunk; settles when a run that took it has fetched it (or failed). */
  add(ref: ChunkRef, priority: Priority): Promise<Buffer> {
    const { pending, settled } = this.make(ref, priority);
    this.queued.set(pending.chunk.chunkDigest!, pending);
    return settled;
  }

  has(digest: string): boolean {
    return this.queued.has(digest);
  }

  /** A reader came for a queued chunk: it goes at the reader's priority. */
  raise(digest: string, priority: Priority): void {
    const q = this.queued.get(digest);
    if (q && priority < q.priority) q.priority = priority;
  }

  count(priority: Priority): number {
    let n = 0;
    for (const p of this.queued.values()) if (p.priority === priority) n++;
    return n;
  }

  /** The queued chunk to go next among those `free` (a slot is open for its priority): highest priority, then oldest. */
  first(free: (p: Priority) => boolean): Pending | undefined {
    let first: Pending | undefined;
    for (const p of this.queued.values()) {
      if (free(p.priority) && (!first || p.priority < first.priority || (p.priority === first.priority && p.seq < first.seq))) first = p;
    }
    return first;
  }

  /** Takes the queued chunk of `ref`'s digest out of the queue, as the chunk at `ref`'s place (a run brings that place's bytes). */
  take(ref: ChunkRef): Pending | undefined {
    const chunk = ref.file.chunks[ref.index]!;
    const p = this.queued.get(chunk.chunkDigest ?? '');
    if (!p) return undefined;
    this.queued.delete(chunk.chunkDigest!);
    return Object.assign(p, { file: ref.file, index: ref.index, chunk });
  }

  /** Fails every queued chunk with `err` and empties the queue. */
  rejectAll(err: Error): void {
    for (const p of this.queued.values()) p.reject(err);
    this.queued.clear();
  }
}
