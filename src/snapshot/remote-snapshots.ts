// Remote snapshots: a Prepare carrying the labels CRI, nerdctl or ctr-remote attach for an eStargz
// layer has the layer server (dedup-fused, another process) mount that layer lazily at the
// snapshot's fs directory, committed under the target name. An image is resolved once for all its
// layers, and its first layer's Prepare has the layer server read the footers and TOCs of the
// layers the labels list, in parallel with the manifest and each other. The mounts belong to the
// layer server; what it no longer serves (it restarted, or a mount was removed behind its back) is
// mounted again here.

import { mkdir, rm } from 'node:fs/promises';
import { isDedupError, MalformedEstargzError, MalformedGzipIndexError, MountError, UnavailableError } from '../errors.js';
import type { ImageManifest, Platform } from '../image/oci.js';
import type { KernelLayers } from '../kernel/kernel-layers.js';
import { RegistryImage } from '../image/registry-image.js';
import type { MountInfo, MountRequest, OpenAheadRequest } from '../layer-server-protocol.js';
import { PromiseCache } from '../promise-cache.js';
import type { RegistryClient } from '../registry/client.js';
import { mountTable, unmountFuse } from '../system-mounts.js';
import { LABEL } from './labels.js';
import type { RemoteLayerRef, Snapshot } from './metadata.js';
import type { SnapshotterParts } from './parts.js';

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

export interface RemoteSnapshotsContext extends SnapshotterParts {
  layers: LayerService;
  client: RegistryClient;
  platform: Platform;
  /** Kernel mode: a remote snapshot with an EROFS image needs no FUSE mount again. */
  kernel?: KernelLayers;
  fullPull?: (reason: FullPullReason) => void;
}

export class RemoteSnapshots {
  /** Ids of remote snapshots, whose fs directory the layer server mounts. */
  private readonly ids = new Set<number>();
  /** Manifests by image reference (and manifest digest when the labels give it), in flight or resolved. */
  private readonly manifests = new PromiseCache<ResolvedManifest>({ max: MANIFESTS.max, ttlMs: MANIFESTS.byDigestMs });

  constructor(private readonly c: RemoteSnapshotsContext) {}

  /** Forgets a removed snapshot; true when it was a remote one. */
  forget(id: number): boolean {
    return this.ids.delete(id);
  }

  /**
   * Makes the layer server serve every remote snapshot: after a restart of this process it still
   * serves them all; after a reboot, or when a new layer server replaced one that died, they are
   * mounted again.
   */
  reattach(): Promise<void> {
    return this.c.serially(() => this.mountUnserved());
  }

  private async mountUnserved(): Promise<void> {
    const served = await this.served();
    let mounted = 0;
    for (const s of this.c.metadata.all()) {
      if (!s.remote) continue;
      this.ids.add(s.id);
      // A layer EROFS serves: snapshots get the image; a FUSE mount lost is not needed again.
      if (served.has(this.c.dirs.fs(s.id)) || (s.kernel && this.c.kernel)) continue;
      try {
        await this.mountAgain(s.id, s.key, s.remote, 'layer server restarted');
        mounted++;
      } catch (err) {
        this.c.log.warn({ snapshot: s.key, err: (err as Error).message }, 'cannot mount remote snapshot again');
      }
    }
    this.c.log.info({ remote: this.ids.size, attached: served.size, mounted }, 'remote snapshots attached');
  }

  private async mountAgain(id: number, key: string, remote: RemoteLayerRef, reason: string): Promise<void> {
    // A FUSE mount whose server is gone is detached; a lazy EROFS mount stays, for the layer
    // server to serve as it is (its users keep it: docs/kernel.md, "Lazy layers on EROFS").
    if ((await mountTable()).find((m) => m.target === this.c.dirs.fs(id))?.fstype !== 'erofs') await unmountFuse(this.c.dirs.fs(id));
    await this.mount(id, remote, this.c.metadata.stat(key).labels).catch((err: unknown) => {
      // The layer server's own NotFound or AlreadyExists would reach containerd as news about
      // its snapshots (a Prepare, View or Mounts above this one): it is a mount that failed.
      if (err instanceof UnavailableError) throw err;
      throw new MountError(`remote snapshot ${key} (layer ${remote.layer.digest}): ${(err as Error).message}`, { cause: err });
    });
    this.c.log.info({ snapshot: key, layer: remote.layer.digest, reason }, 'remote snapshot mounted again');
    this.c.audit?.('layer.mount', remote.image, { snapshot: key, layer: remote.layer.digest, reason });
  }

