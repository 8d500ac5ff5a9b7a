// The layer server's mounts: the lazily mounted layers the snapshotter asked for, by mountpoint.
// It outlives snapshotter restarts (it is its own process, dedup-fused) and can hand every FUSE
// connection to a successor process (handover.ts), so running containers never lose their lower
// layers. Mount requests are idempotent: asking again for a layer already served there is a no-op,
// which is how a restarted snapshotter re-attaches. A mount removed behind its back (umount -l by
// an operator or a clean-up script) is dropped from the table as soon as the kernel ends its
// connection or the mount table no longer lists it, so the snapshotter mounts it again and a
// server with nothing left to serve can stop. Layers' footers and TOCs can be read ahead of
// their mounts, by digest alone (all of an image's at once, while the snapshotter resolves the
// manifest at the first layer's Prepare), so that no mount waits for a round trip of its own.

import { findIndexes } from '../convert/gzip-indexer.js';
import { AlreadyExistsError, MalformedEstargzError, NotFoundError, UnavailableError } from '../errors.js';
import { RemoteLayer, type LayerToc } from '../fetch/remote-layer.js';
import { FUSE_FSTYPE, type FuseConnection } from '../fs/fuse-session.js';
import type { FoundArtifact } from '../image/artifacts.js';
import { RegistryImage } from '../image/registry-image.js';
import { LayerMount, type LayerMountContext } from '../mount/layer-mount.js';
import { mountTable, unmount, unmountFuse } from '../system-mounts.js';
import { PromiseCache } from '../promise-cache.js';
import type { RegistryClient } from '../registry/client.js';
import type { MountInfo, MountRequest, OpenAheadRequest } from '../layer-server-protocol.js';

/** TOCs read ahead and not mounted yet: an abandoned pull's are dropped after this long. */
const READ_AHEAD = { max: 128, ttlMs: 5 * 60_000 };
/** About one pull: an index pushed after it is found by the next. */
const INDEX_ARTIFACTS = { max: 64, ttlMs: 30_000 };

/** The blob a mount's TOC read ahead came from. */
function readAheadKey(image: string, digest: string): string {
  return `${image} ${digest}`;
}

/**
 * What a successor needs to serve a mount: the request it was made for and its FUSE connection
 * (none for a kernel EROFS mount: the successor marks its chunk directory and serves it as it is).
 */
export interface HandedMount {
  request: MountRequest;
  mountedAt: string;
  connection?: FuseConnection;
  /** No longer at its mountpoint, but still in use through the kernel (see LayerServer.detached). */
  detached?: boolean;
  /** A detached kernel EROFS mount's files (LazyErofsFs.detach moved them aside). */
  lazyDir?: string;
}

interface Served {
  request: MountRequest;
  mount: LayerMount;
  mountedAt: string;
}

/** Why a mount left the table without being asked to unmount. */
export type LostReason = 'connection_ended' | 'not_mounted';

export interface LayerServerEvents {
  /** A mount was removed from outside; the snapshotter mounts it again when asked for it. */
  lost?: (request: MountRequest, reason: LostReason) => void;
}

/** How often the mount table is compared with what is served. */
export const SWEEP_MS = 500;

export class LayerServer {
  private readonly served = new Map<string, Served>();
  /** Mounts being set up, so two requests for one mountpoint do not both mount. */
  private readonly pending = new Map<string, Promise<boolean>>();
  /** Footers and TOCs read ahead of their mounts (openAhead), each until a mount takes it. */
  private readonly readAhead = new PromiseCache<LayerToc>(READ_AHEAD);
  /** An image's gzip index artifact (or none), looked up once for all of its layers' mounts. */
  private readonly indexArtifacts = new PromiseCache<{ found: FoundArtifact | undefined }>(INDEX_ARTIFACTS);
  /** Index blobs of the artifacts found, fetched ahead of their layers' mounts, each taken by its mount. */
  private readonly indexBlobs = new PromiseCache<Buffer>(INDEX_ARTIFACTS);
  /** Set while the mounts are being handed over: the set of mounts must not change meanwhile. */
  private frozen = false;
  /**
   * Mounts detached from their mountpoint whose connection lives on (an overlay above, or an open
   * file, still holds the filesystem): served until the kernel ends the connection, but no longer
   * the mount at that mountpoint.
   */
  private readonly detached = new Set<Served>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(private ctx: LayerMountContext & { client: RegistryClient }, private readonly events: LayerServerEvents = {}) {}

