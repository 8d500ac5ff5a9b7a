// The snapshotter (containerd's overlay snapshotter semantics over SnapshotMetadata):
// snapshots/<id>/fs and work per snapshot, bind mounts for parentless snapshots and overlay
// mounts with the parents' fs directories as lowerdirs otherwise. Remote snapshots
// (remote-snapshots.ts): a Prepare for an eStargz layer has the layer server mount it lazily,
// commits it under the target name and answers AlreadyExists, so containerd skips the download;
// this process can stop, crash or restart without touching those mounts. Kernel mode
// (kernel-snapshots.ts): committed layers go into the store and are served as EROFS images, or
// come from a shared store; a remote snapshot whose layer is complete is served by an EROFS image
// to the snapshots made from then on (complete-layers.ts).

import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { AlreadyExistsError, FailedPreconditionError } from '../errors.js';
import type { Platform } from '../image/oci.js';
import type { KernelLayers } from '../kernel/kernel-layers.js';
import { unmount } from '../system-mounts.js';
import type { RegistryClient } from '../registry/client.js';
import { CompleteLayers } from './complete-layers.js';
import { diskUsage } from './disk-usage.js';
import { snapshotMatcher } from './filters.js';
import { KernelSnapshots, type SharedLayerSource } from './kernel-snapshots.js';
import { LABEL } from './labels.js';
import { SnapshotMetadata, type Kind, type Snapshot, type SnapshotInfo } from './metadata.js';
import { RemoteSnapshots, type FullPullReason, type LayerService } from './remote-snapshots.js';
import type { AuditRecord, SnapshotLog, SnapshotterParts } from './parts.js';
import { SnapshotDirs } from './snapshot-dirs.js';

export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface SnapshotterOptions {
  root: string;
  layers: LayerService;
  client: RegistryClient;
  platform: Platform;
  /** Mount eStargz layers lazily (config enable_lazy); otherwise every layer is unpacked. */
  lazyPull: boolean;
  log: SnapshotLog;
  /** Records what containerd had done to the node (the audit log). */
  audit?: AuditRecord;
  /** A layer the labels asked to mount lazily is left to containerd to download and unpack. */
  fullPull?: (reason: FullPullReason) => void;
  /** Kernel mode (enable_erofs): committed layers go into the store and are served as EROFS images. */
  kernel?: KernelLayers;
  /** Shared stores (config shared_stores, src/shared-store/): layers a Prepare mounts from there, by chain id. Needs `kernel`. */
  shared?: SharedLayerSource;
}

export class Snapshotter {
  readonly metadata: SnapshotMetadata;
  private readonly dirs: SnapshotDirs;
  private readonly remote: RemoteSnapshots;
  private readonly kernelLayers: KernelSnapshots;
  /** Kernel mode: remote snapshots whose complete layer EROFS serves to the snapshots made since. */
  private readonly complete: CompleteLayers | undefined;
  private readonly overlayIndexOff = existsSync('/sys/module/overlay/parameters/index');
  private repairs: Promise<void> = Promise.resolve();

  constructor(private opts: SnapshotterOptions) {
    this.metadata = new SnapshotMetadata(join(opts.root, 'metadata.db'));
    this.dirs = new SnapshotDirs(opts.root);
    if (opts.kernel) {
      this.complete = new CompleteLayers({ metadata: this.metadata, kernel: opts.kernel, client: opts.client, root: opts.root, layers: opts.layers, log: opts.log, audit: opts.audit,
        fs: (id) => this.dirs.fs(id), erofs: (id) => this.dirs.erofs(id) });
    }
    const parts: SnapshotterParts = { metadata: this.metadata, dirs: this.dirs, complete: this.complete, log: opts.log, audit: opts.audit, serially: (fn) => this.serially(fn) };
    this.remote = new RemoteSnapshots({ ...parts, layers: opts.layers, client: opts.client, platform: opts.platform, kernel: opts.kernel, fullPull: opts.fullPull });
    this.kernelLayers = new KernelSnapshots({ ...parts, kernel: opts.kernel, shared: opts.shared });
  }

  /** A committed snapshot's layer for the snapshots above it: the EROFS mount of a complete lazy layer, else its fs. */
  private lowerDir(id: number): string {
    return this.complete?.has(id) ? this.dirs.erofs(id) : this.dirs.fs(id);
  }

  /**
   * After a restart: removes directories no snapshot owns (half-made ones) and re-attaches to the
   * lazily mounted layers of remote snapshots (reattach).
   */
  async start(): Promise<void> {
    await mkdir(this.dirs.all, { recursive: true });
    await this.removeOrphans(await this.remote.served());
    await this.remote.reattach();
    await this.kernelLayers.mountAll();
    await this.complete?.releaseFuse();
  }

  /** After each refresh of the shared stores: mounts the layers they serve now (KernelSnapshots.mountSharedAgain). */
  mountSharedAgain(): Promise<void> {
    return this.kernelLayers.mountSharedAgain();
  }

  /**
   * Kernel mode for lazily pulled layers: each remote snapshot whose layer is complete now gets
   * its EROFS image, which the snapshots made from then on stand on (complete-layers.ts). Called
   * now and then.
   */
  async serveCompleteLayers(): Promise<void> {
    await this.complete?.serve();
  }

  /** Makes the layer server serve every remote snapshot again (RemoteSnapshots.reattach). */
  reattach(): Promise<void> {
    return this.remote.reattach();
  }

  /** Runs mount repairs one at a time (SnapshotterParts.serially). */
  private serially(fn: () => Promise<void>): Promise<void> {
    const run = this.repairs.then(fn);
    this.repairs = run.catch(() => undefined);
    return run;
  }

