// One run of chunks (range-run.ts) from its bytes to its readers: the bytes come from the layer
// held whole, the tail its opening read, or one Range request; they are inflated and verified in
// the codec workers (a gzip-indexed run once, from its first checkpoint), handed to the readers,
// and stored. A chunk that fails to inflate or verify rejects its own readers only; a Range request
// that fails rejects every reader of its run.

import type { CodecPool } from '../codec/codec-pool.js';
import { MalformedEstargzError } from '../errors.js';
import type { Descriptor } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';
import { PRIORITY, type Pending } from './chunk-queue.js';
import type { KeptSpans } from './kept-spans.js';
import { chunkWhere, needs } from './layer-chunks.js';
import type { BlobBytes } from './remote-layer.js';
import type { WholeBlob } from './whole-blob.js';

export interface LazyLayerStats {
  requests: number;
  bytesFetched: number;
  chunksFetched: number;
  /** Chunks a reader was waiting for when they were fetched: the blocking fetches. */
  demandFetches: number;
  /** Chunks fetched by prefetch or read-ahead before any reader asked. */
  prefetched: number;
  fromStore: number;
  errors: number;
  /** Fetched chunks that could not be stored (served from memory all the same). */
  storeErrors: number;
  /** Uncompressed bytes of fetched chunks this process wrote to the store (not those it had). */
  bytesStored: number;
}

/** What a layer reports as it works (the daemon's metrics). */
export interface LazyLayerObserver {
  /** A chunk a reader or prefetch asked for, and where it came from. */
  chunkServed(from: 'memory' | 'store' | 'registry'): void;
  /** One Range request done: its bytes, chunks by whether a reader was waiting, its duration. */
  fetched(bytes: number, demandChunks: number, aheadChunks: number, seconds: number): void;
  fetchFailed(): void;
}

export interface RunSource {
  source: ImageSource;
  desc: Descriptor;
  /** The blob's bytes its tail read brought: never fetched. */
  tail: BlobBytes;
  pool: CodecPool;
  stats: LazyLayerStats;
  observer: LazyLayerObserver | undefined;
  /** The layer while it is held whole (its download may have broken off: what arrived serves). */
  held(): WholeBlob | undefined;
  kept: KeptSpans;
  /** A verified chunk to the cache and the store; never rejects. */
  deliver(digest: string, data: Buffer): Promise<void>;
  /** Set once the layer is closed: a run that waited for the whole blob then fetches nothing. */
  closed(): Error | undefined;
}

/** One Range request that succeeded, in the stats and for the observer. */
export function countRequest(to: RunSource, bytes: number, demandChunks: number, aheadChunks: number, began: number): void {
  to.stats.requests++;
  to.stats.bytesFetched += bytes;
  to.observer?.fetched(bytes, demandChunks, aheadChunks, (performance.now() - began) / 1000);
}

/** Fetches `run` (in blob order) and settles each of its chunks. */
export async function fetchRun(from: RunSource, run: Pending[]): Promise<void> {
  const { stats, observer, pool } = from;
  const first = run[0]!.chunk;
  const start = first.offset;
  const whole = from.held();
  // A layer held whole: what a reader's span inflates to (from its checkpoint to the mark past
  // the chunks asked for) is kept, so that the chunks read next in it cost no inflate; only
  // those asked for are verified and stored now (prefetch asks for all it wants at once).
  const keep = first.window !== undefined && whole !== undefined && !whole.failed && run[0]!.priority !== PRIORITY.prefetch;
  const end = Math.max(...run.map((g) => needs(g.chunk)));
  let settleKept: ((bytes: Promise<Buffer>) => void) | undefined;
  if (keep) from.kept.keep({ in: start, end, out: first.checkpointOut!, bytes: new Promise<Buffer>((settle) => (settleKept = settle)), size: 0 });
  // The bytes from the tail on are in memory: only those before it are to be read or fetched.
  const tail = from.tail;
  const before = Math.min(end, Math.max(start, tail.start));
  const held = before > start ? await whole?.bytes(start, before) : { bytes: Buffer.alloc(0), waited: false };
  let bytes: Buffer;
  if (held) {
    bytes = held.bytes;
    for (let i = 0; i < run.length; i++) observer?.chunkServed('memory');
  } else {
    const began = performance.now();
    const closed = from.closed();
    try {
      if (closed) throw closed; // closed while it waited for the whole blob: nothing more is fetched
      bytes = await from.source.readBlobRange(from.desc, start, before);
    } catch (err) {
      if (err !== closed) {
        stats.errors++;
        observer?.fetchFailed();
      }
      settleKept?.(Promise.reject(err));
      for (const g of run) g.reject(err);
      return;
    }
    const demand = run.filter((g) => g.priority === PRIORITY.demand).length;
    countRequest(from, bytes.length, demand, run.length - demand, began);
    for (let i = 0; i < run.length; i++) observer?.chunkServed('registry');
  }
  if (end > before) bytes = Buffer.concat([bytes, tail.bytes.subarray(before - tail.start, end - tail.start)]);
  const where = (g: Pending): string => chunkWhere(from.desc.digest, g.file, g.chunk);
  // A gzip-indexed run is inflated once, from its first chunk's checkpoint, for all its chunks.
  const { window, checkpointOut: out = 0 } = first;
  const span = window ? pool.inflateSpan(bytes, window, run.map((g) => ({
    innerOffset: g.chunk.innerOffset + (g.chunk.checkpointOut ?? 0) - out, chunkSize: g.chunk.chunkSize, expected: g.chunk.chunkDigest!, where: where(g),
  })), keep) : undefined;
  settleKept?.(span!.then((r) => r.inflated ?? Promise.reject(new MalformedEstargzError(`layer ${from.desc.digest}`, `its span at ${start} does not inflate`))));
  await Promise.all(run.map(async (g, i) => {
    const c = g.chunk;
    try {
      const data = span ? await span.then(({ chunks }) => (chunks[i] instanceof Error ? Promise.reject(chunks[i]) : chunks[i] as Buffer)) : await pool.inflate(bytes.subarray(c.offset - start, c.compressedEnd - start), c, c.chunkDigest, where(g));
      stats.chunksFetched++;
      if (g.priority === PRIORITY.demand && (!held || held.waited)) stats.demandFetches++;
      else stats.prefetched++;
      // Verified bytes answer a reader before they are stored: a read waits for no disk write.
      // Prefetch is done when its chunks are stored.
      const reader = g.priority !== PRIORITY.prefetch;
      if (reader) g.resolve(data);
      await from.deliver(c.chunkDigest!, data);
      if (!reader) g.resolve(data);
    } catch (err) {
      stats.errors++;
      g.reject(err);
    }
  }));
}
