// The seed's WarmupPool: sandboxes started ahead of demand and frozen (cgroup.freeze) once ready,
// handed out by a thaw. What a sandbox is made of (snapshot, mount, cgroup, directory) is
// SandboxResources'. A refill loop keeps between min_size and max_size frozen, in batches, never
// holding up Acquire; Close leaves no process, cgroup, mount, snapshot or directory behind.
//
// Invariants: a ready sandbox is in exactly one of `ready` (ReadyQueue, FIFO) or `handedOut`
// (active or failed); it leaves `ready` synchronously in Acquire, so concurrent calls never share
// one. The base checkpoint and the bases rolled out of it are PoolBases'.

import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { FailedPreconditionError, NotFoundError, PoolExhaustedError, SandboxError } from '../errors.js';
import { Cgroup, enableControllers } from './cgroup.js';
import type { CheckpointInfo } from './checkpoints.js';
import type { Criu } from './criu.js';
import { PoolBases } from './pool-bases.js';
import { limitControllers, type PoolConfig } from './pool-config.js';
import { quiet, type PoolDeps, type PoolEvents, type PoolLog } from './pool-deps.js';
import { ReadyQueue } from './ready-queue.js';
import { checkSeccomp, isCleanExit, type Launch, type Sandbox } from './sandbox.js';
import { SandboxResources } from './sandbox-resources.js';

export class WarmupPool extends EventEmitter<PoolEvents> {
  private readonly ready = new ReadyQueue();
  private readonly handedOut = new Map<string, Sandbox>();
  /** Sandboxes being created; Close waits for them (each is destroyed when it sees Close). */
  private readonly inflight = new Set<Promise<void>>();
  private chainId = '';
  private cgroup: Cgroup | undefined;
  private resources: SandboxResources | undefined;
  private readonly bases: PoolBases;
  private timer: NodeJS.Timeout | undefined;
  private refilling: Promise<void> | undefined;
  private closing = false;
  private readonly log: PoolLog;

  constructor(readonly config: PoolConfig, private readonly deps: PoolDeps) {
    super();
    this.log = deps.log ?? quiet;
    this.bases = new PoolBases(config.name, deps.checkpoints);
  }

  get name(): string {
    return this.config.name;
  }

  get baseCheckpoint(): string | undefined {
    return this.bases.current?.id;
  }

  /** Checks the image and limits, creates initial_size frozen sandboxes, starts the refill loop. */
  async start(): Promise<void> {
    const { template } = this.config;
    this.chainId = await this.deps.resolveImage(template.image);
    const cgroupPath = join(this.deps.cgroupParent, this.name);
    this.resources = new SandboxResources({
      pool: this.name, dir: join(this.deps.dir, 'sandboxes'), cgroup: cgroupPath, snapshots: this.deps.snapshots, chainId: this.chainId,
      limits: template.cgroup.limits, memoryMerge: this.deps.memoryMerge ?? false, checkpoints: this.deps.checkpoints,
    });
    await this.resources.checkImage(template.image);
    await checkSeccomp(template, `pool ${this.name}`);
    // The pool's cgroup first: the limits' controllers are enabled down to it (its subtree_control too).
    this.cgroup = await Cgroup.create(cgroupPath);
    await enableControllers(join(cgroupPath, 'x'), limitControllers(template), `pool ${this.name}: template.cgroup.limits`).catch(async (err: unknown) => {
      await this.cgroup!.remove().catch(() => undefined);
      throw err;
    });
    let adopted = 0;
    try {
      await mkdir(join(this.deps.dir, 'sandboxes'), { recursive: true });
      if (this.config.base_checkpoint) this.bases.use(await this.bases.store().get(this.config.base_checkpoint));
      else if (this.config.from_checkpoint) this.bases.use(await this.takeBase());
      adopted = await this.adopt();
      await this.startSandboxes(Math.max(0, this.config.initial_size - adopted));
    } catch (err) {
      // A restart must not kill what it adopted: those go on, and the refill loop tries again.
      if (this.sandboxes().length === 0) {
        await this.close();
        throw err;
      }
      this.log.warn({ pool: this.name, err: (err as Error).message, adopted: this.sandboxes().length }, 'pool started short of initial_size');
    }
    this.timer = setInterval(() => this.wake(), this.config.refill_interval_ms).unref();
    this.log.info({ pool: this.name, image: template.image, snapshot: this.chainId, frozen: this.ready.length, base: this.bases.current?.id }, 'pool started');
  }

