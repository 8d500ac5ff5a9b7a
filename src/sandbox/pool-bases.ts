// A pool's base checkpoint and the bases rolled out of it that sandboxes still come from. Each
// holds a reference in the checkpoint store (so gc keeps it) until no sandbox comes from it.

import { FailedPreconditionError } from '../errors.js';
import type { CheckpointInfo, CheckpointStore } from './checkpoints.js';
import type { Sandbox } from './sandbox.js';

export class PoolBases {
  private base: CheckpointInfo | undefined;
  private readonly old = new Set<string>();

  constructor(private readonly pool: string, private readonly checkpoints: CheckpointStore | undefined) {}

  /** What new sandboxes restore from; undefined: they start cold. */
  get current(): CheckpointInfo | undefined {
    return this.base;
  }

  store(): CheckpointStore {
    if (!this.checkpoints) throw new FailedPreconditionError(`pool ${this.pool}: checkpoints need CRIU, and this pool has none`);
    return this.checkpoints;
  }

  use(ck: CheckpointInfo): void {
    this.store().ref(ck.id);
    this.base = ck;
  }

  /** `ck` becomes the base; the one it replaces is kept while sandboxes come from it. */
  roll(ck: CheckpointInfo): void {
    if (this.base) this.old.add(this.base.id);
    this.use(ck);
  }

  /**
   * An adopted sandbox restored from a base that is no longer the pool's (rolled out before a
   * restart) keeps that base referenced and is replaced like any other of it.
   */
  async holdOld(sb: Sandbox): Promise<void> {
    if (!sb.from || sb.from === this.base?.id || this.old.has(sb.from) || !this.checkpoints) return;
    const ck = await this.checkpoints.get(sb.from).catch(() => undefined);
    if (ck?.kind !== 'base') return;
    this.checkpoints.ref(ck.id);
    this.old.add(ck.id);
  }

  /** From a base rolled out of the pool (a cold start is one, once the pool has a base). */
  stale(sb: Sandbox): boolean {
    if (!this.base || sb.from === this.base.id) return false;
    return sb.from === undefined || this.old.has(sb.from);
  }

  /** Lets go of the old bases none of `sandboxes` comes from. */
  releaseUnused(sandboxes: Sandbox[]): void {
    for (const id of this.old) {
      if (sandboxes.some((s) => s.from === id)) continue;
      this.old.delete(id);
      this.checkpoints?.unref(id);
    }
  }

  /** Lets go of every base (the pool is closed). */
  releaseAll(): void {
    if (this.base) this.checkpoints?.unref(this.base.id);
    for (const id of this.old) this.checkpoints?.unref(id);
    this.old.clear();
  }
}
