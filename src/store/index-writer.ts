// The index work of a chunk store that serves reads, off its event loop: presence changes are
// queued, merged (the last change of a digest wins) and committed in batches by a worker thread
// (index-worker.ts) with its own connection, one batch at a time; what comes in while one
// is committed goes in the next. A process that waits for the write lock (a gc or an ingest in
// another process holds it) thus keeps serving, and its changes are committed once the lock is
// free. A layer's record (at mount) and the store's scan for its figures run there too. Until committed, the index lags the
// files, which it may do anyway (docs/on-disk.md): other processes then see a stored chunk as
// missing and fetch it again, never the reverse.

import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { StoreError } from '../errors.js';
import type { RecordTask } from './index-worker.js';
import type { LayerRecord, Stored, StoreStats } from './index-db.js';

const WORKER = fileURLToPath(new URL('./index-worker.js', import.meta.url));
/** A batch that failed (the busy timeout ran out, the disk is full) is tried again after this. */
const RETRY_MS = 1000;

export class IndexWriter {
  /** Two threads: a scan for the figures need not wait behind a batch waiting for the lock. */
  private readonly pool = new Piscina({ filename: WORKER, minThreads: 1, maxThreads: 2, idleTimeout: 60_000 });
  /** Changes not sent yet: digest -> where once stored, null once found missing. */
  private queued = new Map<string, Stored | null>();
  /** The batch being committed. */
  private committing: Map<string, Stored | null> | undefined;
  private committed: Promise<void> | undefined;
  private scheduled = false;
  private retry: NodeJS.Timeout | undefined;
  private failure: unknown;

  constructor(readonly path: string) {}

  stored(digest: string, stored: Stored): void {
    this.queue(digest, stored);
  }

  absent(digest: string): void {
    this.queue(digest, null);
  }

  /** What a change not committed yet says: true stored, false missing, undefined none pending. */
  pending(digest: string): boolean | undefined {
    const change = this.queued.has(digest) ? this.queued.get(digest) : this.committing?.get(digest);
    return change === undefined ? undefined : change !== null;
  }

  private queue(digest: string, change: Stored | null): void {
    // Found rotten, then stored again before the batch went: one change, and it must replace the
    // index's place (a plain "stored" keeps a place another process recorded first).
    const replaces = change !== null && this.queued.get(digest) === null;
    this.queued.set(digest, replaces ? { ...change, replaces } : change);
    if (this.scheduled) return;
    // Wait one turn: the changes of one turn (a Range request's chunks) go in one batch.
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.commit();
    });
  }

  /** Sends the queued changes unless a batch is being committed (it sends them when it is done). */
  private commit(): void {
    if (this.committing || this.retry || this.queued.size === 0) return;
    const batch = this.queued;
    this.queued = new Map();
    this.committing = batch;
    const task: RecordTask = { path: this.path, changes: [...batch], now: Date.now() };
    this.committed = (this.pool.run(task, { name: 'record' }) as Promise<void>).then(() => {
      this.failure = undefined;
    }, (err: unknown) => {
      this.failure = err;
      for (const [digest, change] of batch) if (!this.queued.has(digest)) this.queued.set(digest, change); // newer changes win
      this.retry = setTimeout(() => {
        this.retry = undefined;
        this.commit();
      }, RETRY_MS).unref();
    }).finally(() => {
      this.committing = undefined;
      this.commit();
    });
  }

  /** Resolves once every change made so far is committed; rejects when a batch of them failed. */
  async flush(): Promise<void> {
    while (this.committing || this.queued.size > 0) {
      clearTimeout(this.retry);
      this.retry = undefined;
      this.commit();
      await this.committed;
      if (this.failure !== undefined) {
        throw new StoreError(`cannot record chunks in ${this.path}: ${(this.failure as Error).message}`, { cause: this.failure });
      }
    }
  }

  /** Opens the thread's connection now, so that the first record does not wait for it. */
  open(): Promise<void> {
    return this.pool.run({ path: this.path }, { name: 'open' }) as Promise<void>;
  }

  addLayer(layer: LayerRecord): Promise<boolean> {
    return this.pool.run({ path: this.path, layer, now: Date.now() }, { name: 'addLayer' }) as Promise<boolean>;
  }

  stats(): Promise<StoreStats> {
    return this.pool.run({ path: this.path }, { name: 'stats' }) as Promise<StoreStats>;
  }

  /** Commits what is queued, then ends the threads (and their connections). */
  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      clearTimeout(this.retry);
      await this.pool.destroy();
    }
  }
}
