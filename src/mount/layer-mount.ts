// One eStargz layer mounted lazily at a directory: its LazyLayer (fetching), its FUSE layer
// filesystem and its access trace. Image mounts and the snapshotter's remote snapshots both use it.

import type { CodecPool } from '../codec/codec-pool.js';
import type { ChunkCache } from '../fetch/chunk-cache.js';
import { DEFAULT_LAZY, LazyLayer, type LazyLayerOptions } from '../fetch/lazy-layer.js';
import type { RemoteLayer } from '../fetch/remote-layer.js';
import { AccessTrace } from '../fs/access-trace.js';
import { LayerFs } from '../fs/layer-fs.js';
import type { ChunkStore } from '../store/chunk-store.js';

export interface LayerMountContext {
  store: ChunkStore;
  pool: CodecPool;
  cache: ChunkCache;
  traceDir: string;
  lazy?: Partial<LazyLayerOptions>;
  onReadError?: (layer: string, path: string, err: unknown) => void;
}

export class LayerMount {
  private constructor(readonly remote: RemoteLayer, readonly lazy: LazyLayer, readonly fs: LayerFs, readonly trace: AccessTrace,
    readonly mountpoint: string, private readonly traceDir: string) {}

  /** Records the layer in the chunk store and mounts it at `mountpoint`. */
  static async mount(remote: RemoteLayer, mountpoint: string, image: { name: string; manifestDigest: string }, ctx: LayerMountContext): Promise<LayerMount> {
    ctx.store.addLayer({ digest: remote.desc.digest, tocDigest: remote.tocDigest, compressedSize: remote.desc.size, uncompressedSize: remote.toc.contentBytes,
      chunks: remote.chunks().map((c) => ({ digest: c.digest, size: c.chunkSize })) });
    const trace = new AccessTrace(image.name, image.manifestDigest, remote.desc.digest);
    const lazy = new LazyLayer(remote.source, remote.desc, remote.toc, ctx.store, ctx.pool, ctx.cache, { ...DEFAULT_LAZY, ...ctx.lazy },
      (file, chunk) => trace.record(file, chunk));
    const fs = new LayerFs(remote.toc, lazy, (path, err) => ctx.onReadError?.(remote.desc.digest, path, err));
    await fs.mount(mountpoint, remote.desc.digest.slice(7, 19));
    return new LayerMount(remote, lazy, fs, trace, mountpoint, ctx.traceDir);
  }

  /** Unmounts and writes the access trace; returns the trace's path if anything was read. */
  async unmount(): Promise<string | undefined> {
    await this.fs.unmount();
    return this.trace.write(this.traceDir);
  }
}
