// The snapshotter (containerd's overlay snapshotter semantics over SnapshotMetadata):
// snapshots/<id>/fs and work per snapshot, bind mounts for parentless snapshots and overlay
// mounts with the parents' fs directories as lowerdirs otherwise. Remote snapshots: a Prepare
// carrying the labels CRI, nerdctl or ctr-remote attach for an eStargz layer has the layer server
// (dedup-fused, another process) mount that layer lazily at the snapshot's fs directory, commits
// it under the target name and answers AlreadyExists, so containerd skips the download. An image
// is resolved once for all its layers, and its first layer's Prepare has the layer server read the
// footers and TOCs of the layers the labels list, in parallel with the manifest and each other.
// The mounts belong to the layer server: this process can stop, crash or restart without touching
// them. In kernel mode a remote snapshot whose layer is complete is served by an EROFS image to
// the snapshots made from then on (complete-layers.ts).

import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { AlreadyExistsError, FailedPreconditionError, isDedupError, MalformedEstargzError, MalformedGzipIndexError } from '../errors.js';
import type { MountInfo, MountRequest, OpenAheadRequest } from '../fused/layer-server.js';
import type { ImageManifest, Platform } from '../image/oci.js';
import { RegistryImage } from '../image/registry-image.js';
import { mountTable, unmount, unmountFuse } from '../mount/system-mounts.js';
import { PromiseCache } from '../promise-cache.js';
import { removeTree } from '../remove-tree.js';
import type { RegistryClient } from '../registry/client.js';
import { CompleteLayers } from './complete-layers.js';
import { diskUsage } from './disk-usage.js';
import { snapshotMatcher } from './filters.js';
import type { KernelLayers } from '../kernel/kernel-layers.js';
import { SnapshotMetadata, type KernelLayerRef, type Kind, type RemoteLayerRef, type Snapshot, type SnapshotInfo } from './metadata.js';

export const LABEL = {
  /** The name containerd wants the snapshot committed under (its chain id). */
  targetRef: 'containerd.io/snapshot.ref',
  criImageRef: 'containerd.io/snapshot/cri.image-ref',
  criLayerDigest: 'containerd.io/snapshot/cri.layer-digest',
  criManifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  /** This layer's digest and those of the layers above it, comma-separated (what will be prepared next). */
  criImageLayers: 'containerd.io/snapshot/cri.image-layers',
  stargzRef: 'containerd.io/snapshot/remote/stargz.reference',
  stargzDigest: 'containerd.io/snapshot/remote/stargz.digest',
  stargzLayers: 'containerd.io/snapshot/remote/stargz.layers',
  /** Set on our remote snapshots, as stargz-snapshotter does. */
  remote: 'containerd.io/snapshot/remote',
  /** "true" on a Prepare: fetch the whole layer in the background once mounted (per image). */
  backgroundFetch: 'containerd.io/snapshot/dedup.background-fetch',
} as const;

export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/** The layer server's side of remote snapshots (FusedClient). */
export interface LayerService {
  /** False when the layer was already served there. */
  mount(request: MountRequest): Promise<boolean>;
  /** Starts reading the footers and TOCs of layers that mounts will ask for soon; answers at once. */
  openAhead(request: OpenAheadRequest): Promise<number>;
  unmount(mountpoint: string): Promise<void>;
  /** Lets go of a mount once nothing uses it (new snapshots get the layer elsewhere). */
  retire(mountpoint: string): Promise<void>;
  list(): Promise<MountInfo[]>;
}

export interface SnapshotterOptions {
  root: string;
  layers: LayerService;
  client: RegistryClient;
  platform: Platform;
  /** Mount eStargz layers lazily (config enable_lazy); otherwise every layer is unpacked. */
  lazyPull: boolean;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
  /** Records what containerd had done to the node (the audit log). */
  audit?: (action: string, target: string, details: Record<string, unknown>) => void;
  /** A layer the labels asked to mount lazily is left to containerd to download and unpack. */
  fullPull?: (reason: FullPullReason) => void;
  /** Kernel mode (enable_erofs): committed layers go into the store and are served as EROFS images. */
  kernel?: KernelLayers;
  /** Shared stores (config shared_stores, src/shared-store/): layers a Prepare mounts from there, by chain id. Needs `kernel`. */
  shared?: SharedLayerSource;
}

