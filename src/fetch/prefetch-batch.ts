// Prefetch of a list of chunks through a layer's scheduler, in batches: a whole batch is queued
// before the scheduler's next turn, so neighbours in it go out as one Range request, and the
// queue is refilled by halves rather than one chunk at a time (one at a time, each request would
// carry one chunk).

import type { ChunkRef } from './layer-chunks.js';

export interface PrefetchReport {
  fetched: number;
  skipped: number;
  failed: number;
  /** The first failure, if any. */
  error?: unknown;
}

export interface PrefetchTarget {
  /** Whether the chunk must come from the registry (not in memory, in flight or stored). */
  missing(digest: string): boolean;
  /** Queues the chunk at prefetch priority; settles once it is stored (or failed). */
  fetch(ref: ChunkRef, digest: string): Promise<Buffer>;
  /** Stops the layer's fetching (queued chunks fail, those in flight finish). */
  stop(): void;
  /** Told of each chunk fetched (stored), with its verified bytes; the batch settles once what it returns has. */
  fetched?(ref: ChunkRef, data: Buffer): Promise<void> | void;
}

/**
 * Fetches `chunks` in the given order, at most `queueSize` queued at once; resolves when all are
 * settled. With `stopOnFailure`, the first failure stops the target and no more are queued.
 */
export async function prefetchBatch(target: PrefetchTarget, chunks: ChunkRef[], queueSize: number, stopOnFailure: boolean): Promise<PrefetchReport> {
  const report: PrefetchReport = { fetched: 0, skipped: 0, failed: 0 };
  const pending = new Set<Promise<void>>();
  const failed = (err: unknown): void => {
    if (report.failed++ === 0) report.error = err;
    if (stopOnFailure) target.stop();
  };
  for (const ref of chunks) {
    if (stopOnFailure && report.failed > 0) break;
    const d = ref.file.chunks[ref.index]?.chunkDigest;
    if (!d || !target.missing(d)) {
      report.skipped++;
      continue;
    }
    // Missing per the index: queued straight away (no store read first).
    const p = target.fetch(ref, d).then((data) => target.fetched?.(ref, data)).then(() => void report.fetched++, failed).finally(() => pending.delete(p));
    pending.add(p);
    if (pending.size >= queueSize) while (pending.size > queueSize >> 1) await Promise.race(pending);
  }
  await Promise.all(pending);
  return report;
}
