// dedupd's daemon mode: prefetch jobs (an image, from its trace or in full) queued by whoever
// prepares a rollout and run one image at a time into the chunk store, which the snapshotter shares.
// Jobs are kept in memory for `dedupctl prefetch ls`; a restart starts with an empty queue.

import { randomBytes } from 'node:crypto';
import { toWire } from '../errors.js';
import type { IngestReport } from '../fetch/ingest.js';

export type JobState = 'queued' | 'running' | 'done' | 'failed';

export interface PrefetchJob {
  id: string;
  image: string;
  full: boolean;
  state: JobState;
  queuedAt: string;
  finishedAt?: string;
  /** Compressed bytes fetched so far, of the image's compressed size. */
  progress: { done: number; total: number };
  report?: Pick<IngestReport, 'chunks' | 'fetched' | 'alreadyStored' | 'bytesFetched' | 'seconds'>;
  error?: { code: string; message: string };
}

export type RunJob = (job: PrefetchJob, onProgress: (done: number, total: number) => void) => Promise<IngestReport>;

/** Finished jobs kept for listing. */
const KEEP_FINISHED = 1000;

export class PrefetchQueue {
  private readonly jobs = new Map<string, PrefetchJob>();
  private readonly waiting: PrefetchJob[] = [];
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly runJob: RunJob, private readonly log: { info(o: object, m: string): void; error(o: object, m: string): void }) {}

  add(image: string, full: boolean): PrefetchJob {
    const job: PrefetchJob = { id: randomBytes(6).toString('hex'), image, full, state: 'queued', queuedAt: new Date().toISOString(), progress: { done: 0, total: 0 } };
    this.jobs.set(job.id, job);
    this.waiting.push(job);
    this.log.info({ job: job.id, image, full }, 'prefetch queued');
    this.running ??= this.drain().finally(() => (this.running = undefined));
    return job;
  }

  get(id: string): PrefetchJob | undefined {
    return this.jobs.get(id);
  }

  list(): PrefetchJob[] {
    return [...this.jobs.values()].reverse();
  }

  /** Stops taking queued jobs and waits for the running one. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  private async drain(): Promise<void> {
    for (let job = this.waiting.shift(); job && !this.stopped; job = this.waiting.shift()) {
      job.state = 'running';
      this.log.info({ job: job.id, image: job.image }, 'prefetch started');
      try {
        const r = await this.runJob(job, (done, total) => (job!.progress = { done, total }));
        job.report = { chunks: r.chunks, fetched: r.fetched, alreadyStored: r.alreadyStored, bytesFetched: r.bytesFetched, seconds: r.seconds };
        job.state = 'done';
        this.log.info({ job: job.id, image: r.image, ...job.report }, 'prefetch done');
      } catch (err) {
        job.state = 'failed';
        job.error = toWire(err);
        this.log.error({ job: job.id, image: job.image, ...job.error }, 'prefetch failed');
      }
      job.finishedAt = new Date().toISOString();
      this.forgetOld();
    }
  }

  private forgetOld(): void {
    const finished = [...this.jobs.values()].filter((j) => j.state === 'done' || j.state === 'failed');
    for (const j of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.jobs.delete(j.id);
  }
}