/** A layer in a shared store: its EROFS image and packs (paths there), and its usage. */
export interface SharedLayerRef {
  store: string;
  image: string;
  devices: string[];
  usage: { size: number; inodes: number };
}

/**
 * The name containerd gave a snapshot, from our key: its metadata store prefixes every key with
 * the namespace and a number ("default/12/sha256:..."), so a committed layer's key ends in its chain id.
 */
export function snapshotName(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}

export interface SharedLayerSource {
  find(chainId: string): SharedLayerRef | undefined;
  /** A Prepare mounted a layer from a shared store. */
  mounted?(): void;
}

/**
 * Why a layer is pulled in full: not eStargz (expected for ordinary images), not in the image's
 * manifest, the registry could not be read, or the layer server could not mount it.
 */
export type FullPullReason = 'not_estargz' | 'bad_gzip_index' | 'not_in_manifest' | 'registry' | 'mount_failed';
export const FULL_PULL_REASONS: FullPullReason[] = ['not_estargz', 'bad_gzip_index', 'not_in_manifest', 'registry', 'mount_failed'];

/**
 * How long a resolved manifest serves the Prepares of an image's layers: by digest it cannot
 * change; a tag can move, so only for about one pull.
 */
const MANIFESTS = { max: 64, byDigestMs: 10 * 60_000, byTagMs: 30_000 };

type ResolvedManifest = { manifestDigest: string; manifest: ImageManifest };

export class Snapshotter {
  readonly metadata: SnapshotMetadata;
  /** Ids of remote snapshots, whose fs directory the layer server mounts. */
  private readonly remoteIds = new Set<number>();
  /** Ids of shared-store layers left unmounted at start: their store did not serve them then. */
  private readonly sharedUnmounted = new Set<number>();
  /** Kernel mode: remote snapshots whose complete layer EROFS serves to the snapshots made since. */
  private readonly complete: CompleteLayers | undefined;
  private readonly overlayIndexOff = existsSync('/sys/module/overlay/parameters/index');
  private repairs: Promise<void> = Promise.resolve();
  /** Manifests by image reference (and manifest digest when the labels give it), in flight or resolved. */
  private readonly manifests = new PromiseCache<ResolvedManifest>({ max: MANIFESTS.max, ttlMs: MANIFESTS.byDigestMs });
  /** Kernel layers whose unpacked copy is being deleted, by id (Remove waits for it). */
  private readonly deleting = new Map<number, Promise<void>>();

  constructor(private opts: SnapshotterOptions) {
    this.metadata = new SnapshotMetadata(join(opts.root, 'metadata.db'));
    if (opts.kernel) {
      this.complete = new CompleteLayers({ metadata: this.metadata, kernel: opts.kernel, client: opts.client, root: opts.root, layers: opts.layers, log: opts.log, audit: opts.audit,
        fs: (id) => this.fs(id), erofs: (id) => this.erofsDir(id) });
    }
  }

  private dir(id: number): string {
    return join(this.opts.root, 'snapshots', String(id));
  }

  private fs(id: number): string {
    return join(this.dir(id), 'fs');
  }

  /** Where a remote snapshot's EROFS image is mounted once its lazy layer is complete. */
  private erofsDir(id: number): string {
    return join(this.dir(id), 'erofs');
  }

  /** A committed snapshot's layer for the snapshots above it: the EROFS mount of a complete lazy layer, else its fs. */
  private lowerDir(id: number): string {
    return this.complete?.has(id) ? this.erofsDir(id) : this.fs(id);
  }

  /** Where a kernel layer's unpacked copy goes once its image is mounted, to be deleted. */
  private unpackedCopy(id: number): string {
    return join(this.dir(id), 'unpacked');
  }

  /**
   * After a restart: removes directories no snapshot owns (half-made ones) and re-attaches to the
   * lazily mounted layers of remote snapshots (reattach).
   */
  async start(): Promise<void> {
    await mkdir(join(this.opts.root, 'snapshots'), { recursive: true });
    await this.removeOrphans(await this.served());
    await this.reattach();
    await this.mountKernelLayers();
    await this.complete?.releaseFuse();
  }

