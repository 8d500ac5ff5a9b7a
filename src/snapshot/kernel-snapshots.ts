// Snapshots the kernel serves from EROFS images over the chunk store (kernel mode, docs/kernel.md):
// layers committed into the store, whose unpacked copy is moved aside and deleted off the commit's
// path, and layers mounted from a shared store (docs/shared-store.md) by chain id, at a Prepare or
// at the commit of a layer containerd unpacked anyway. Mounted again at start.

import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import type { KernelLayers } from '../kernel/kernel-layers.js';
import { removeTree } from '../remove-tree.js';
import { mountTable, unmount } from '../system-mounts.js';
import { LABEL, snapshotName } from './labels.js';
import type { KernelLayerRef } from './metadata.js';
import type { SnapshotterParts } from './parts.js';

/** A layer in a shared store: its EROFS image and packs (paths there), and its usage. */
export interface SharedLayerRef {
  store: string;
  image: string;
  devices: string[];
  usage: { size: number; inodes: number };
}

export interface SharedLayerSource {
  find(chainId: string): SharedLayerRef | undefined;
  /** A Prepare mounted a layer from a shared store. */
  mounted?(): void;
}

export interface KernelSnapshotsContext extends SnapshotterParts {
  kernel?: KernelLayers;
  shared?: SharedLayerSource;
}

export class KernelSnapshots {
  /** Ids of shared-store layers left unmounted at start: their store did not serve them then. */
  private readonly sharedUnmounted = new Set<number>();
  /** Kernel layers whose unpacked copy is being deleted, by id (Remove waits for it). */
  private readonly deleting = new Map<number, Promise<void>>();

  constructor(private readonly c: KernelSnapshotsContext) {}

  /** Settles once snapshot `id`'s unpacked copy is deleted (at once when none is being deleted). */
  async deleted(id: number): Promise<void> {
    await this.deleting.get(id);
  }

  /**
   * Mounts every kernel layer that is not mounted (after a reboot; a kill -9 leaves them mounted),
   * and forgets the images of layers a crash left between their build and their commit.
   */
  async mountAll(): Promise<void> {
    const kernel = this.c.kernel;
    const all = this.c.metadata.all();
    const committed = new Set(all.filter((s) => s.kernel).map((s) => s.id));
    for (const id of await kernel?.ids() ?? []) {
      if (committed.has(id)) continue;
      await kernel!.discard(id);
      this.c.log.info({ id }, 'removed the image of a layer whose commit did not finish');
    }
    const mounted = new Set((await mountTable()).map((m) => m.target)); // once, not once per layer
    for (const s of all) {
      if (s.kernel && existsSync(this.c.dirs.unpacked(s.id))) this.deleteUnpacked(s.id); // a crash cut its deletion short
      if (!s.kernel) continue;
      // A lazy layer's image serves new snapshots only with kernel mode on; the FUSE mount serves the rest.
      if (s.remote) this.c.complete?.adopt(s.id, s.kernel);
      const dir = s.remote ? this.c.dirs.erofs(s.id) : this.c.dirs.fs(s.id);
      if (mounted.has(dir)) continue;
      if (!kernel) {
        // A lazy layer is served by FUSE then (mountUnserved).
        if (!s.remote) this.c.log.warn({ snapshot: s.key }, 'kernel layer not mounted: enable_erofs is off or the kernel cannot mount it');
        continue;
      }
      // A shared store's layer is mounted as its store has it now (verified), or not at all.
      const layer = s.kernel.shared ? this.sharedLayer(s.key)?.layer : s.kernel;
      if (!layer) {
        this.sharedUnmounted.add(s.id);
        this.c.log.warn({ snapshot: s.key, store: s.kernel.shared }, 'shared layer not mounted: its store does not serve it now');
        continue;
      }
      await kernel.mountAt(layer, dir);
      this.c.log.info({ snapshot: s.key, image: layer.image }, 'kernel layer mounted again');
    }
  }

  /**
   * Mounts the shared-store layers start-up could not (their store unreadable then: a share
   * mounted after the daemon started) once a store serves them; after each refresh of the stores.
   */
  mountSharedAgain(): Promise<void> {
    if (this.sharedUnmounted.size === 0) return Promise.resolve();
    return this.c.serially(async () => {
      const byId = new Map(this.c.metadata.all().map((r) => [r.id, r]));
      for (const id of this.sharedUnmounted) {
        const s = byId.get(id);
        const layer = s && this.sharedLayer(s.key)?.layer;
        if (s && !layer) continue;
        this.sharedUnmounted.delete(id);
        if (!layer) continue; // removed meanwhile
        await this.c.kernel!.mountAt(layer, this.c.dirs.fs(id));
        this.c.log.info({ snapshot: s!.key, image: layer.image, reason: 'its shared store serves it again' }, 'kernel layer mounted again');
      }
    });
  }

  /**
   * Mounts a kernel layer's image at its snapshot's fs (not mounted), in place of whatever is left
   * there (its unpacked copy): that is moved aside and deleted after, off the commit's path
   * (containerd waits for the commit; a base layer's thousands of files take a while to delete).
   */
  private async serveKernel(id: number, layer: KernelLayerRef): Promise<void> {
    await this.moveUnpackedAside(id);
    await this.c.kernel!.mountAt(layer, this.c.dirs.fs(id));
    this.deleteUnpacked(id);
  }