  /**
   * Removes snapshot directories no snapshot owns. The directory is listed before the metadata is
   * read: a Prepare running meanwhile records its snapshot before it makes the directory, so a
   * directory listed is never a new snapshot's.
   */
  private async removeOrphans(served: Set<string>): Promise<string[]> {
    const removed: string[] = [];
    const names = await readdir(this.dirs.all);
    const known = new Set(this.metadata.all().map((s) => s.id));
    for (const name of names) {
      if (/^\d+$/.test(name) && known.has(Number(name))) continue;
      const dir = join(this.dirs.all, name);
      await this.remote.unmountLayer(join(dir, 'fs'), served.has(join(dir, 'fs')));
      await unmount(join(dir, 'erofs')); // a lazy layer's image, of a snapshot removed by a Remove a crash cut short
      await rm(dir, { recursive: true, force: true });
      removed.push(name);
    }
    return removed;
  }

  async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    if (await this.kernelLayers.prepareShared(parent, labels)) throw new AlreadyExistsError(`target snapshot "${labels[LABEL.targetRef]}"`);
    if (this.opts.lazyPull && (await this.remote.prepare(parent, labels))) {
      throw new AlreadyExistsError(`target snapshot "${labels[LABEL.targetRef]}"`);
    }
    return this.create('active', key, parent, labels);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('view', key, parent, labels);
  }

  private async create(kind: Kind, key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    const id = this.metadata.create(kind, key, parent, labels);
    try {
      await mkdir(this.dirs.fs(id), { recursive: true });
      if (kind === 'active') await mkdir(this.dirs.work(id), { recursive: true });
    } catch (err) {
      this.metadata.remove(key);
      await rm(this.dirs.dir(id), { recursive: true, force: true });
      throw err;
    }
    return this.servedMounts(this.metadata.get(key));
  }

  async mounts(key: string): Promise<Mount[]> {
    return this.servedMounts(this.metadata.get(key));
  }

  private async servedMounts(s: Snapshot): Promise<Mount[]> {
    const mounts = this.mountsOf(s);
    await this.remote.ensureServed(s);
    return mounts;
  }

  private mountsOf(s: Snapshot): Mount[] {
    if (s.kind === 'committed') throw new FailedPreconditionError(`requested snapshot ${s.name} not active or view`);
    const lower = s.parentIds.map((id) => this.lowerDir(id)).join(':');
    if (s.parentIds.length === 0) {
      return [{ type: 'bind', source: this.dirs.fs(s.id), target: '', options: [s.kind === 'view' ? 'ro' : 'rw', 'rbind'] }];
    }
    const extra = this.overlayIndexOff ? ['index=off'] : [];
    if (s.kind === 'active') {
      return [{ type: 'overlay', source: 'overlay', target: '', options: [...extra, `workdir=${this.dirs.work(s.id)}`, `upperdir=${this.dirs.fs(s.id)}`, `lowerdir=${lower}`] }];
    }
    if (s.parentIds.length === 1) return [{ type: 'bind', source: lower, target: '', options: ['ro', 'rbind'] }];
    return [{ type: 'overlay', source: 'overlay', target: '', options: [...extra, `lowerdir=${lower}`] }];
  }

  /**
   * Commits an Active snapshot. In kernel mode its content (a layer containerd unpacked, usually)
   * goes into the chunk store and an EROFS image first, which then replaces the unpacked copy:
   * built, then committed, then swapped in, so a crash at any point leaves either the Active
   * snapshot as it was (the image is removed at the next start) or the committed layer, whose
   * image is mounted at the next start.
   */
  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    const s = this.metadata.get(key);
    if (s.kind !== 'active') throw new FailedPreconditionError(`requested snapshot ${key} not active`);
    if (!this.opts.kernel) return void this.metadata.commit(name, key, labels, await diskUsage(this.dirs.fs(s.id)));
    await this.kernelLayers.commit(s.id, name, key, labels);
  }

  async remove(key: string): Promise<void> {
    const { id, kernel } = this.metadata.remove(key);
    const lazy = this.remote.forget(id);
    this.complete?.forget(id);
    if (lazy) await this.remote.unmountLayer(this.dirs.fs(id), true);
    if (kernel) await unmount(this.dirs.fs(id));
    if (lazy) await unmount(this.dirs.erofs(id)); // its image, or one a crash left before it was recorded
    await this.kernelLayers.deleted(id);
    await rm(this.dirs.dir(id), { recursive: true, force: true });
    if (kernel) await this.opts.kernel?.discard(id);
    this.opts.audit?.('snapshot.remove', key, { lazy, kernel });
    await this.complete?.releaseFuse();
  }

  stat(key: string): SnapshotInfo {
    return this.metadata.stat(key);
  }

  update(info: { name: string; labels: Record<string, string> }, paths: string[]): SnapshotInfo {
    return this.metadata.update(info, paths);
  }

  list(filters: string[]): SnapshotInfo[] {
    const match = snapshotMatcher(filters);
    return this.metadata.list().filter(match);
  }

  async usage(key: string): Promise<{ size: number; inodes: number }> {
    const u = this.metadata.usage(key);
    if (u.kind === 'committed') return { size: u.size ?? 0, inodes: u.inodes ?? 0 };
    return diskUsage(this.dirs.fs(u.id));
  }

  /** Removes directories that no snapshot owns (containerd calls this during its GC). */
  async cleanup(): Promise<void> {
    const removed = await this.removeOrphans(await this.remote.served());
    if (removed.length) {
      this.opts.log.info({ removed }, 'cleanup removed unowned snapshot directories');
      this.opts.audit?.('snapshot.cleanup', this.opts.root, { removed });
    }
  }

  /** Closes the metadata. The lazily mounted layers stay: the layer server serves them. */
  close(): void {
    this.metadata.close();
  }
}
