// `dedupctl store ingest`: records an eStargz image in the chunk store and fetches every chunk
// the store lacks. Layers are recorded before their chunks are fetched, so an interrupted
// ingest is resumed by running it again.

import type { CodecPool } from '../codec/codec-pool.js';
import { MalformedLayerError } from '../errors.js';
import { layerCompression, type Platform } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';
import type { ChunkStore } from '../store/chunk-store.js';
import { everyChunk, type ChunkRef } from './layer-chunks.js';
import { DEFAULT_LAZY, LazyLayer } from './lazy-layer.js';
import { RemoteLayer } from './remote-layer.js';

export interface FetchOptions {
  /** Largest Range request when coalescing neighbours. */
  maxRangeBytes: number;
  /** Range requests in flight at once. */
  concurrency: number;
}

const DEFAULT_FETCH: FetchOptions = { maxRangeBytes: 16 * 1024 * 1024, concurrency: 4 };

export interface FetchReport {
  /** Distinct chunks the layer references. */
  chunks: number;
  /** Chunks that were in the store already (from this or another layer or image). */
  alreadyStored: number;
  fetched: number;
  /** Compressed bytes received for this layer. */
  bytesFetched: number;
  /** Uncompressed bytes written to the store. */
  bytesStored: number;
  requests: number;
}

export interface IngestReport {
  image: string;
  manifestDigest: string;
  layers: ({ digest: string; tocDigest: string } & FetchReport)[];
  chunks: number;
  alreadyStored: number;
  fetched: number;
  bytesFetched: number;
  bytesStored: number;
  seconds: number;
}

export interface IngestOptions {
  platform: Platform;
  fetch?: Partial<FetchOptions>;
  /** Progress in compressed bytes fetched, of the image's compressed size. */
  onProgress?: (done: number, total: number) => void;
  /** Which chunks of a layer to fetch (default: all of them). */
  chunksFor?: (layer: RemoteLayer, manifestDigest: string) => Promise<ChunkRef[]>;
}

export async function ingestImage(src: ImageSource, store: ChunkStore, pool: CodecPool, opts: IngestOptions): Promise<IngestReport> {
  const started = process.hrtime.bigint();
  const image = await src.resolve(opts.platform);
  const layers: RemoteLayer[] = [];
  for (const [i, desc] of image.manifest.layers.entries()) {
    if (layerCompression(desc.mediaType, `layer ${i} of ${image.name}`) !== 'gzip') {
      throw new MalformedLayerError(desc.digest, `layer ${i} of ${image.name} is not eStargz (${desc.mediaType}); convert the image first (dedupctl convert)`);
    }
    layers.push(await RemoteLayer.open(src, desc));
  }
  const total = image.manifest.layers.reduce((n, l) => n + l.size, 0);
  let done = 0;
  for (const layer of layers) {
    await store.addLayer({
      digest: layer.desc.digest, tocDigest: layer.tocDigest, compressedSize: layer.desc.size, uncompressedSize: layer.toc.contentBytes,
      chunks: layer.chunks().map((c) => ({ digest: c.digest, size: c.chunkSize })),
    });
  }
  store.addImage(image.name, image.manifestDigest, layers.map((l) => l.desc.digest));
  const reports: IngestReport['layers'] = [];
  for (const layer of layers) {
    const chunks = opts.chunksFor ? await opts.chunksFor(layer, image.manifestDigest) : everyChunk(layer.toc);
    const r = await fetchLayer(layer, chunks, store, pool, { ...DEFAULT_FETCH, ...opts.fetch }, (n) => {
      done += n;
      opts.onProgress?.(done, total);
    });
    reports.push({ digest: layer.desc.digest, tocDigest: layer.tocDigest, ...r });
  }
  const sum = (k: keyof FetchReport): number => reports.reduce((n, r) => n + r[k], 0);
  return {
    image: image.name, manifestDigest: image.manifestDigest, layers: reports, chunks: sum('chunks'), alreadyStored: sum('alreadyStored'),
    fetched: sum('fetched'), bytesFetched: sum('bytesFetched'), bytesStored: sum('bytesStored'),
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
  };
}

/**
 * Fetches `chunks` of a layer into the store through the layer's scheduler, as prefetch does:
 * chunks the store has are skipped, repeats of a digest fetched once, neighbours coalesced, every
 * chunk verified before the store sees it. The first failure stops it (requests in flight finish,
 * so nothing of it is still writing when it throws).
 */
async function fetchLayer(layer: RemoteLayer, chunks: ChunkRef[], store: ChunkStore, pool: CodecPool, opts: FetchOptions,
  onBytes: (bytes: number) => void): Promise<FetchReport> {
  const distinct = new Set(chunks.map(({ file, index }) => file.chunks[index]!.chunkDigest ?? ''));
  // A chunk the store refuses fails the ingest (a mount would serve it from memory instead).
  let storeError: unknown;
  // No hot cache: the chunks are for the store. Requests go as the options say, with no gaps stepped over.
  const lazy: LazyLayer = new LazyLayer(layer.source, layer.desc, layer.toc, layer.tail, store, pool, undefined,
    { ...DEFAULT_LAZY, maxPrefetchRangeBytes: opts.maxRangeBytes, prefetchWorkers: opts.concurrency, roundTripBytes: 0 }, {
      observer: { chunkServed: () => undefined, fetched: (bytes) => onBytes(bytes), fetchFailed: () => undefined },
      storeFailed: (_digest, err) => {
        storeError ??= err;
        lazy.close();
      },
    });
  const r = await lazy.prefetch(chunks, Math.max(1, chunks.length), true);
  if (storeError !== undefined) throw storeError;
  if (r.failed > 0) throw r.error;
  await store.flush(); // done means other processes (a layer server mounting next) see the chunks as stored
  return { chunks: distinct.size, alreadyStored: distinct.size - r.fetched, fetched: r.fetched, bytesFetched: lazy.stats.bytesFetched,
    bytesStored: lazy.stats.bytesStored, requests: lazy.stats.requests };
}