  /**
   * Mounts again the remote layers below `s` that the layer server no longer serves (a mount
   * removed behind its back, which it dropped), so the mounts handed to containerd are whole.
   */
  async ensureServed(s: Snapshot): Promise<void> {
    const remote = s.parentIds.filter((id) => this.ids.has(id) && !this.c.complete?.has(id));
    if (remote.length === 0) return;
    const unserved = async (): Promise<number[]> => {
      const served = await this.served();
      return remote.filter((id) => !served.has(this.c.dirs.fs(id)));
    };
    if ((await unserved()).length === 0) return;
    await this.c.serially(async () => {
      const byId = new Map(this.c.metadata.all().map((r) => [r.id, r]));
      for (const id of await unserved()) { // again: a re-attach may have mounted them meanwhile
        const r = byId.get(id);
        if (r?.remote) await this.mountAgain(id, r.key, r.remote, 'mount was removed from outside');
      }
    });
  }

  /** Mountpoints the layer server serves. */
  async served(): Promise<Set<string>> {
    return new Set((await this.c.layers.list()).map((m) => m.mountpoint));
  }

  /** Has the layer server unmount a lazy layer it serves (`served`); detaches one whose server is gone. */
  async unmountLayer(mountpoint: string, served: boolean): Promise<void> {
    if (served) await this.c.layers.unmount(mountpoint).catch(() => undefined);
    await unmountFuse(mountpoint);
  }

  private async mount(id: number, ref: RemoteLayerRef, labels: Record<string, string>): Promise<void> {
    await mkdir(this.c.dirs.fs(id), { recursive: true });
    await this.c.layers.mount({
      mountpoint: this.c.dirs.fs(id), image: ref.image, manifestDigest: ref.manifestDigest, layer: ref.layer, background: labels[LABEL.backgroundFetch] === 'true',
    });
    this.ids.add(id);
  }

  /**
   * Mounts the layer a Prepare's labels name, if it is eStargz, as the committed target snapshot.
   * Returns false (normal unpack) when the labels do not name a layer or the layer is not eStargz.
   */
  async prepare(parent: string, labels: Record<string, string>): Promise<boolean> {
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
    const id = this.c.metadata.create('committed', target, parent, { ...labels, [LABEL.remote]: 'remote snapshot' }, { remote: ref });
    try {
      await this.mount(id, ref, labels);
    } catch (err) {
      this.c.metadata.remove(target);
      await rm(this.c.dirs.dir(id), { recursive: true, force: true });
      const reason = err instanceof MalformedEstargzError ? 'not_estargz' : err instanceof MalformedGzipIndexError ? 'bad_gzip_index' : 'mount_failed';
      return this.fullPull(reason, imageRef, digest, (err as Error).message);
    }
    this.c.log.info({ snapshot: target, image: imageRef, layer: digest }, 'remote snapshot mounted lazily');
    this.c.audit?.('image.pull', imageRef, { snapshot: target, layer: digest, lazy: true });
    return true;
  }

  /**
   * Leaves the layer to containerd (a full download), never silently: logged with the reason
   * (a warning unless the layer simply is not eStargz), counted, and audited.
   */
  private fullPull(reason: FullPullReason, image: string, layer: string, detail: string): false {
    this.c.log[reason === 'not_estargz' ? 'info' : 'warn']({ image, layer, reason, err: detail }, 'not mounted lazily; containerd downloads and unpacks the layer');
    this.c.fullPull?.(reason);
    this.c.audit?.('image.pull', image, { layer, lazy: false, reason, detail });
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
      () => new RegistryImage(this.c.client, imageRef).resolveManifest(this.c.platform, manifestDigest), manifestDigest ? undefined : MANIFESTS.byTagMs);
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
    this.c.layers.openAhead({ image, layers }).catch((err: Error) =>
      this.c.log.warn({ image, layers: layers.length, err: err.message }, 'cannot have the layer server read the layers\' TOCs ahead'));
  }
}