  /** Mounts the layer at the request's mountpoint; false when it was already served there. */
  mount(request: MountRequest): Promise<boolean> {
    this.checkNotFrozen();
    const busy = this.pending.get(request.mountpoint);
    if (busy) return busy.then(() => this.mount(request));
    const existing = this.served.get(request.mountpoint);
    if (existing) {
      if (existing.request.layer.digest !== request.layer.digest) {
        throw new AlreadyExistsError(`mount at ${request.mountpoint} (it serves layer ${existing.request.layer.digest})`);
      }
      return Promise.resolve(false);
    }
    const done = this.open(request).then(async (remote) => {
      const mount = await LayerMount.mount(remote, request.mountpoint, { name: request.image, manifestDigest: request.manifestDigest }, this.withBackground(request));
      this.track({ request, mount, mountedAt: new Date().toISOString() });
      this.ctx.log?.info({ mountpoint: request.mountpoint, image: request.image, layer: request.layer.digest }, 'layer mounted');
      return true;
    }).finally(() => this.pending.delete(request.mountpoint));
    this.pending.set(request.mountpoint, done);
    return done;
  }

  private track(s: Served, detached = false): void {
    if (detached) void this.detach(s);
    else this.served.set(s.request.mountpoint, s);
    void s.mount.fs.ended.then(() => this.ended(s));
    this.sweeper ??= setInterval(() => void this.sweep().catch((err: unknown) => this.ctx.log?.warn({ err: (err as Error).message }, 'cannot read the mount table')), SWEEP_MS).unref();
  }

  /**
   * The kernel ended a connection (ENODEV): whatever used it is gone; or a detached kernel mount
   * needs no server any more. Let go of it, leaving its mountpoint alone: another mount of the
   * layer may be there by now.
   */
  private ended(s: Served): void {
    if (this.served.get(s.request.mountpoint) === s) this.lose(s, 'connection_ended');
    if (!this.detached.delete(s)) return;
    void s.mount.close().catch((err: unknown) => this.ctx.log?.warn({ mountpoint: s.request.mountpoint, err: (err as Error).message }, 'cannot release a detached layer'));
  }

  /**
   * `s` has left its mountpoint and is served until it ends (ended()); a new mount there waits
   * until the detached one has made room (a kernel one moves its files aside).
   */
  private detach(s: Served, leave: () => Promise<void> = () => Promise.resolve()): Promise<void> {
    // Detached before it leaves: the kernel may end an unused FUSE connection within the unmount.
    this.detached.add(s);
    const mp = s.request.mountpoint;
    const left = leave().then(() => s.mount.detach());
    const room = left.then(() => false, () => false);
    this.pending.set(mp, room);
    void room.finally(() => this.pending.get(mp) === room && this.pending.delete(mp));
    return left;
  }

  /** Drops from the table the mounts the mount table no longer lists at their mountpoint. */
  private async sweep(): Promise<void> {
    if (this.frozen || this.served.size === 0) return;
    // Only mounts made before the table is read: one made meanwhile may be missing from it.
    const before = [...this.served.values()];
    const ours = new Set((await mountTable()).filter((m) => m.fstype === FUSE_FSTYPE || m.fstype === 'erofs').map((m) => m.target));
    for (const s of before) {
      if (!this.frozen && this.served.get(s.request.mountpoint) === s && !ours.has(s.request.mountpoint)) this.lose(s, 'not_mounted');
    }
  }

  private lose(s: Served, reason: LostReason): void {
    this.served.delete(s.request.mountpoint);
    void this.detach(s);
    this.ctx.log?.warn({ mountpoint: s.request.mountpoint, image: s.request.image, layer: s.request.layer.digest, reason },
      'layer mount removed from outside; dropped (the snapshotter mounts it again when it is next used)');
    this.events.lost?.(s.request, reason);
  }

