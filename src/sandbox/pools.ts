// The daemon's pools: named WarmupPools whose configs live in <root>/pools/<name>.json (their
// state in <root>/pools/<name>/), each with a RecoveryManager that watches every sandbox it hands
// out when CRIU works here. A daemon stop or crash leaves the sandboxes running; the next start
// reads the configs again and each pool adopts what it finds (docs/sandbox.md).

import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { AlreadyExistsError, NotFoundError } from '../errors.js';
import { cgroup2Root } from '../cgroup2.js';
import { CheckpointStore, type CheckpointInfo } from './checkpoints.js';
import { Criu } from './criu.js';
import { parsePoolConfig, parseRecoveryStrategy, type PoolConfig } from './pool-config.js';
import { PoolMetrics } from './pool-metrics.js';
import { RecoveryManager } from './recovery.js';
import type { SnapshotService } from './sandbox-resources.js';
import type { PoolLog } from './pool-deps.js';
import { WarmupPool } from './warmup-pool.js';

export interface SandboxPoolsOptions {
  root: string;
  snapshots: SnapshotService;
  resolveImage(ref: string): Promise<string>;
  /** Pools' cgroups go below it. */
  cgroupParent?: string;
  criuPrefix?: string;
  memoryMerge: boolean;
  log: PoolLog;
  metrics?: PoolMetrics;
  audit?: (action: string, target: string, details: Record<string, unknown>, result?: string) => void;
}

export interface PoolSummary {
  name: string;
  image: string;
  frozen: number;
  active: number;
  failed: number;
  min: number;
  max: number;
  base: string | null;
  sandboxes: { id: string; pid: number; state: string; from: string | null }[];
}

interface Running {
  pool: WarmupPool;
  recovery?: RecoveryManager;
}

export class SandboxPools {
  private readonly pools = new Map<string, Running>();
  private criu: Criu | undefined;
  private checkpoints: CheckpointStore | undefined;
  /** Why checkpoints are off, when they are. */
  criuMissing = '';
  /** CRIU is looked for once, when the first pool runs: a daemon without pools pays nothing for it. */
  private criuFound: Promise<void> | undefined;

  constructor(private readonly opts: SandboxPoolsOptions) {}

  private get dir(): string {
    return join(this.opts.root, 'pools');
  }

  /** One cgroup per daemon root, so two daemons' pools of the same name never meet. */
  private get cgroupParent(): string {
    return this.opts.cgroupParent ?? join(cgroup2Root(), 'dedup-snapshotter', createHash('sha256').update(this.opts.root).digest('hex').slice(0, 12));
  }

  private findCriu(): Promise<void> {
    return (this.criuFound ??= (async () => {
      try {
        const criu = Criu.at(this.opts.criuPrefix);
        await criu.check();
        this.criu = criu;
        this.checkpoints = await CheckpointStore.open(join(this.opts.root, 'checkpoints'), criu);
      } catch (err) {
        this.criuMissing = (err as Error).message;
        this.opts.log.warn({ err: this.criuMissing }, 'sandbox checkpoints and recovery are off');
      }
    })());
  }

