// What a pool's sandbox is made of, and how it is put together and taken apart: the snapshot
// dedup-sandbox/<pool>/<id> (prepared from the committed snapshot of the image's top layer),
// mounted at <dir>/<id>/rootfs; the cgroup <pool cgroup>/<id> with the template's limits; the
// directory <dir>/<id>/ (sandbox.json, status, shim.log); and the tree the shim launches there.

import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isDedupError, NotFoundError, SandboxError } from '../errors.js';
import { mountAt, unmount } from '../system-mounts.js';
import { Cgroup } from './cgroup.js';
import type { CheckpointInfo, CheckpointStore } from './checkpoints.js';
import { Sandbox, type Launch, type SandboxRecord } from './sandbox.js';

/** The snapshotter as a pool uses it (the in-process Snapshotter, or a Snapshots gRPC client). */
export interface SnapshotService {
  /** NotFoundError when there is no snapshot `key`. */
  stat(key: string): Promise<unknown>;
  prepare(key: string, parent: string, labels: Record<string, string>): Promise<{ type: string; source: string; options: string[] }[]>;
  remove(key: string): Promise<void>;
}

/** Snapshot keys of a pool's sandboxes start with this (they are not containerd's). */
export const SNAPSHOT_PREFIX = 'dedup-sandbox';
export const SANDBOX_LABEL = 'containerd.io/snapshot/dedup.sandbox';

export interface SandboxResourcesOptions {
  pool: string;
  /** Sandbox directories go below it. */
  dir: string;
  /** The pool's cgroup. */
  cgroup: string;
  snapshots: SnapshotService;
  /** The committed snapshot root filesystems are prepared from. */
  chainId: string;
  limits: Record<string, string>;
  memoryMerge: boolean;
  checkpoints?: CheckpointStore;
}

export class SandboxResources {
  constructor(private readonly o: SandboxResourcesOptions) {}

  /** A sandbox object for `id` (nothing created): what create() fills and remove() clears. */
  sandbox(id: string): Sandbox {
    return new Sandbox(id, this.o.pool, join(this.o.dir, id), Cgroup.open(join(this.o.cgroup, id)), this.o.memoryMerge);
  }

  /** NotFoundError naming `image` when the committed snapshot is missing (the image was not pulled with us). */
  async checkImage(image: string): Promise<void> {
    await this.o.snapshots.stat(this.o.chainId).catch((err: unknown) => {
      if (isDedupError(err) && err.code === 'ERR_NOT_FOUND') {
        throw new NotFoundError(`image ${image}`, `no committed snapshot ${this.o.chainId}; pull it with the dedup snapshotter first`);
      }
      throw err;
    });
  }

  /** The ids of the sandbox directories there are (a previous daemon's, at start). */
  ids(): Promise<string[]> {
    return readdir(this.o.dir);
  }

  /**
   * The sandbox a previous daemon left in <dir>/<id>/ (its tree running or not), from its record;
   * undefined when there is no record of that id.
   */
  async adopt(id: string): Promise<Sandbox | undefined> {
    const dir = join(this.o.dir, id);
    const record = await readFile(join(dir, 'sandbox.json'), 'utf8').then((t) => JSON.parse(t) as SandboxRecord, () => undefined);
    return record && record.id === id ? Sandbox.adopt(record, dir, Cgroup.open(join(this.o.cgroup, id)), this.o.memoryMerge) : undefined;
  }

  /**
   * Snapshot, mount, cgroup, then the tree (restored trees start on the checkpoint's writable
   * layer). Whatever was made is removed again if a step fails.
   */
  async create(id: string, launch: Launch): Promise<Sandbox> {
    const sb = this.sandbox(id);
    try {
      await mkdir(sb.rootfs, { recursive: true });
      const mounts = await this.o.snapshots.prepare(this.snapshotKey(sb), this.o.chainId, { [SANDBOX_LABEL]: this.o.pool });
      sb.mount = mounts[0]!;
      if ('restore' in launch && sb.upper) await this.store().restoreUpper(launch.restore, sb.upper);
      await mountAt(sb.rootfs, sb.mount);
      await Cgroup.create(sb.cgroup.path, this.o.limits);
      await sb.launch(launch);
      await sb.writeRecord();
      return sb;
    } catch (err) {
      await this.remove(sb).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Puts the writable layer back as it was at `ck`, unmounted meanwhile (overlayfs wants no
   * changes below a mounted overlay). The tree must be gone.
   */
  async resetUpper(sb: Sandbox, ck: CheckpointInfo): Promise<void> {
    if (!sb.upper || !sb.mount) return;
    await unmount(sb.rootfs);
    await this.store().restoreUpper(ck, sb.upper);
    await mountAt(sb.rootfs, sb.mount);
  }

  /** Kills the tree and removes the cgroup, the rootfs mount, the snapshot and the directory. */
  async remove(sb: Sandbox): Promise<void> {
    const errors: unknown[] = [];
    await sb.kill().catch((err: unknown) => errors.push(err));
    await sb.cgroup.remove().catch((err: unknown) => errors.push(err));
    if (!errors.length) await sb.shimReaped;
    await unmount(sb.rootfs).catch((err: unknown) => errors.push(err));
    await this.o.snapshots.remove(this.snapshotKey(sb)).catch((err: unknown) => {
      if (!(isDedupError(err) && err.code === 'ERR_NOT_FOUND')) errors.push(err);
    });
    await sb.recordsWritten();
    await rm(sb.dir, { recursive: true, force: true }).catch((err: unknown) => errors.push(err));
    if (errors.length) throw new SandboxError(`sandbox ${sb.id}: not all of it was removed: ${(errors[0] as Error).message}`, { cause: errors[0] });
  }

  private snapshotKey(sb: Sandbox): string {
    return `${SNAPSHOT_PREFIX}/${this.o.pool}/${sb.id}`;
  }

  private store(): CheckpointStore {
    if (!this.o.checkpoints) throw new SandboxError(`pool ${this.o.pool}: restoring a checkpoint's files needs the checkpoint store`);
    return this.o.checkpoints;
  }
}