  /**
   * Mounts every kernel layer that is not mounted (after a reboot; a kill -9 leaves them mounted),
   * and forgets the images of layers a crash left between their build and their commit.
   */
  private async mountKernelLayers(): Promise<void> {
    const kernel = this.opts.kernel;
    const all = this.metadata.all();
    const committed = new Set(all.filter((s) => s.kernel).map((s) => s.id));
    for (const id of await kernel?.ids() ?? []) {
      if (committed.has(id)) continue;
      await kernel!.discard(id);
      this.opts.log.info({ id }, 'removed the image of a layer whose commit did not finish');
    }
    const mounted = new Set((await mountTable()).map((m) => m.target)); // once, not once per layer
    for (const s of all) {
      if (s.kernel && existsSync(this.unpackedCopy(s.id))) this.deleteUnpacked(s.id); // a crash cut its deletion short
      if (!s.kernel) continue;
      // A lazy layer's image serves new snapshots only with kernel mode on; the FUSE mount serves the rest.
      if (s.remote) this.complete?.adopt(s.id, s.kernel);
      const dir = s.remote ? this.erofsDir(s.id) : this.fs(s.id);
      if (mounted.has(dir)) continue;
      if (!kernel) {
        // A lazy layer is served by FUSE then (mountUnserved).
        if (!s.remote) this.opts.log.warn({ snapshot: s.key }, 'kernel layer not mounted: enable_erofs is off or the kernel cannot mount it');
        continue;
      }
      // A shared store's layer is mounted as its store has it now (verified), or not at all.
      const layer = s.kernel.shared ? this.sharedLayer(s.key)?.layer : s.kernel;
      if (!layer) {
        this.sharedUnmounted.add(s.id);
        this.opts.log.warn({ snapshot: s.key, store: s.kernel.shared }, 'shared layer not mounted: its store does not serve it now');
        continue;
      }
      await kernel.mountAt(layer, dir);
      this.opts.log.info({ snapshot: s.key, image: layer.image }, 'kernel layer mounted again');
    }
  }

  /**
   * Mounts the shared-store layers start-up could not (their store unreadable then: a share
   * mounted after the daemon started) once a store serves them; after each refresh of the stores.
   */
  mountSharedAgain(): Promise<void> {
    if (this.sharedUnmounted.size === 0) return Promise.resolve();
    return this.serially(async () => {
      const byId = new Map(this.metadata.all().map((r) => [r.id, r]));
      for (const id of this.sharedUnmounted) {
        const s = byId.get(id);
        const layer = s && this.sharedLayer(s.key)?.layer;
        if (s && !layer) continue;
        this.sharedUnmounted.delete(id);
        if (!layer) continue; // removed meanwhile
        await this.opts.kernel!.mountAt(layer, this.fs(id));
        this.opts.log.info({ snapshot: s!.key, image: layer.image, reason: 'its shared store serves it again' }, 'kernel layer mounted again');
      }
    });
  }

  /**
   * Kernel mode for lazily pulled layers: each remote snapshot whose layer is complete now gets
   * its EROFS image, which the snapshots made from then on stand on (complete-layers.ts). Called
   * now and then.
   */
  async serveCompleteLayers(): Promise<void> {
    await this.complete?.serve();
  }

  /**
   * Mounts a kernel layer's image at its snapshot's fs (not mounted), in place of whatever is left
   * there (its unpacked copy): that is moved aside and deleted after, off the commit's path
   * (containerd waits for the commit; a base layer's thousands of files take a while to delete).
   */
  private async serveKernel(id: number, layer: KernelLayerRef): Promise<void> {
    await this.moveUnpackedAside(id);
    await this.opts.kernel!.mountAt(layer, this.fs(id));
    this.deleteUnpacked(id);
  }

  /** Moves snapshot `id`'s unpacked copy out of its fs (left empty) to where deleteUnpacked finds it. */
  private async moveUnpackedAside(id: number): Promise<void> {
    await this.deleting.get(id);
    await rm(this.unpackedCopy(id), { recursive: true, force: true });
    await rename(this.fs(id), this.unpackedCopy(id));
    await mkdir(this.fs(id));
  }