  /**
   * Takes over the sandboxes a previous daemon left in the pool's directory (killed with it or
   * not): those still running keep their state, the rest are removed. Returns how many are frozen.
   */
  private async adopt(): Promise<number> {
    for (const id of await this.resources!.ids()) {
      const sb = await this.resources!.adopt(id);
      if (!sb) {
        await this.destroy(this.resources!.sandbox(id)).catch((err: unknown) =>
          this.log.warn({ pool: this.name, sandbox: id, err: (err as Error).message }, 'leftover sandbox not removed'));
        continue;
      }
      await this.bases.holdOld(sb);
      if (sb.state === 'frozen') {
        await sb.cgroup.freeze();
        this.ready.push(sb);
      } else {
        this.handedOut.set(id, sb);
      }
      this.watchExit(sb);
      this.log.info({ pool: this.name, sandbox: id, pid: sb.pid, state: sb.state }, 'sandbox adopted');
    }
    return this.ready.length;
  }

  /**
   * Leaves every sandbox running as it is (a daemon stop): refilling and exit handling stop, the
   * next start() adopts them.
   */
  async detach(): Promise<void> {
    this.closing = true;
    clearInterval(this.timer);
    await this.refilling;
    await Promise.allSettled([...this.inflight]);
    for (const sb of this.sandboxes()) await sb.writeRecord().catch(() => undefined);
    this.emit('closed');
  }

  /** Frozen sandboxes ready to be handed out. */
  size(): number {
    return this.ready.length;
  }

  activeCount(): number {
    return [...this.handedOut.values()].filter((s) => s.state === 'active').length;
  }

  failedCount(): number {
    return [...this.handedOut.values()].filter((s) => s.state === 'failed').length;
  }

  sandboxes(): Sandbox[] {
    return [...this.ready.list(), ...this.handedOut.values()];
  }

  /** A handed-out sandbox (active or failed); NotFoundError otherwise. */
  get(id: string): Sandbox {
    const sb = this.handedOut.get(id);
    if (!sb) throw new NotFoundError(`sandbox ${id} of pool ${this.name}`, 'not handed out');
    return sb;
  }

  /**
   * Hands out the oldest frozen sandbox, thawed (state active); an empty pool waits until one is
   * ready or `timeoutMs` passes (PoolExhaustedError). The refill loop is woken either way.
   */
  async acquire(timeoutMs = this.config.acquire_timeout_ms): Promise<Sandbox> {
    if (this.closing) throw new FailedPreconditionError(`pool ${this.name} is closing`);
    const t0 = performance.now();
    const deadline = t0 + timeoutMs;
    for (;;) {
      const exhausted = (): Error => new PoolExhaustedError(this.name, timeoutMs);
      const sb = this.ready.take() ?? (await this.ready.wait(deadline - performance.now(), exhausted, () => this.wake()));
      this.wake();
      sb.setState('active');
      this.handedOut.set(sb.id, sb);
      try {
        sb.cgroup.thaw();
        // Killed while frozen: its shim could not reap it until now.
        if (!(await sb.alive())) throw new SandboxError(`sandbox ${sb.id}: pid ${sb.pid} died while frozen`);
      } catch (err) {
        this.log.warn({ pool: this.name, sandbox: sb.id, err: (err as Error).message }, 'sandbox not handed out; destroying it');
        await this.destroy(sb);
        continue;
      }
      sb.activatedAt = new Date();
      this.watchExit(sb);
      const ms = performance.now() - t0;
      this.emit('acquired', sb, ms);
      void sb.writeRecord().catch(() => undefined);
      return sb;
    }
  }

