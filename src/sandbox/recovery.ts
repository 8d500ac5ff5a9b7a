// The seed's RecoveryManager: a watched sandbox whose tree ends abnormally (non-zero exit, a
// signal) is restored from a checkpoint on its own root filesystem and health-checked, retried up
// to max_retries times, else left failed and reported. An exit 0 is a release, never a recovery.
// The exit is seen without polling: the pool follows each sandbox's cgroup.events (inotify).

import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { NotFoundError, SandboxError } from '../errors.js';
import type { CheckpointInfo, CheckpointStore } from './checkpoints.js';
import type { RecoveryStrategy } from './pool-config.js';
import type { ExitStatus, Sandbox } from './sandbox.js';
import type { WarmupPool } from './warmup-pool.js';

/** Throws when the restored sandbox is not what it should be. */
export type HealthCheck = (sb: Sandbox) => Promise<void>;

export interface RecoveryResult {
  sandbox: string;
  outcome: 'recovered' | 'failed';
  attempts: number;
  checkpoint?: string;
  pid?: number;
  /** From the detected exit to a healthy sandbox (or to giving up). */
  ms: number;
  error?: string;
}

export interface RecoveryEvents {
  /** A watched sandbox's tree ended abnormally; performance.now() when the handler ran. */
  detected: [Sandbox, ExitStatus, number];
  recovered: [RecoveryResult];
  failed: [RecoveryResult];
}

const aliveCheck: HealthCheck = async (sb) => {
  if (!(await sb.alive())) throw new SandboxError(`sandbox ${sb.id}: restored pid ${sb.pid} is not running`);
};

export class RecoveryManager extends EventEmitter<RecoveryEvents> {
  private readonly watched = new Set<string>();
  /** Sandboxes being recovered: an exit of a tree restored during that is the attempt's to judge. */
  private readonly recovering = new Set<string>();
  private readonly onExit = (sb: Sandbox, status: ExitStatus): void => {
    if (!this.watched.has(sb.id) || sb.state !== 'failed' || this.recovering.has(sb.id)) return;
    this.emit('detected', sb, status, performance.now());
    void this.recoverLatest(sb.id).catch(() => undefined);
  };

  constructor(
    readonly strategy: RecoveryStrategy,
    private readonly pool: WarmupPool,
    private readonly checkpoints: CheckpointStore,
    private readonly healthCheck: HealthCheck = aliveCheck,
  ) {
    super();
    pool.on('exit', this.onExit);
    pool.on('destroyed', this.onDestroyed);
  }

  private readonly onDestroyed = (sb: Sandbox): void => {
    this.watched.delete(sb.id);
  };

  /** Recovers the sandbox when its tree fails from now on. */
  watch(sandboxId: string): void {
    this.pool.get(sandboxId);
    this.watched.add(sandboxId);
  }

  unwatch(sandboxId: string): void {
    this.watched.delete(sandboxId);
  }

  /** Stops following the pool. */
  close(): void {
    this.pool.off('exit', this.onExit);
    this.pool.off('destroyed', this.onDestroyed);
    this.watched.clear();
  }

  /** The checkpoint the strategy's selector picks for a sandbox; NotFoundError when there is none. */
  async select(sb: Sandbox): Promise<CheckpointInfo> {
    const own = (await this.checkpoints.list(sb.id))[0];
    if (own) return own;
    const base = this.strategy.snapshot_selector === 'nearest' ? sb.from ?? this.pool.baseCheckpoint : undefined;
    if (base) return this.checkpoints.get(base);
    throw new NotFoundError(`checkpoint of sandbox ${sb.id}`, this.strategy.snapshot_selector === 'nearest' ? 'none of its own and no base' : 'none taken');
  }

  async recoverLatest(sandboxId: string): Promise<RecoveryResult> {
    const sb = this.pool.get(sandboxId);
    let ck: CheckpointInfo;
    try {
      ck = await this.select(sb);
    } catch (err) {
      const result: RecoveryResult = { sandbox: sb.id, outcome: 'failed', attempts: 0, ms: 0, error: (err as Error).message };
      this.emit('failed', result);
      return result;
    }
    return this.recoverFrom(sandboxId, ck.id);
  }

  /** Restores the failed sandbox from checkpoint `checkpointId`, with health checks and retries. */
  async recoverFrom(sandboxId: string, checkpointId: string): Promise<RecoveryResult> {
    const t0 = performance.now();
    const sb = this.pool.get(sandboxId);
    const ck = await this.checkpoints.get(checkpointId);
    this.recovering.add(sb.id);
    try {
      return await this.attempt(sb, ck, t0);
    } finally {
      this.recovering.delete(sb.id);
    }
  }

  private async attempt(sb: Sandbox, ck: CheckpointInfo, t0: number): Promise<RecoveryResult> {
    let error = '';
    const attempts = 1 + this.strategy.max_retries;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        await this.pool.restore(sb, ck);
        await this.checkHealth(sb);
        const result: RecoveryResult = { sandbox: sb.id, outcome: 'recovered', attempts: attempt, checkpoint: ck.id, pid: sb.pid, ms: performance.now() - t0 };
        this.emit('recovered', result);
        return result;
      } catch (err) {
        error = (err as Error).message;
        if (sb.state === 'destroyed') break;
        if (sb.state === 'active') await this.pool.abandonRestore(sb);
        if (attempt < attempts) await new Promise((r) => setTimeout(r, this.strategy.retry_interval_ms));
      }
    }
    const result: RecoveryResult = { sandbox: sb.id, outcome: 'failed', attempts, checkpoint: ck.id, ms: performance.now() - t0, error };
    this.emit('failed', result);
    return result;
  }

  private async checkHealth(sb: Sandbox): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new SandboxError(`sandbox ${sb.id}: health check did not pass within ${this.strategy.health_timeout_ms} ms`)), this.strategy.health_timeout_ms);
    });
    try {
      await Promise.race([this.healthCheck(sb), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
