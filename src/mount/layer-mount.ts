// One eStargz layer mounted lazily at a directory: its LazyLayer (fetching), its filesystem (the
// FUSE layer filesystem, or with mount mode `erofs` a kernel EROFS mount filled on demand,
// src/kernel/lazy-erofs.ts) and its access trace. Image mounts and the snapshotter's remote
// snapshots both use it.

import type { CodecPool } from '../codec/codec-pool.js';
import type { PrefetchOptions } from '../config/config.js';
import type { ChunkCache } from '../fetch/chunk-cache.js';
import { existsSync } from 'node:fs';
import { DEFAULT_LAZY, LazyLayer, type ChunkRef, type LazyLayerObserver, type LazyLayerOptions } from '../fetch/lazy-layer.js';
import { manySmallFiles, planAll, planFromLandmark, planFromTrace, readTrace } from '../prefetch/plan.js';
import type { RemoteLayer } from '../fetch/remote-layer.js';
import { tracePath } from '../trace-format.js';
import { AccessTrace } from '../fs/access-trace.js';
import type { FuseConnection } from '../fs/fuse-session.js';
import { LayerFs } from '../fs/layer-fs.js';
import { MountError } from '../errors.js';
import type { TocChunk } from '../estargz/toc.js';
import type { ChunkStore } from '../store/chunk-store.js';

/** How long a small layer's whole blob stays in memory after it arrived: start-up, not the container's life. */
const HOLD_WHOLE_LAYER_MS = 60_000;

export interface LayerMountContext {
  store: ChunkStore;
  pool: CodecPool;
  cache: ChunkCache;
  traceDir: string;
  lazy?: Partial<LazyLayerOptions>;
  /** What to fetch ahead of readers once mounted (config "prefetch"). */
  prefetch?: PrefetchOptions;
  log?: { info(o: object, m: string): void; warn(o: object, m: string): void };
  onReadError?: (layer: string, path: string, err: unknown) => void;
  observer?: LazyLayerObserver;
  /**
   * Mount mode `erofs` (config "mount_mode"): serves a layer by the kernel where it allows it
   * (src/kernel/lazy-erofs.ts, handed in by the wiring), or says why not; without it, FUSE.
   */
  kernelFs?: (remote: RemoteLayer, lazy: LazyLayer, mountpoint: string, detached?: { lazyDir?: string }) => Promise<{ fs: KernelLayerFs; adopted: boolean } | { refused: string }>;
}

/**
 * A layer's filesystem served by the kernel: no connection; it ends when unmounted, or when
 * detached and nothing is left to serve.
 */
export interface KernelLayerFs {
  readonly ended: Promise<number>;
  readonly stats: { reads: number; readErrors: number };
  /** Where its files are (a successor serves a detached one there). */
  readonly dir: string;
  /** It has left its mountpoint: served where it is until its last user is gone, then it ends; settles once the mountpoint is free for a new mount. */
  detach(): Promise<void>;
  /**
   * A chunk prefetched before its first read (verified, as it came): put where the kernel reads
   * it, so that read need not wait for us. True when it was written; never rejects.
   */
  fillAhead(chunk: TocChunk, data: Buffer): Promise<boolean>;
  /** Stops serving; the mount stays for a successor. */
  release(): Promise<void>;
  unmount(): Promise<void>;
}

export interface PrefetchOutcome {
  source: 'trace' | 'landmark' | 'none';
  chunks: number;
  fetched: number;
  failed: number;
  background: number;
  /** The whole compressed layer was downloaded and is held in memory for start-up. */
  held: boolean;
}

export class LayerMount {
  /** Settles when the prefetch that started with the mount is over. */
  prefetched: Promise<PrefetchOutcome> = Promise.resolve({ source: 'none', chunks: 0, fetched: 0, failed: 0, background: 0, held: false });

  private constructor(readonly remote: RemoteLayer, readonly lazy: LazyLayer, readonly fs: LayerFs | KernelLayerFs, readonly trace: AccessTrace,
    readonly mountpoint: string, private readonly ctx: LayerMountContext) {}

  /**
   * Records the layer in the chunk store (its chunks referenced), on the store's index thread: a
   * mount that waits for the write lock holds up no other mount's reads.
   */
  static async record(remote: RemoteLayer, store: ChunkStore): Promise<void> {
    await store.addLayer({ digest: remote.desc.digest, tocDigest: remote.tocDigest, compressedSize: remote.desc.size, uncompressedSize: remote.toc.contentBytes,
      chunks: remote.chunks().map((c) => ({ digest: c.digest, size: c.chunkSize })) });
  }