  /**
   * Starts reading the footers and TOCs of layers that mounts will ask for soon, all at once and
   * knowing only their digests (the client's connections are reused by chunk reads later). Returns
   * how many it started; a layer read or being read is not read again. A failure here fails
   * nothing: the layer's mount reads it again.
   */
  openAhead(request: OpenAheadRequest): number {
    let started = 0;
    for (const digest of request.layers) {
      const { promise, made } = this.readAhead.get(readAheadKey(request.image, digest), () => RemoteLayer.readToc(new RegistryImage(this.ctx.client, request.image), digest));
      if (!made) continue;
      started++;
      // A layer that is not eStargz is no news: its mount finds that out too and says so.
      promise.catch((err: Error) => err instanceof MalformedEstargzError
        || this.ctx.log?.info({ image: request.image, layer: digest, err: err.message }, 'reading a layer\'s TOC ahead failed; its mount tries again'));
    }
    return started;
  }

  /**
   * The layer with the TOC read ahead if there is one (checked against the descriptor now), else
   * read now. A failed read ahead is tried again, unless it found the layer is not eStargz.
   */
  private async open(request: MountRequest): Promise<RemoteLayer> {
    const image = new RegistryImage(this.ctx.client, request.image);
    return RemoteLayer.forMount(this.ctx.client, image, this.ctx.store.root, request.manifestDigest, request.layer, async () => {
      const ahead = await this.readAhead.take(readAheadKey(request.image, request.layer.digest))?.catch((err: unknown) => {
        if (err instanceof MalformedEstargzError) throw err;
      });
      return ahead ? RemoteLayer.of(image, request.layer, ahead) : RemoteLayer.open(image, request.layer);
    }, {
      find: async () => (await this.indexArtifacts.get(`${request.image}@${request.manifestDigest}`, async () => {
        const found = await findIndexes(this.ctx.client, image, request);
        // Every layer's index on its way now: containerd asks for the layers one after another.
        for (const l of found?.manifest.layers ?? []) this.indexBlobs.get(`${request.image}@${l.digest}`, () => this.ctx.client.getBlob(image.ref, l.digest)).promise.catch(() => undefined);
        return { found };
      }).promise).found,
      blob: (digest) => this.indexBlobs.take(`${request.image}@${digest}`) ?? this.ctx.client.getBlob(image.ref, digest),
    });
  }

  private withBackground(request: MountRequest): LayerMountContext {
    return request.background && this.ctx.prefetch ? { ...this.ctx, prefetch: { ...this.ctx.prefetch, background: true } } : this.ctx;
  }

  /** What is served at `mountpoint` (once a mount under way there has settled), no longer served there. */
  private async takeServed(mountpoint: string): Promise<Served> {
    this.checkNotFrozen();
    await this.pending.get(mountpoint)?.catch(() => undefined);
    const s = this.served.get(mountpoint);
    if (!s) throw new NotFoundError(`mount at ${mountpoint}`);
    this.served.delete(mountpoint);
    return s;
  }

  /** Unmounts what is served at `mountpoint` (writing its access trace). */
  async unmount(mountpoint: string): Promise<void> {
    const s = await this.takeServed(mountpoint);
    await s.mount.unmount().catch(() => unmountFuse(mountpoint));
    this.ctx.log?.info({ mountpoint, layer: s.request.layer.digest }, 'layer unmounted');
  }

  /**
   * Lets go of the mount at `mountpoint` once nothing uses it: it leaves its mountpoint now
   * (detached if busy), and its connection is served until the kernel ends it, when the last
   * overlay above it or open file in it is gone; then its trace is written. For a layer that
   * new snapshots get elsewhere (an EROFS image of the same layer).
   */
  async retire(mountpoint: string): Promise<void> {
    const s = await this.takeServed(mountpoint);
    await this.detach(s, () => unmount(mountpoint));
    this.ctx.log?.info({ mountpoint, layer: s.request.layer.digest }, 'layer left its mountpoint; served until its last user is gone');
  }

  /** The full teardown: every mount, and what detached ones still serve (a FUSE one's connection ends, its readers get ENOTCONN; a kernel EROFS one's chunk files go, so what was not fetched reads EIO). */
  async unmountAll(): Promise<number> {
    const all = [...this.served.keys()];
    for (const m of all) await this.unmount(m);
    const detached = [...this.detached];
    this.detached.clear();
    await Promise.all(detached.map((s) => s.mount.unmount()));
    return all.length + detached.length;
  }

