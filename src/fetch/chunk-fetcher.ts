// Fetches chunks of one layer into the chunk store: chunks the store already has are skipped,
// repeats of a digest are fetched once, neighbouring chunks are coalesced into one Range request
// (bounded), a bounded number of requests run at once, and every chunk is inflated and verified
// in the codec workers before the store sees it.

import type { CodecPool } from '../codec/codec-pool.js';
import type { Descriptor } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { LayerChunk } from './remote-layer.js';

export interface FetchOptions {
  /** Largest Range request when coalescing neighbours. */
  maxRangeBytes: number;
  /** Range requests in flight at once. */
  concurrency: number;
  /** Called after each Range request with its compressed bytes. */
  onBytes?: (bytes: number) => void;
}

export const DEFAULT_FETCH: FetchOptions = { maxRangeBytes: 16 * 1024 * 1024, concurrency: 4 };

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

/** Groups chunks (sorted by offset) into runs of adjacent members no larger than `max` bytes. */
export function coalesce(chunks: LayerChunk[], max: number): LayerChunk[][] {
  const groups: LayerChunk[][] = [];
  let cur: LayerChunk[] = [];
  for (const c of chunks) {
    const first = cur[0];
    const last = cur.at(-1);
    if (first && last && (c.offset !== last.compressedEnd || c.compressedEnd - first.offset > max)) {
      groups.push(cur);
      cur = [];
    }
    cur.push(c);
  }
  if (cur.length > 0) groups.push(cur);
  return groups;
}

export async function fetchChunks(source: ImageSource, desc: Descriptor, chunks: LayerChunk[], store: ChunkStore, pool: CodecPool,
  opts: FetchOptions = DEFAULT_FETCH): Promise<FetchReport> {
  const distinct = new Map<string, LayerChunk>();
  for (const c of chunks) if (!distinct.has(c.digest)) distinct.set(c.digest, c);
  const missing = store.missing(distinct.keys());
  const wanted = [...distinct.values()].filter((c) => missing.has(c.digest)).sort((a, b) => a.offset - b.offset);
  const groups = coalesce(wanted, opts.maxRangeBytes);
  const report: FetchReport = {
    chunks: distinct.size, alreadyStored: distinct.size - wanted.length, fetched: 0, bytesFetched: 0, bytesStored: 0, requests: 0,
  };
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    // After a failure no new request starts; requests in flight finish, so when this function
    // returns (or throws) nothing of it is still writing to the store.
    while (next < groups.length && failure === undefined) {
      const group = groups[next++]!;
      const start = group[0]!.offset;
      const end = group.at(-1)!.compressedEnd;
      const bytes = await source.readBlobRange(desc, start, end);
      report.requests++;
      report.bytesFetched += bytes.length;
      opts.onBytes?.(bytes.length);
      const results = await Promise.allSettled(group.map(async (c) => {
        const data = await pool.inflate(bytes.subarray(c.offset - start, c.compressedEnd - start), c, c.digest, `"${c.path}" at ${c.chunkOffset} in layer ${desc.digest}`);
        if (await store.putVerified(c.digest, data)) report.bytesStored += data.length;
        report.fetched++;
      }));
      const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (rejected) throw rejected.reason;
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, groups.length) }, () => worker().catch((err: unknown) => {
    failure ??= err;
  })));
  if (failure !== undefined) throw failure;
  await store.flush(); // done means other processes (a layer server mounting next) see the chunks as stored
  return report;
}