  /**
   * Records the layer in the chunk store and mounts it at `mountpoint`: by FUSE, or in mount mode
   * `erofs` by the kernel where the layer allows it (an EROFS mount of this layer left there by an
   * earlier process is served as it is, so its users keep it). The mode each layer got and why is
   * logged. `detached`: a kernel EROFS mount handed over that has left its mountpoint (still in
   * use), to be served where it is (`lazyDir`) and never mounted again.
   */
  static async mount(remote: RemoteLayer, mountpoint: string, image: { name: string; manifestDigest: string }, ctx: LayerMountContext,
    detached?: { lazyDir?: string }): Promise<LayerMount> {
    await LayerMount.record(remote, ctx.store);
    const layer = remote.desc.digest;
    let why = 'mount_mode fuse';
    const layered = LayerMount.lazyLayer(remote, image, ctx);
    const { lazy, trace } = layered;
    if (ctx.kernelFs) {
      const made = await ctx.kernelFs(remote, lazy, mountpoint, detached).catch((err: unknown) => {
        lazy.close();
        throw err;
      });
      if ('fs' in made) {
        ctx.log?.info({ layer, mountpoint, mode: 'erofs', adopted: made.adopted },
          made.adopted ? 'layer mode erofs: serving the EROFS mount already there' : 'layer mode erofs: kernel EROFS, filled on demand');
        return LayerMount.started(remote, lazy, made.fs, trace, mountpoint, image, ctx);
      }
      // One that has left its mountpoint is never mounted there again (a new mount may be there).
      if (detached) {
        lazy.close();
        throw new MountError(`detached lazy EROFS mount of ${layer} (${mountpoint}): ${made.refused}`);
      }
      why = made.refused;
    }
    ctx.log?.info({ layer, mountpoint, mode: 'fuse', why }, 'layer mode fuse');
    return LayerMount.serve(remote, mountpoint, image, ctx, (fs) => fs.mount(mountpoint, remote.desc.digest.slice(7, 19)), layered);
  }

  /**
   * Serves a mount another process made, over its FUSE connection (a hand-over); prefetch picks up
   * where it was. The caller has recorded the layer (record) before reading any connection.
   */
  static adopt(remote: RemoteLayer, mountpoint: string, image: { name: string; manifestDigest: string }, ctx: LayerMountContext, conn: FuseConnection): LayerMount {
    return LayerMount.serve(remote, mountpoint, image, ctx, (fs) => fs.adopt(mountpoint, conn));
  }

  /** `layered`: the LazyLayer and trace a refused kernel mount made already. */
  private static serve(remote: RemoteLayer, mountpoint: string, image: { name: string; manifestDigest: string }, ctx: LayerMountContext,
    attach: (fs: LayerFs) => void, layered = LayerMount.lazyLayer(remote, image, ctx)): LayerMount {
    const { lazy, trace } = layered;
    const fs = new LayerFs(remote.toc, lazy, (path, err) => ctx.onReadError?.(remote.desc.digest, path, err));
    attach(fs);
    return LayerMount.started(remote, lazy, fs, trace, mountpoint, image, ctx);
  }

  /** The layer's LazyLayer, recording first reads in its access trace. */
  private static lazyLayer(remote: RemoteLayer, image: { name: string; manifestDigest: string }, ctx: LayerMountContext): { lazy: LazyLayer; trace: AccessTrace } {
    const trace = new AccessTrace(image.name, image.manifestDigest, remote.desc.digest);
    const lazy = new LazyLayer(remote.source, remote.desc, remote.toc, remote.tail, ctx.store, ctx.pool, ctx.cache, { ...DEFAULT_LAZY, ...ctx.lazy },
      {
        firstAccess: (file, chunk) => trace.record(file, chunk),
        observer: ctx.observer,
        // Once per layer: a full disk would otherwise log every chunk (the count is in the unmount line).
        storeFailed: (digest, err) => {
          if (lazy.stats.storeErrors === 1) ctx.log?.warn({ layer: remote.desc.digest, chunk: digest, err: (err as Error).message }, 'cannot store fetched chunks; serving them from memory');
        },
      });
    return { lazy, trace };
  }

  /** The mount, its prefetch started. */
  private static started(remote: RemoteLayer, lazy: LazyLayer, fs: LayerFs | KernelLayerFs, trace: AccessTrace, mountpoint: string,
    image: { name: string; manifestDigest: string }, ctx: LayerMountContext): LayerMount {
    const m = new LayerMount(remote, lazy, fs, trace, mountpoint, ctx);
    if (ctx.prefetch?.enabled) m.prefetched = m.prefetch(image.manifestDigest, ctx);
    return m;
  }