  /** Moves snapshot `id`'s unpacked copy out of its fs (left empty) to where deleteUnpacked finds it. */
  private async moveUnpackedAside(id: number): Promise<void> {
    await this.deleting.get(id);
    await rm(this.c.dirs.unpacked(id), { recursive: true, force: true });
    await rename(this.c.dirs.fs(id), this.c.dirs.unpacked(id));
    await mkdir(this.c.dirs.fs(id));
  }

  /** Puts back the unpacked copy moveUnpackedAside moved (fs not mounted). */
  private async putUnpackedBack(id: number): Promise<void> {
    await rm(this.c.dirs.fs(id), { recursive: true, force: true });
    await rename(this.c.dirs.unpacked(id), this.c.dirs.fs(id));
  }

  /** Deletes the kernel layer's unpacked copy in the background; a failure is logged (the next start tries again). */
  private deleteUnpacked(id: number): void {
    if (this.deleting.has(id)) return;
    const dir = this.c.dirs.unpacked(id);
    this.deleting.set(id, removeTree(dir)
      .catch((err: unknown) => this.c.log.warn({ dir, err: (err as Error).message }, 'unpacked copy of a kernel layer not deleted'))
      .finally(() => this.deleting.delete(id)));
  }

  /** The kernel layer a shared store serves for snapshot `name` (its chain id), with its usage; none without kernel mode. */
  private sharedLayer(name: string): { layer: KernelLayerRef; usage: { size: number; inodes: number } } | undefined {
    const l = this.c.kernel ? this.c.shared?.find(snapshotName(name)) : undefined;
    return l && { layer: { image: l.image, devices: l.devices, shared: l.store }, usage: l.usage };
  }

  /**
   * Mounts the target snapshot a Prepare names (containerd's chain id, on every Prepare of an
   * unpack, plain or lazy) from a shared store that has it, as a committed kernel layer; false
   * (unpack or lazy mount as usual) when none has it or it does not mount.
   */
  async prepareShared(parent: string, labels: Record<string, string>): Promise<boolean> {
    const target = labels[LABEL.targetRef];
    const found = target ? this.sharedLayer(target) : undefined;
    if (!target || !found) return false;
    // AlreadyExists here is the right answer too: containerd then uses the existing snapshot.
    const id = this.c.metadata.create('committed', target, parent, labels, { kernel: found.layer, usage: found.usage });
    try {
      await mkdir(this.c.dirs.dir(id), { recursive: true });
      await this.c.kernel!.mountAt(found.layer, this.c.dirs.fs(id));
    } catch (err) {
      this.c.metadata.remove(target);
      await rm(this.c.dirs.dir(id), { recursive: true, force: true });
      this.c.log.warn({ snapshot: target, store: found.layer.shared, err: (err as Error).message }, 'cannot mount the layer from the shared store; pulling it instead');
      return false;
    }
    this.sharedMounted(target, found.layer, 'prepare');
    return true;
  }

  /**
   * Mounts a shared layer in place of snapshot `id`'s unpacked copy, which is kept aside until
   * the commit is recorded; false (the copy left as it was) when it does not mount.
   */
  private async swapInShared(id: number, layer: KernelLayerRef): Promise<boolean> {
    await this.moveUnpackedAside(id);
    try {
      await this.c.kernel!.mountAt(layer, this.c.dirs.fs(id));
    } catch (err) {
      await this.putUnpackedBack(id);
      this.c.log.warn({ id, store: layer.shared, err: (err as Error).message }, 'cannot mount the layer from the shared store; committing the unpacked copy');
      return false;
    }
    return true;
  }

  private sharedMounted(name: string, layer: KernelLayerRef, at: 'prepare' | 'commit'): void {
    this.c.shared!.mounted?.();
    this.c.log.info({ snapshot: name, store: layer.shared, image: layer.image, at }, 'layer mounted from the shared store');
    this.c.audit?.('image.pull', name, { snapshot: name, shared: layer.shared, at });
  }

  /**
   * Commits Active snapshot `id` as a kernel layer: from a shared store that has it, else its
   * content built into the store and an EROFS image, which then replaces the unpacked copy.
   */
  async commit(id: number, name: string, key: string, labels: Record<string, string>): Promise<void> {
    const kernel = this.c.kernel!;
    // ctr image pull downloads and unpacks every layer before any Prepare could skip it: a layer a
    // shared store has is then served from there, and the unpacked copy dropped.
    const shared = this.sharedLayer(name);
    if (shared && await this.swapInShared(id, shared.layer)) {
      try {
        this.c.metadata.commit(name, key, labels, shared.usage, shared.layer);
      } catch (err) {
        await unmount(this.c.dirs.fs(id));
        await this.putUnpackedBack(id); // the Active snapshot as it was
        throw err;
      }
      this.deleteUnpacked(id);
      return this.sharedMounted(name, shared.layer, 'commit');
    }
    const started = performance.now();
    this.c.log.info({ snapshot: name, key }, 'committing the layer into the store');
    const built = await kernel.build(id, this.c.dirs.fs(id)); // its walk also counts the usage
    const layer = { image: built.image, devices: built.devices };
    try {
      this.c.metadata.commit(name, key, labels, built.usage, layer);
    } catch (err) {
      await kernel.discard(id);
      throw err;
    }
    await this.serveKernel(id, layer);
    const details = { files: built.files, bytes: built.bytes, chunks: built.chunks, packs: built.devices.length, ms: Math.round(performance.now() - started) };
    this.c.log.info({ snapshot: name, ...details }, 'layer committed into the store; served by the kernel (EROFS)');
    this.c.audit?.('layer.commit', name, details);
  }
}
