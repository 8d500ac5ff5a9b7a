// Which Range request goes next: the queued chunk of the highest priority (then the oldest), with
// what its request can bring (range-run.ts), as soon as a slot for its kind is free. Readers
// (and read-ahead) and prefetch have slots of their own, so a reader never waits for prefetch
// to free one. Requests start one turn after a chunk is asked for or a slot frees, so that
// chunks asked for together share a request.

import { ChunkQueue, PRIORITY, type Pending, type Priority } from './chunk-queue.js';
import type { ChunkRef } from './layer-chunks.js';

export interface SchedulerSlots {
  /** Range requests in flight for readers (and read-ahead). */
  maxInFlight: number;
  /** Range requests in flight for prefetch, besides those. */
  prefetchWorkers: number;
}

export class RangeScheduler {
  readonly queue = new ChunkQueue();
  private active = 0;
  private activePrefetch = 0;
  private scheduled = false;
  private closedBy: Error | undefined;

  /**
   * @param plan the run a request for `first` (out of the queue) brings
   * @param fetch fetches a run and settles each of its chunks; never rejects
   */
  constructor(private readonly slots: SchedulerSlots, private readonly plan: (first: Pending) => Pending[],
    private readonly fetch: (run: Pending[]) => Promise<void>) {}

  /** Queues a chunk; settles when a request brought it (or failed), rejects at once once closed. */
  enqueue(ref: ChunkRef, priority: Priority): Promise<Buffer> {
    if (this.closedBy) return Promise.reject(this.closedBy);
    const settled = this.queue.add(ref, priority);
    this.schedule();
    return settled;
  }

  /**
   * Pumps on the next turn: chunks asked for meanwhile join the runs, and the handlers of a run
   * that just settled have run (a failure that stops the layer starts no request after it).
   */
  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  /** Chunks queued at `priority`. */
  queued(priority: Priority): number {
    return this.queue.count(priority);
  }

  /** Starts no more requests and fails the queued chunks with `err`; requests in flight finish. */
  close(err: Error): void {
    this.closedBy = err;
    this.queue.rejectAll(err);
  }

  private pump(): void {
    if (this.closedBy) return;
    for (;;) {
      const first = this.queue.first((p) => (p === PRIORITY.prefetch ? this.activePrefetch < this.slots.prefetchWorkers : this.active < this.slots.maxInFlight));
      if (!first) return;
      const prefetch = first.priority === PRIORITY.prefetch;
      const run = this.plan(this.queue.take(first)!);
      if (prefetch) this.activePrefetch++;
      else this.active++;
      void this.fetch(run).finally(() => {
        if (prefetch) this.activePrefetch--;
        else this.active--;
        this.schedule();
      });
    }
  }
}