  /** Puts back the unpacked copy moveUnpackedAside moved (fs not mounted). */
  private async putUnpackedBack(id: number): Promise<void> {
    await rm(this.fs(id), { recursive: true, force: true });
    await rename(this.unpackedCopy(id), this.fs(id));
  }

  /** Deletes the kernel layer's unpacked copy in the background; a failure is logged (the next start tries again). */
  private deleteUnpacked(id: number): void {
    if (this.deleting.has(id)) return;
    const dir = this.unpackedCopy(id);
    this.deleting.set(id, removeTree(dir)
      .catch((err: unknown) => this.opts.log.warn({ dir, err: (err as Error).message }, 'unpacked copy of a kernel layer not deleted'))
      .finally(() => this.deleting.delete(id)));
  }

  /**
   * Makes the layer server serve every remote snapshot: after a restart of this process it still
   * serves them all; after a reboot, or when a new layer server replaced one that died, they are
   * mounted again.
   */
  reattach(): Promise<void> {
    return this.serially(() => this.mountUnserved());
  }

  private async mountUnserved(): Promise<void> {
    const served = await this.served();
    let mounted = 0;
    for (const s of this.metadata.all()) {
      if (!s.remote) continue;
      this.remoteIds.add(s.id);
      // A layer EROFS serves: snapshots get the image; a FUSE mount lost is not needed again.
      if (served.has(this.fs(s.id)) || (s.kernel && this.opts.kernel)) continue;
      try {
        await this.mountAgain(s.id, s.key, s.remote, 'layer server restarted');
        mounted++;
      } catch (err) {
        this.opts.log.warn({ snapshot: s.key, err: (err as Error).message }, 'cannot mount remote snapshot again');
      }
    }
    this.opts.log.info({ remote: this.remoteIds.size, attached: served.size, mounted }, 'remote snapshots attached');
  }

  private async mountAgain(id: number, key: string, remote: RemoteLayerRef, reason: string): Promise<void> {
    // A FUSE mount whose server is gone is detached; a lazy EROFS mount stays, for the layer
    // server to serve as it is (its users keep it: docs/kernel.md, "Lazy layers on EROFS").
    if ((await mountTable()).find((m) => m.target === this.fs(id))?.fstype !== 'erofs') await unmountFuse(this.fs(id));
    await this.mountRemote(id, remote, this.metadata.stat(key).labels);
    this.opts.log.info({ snapshot: key, layer: remote.layer.digest, reason }, 'remote snapshot mounted again');
    this.opts.audit?.('layer.mount', remote.image, { snapshot: key, layer: remote.layer.digest, reason });
  }

  /**
   * Mounts again the remote layers below `s` that the layer server no longer serves (a mount
   * removed behind its back, which it dropped), so the mounts handed to containerd are whole.
   */
  private async ensureServed(s: Snapshot): Promise<void> {
    const remote = s.parentIds.filter((id) => this.remoteIds.has(id) && !this.complete?.has(id));
    if (remote.length === 0) return;
    const unserved = async (): Promise<number[]> => {
      const served = await this.served();
      return remote.filter((id) => !served.has(this.fs(id)));
    };
    if ((await unserved()).length === 0) return;
    await this.serially(async () => {
      const byId = new Map(this.metadata.all().map((r) => [r.id, r]));
      for (const id of await unserved()) { // again: a re-attach may have mounted them meanwhile
        const r = byId.get(id);
        if (r?.remote) await this.mountAgain(id, r.key, r.remote, 'mount was removed from outside');
      }
    });
  }

  /** Runs mount repairs one at a time: two could otherwise detach each other's fresh mount. */
  private serially(fn: () => Promise<void>): Promise<void> {
    const run = this.repairs.then(fn);
    this.repairs = run.catch(() => undefined);
    return run;
  }

  /** Mountpoints the layer server serves. */
  private async served(): Promise<Set<string>> {
    return new Set((await this.opts.layers.list()).map((m) => m.mountpoint));
  }

