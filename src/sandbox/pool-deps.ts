// What a WarmupPool is given (its directory, cgroup parent, the snapshotter, checkpoints, CRIU, a
// log) and the events it emits.

import type { CheckpointStore } from './checkpoints.js';
import type { Criu } from './criu.js';
import type { ExitStatus, Sandbox } from './sandbox.js';
import type { SnapshotService } from './sandbox-resources.js';

export interface PoolLog {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
}

export interface PoolDeps {
  /** The pool's state directory (sandboxes/<id>/ below it). */
  dir: string;
  /** The pool's cgroup is <cgroupParent>/<name>. */
  cgroupParent: string;
  snapshots: SnapshotService;
  /** The chain id of the image's top layer: the committed snapshot rootfs are prepared from. */
  resolveImage(ref: string): Promise<string>;
  /** Needed for base checkpoints (from_checkpoint, base_checkpoint) and for checkpoint(). */
  checkpoints?: CheckpointStore;
  criu?: Criu;
  /** Opt sandboxes into KSM merging (enable_mem_dedup). */
  memoryMerge?: boolean;
  log?: PoolLog;
}

export interface PoolEvents {
  ready: [Sandbox];
  acquired: [Sandbox, number];
  released: [Sandbox];
  /** An active sandbox's tree ended: clean (exit 0, a release) or not (the sandbox is now failed). */
  exit: [Sandbox, ExitStatus];
  destroyed: [Sandbox];
  /** Closed or detached: it hands out nothing more. */
  closed: [];
  /** A background step failed (a refill); the pool goes on. */
  refillFailed: [Error];
}

/** A pool given no log says nothing. */
export const quiet: PoolLog = { info: () => undefined, warn: () => undefined };
