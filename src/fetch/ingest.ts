// `dedupctl store ingest`: records an eStargz image in the chunk store and fetches every chunk
// the store lacks. Layers are recorded before their chunks are fetched, so an interrupted
// ingest is resumed by running it again.

import type { CodecPool } from '../codec/codec-pool.js';
import { MalformedLayerError } from '../errors.js';
import { layerCompression, type Platform } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';
import type { ChunkStore } from '../store/chunk-store.js';
import { DEFAULT_FETCH, fetchChunks, type FetchOptions, type FetchReport } from './chunk-fetcher.js';
import { RemoteLayer, type LayerChunk } from './remote-layer.js';

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
  chunksFor?: (layer: RemoteLayer, manifestDigest: string) => Promise<LayerChunk[]>;
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
    const chunks = opts.chunksFor ? await opts.chunksFor(layer, image.manifestDigest) : layer.chunks();
    const r = await fetchChunks(src, layer.desc, chunks, store, pool, {
      ...DEFAULT_FETCH, ...opts.fetch,
      onBytes: (n) => {
        done += n;
        opts.onProgress?.(done, total);
      },
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