  /** Starts every saved pool again (adopting its sandboxes). */
  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    for (const file of await readdir(this.dir)) {
      if (!file.endsWith('.json')) continue;
      try {
        const config = parsePoolConfig(JSON.parse(await readFile(join(this.dir, file), 'utf8')));
        await this.run(config);
      } catch (err) {
        this.opts.log.warn({ pool: file.slice(0, -5), err: (err as Error).message }, 'saved pool not started');
      }
    }
  }

  async create(input: unknown): Promise<PoolSummary> {
    const config = parsePoolConfig(input);
    if (this.pools.has(config.name) || existsSync(this.configFile(config.name))) throw new AlreadyExistsError(`pool ${config.name}`);
    const pool = await this.run(config).catch(async (err: unknown) => {
      await rm(join(this.dir, `${config.name}.snapshot`), { force: true });
      throw err;
    });
    // A base taken at start is the pool's from now on: a restart does not take another.
    await this.save(pool.baseCheckpoint ? { ...config, from_checkpoint: false, base_checkpoint: pool.baseCheckpoint } : config);
    return this.summary(config.name);
  }

  private async run(config: PoolConfig): Promise<WarmupPool> {
    await this.findCriu();
    const pool = new WarmupPool(config, {
      dir: join(this.dir, config.name), cgroupParent: this.cgroupParent,
      snapshots: this.opts.snapshots, resolveImage: (ref) => this.resolveImage(config.name, ref),
      checkpoints: this.checkpoints, criu: this.criu, memoryMerge: this.opts.memoryMerge, log: this.opts.log,
    });
    this.opts.metrics?.follow(pool);
    await pool.start();
    const running: Running = { pool };
    if (this.checkpoints) {
      const recovery = new RecoveryManager(parseRecoveryStrategy(), pool, this.checkpoints);
      const watch = (sb: { id: string; state: string }): void => {
        if (sb.state === 'active') recovery.watch(sb.id);
      };
      pool.on('acquired', watch);
      for (const sb of pool.sandboxes()) watch(sb);
      recovery.on('recovered', (r) => this.opts.audit?.('sandbox.recover', `${config.name}/${r.sandbox}`, { ...r }));
      recovery.on('failed', (r) => this.opts.audit?.('sandbox.recover', `${config.name}/${r.sandbox}`, { ...r }, 'failed'));
      this.opts.metrics?.followRecovery(recovery);
      running.recovery = recovery;
    }
    this.pools.set(config.name, running);
    return pool;
  }

  /**
   * The image's chain id from its registry, remembered in <name>.snapshot: a restart while the
   * registry is unreachable still finds the snapshot (and adopts the pool's sandboxes).
   */
  private async resolveImage(name: string, ref: string): Promise<string> {
    const cache = join(this.dir, `${name}.snapshot`);
    try {
      const chain = await this.opts.resolveImage(ref);
      await writeFile(cache, `${ref}\n${chain}\n`);
      return chain;
    } catch (err) {
      const [cachedRef, chain] = (await readFile(cache, 'utf8').catch(() => '')).split('\n');
      if (cachedRef !== ref || !chain) throw err;
      this.opts.log.warn({ pool: name, image: ref, snapshot: chain, err: (err as Error).message }, 'image not resolved; using the snapshot it resolved to before');
      return chain;
    }
  }

  private configFile(name: string): string {
    return join(this.dir, `${name}.json`);
  }

  private async save(config: PoolConfig): Promise<void> {
    const file = this.configFile(config.name);
    await writeFile(`${file}.tmp`, JSON.stringify(config, null, 2));
    await rename(`${file}.tmp`, file);
  }

  private get(name: string): Running {
    const r = this.pools.get(name);
    if (!r) throw new NotFoundError(`pool ${name}`);
    return r;
  }

  async acquire(name: string, timeoutMs?: number): Promise<{ id: string; pid: number; ms: number }> {
    const { pool } = this.get(name);
    const t0 = performance.now();
    const sb = await pool.acquire(timeoutMs);
    return { id: sb.id, pid: sb.pid, ms: performance.now() - t0 };
  }

  release(name: string, id: string, destroy = false): Promise<'frozen' | 'destroyed'> {
    return this.get(name).pool.release(id, { destroy });
  }

  /** `asBase`: the checkpoint becomes the pool's base (saved in its config) and rolls through it. */
  async checkpoint(name: string, id: string, asBase = false): Promise<CheckpointInfo> {
    const { pool } = this.get(name);
    const ck = await pool.checkpoint(id, { asBase });
    if (asBase) await this.save({ ...pool.config, from_checkpoint: false, base_checkpoint: ck.id });
    return ck;
  }

  /** Closes the pool (every sandbox destroyed) and forgets it. */
  async remove(name: string): Promise<void> {
    const { pool, recovery } = this.get(name);
    recovery?.close();
    this.pools.delete(name);
    await rm(this.configFile(name), { force: true });
    await rm(join(this.dir, `${name}.snapshot`), { force: true });
    await pool.close();
    // The last pool gone: no empty cgroup of ours stays in the tree.
    if (this.pools.size === 0) {
      await rmdir(this.cgroupParent).catch(() => undefined);
      await rmdir(dirname(this.cgroupParent)).catch(() => undefined); // another daemon's pools keep it
    }
  }

  summary(name: string): PoolSummary {
    const { pool } = this.get(name);
    const c = pool.config;
    return {
      name, image: c.template.image, frozen: pool.size(), active: pool.activeCount(), failed: pool.failedCount(),
      min: c.min_size, max: c.max_size, base: pool.baseCheckpoint ?? null,
      sandboxes: pool.sandboxes().map((s) => ({ id: s.id, pid: s.pid, state: s.state, from: s.from ?? null })),
    };
  }

  list(): PoolSummary[] {
    return [...this.pools.keys()].sort().map((n) => this.summary(n));
  }

  /** A daemon stop: every sandbox is left running for the next start to adopt. */
  async detach(): Promise<void> {
    for (const { pool, recovery } of this.pools.values()) {
      recovery?.close();
      await pool.detach();
    }
    this.pools.clear();
  }
}