  /** What is served; refused while handing over, when the answer is about to be the successor's. */
  list(): MountInfo[] {
    this.checkNotFrozen();
    return [...this.served.values()].map((s) => ({
      ...s.request, mountedAt: s.mountedAt, missingBytes: s.mount.lazy.missingBytes(), reads: s.mount.fs.stats.reads, readErrors: s.mount.fs.stats.readErrors,
      mode: s.mount.mode,
    }));
  }

  /** Mounts served, detached ones still in use included: while any is, a plain stop is refused. */
  get size(): number {
    return this.served.size + this.detached.size;
  }

  mountStats(): { layers: number; prefetchQueued: number } {
    let prefetchQueued = 0;
    for (const s of this.served.values()) prefetchQueued += s.mount.lazy.prefetchQueued();
    return { layers: this.served.size, prefetchQueued };
  }

  /** Prefetch settings for layers mounted from now on (a live config change). */
  setPrefetch(prefetch: LayerMountContext['prefetch'], lazy: LayerMountContext['lazy']): void {
    this.ctx = { ...this.ctx, prefetch, lazy: { ...this.ctx.lazy, ...lazy } };
  }

  private checkNotFrozen(): void {
    if (this.frozen) throw new UnavailableError('layer server is handing its mounts to a new process; retry');
  }

  /**
   * Refuses mounts, unmounts and listings from now on (the caller retries with the successor),
   * waits for those under way, and returns the mounts and their descriptors for a successor.
   * Refused when a hand-over is already under way.
   */
  async freeze(): Promise<HandedMount[]> {
    this.checkNotFrozen();
    this.frozen = true;
    await Promise.allSettled(this.pending.values());
    const handed = (s: Served, detached: boolean): HandedMount => ({ request: s.request, mountedAt: s.mountedAt, connection: s.mount.connection, detached,
      lazyDir: detached ? s.mount.lazyDir : undefined });
    return [...[...this.served.values()].map((s) => handed(s, false)), ...[...this.detached].map((s) => handed(s, true))];
  }

  /**
   * Serves mounts a predecessor handed over; their descriptors are at the given fd numbers in this
   * process. Every layer is opened (the registry round trips, all at once) and recorded in the
   * store before any connection is read: a successor that fails must not have taken requests it
   * will never answer.
   */
  async adopt(mounts: HandedMount[]): Promise<void> {
    const remotes = await Promise.all(mounts.map((h) => this.open(h.request)));
    // Those without a connection (EROFS mounts) are recorded by LayerMount.mount below.
    await Promise.all(remotes.filter((_, i) => mounts[i]!.connection).map((r) => LayerMount.record(r, this.ctx.store)));
    await Promise.all(mounts.map(async (h, i) => {
      const image = { name: h.request.image, manifestDigest: h.request.manifestDigest };
      const mount = h.connection ? LayerMount.adopt(remotes[i]!, h.request.mountpoint, image, this.withBackground(h.request), h.connection)
        : await LayerMount.mount(remotes[i]!, h.request.mountpoint, image, this.withBackground(h.request), h.detached ? { lazyDir: h.lazyDir } : undefined) // serves the EROFS mount as it is
          .catch((err: unknown) => {
            if (!h.detached) throw err;
            // Its last user left during the hand-over, and the predecessor removed its files.
            this.ctx.log?.info({ mountpoint: h.request.mountpoint, err: (err as Error).message }, 'detached layer already let go');
            return undefined;
          });
      if (!mount) return;
      this.track({ request: h.request, mount, mountedAt: h.mountedAt }, h.detached);
    }));
  }

  /** Takes mounts and unmounts again (a hand-over that failed). */
  thaw(): void {
    this.frozen = false;
  }

  /** Stops serving every mount (a successor serves them now); the mounts stay. */
  async release(): Promise<void> {
    clearInterval(this.sweeper);
    await Promise.all([...this.served.values(), ...this.detached].map((s) => s.mount.release()));
    this.served.clear();
    this.detached.clear();
  }
}