  /**
   * Takes a handed-out sandbox back: frozen into the pool, or destroyed (`destroy`, a failed or
   * exited one, one from a base rolled out of the pool).
   */
  async release(id: string, opts: { destroy?: boolean } = {}): Promise<'frozen' | 'destroyed'> {
    const sb = this.get(id);
    if (opts.destroy || sb.state !== 'active' || this.bases.stale(sb) || this.closing || !(await sb.alive())) {
      await this.destroy(sb);
      this.emit('released', sb);
      return 'destroyed';
    }
    sb.setState('frozen');
    this.handedOut.delete(id);
    try {
      await sb.cgroup.freeze();
    } catch (err) {
      this.log.warn({ pool: this.name, sandbox: id, err: (err as Error).message }, 'released sandbox did not freeze; destroying it');
      await this.destroy(sb);
      return 'destroyed';
    }
    sb.activatedAt = undefined;
    await sb.writeRecord().catch(() => undefined);
    this.ready.offer(sb);
    this.emit('released', sb);
    this.wake();
    return 'frozen';
  }

  /**
   * A checkpoint of an active sandbox, taken while it keeps running. `asBase`: it becomes the
   * pool's base and rolls through the pool (rollBase).
   */
  async checkpoint(id: string, opts: { asBase?: boolean } = {}): Promise<CheckpointInfo> {
    const sb = this.get(id);
    if (sb.state !== 'active') throw new FailedPreconditionError(`sandbox ${id} is ${sb.state}; only an active sandbox is checkpointed`);
    const ck = await this.bases.store().take(sb.pid, { sandbox: id, pool: this.name, kind: opts.asBase ? 'base' : 'sandbox', from: sb.from }, true, sb.upper);
    if (opts.asBase) this.rollBase(ck);
    return ck;
  }

  /**
   * Restores a failed sandbox's tree from `ck` on its own root filesystem, in its own cgroup;
   * it is active again once this resolves. Its writable layer goes back to the checkpoint's
   * first (unmounted meanwhile: overlayfs wants no changes below a mounted overlay). A tree that
   * does not start is killed.
   */
  async restore(sb: Sandbox, ck: CheckpointInfo): Promise<void> {
    if (sb.state !== 'failed') throw new FailedPreconditionError(`sandbox ${sb.id} is ${sb.state}; only a failed sandbox is restored`);
    await sb.kill();
    await this.resources!.resetUpper(sb, ck);
    try {
      await sb.launch({ restore: ck, criu: this.criu() });
    } catch (err) {
      await sb.kill();
      throw err;
    }
    sb.setState('active');
    sb.activatedAt = new Date();
    this.watchExit(sb);
    void sb.writeRecord().catch(() => undefined);
  }

  /** Kills a failed sandbox's restored tree again (a failed health check). */
  async abandonRestore(sb: Sandbox): Promise<void> {
    sb.state = 'failed';
    await sb.kill();
  }

  /**
   * Makes `ck` the pool's base: new sandboxes restore from it; frozen sandboxes of the old base
   * (or started cold, in a pool that had none) are replaced refill_batch_size per refill pass,
   * handed-out ones keep running and are destroyed when released; the old base's reference goes
   * once no sandbox comes from it.
   */
  private rollBase(ck: CheckpointInfo): void {
    this.bases.roll(ck);
    this.wake();
  }

  /**
   * Stops refilling, gives active sandboxes up to `graceMs` to exit, then destroys every sandbox,
   * the pool's cgroup and its directory.
   */
  async close(opts: { graceMs?: number } = {}): Promise<void> {
    this.closing = true;
    clearInterval(this.timer);
    await this.refilling;
    await Promise.allSettled([...this.inflight]);
    const active = [...this.handedOut.values()].filter((s) => s.state === 'active');
    if (opts.graceMs && active.length) {
      await Promise.race([Promise.all(active.map((s) => s.exited)), new Promise((r) => setTimeout(r, opts.graceMs))]);
    }
    const errors: unknown[] = [];
    for (const sb of this.sandboxes()) await this.destroy(sb).catch((err: unknown) => errors.push(err));
    await this.cgroup?.remove().catch((err: unknown) => errors.push(err));
    await rm(this.deps.dir, { recursive: true, force: true }).catch((err: unknown) => errors.push(err));
    this.bases.releaseAll();
    this.log.info({ pool: this.name }, 'pool closed');
    this.emit('closed');
    if (errors.length) throw errors[0];
  }

  private criu(): Criu {
    if (!this.deps.criu) throw new FailedPreconditionError(`pool ${this.name}: restores need CRIU, and this pool has none`);
    return this.deps.criu;
  }

