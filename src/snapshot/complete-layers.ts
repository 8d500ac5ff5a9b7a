// Kernel mode for lazily pulled layers (docs/kernel.md): a remote snapshot whose layer's chunks
// are all in the store now (fetched in the background, by dedupd, or read) gets the layer's EROFS
// image, made from its TOC over those chunks and mounted at the snapshot's erofs directory;
// snapshots made from then on get that as their lowerdir. The FUSE mount stays for those made
// before (containers running, or about to mount what Mounts answered them) and is let go once
// none is left.

import { InvalidErofsTreeError, TocDigestMismatchError } from '../errors.js';
import { RemoteLayer } from '../fetch/remote-layer.js';
import { RegistryImage } from '../image/registry-image.js';
import type { KernelLayers } from '../kernel/kernel-layers.js';
import { unmount } from '../system-mounts.js';
import type { RegistryClient } from '../registry/client.js';
import type { KernelLayerRef, RemoteLayerRef, SnapshotMetadata } from './metadata.js';

/** How long a complete lazy layer whose EROFS image failed (a registry error, a chunk gone) waits before the next try. */
const RETRY_MS = 60_000;

export interface CompleteLayersContext {
  metadata: SnapshotMetadata;
  kernel: KernelLayers;
  client: RegistryClient;
  /** The state root (a gzip-indexed layer's local index is there). */
  root: string;
  /** The layer server: what it serves, and letting go of a mount once unused. */
  layers: { list(): Promise<{ mountpoint: string }[]>; retire(mountpoint: string): Promise<void> };
  /** A snapshot's fs directory (the FUSE mount of a remote one) and a remote one's erofs directory. */
  fs(id: number): string;
  erofs(id: number): string;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
  audit?: (action: string, target: string, details: Record<string, unknown>) => void;
}

export class CompleteLayers {
  /** Remote snapshots whose layer EROFS serves to the snapshots above them. */
  private readonly served = new Map<number, KernelLayerRef>();
  /**
   * Why the image of a complete layer could not be made, by snapshot id (logged once each): tried
   * again after RETRY_MS, or never when the layer is one EROFS cannot hold.
   */
  private readonly failures = new Map<number, { why: string; at: number; final: boolean }>();
  private passing = false;

  constructor(private readonly ctx: CompleteLayersContext) {}

  /** Whether EROFS serves remote snapshot `id`'s layer (at its erofs directory). */
  has(id: number): boolean {
    return this.served.has(id);
  }

  /** A switch recorded before (a restart). */
  adopt(id: number, ref: KernelLayerRef): void {
    this.served.set(id, ref);
  }

  forget(id: number): void {
    this.served.delete(id);
    this.failures.delete(id);
  }

  /** Gives every remote snapshot whose layer is complete now its image. One pass at a time. */
  async serve(): Promise<void> {
    if (this.passing) return;
    this.passing = true;
    try {
      for (const s of this.ctx.metadata.all()) {
        const failed = this.failures.get(s.id);
        if (failed && (failed.final || Date.now() - failed.at < RETRY_MS)) continue;
        if (!s.remote || s.kernel || !this.ctx.kernel.complete(s.remote.layer.digest)) continue;
        try {
          await this.switchToKernel(s.id, s.key, s.remote);
          this.failures.delete(s.id);
        } catch (err) {
          const why = (err as Error).message;
          const final = err instanceof InvalidErofsTreeError || err instanceof TocDigestMismatchError;
          if (failed?.why !== why) this.ctx.log.warn({ snapshot: s.key, layer: s.remote.layer.digest, err: why, final }, 'complete lazy layer stays on FUSE: its EROFS image cannot be made');
          this.failures.set(s.id, { why, at: Date.now(), final });
        }
      }
    } finally {
      this.passing = false;
    }
  }

  private async switchToKernel(id: number, key: string, remote: RemoteLayerRef): Promise<void> {
    const { kernel, metadata } = this.ctx;
    const started = performance.now();
    // The TOC again (one or two Range requests, or the gzip index): the one the FUSE mount serves, as recorded.
    const layer = await RemoteLayer.forMount(this.ctx.client, new RegistryImage(this.ctx.client, remote.image), this.ctx.root, remote.manifestDigest, remote.layer);
    const recorded = kernel.tocDigest(remote.layer.digest);
    if (recorded !== layer.tocDigest) throw new TocDigestMismatchError(remote.layer.digest, recorded ?? 'none recorded', layer.tocDigest);
    const built = await kernel.buildLazy(id, layer.toc);
    const ref: KernelLayerRef = { image: built.image, devices: built.devices };
    const undo = async (): Promise<void> => {
      this.served.delete(id);
      await unmount(this.ctx.erofs(id)).catch(() => undefined);
      await kernel.discard(id);
    };
    try {
      await kernel.mountAt(ref, this.ctx.erofs(id));
      // From here on Mounts answers name the image; every snapshot up to `since` may have the FUSE mount.
      this.served.set(id, ref);
      ref.since = metadata.lastId();
      if (!metadata.setKernel(id, ref)) return await undo(); // removed meanwhile
    } catch (err) {
      await undo();
      throw err;
    }
    const details = { layer: remote.layer.digest, files: built.files, bytes: built.bytes, chunks: built.chunks, packs: built.devices.length,
      recutFiles: built.recut.files, recutBytes: built.recut.bytes, ms: Math.round(performance.now() - started) };
    this.ctx.log.info({ snapshot: key, ...details }, 'lazy layer complete; new snapshots get its EROFS image');
    this.ctx.audit?.('layer.kernel', key, details);
    await this.releaseFuse();
  }

  /**
   * Has the layer server let go of the FUSE mounts of layers that EROFS serves and that no Active
   * or View snapshot made before the switch stands on any more (it serves on while an overlay
   * mounted earlier still uses one: the kernel tells it when the last is gone). Never fails its
   * caller (a Remove done, a start): a mount not let go now is at the next call.
   */
  async releaseFuse(): Promise<void> {
    if (this.served.size === 0) return;
    await this.retireUnused().catch((err: unknown) => this.ctx.log.warn({ err: (err as Error).message }, 'cannot have the layer server let go of unused FUSE mounts'));
  }

  private async retireUnused(): Promise<void> {
    const all = this.ctx.metadata.all();
    const byKey = new Map(all.map((s) => [s.key, s]));
    // Per layer, the oldest Active or View snapshot above it: only that one's id matters.
    const firstUser = new Map<number, number>();
    for (const s of all) {
      if (s.kind === 'committed') continue;
      for (let p = byKey.get(s.parent); p; p = byKey.get(p.parent)) firstUser.set(p.id, Math.min(firstUser.get(p.id) ?? Infinity, s.id));
    }
    const mounted = new Set((await this.ctx.layers.list()).map((m) => m.mountpoint));
    for (const [id, ref] of this.served) {
      if (!mounted.has(this.ctx.fs(id)) || (firstUser.get(id) ?? Infinity) <= (ref.since ?? Infinity)) continue;
      await this.ctx.layers.retire(this.ctx.fs(id));
      this.ctx.log.info({ mountpoint: this.ctx.fs(id) }, 'FUSE mount of a layer served by EROFS let go: no snapshot made before the switch uses it');
    }
  }
}