  /**
   * Replays the layer's trace if there is one, else fetches its landmark set, else (a small layer)
   * holds the whole layer in memory for start-up; then, if asked, fetches the rest.
   */
  private async prefetch(manifestDigest: string, ctx: LayerMountContext): Promise<PrefetchOutcome> {
    const layer = this.remote.desc.digest;
    const file = tracePath(this.ctx.traceDir, manifestDigest, layer);
    let chunks: ChunkRef[] = [];
    let source: PrefetchOutcome['source'] = 'none';
    if (existsSync(file)) {
      try {
        const plan = planFromTrace(await readTrace(file), this.remote.toc, layer, file);
        if (plan.unknown.length) ctx.log?.warn({ trace: file, unknown: plan.unknown.slice(0, 10), count: plan.unknown.length }, 'trace names chunks this layer does not have; ignoring them');
        chunks = plan.chunks;
        source = 'trace';
      } catch (err) {
        ctx.log?.warn({ trace: file, err: (err as Error).message }, 'ignoring a bad trace');
      }
    }
    if (source === 'none' && this.remote.toc.prefetchLandmark) {
      chunks = planFromLandmark(this.remote.toc);
      source = 'landmark';
    }
    // With nothing to say what start-up reads, a layer of at most whole_layer_bytes comes whole in
    // one request while the pull goes on, and all of it is inflated, verified and stored: the
    // first read finds it in memory instead of paying a round trip.
    // A small layer of small files comes whole too, and start-up reads it from memory as it
    // arrives: no round trip per file, and only what is read is inflated.
    // Only for a layer of many small files that the store has (almost) none of: chunks already
    // there were fetched for a reason (dedupd warmed the start-up set, an earlier start, another
    // image sharing them), and downloading the rest slowed a warmed start (python at 20 ms:
    // 1.35 s with 20 MiB fetched, against 0.89 s with 0.1 MiB without the download).
    const size = this.remote.desc.size;
    const missing = source === 'none' ? this.lazy.missingBytes() : 0;
    const whole = missing > 0 && size <= (ctx.prefetch?.wholeLayerBytes ?? 0);
    const hold = whole || (missing > size * 0.9 && size <= (ctx.prefetch?.smallLayerBytes ?? 0) && manySmallFiles(this.remote.toc));
    if (hold) ctx.log?.info({ layer, bytes: size, all: whole }, 'holding the whole layer in memory for start-up');
    const held = hold ? await this.lazy.holdWholeBlob(HOLD_WHOLE_LAYER_MS) : false;
    if (whole && held) chunks = planAll(this.remote.toc);
    const queue = ctx.prefetch?.queueSize ?? 1000;
    const kernel = this.fs instanceof LayerFs ? undefined : this.fs;
    // The kernel serves a chunk stored before the mount or written ahead without asking us, so
    // the trace cannot see its reads: in kernel mode a replayed trace is carried into the new
    // one, and a chunk written ahead is recorded as read (FUSE sees and records every first read).
    if (kernel && source === 'trace') for (const ref of chunks) this.lazy.noteRead(ref.file, ref.file.chunks[ref.index]!);
    const r = await this.lazy.prefetch(chunks, queue, false, kernel && (async (ref, data) => {
      const chunk = ref.file.chunks[ref.index]!;
      if (await kernel.fillAhead(chunk, data)) this.lazy.noteRead(ref.file, chunk);
    }));
    const background = ctx.prefetch?.background ? (await this.lazy.prefetch(planAll(this.remote.toc), queue)).fetched : 0;
    const outcome = { source, chunks: chunks.length, fetched: r.fetched, failed: r.failed, background, held };
    if (source !== 'none' || background || held) ctx.log?.info({ layer, ...outcome }, 'prefetch done');
    return outcome;
  }

  get mode(): 'fuse' | 'erofs' {
    return this.fs instanceof LayerFs ? 'fuse' : 'erofs';
  }

  /** The FUSE connection the mount is served on (none for a kernel EROFS mount: a successor serves it as it finds it). */
  get connection(): FuseConnection | undefined {
    return this.fs instanceof LayerFs ? this.fs.connection : undefined;
  }

  /** Where a detached kernel mount's files are, for a successor; none for FUSE (its connection is handed over). */
  get lazyDir(): string | undefined {
    return this.fs instanceof LayerFs ? undefined : this.fs.dir;
  }

  /**
   * The mount has left its mountpoint but may still be in use: a FUSE one is served until the
   * kernel ends its connection, a kernel one until its superblock is gone (src/kernel/lazy-erofs.ts).
   * Settles once a new mount may be made at the mountpoint.
   */
  async detach(): Promise<void> {
    if (!(this.fs instanceof LayerFs)) await this.fs.detach();
  }

  /**
   * Lets go of a detached mount once it has ended, leaving its mountpoint alone (a new mount of
   * the layer may be there now), and writes the access trace.
   */
  async close(): Promise<void> {
    await this.finish(() => this.fs.release(), 'detached layer released');
  }

  /** Stops serving, leaving the mount to the process that adopted it. */
  async release(): Promise<void> {
    await this.fs.release(); // answers what it has read first, so reads still work meanwhile
    this.lazy.close();
    await this.prefetched;
  }

  /** Unmounts and writes the access trace; returns the trace's path if anything was read. */
  unmount(): Promise<string | undefined> {
    return this.finish(() => this.fs.unmount(), 'layer unmounted');
  }

  private async finish(stop: () => Promise<void>, what: string): Promise<string | undefined> {
    this.lazy.close();
    await this.prefetched;
    await stop();
    const trace = await this.trace.write(this.ctx.traceDir);
    this.ctx.log?.info({ layer: this.remote.desc.digest, mountpoint: this.mountpoint, ...this.lazy.stats, ...this.fs.stats, trace }, what);
    return trace;
  }
}