  /** Runs one sandbox until ready and dumps it (killing it) as the pool's base checkpoint. */
  private async takeBase(): Promise<CheckpointInfo> {
    const sb = await this.create({ run: this.config.template, hostname: this.config.template.hostname ?? this.name });
    try {
      await sb.waitReady(this.config.template, () => this.closing);
      const ck = await this.bases.store().take(sb.pid, { sandbox: sb.id, pool: this.name, kind: 'base' }, false, sb.upper);
      await sb.exited;
      return ck;
    } finally {
      await this.destroy(sb);
    }
  }

  private launchFor(id: string): Launch {
    const t = this.config.template;
    const base = this.bases.current;
    return base ? { restore: base, criu: this.criu() } : { run: t, hostname: t.hostname ?? id };
  }

  /** A new sandbox, its tree launched (not yet ready). */
  private create(how?: Launch): Promise<Sandbox> {
    const id = `sb-${randomBytes(5).toString('hex')}`;
    return this.resources!.create(id, how ?? this.launchFor(id));
  }

  /** Creates `n` sandboxes at once, each frozen into the pool once ready. */
  private async startSandboxes(n: number): Promise<void> {
    const one = async (): Promise<void> => {
      const sb = await this.create();
      try {
        // A tree restored from a base was ready when it was dumped (its ready file is in the
        // base's root filesystem, not in this fresh one).
        if (!sb.from) await sb.waitReady(this.config.template, () => this.closing);
        await sb.cgroup.freeze();
        sb.setState('frozen');
      } catch (err) {
        await this.destroy(sb);
        throw err;
      }
      if (this.closing) return this.destroy(sb);
      await sb.writeRecord();
      this.watchExit(sb);
      this.emit('ready', sb);
      this.ready.offer(sb);
    };
    const results = await Promise.allSettled(Array.from({ length: n }, () => {
      const p = one();
      this.inflight.add(p);
      return p.finally(() => this.inflight.delete(p));
    }));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Wakes the refill loop; one pass runs at a time. */
  private wake(): void {
    if (this.closing || this.refilling) return;
    this.refilling = this.refill().catch((err: unknown) => {
      this.log.warn({ pool: this.name, err: (err as Error).message }, 'refill failed');
      this.emit('refillFailed', err as Error);
    }).finally(() => (this.refilling = undefined));
  }

  private async refill(): Promise<void> {
    const { min_size: min, max_size: max, refill_batch_size: batch } = this.config;
    // A new base rolls through a batch per pass, new sandboxes first and then as many of the old
    // base's frozen ones go: the pool never has fewer to hand out while it rolls.
    const stale = this.ready.list().filter((s) => this.bases.stale(s)).slice(0, batch);
    if (stale.length) {
      await this.startSandboxes(stale.length);
      for (const s of stale) if (s.state === 'frozen') await this.destroy(s);
    }
    const want = Math.max(min, this.ready.waiting);
    const n = Math.min(batch, want - this.ready.length, max - this.ready.length);
    if (n > 0) await this.startSandboxes(n);
    while (this.ready.length > max) await this.destroy(this.ready.takeNewest()!);
    this.bases.releaseUnused(this.sandboxes());
    const more = this.ready.length < Math.min(want, max) || this.ready.length > max || this.ready.list().some((s) => this.bases.stale(s));
    if (!this.closing && more) setImmediate(() => this.wake());
  }

  /** Follows a sandbox's tree: an exit while frozen drops it, an active one's exit is reported. */
  private watchExit(sb: Sandbox): void {
    const exited = sb.exited;
    void exited.then(async (status) => {
      if (sb.exited !== exited || this.closing) return;
      if (sb.state === 'frozen') {
        this.ready.remove(sb);
        await this.destroy(sb);
        this.wake();
      } else if (sb.state === 'active') {
        if (isCleanExit(status)) await this.destroy(sb);
        else sb.setState('failed');
        this.emit('exit', sb, status);
      }
    }).catch((err: unknown) => this.emit('refillFailed', err as Error));
  }

  /** Takes it out of the pool and removes all of it (SandboxResources.remove). */
  private async destroy(sb: Sandbox): Promise<void> {
    if (sb.state === 'destroyed') return;
    sb.state = 'destroyed';
    this.handedOut.delete(sb.id);
    this.ready.remove(sb);
    try {
      await this.resources!.remove(sb);
    } finally {
      this.emit('destroyed', sb);
    }
  }
}