  /**
   * Removes snapshot directories no snapshot owns. The directory is listed before the metadata is
   * read: a Prepare running meanwhile records its snapshot before it makes the directory, so a
   * directory listed is never a new snapshot's.
   */
  private async removeOrphans(served: Set<string>): Promise<string[]> {
    const removed: string[] = [];
    const names = await readdir(join(this.opts.root, 'snapshots'));
    const known = new Set(this.metadata.all().map((s) => s.id));
    for (const name of names) {
      if (/^\d+$/.test(name) && known.has(Number(name))) continue;
      const dir = join(this.opts.root, 'snapshots', name);
      await this.unmountLayer(join(dir, 'fs'), served);
      await unmount(join(dir, 'erofs')); // a lazy layer's image, of a snapshot removed by a Remove a crash cut short
      await rm(dir, { recursive: true, force: true });
      removed.push(name);
    }
    return removed;
  }

  /** Has the layer server unmount a lazy layer it serves; detaches one whose server is gone. */
  private async unmountLayer(mountpoint: string, served: Set<string>): Promise<void> {
    if (served.has(mountpoint)) await this.opts.layers.unmount(mountpoint).catch(() => undefined);
    await unmountFuse(mountpoint);
  }

  private async mountRemote(id: number, ref: RemoteLayerRef, labels: Record<string, string>): Promise<void> {
    await mkdir(this.fs(id), { recursive: true });
    await this.opts.layers.mount({
      mountpoint: this.fs(id), image: ref.image, manifestDigest: ref.manifestDigest, layer: ref.layer, background: labels[LABEL.backgroundFetch] === 'true',
    });
    this.remoteIds.add(id);
  }

