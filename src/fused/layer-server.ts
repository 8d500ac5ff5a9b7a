// The layer server's mounts: the lazily mounted layers the snapshotter asked for, by mountpoint.
// It outlives snapshotter restarts (it is its own process, dedup-fused) and can hand every FUSE
// connection to a successor process (handover.ts), so running containers never lose their lower
// layers. Mount requests are idempotent: asking again for a layer already served there is a no-op,
// which is how a restarted snapshotter re-attaches. Layers' footers and TOCs can be read ahead of
// their mounts, by digest alone (all of an image's at once, while the snapshotter resolves the
// manifest at the first layer's Prepare), so that no mount waits for a round trip of its own.

import { z } from 'zod';
import { AlreadyExistsError, MalformedEstargzError, NotFoundError, UnavailableError } from '../errors.js';
import { RemoteLayer, type LayerToc } from '../fetch/remote-layer.js';
import type { FuseConnection } from '../fs/fuse-session.js';
import { descriptorSchema, digestSchema } from '../image/oci.js';
import { RegistryImage } from '../image/registry-image.js';
import { LayerMount, type LayerMountContext } from '../mount/layer-mount.js';
import { unmountFuse } from '../mount/system-mounts.js';
import { PromiseCache } from '../promise-cache.js';
import type { RegistryClient } from '../registry/client.js';

export const mountRequestSchema = z.object({
  mountpoint: z.string().startsWith('/'),
  image: z.string().min(1),
  manifestDigest: z.string().min(1),
  layer: descriptorSchema,
  /** Fetch the rest of the layer in the background once mounted. */
  background: z.boolean().default(false),
}).strict();

export type MountRequest = z.infer<typeof mountRequestSchema>;

/** Layers of an image that mounts will ask for soon, by digest: an image has at most 127 layers. */
export const openAheadRequestSchema = z.object({
  image: z.string().min(1),
  layers: z.array(digestSchema).max(128),
}).strict();

export type OpenAheadRequest = z.infer<typeof openAheadRequestSchema>;

/** TOCs read ahead and not mounted yet: an abandoned pull's are dropped after this long. */
const READ_AHEAD = { max: 128, ttlMs: 5 * 60_000 };

/** The blob a mount's TOC read ahead came from. */
function readAheadKey(image: string, digest: string): string {
  return `${image} ${digest}`;
}

export interface MountInfo extends MountRequest {
  mountedAt: string;
  /** Chunks of the layer not in the store yet, and their bytes. */
  missingBytes: number;
  reads: number;
  readErrors: number;
}

/** What a successor needs to serve a mount: the request it was made for and its FUSE connection. */
export interface HandedMount {
  request: MountRequest;
  mountedAt: string;
  connection: FuseConnection;
}

interface Served {
  request: MountRequest;
  mount: LayerMount;
  mountedAt: string;
}

export class LayerServer {
  private readonly served = new Map<string, Served>();
  /** Mounts being set up, so two requests for one mountpoint do not both mount. */
  private readonly pending = new Map<string, Promise<boolean>>();
  /** Footers and TOCs read ahead of their mounts (openAhead), each until a mount takes it. */
  private readonly readAhead = new PromiseCache<LayerToc>(READ_AHEAD);
  /** Set while the mounts are being handed over: the set of mounts must not change meanwhile. */
  private frozen = false;

  constructor(private ctx: LayerMountContext & { client: RegistryClient }) {}

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
    const done = this.open(request).then((remote) => {
      const mount = LayerMount.mount(remote, request.mountpoint, { name: request.image, manifestDigest: request.manifestDigest }, this.withBackground(request));
      this.served.set(request.mountpoint, { request, mount, mountedAt: new Date().toISOString() });
      this.ctx.log?.info({ mountpoint: request.mountpoint, image: request.image, layer: request.layer.digest }, 'layer mounted');
      return true;
    }).finally(() => this.pending.delete(request.mountpoint));
    this.pending.set(request.mountpoint, done);
    return done;
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
    const ahead = await this.readAhead.take(readAheadKey(request.image, request.layer.digest))?.catch((err: unknown) => {
      if (err instanceof MalformedEstargzError) throw err;
    });
    return ahead ? RemoteLayer.of(image, request.layer, ahead) : RemoteLayer.open(image, request.layer);
  }

  private withBackground(request: MountRequest): LayerMountContext {
    return request.background && this.ctx.prefetch ? { ...this.ctx, prefetch: { ...this.ctx.prefetch, background: true } } : this.ctx;
  }

  /** Unmounts what is served at `mountpoint` (writing its access trace). */
  async unmount(mountpoint: string): Promise<void> {
    this.checkNotFrozen();
    await this.pending.get(mountpoint)?.catch(() => undefined);
    const s = this.served.get(mountpoint);
    if (!s) throw new NotFoundError(`mount at ${mountpoint}`);
    this.served.delete(mountpoint);
    await s.mount.unmount().catch(() => unmountFuse(mountpoint));
    this.ctx.log?.info({ mountpoint, layer: s.request.layer.digest }, 'layer unmounted');
  }

  async unmountAll(): Promise<number> {
    const all = [...this.served.keys()];
    for (const m of all) await this.unmount(m);
    return all.length;
  }

  /** What is served; refused while handing over, when the answer is about to be the successor's. */
  list(): MountInfo[] {
    this.checkNotFrozen();
    return [...this.served.values()].map((s) => ({
      ...s.request, mountedAt: s.mountedAt, missingBytes: s.mount.lazy.missingBytes(), reads: s.mount.fs.stats.reads, readErrors: s.mount.fs.stats.readErrors,
    }));
  }

  get size(): number {
    return this.served.size;
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
    return [...this.served.values()].map((s) => ({ request: s.request, mountedAt: s.mountedAt, connection: s.mount.connection! }));
  }

  /**
   * Serves mounts a predecessor handed over; their descriptors are at the given fd numbers in this
   * process. Every layer is opened (the registry round trips, all at once) before any connection
   * is read: a successor that fails must not have taken requests it will never answer.
   */
  async adopt(mounts: HandedMount[]): Promise<void> {
    const remotes = await Promise.all(mounts.map((h) => this.open(h.request)));
    mounts.forEach((h, i) => {
      const mount = LayerMount.adopt(remotes[i]!, h.request.mountpoint, { name: h.request.image, manifestDigest: h.request.manifestDigest },
        this.withBackground(h.request), h.connection);
      this.served.set(h.request.mountpoint, { request: h.request, mount, mountedAt: h.mountedAt });
    });
  }

  /** Takes mounts and unmounts again (a hand-over that failed). */
  thaw(): void {
    this.frozen = false;
  }

  /** Stops serving every mount (a successor serves them now); the mounts stay. */
  async release(): Promise<void> {
    await Promise.all([...this.served.values()].map((s) => s.mount.release()));
    this.served.clear();
  }
}