  async prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    if (await this.prepareShared(parent, labels)) throw new AlreadyExistsError(`target snapshot "${labels[LABEL.targetRef]}"`);
    if (this.opts.lazyPull && (await this.prepareRemote(parent, labels))) {
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
      await mkdir(this.fs(id), { recursive: true });
      if (kind === 'active') await mkdir(join(this.dir(id), 'work'), { recursive: true });
    } catch (err) {
      this.metadata.remove(key);
      await rm(this.dir(id), { recursive: true, force: true });
      throw err;
    }
    return this.servedMounts(this.metadata.get(key));
  }

  /** The kernel layer a shared store serves for snapshot `name` (its chain id), with its usage; none without kernel mode. */
  private sharedLayer(name: string): { layer: KernelLayerRef; usage: { size: number; inodes: number } } | undefined {
    const l = this.opts.kernel ? this.opts.shared?.find(snapshotName(name)) : undefined;
    return l && { layer: { image: l.image, devices: l.devices, shared: l.store }, usage: l.usage };
  }

  /**
   * Mounts the target snapshot a Prepare names (containerd's chain id, on every Prepare of an
   * unpack, plain or lazy) from a shared store that has it, as a committed kernel layer; false
   * (unpack or lazy mount as usual) when none has it or it does not mount.
   */
  private async prepareShared(parent: string, labels: Record<string, string>): Promise<boolean> {
    const target = labels[LABEL.targetRef];
    const found = target ? this.sharedLayer(target) : undefined;
    if (!target || !found) return false;
    // AlreadyExists here is the right answer too: containerd then uses the existing snapshot.
    const id = this.metadata.create('committed', target, parent, labels, { kernel: found.layer, usage: found.usage });
    try {
      await mkdir(this.dir(id), { recursive: true });
      await this.opts.kernel!.mountAt(found.layer, this.fs(id));
    } catch (err) {
      this.metadata.remove(target);
      await rm(this.dir(id), { recursive: true, force: true });
      this.opts.log.warn({ snapshot: target, store: found.layer.shared, err: (err as Error).message }, 'cannot mount the layer from the shared store; pulling it instead');
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
      await this.opts.kernel!.mountAt(layer, this.fs(id));
    } catch (err) {
      await this.putUnpackedBack(id);
      this.opts.log.warn({ id, store: layer.shared, err: (err as Error).message }, 'cannot mount the layer from the shared store; committing the unpacked copy');
      return false;
    }
    return true;
  }

  private sharedMounted(name: string, layer: KernelLayerRef, at: 'prepare' | 'commit'): void {
    this.opts.shared!.mounted?.();
    this.opts.log.info({ snapshot: name, store: layer.shared, image: layer.image, at }, 'layer mounted from the shared store');
    this.opts.audit?.('image.pull', name, { snapshot: name, shared: layer.shared, at });
  }

  /**
   * Mounts the layer a Prepare's labels name, if it is eStargz, as the committed target snapshot.
   * Returns false (normal unpack) when the labels do not name a layer or the layer is not eStargz.
   */
  private async prepareRemote(parent: string, labels: Record<string, string>): Promise<boolean> {
    const target = labels[LABEL.targetRef];
    const imageRef = labels[LABEL.criImageRef] ?? labels[LABEL.stargzRef];
    const digest = labels[LABEL.criLayerDigest] ?? labels[LABEL.stargzDigest];
    if (!target || !imageRef || !digest) return false;
    let ref: RemoteLayerRef;
    try {
      const resolved = await this.manifestFor(imageRef, digest, labels);
      const desc = resolved.manifest.layers.find((l) => l.digest === digest);
      if (!desc) return this.fullPull('not_in_manifest', imageRef, digest, 'layer not in the image manifest');
      ref = { image: imageRef, manifestDigest: resolved.manifestDigest, layer: { mediaType: desc.mediaType, digest: desc.digest, size: desc.size, annotations: desc.annotations } };
    } catch (err) {
      if (!isDedupError(err)) throw err;
      return this.fullPull('registry', imageRef, digest, `${err.message} [${err.code}]`);
    }
    // AlreadyExists here is the right answer too: containerd then uses the existing snapshot.
    const id = this.metadata.create('committed', target, parent, { ...labels, [LABEL.remote]: 'remote snapshot' }, { remote: ref });
    try {
      await this.mountRemote(id, ref, labels);
    } catch (err) {
      this.metadata.remove(target);
      await rm(this.dir(id), { recursive: true, force: true });
      const reason = err instanceof MalformedEstargzError ? 'not_estargz' : err instanceof MalformedGzipIndexError ? 'bad_gzip_index' : 'mount_failed';
      return this.fullPull(reason, imageRef, digest, (err as Error).message);
    }
    this.opts.log.info({ snapshot: target, image: imageRef, layer: digest }, 'remote snapshot mounted lazily');
    this.opts.audit?.('image.pull', imageRef, { snapshot: target, layer: digest, lazy: true });
    return true;
  }

  /**
   * Leaves the layer to containerd (a full download), never silently: logged with the reason
   * (a warning unless the layer simply is not eStargz), counted, and audited.
   */
  private fullPull(reason: FullPullReason, image: string, layer: string, detail: string): false {
    this.opts.log[reason === 'not_estargz' ? 'info' : 'warn']({ image, layer, reason, err: detail }, 'not mounted lazily; containerd downloads and unpacks the layer');
    this.opts.fullPull?.(reason);
    this.opts.audit?.('image.pull', image, { layer, lazy: false, reason, detail });
    return false;
  }

  /**
   * The manifest of the image whose `layer` a Prepare names, resolved once for all its layers. The
   * Prepare that resolves it (the first of the image's layers) also has the layer server read the
   * footers and TOCs of this layer and of those the labels list next, at once and in parallel with
   * the manifest, so that its mount and their Prepares find them read.
   */
  private async manifestFor(imageRef: string, layer: string, labels: Record<string, string>): Promise<ResolvedManifest> {
    const manifestDigest = labels[LABEL.criManifestDigest];
    const key = `${imageRef}@${manifestDigest ?? ''}`;
    const resolve = (): { promise: Promise<ResolvedManifest>; made: boolean } => this.manifests.get(key,
      () => new RegistryImage(this.opts.client, imageRef).resolveManifest(this.opts.platform, manifestDigest), manifestDigest ? undefined : MANIFESTS.byTagMs);
    let { promise, made } = resolve();
    if (made) this.openAhead(imageRef, layer, labels);
    const resolved = await promise;
    if (made || resolved.manifest.layers.some((l) => l.digest === layer)) return resolved;
    // The tag moved since: resolve it again.
    this.manifests.forget(key, promise);
    ({ promise } = resolve());
    return promise;
  }

  /** Has the layer server read the TOCs of `layer` and of the layers the labels list; a failure only costs their mounts a round trip. */
  private openAhead(image: string, layer: string, labels: Record<string, string>): void {
    const listed = (labels[LABEL.criImageLayers] ?? labels[LABEL.stargzLayers] ?? '').split(',').filter(Boolean);
    const layers = [...new Set([layer, ...listed])];
    this.opts.layers.openAhead({ image, layers }).catch((err: Error) =>
      this.opts.log.warn({ image, layers: layers.length, err: err.message }, 'cannot have the layer server read the layers\' TOCs ahead'));
  }

  async mounts(key: string): Promise<Mount[]> {
    return this.servedMounts(this.metadata.get(key));
  }

  private async servedMounts(s: Snapshot): Promise<Mount[]> {
    const mounts = this.mountsOf(s);
    await this.ensureServed(s);
    return mounts;
  }

  private mountsOf(s: Snapshot): Mount[] {
    if (s.kind === 'committed') throw new FailedPreconditionError(`requested snapshot ${s.name} not active or view`);
    const lower = s.parentIds.map((id) => this.lowerDir(id)).join(':');
    if (s.parentIds.length === 0) {
      return [{ type: 'bind', source: this.fs(s.id), target: '', options: [s.kind === 'view' ? 'ro' : 'rw', 'rbind'] }];
    }
    const extra = this.overlayIndexOff ? ['index=off'] : [];
    if (s.kind === 'active') {
      return [{ type: 'overlay', source: 'overlay', target: '', options: [...extra, `workdir=${join(this.dir(s.id), 'work')}`, `upperdir=${this.fs(s.id)}`, `lowerdir=${lower}`] }];
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
    const kernel = this.opts.kernel;
    if (!kernel) return void this.metadata.commit(name, key, labels, await diskUsage(this.fs(s.id)));
    // ctr image pull downloads and unpacks every layer before any Prepare could skip it: a layer a
    // shared store has is then served from there, and the unpacked copy dropped.
    const shared = this.sharedLayer(name);
    if (shared && await this.swapInShared(s.id, shared.layer)) {
      try {
        this.metadata.commit(name, key, labels, shared.usage, shared.layer);
      } catch (err) {
        await unmount(this.fs(s.id));
        await this.putUnpackedBack(s.id); // the Active snapshot as it was
        throw err;
      }
      this.deleteUnpacked(s.id);
      return this.sharedMounted(name, shared.layer, 'commit');
    }
    const started = performance.now();
    this.opts.log.info({ snapshot: name, key }, 'committing the layer into the store');
    const built = await kernel.build(s.id, this.fs(s.id)); // its walk also counts the usage
    const layer = { image: built.image, devices: built.devices };
    try {
      this.metadata.commit(name, key, labels, built.usage, layer);
    } catch (err) {
      await kernel.discard(s.id);
      throw err;
    }
    await this.serveKernel(s.id, layer);
    const details = { files: built.files, bytes: built.bytes, chunks: built.chunks, packs: built.devices.length, ms: Math.round(performance.now() - started) };
    this.opts.log.info({ snapshot: name, ...details }, 'layer committed into the store; served by the kernel (EROFS)');
    this.opts.audit?.('layer.commit', name, details);
  }

  async remove(key: string): Promise<void> {
    const { id, kernel } = this.metadata.remove(key);
    const lazy = this.remoteIds.delete(id);
    this.complete?.forget(id);
    if (lazy) await this.unmountLayer(this.fs(id), new Set([this.fs(id)]));
    if (kernel) await unmount(this.fs(id));
    if (lazy) await unmount(this.erofsDir(id)); // its image, or one a crash left before it was recorded
    await this.deleting.get(id);
    await rm(this.dir(id), { recursive: true, force: true });
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
    return diskUsage(this.fs(u.id));
  }

  /** Removes directories that no snapshot owns (containerd calls this during its GC). */
  async cleanup(): Promise<void> {
    const removed = await this.removeOrphans(await this.served());
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
