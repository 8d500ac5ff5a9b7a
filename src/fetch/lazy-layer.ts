// The seeds' LazyLoader for one layer: turns "bytes [a, b) of file F" into chunk reads. A chunk
// comes from the in-memory cache, else from the chunk store (read and verified off the event loop:
// which chunks it has is known in memory), else from the registry through the layer's one
// scheduler (range-scheduler.ts: Range requests for runs of neighbouring missing chunks,
// priorities, bounded requests in flight), inflated and verified in the codec workers, stored,
// then served. Concurrent readers of a chunk share one fetch. A chunk that cannot be fetched or
// verified rejects the read (the filesystem answers EIO) and is tried again next time. Prefetch,
// `dedupd` and `dedupctl store ingest` fetch through the same layer (prefetch()).

import type { CodecPool } from '../codec/codec-pool.js';
import { ChunkDigestMismatchError, MalformedEstargzError, MountError } from '../errors.js';
import { lastAtOrBefore, type Toc, type TocChunk, type TocNode } from '../estargz/toc.js';
import type { Descriptor } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { ChunkCache } from './chunk-cache.js';
import { PRIORITY, type Pending, type Priority } from './chunk-queue.js';
import { chunkFromSpan, KeptSpans } from './kept-spans.js';
import { chunkWhere, LayerChunks, type ChunkRef } from './layer-chunks.js';
import { prefetchBatch, type PrefetchReport } from './prefetch-batch.js';
import { RangeScheduler } from './range-scheduler.js';
import { takeRun } from './range-run.js';
import { ReadAhead } from './read-ahead.js';
import type { BlobBytes } from './remote-layer.js';
import { countRequest, fetchRun, type LazyLayerObserver, type LazyLayerStats, type RunSource } from './run-fetch.js';
import { WholeBlob } from './whole-blob.js';

export type { ChunkRef } from './layer-chunks.js';
export type { LazyLayerObserver } from './run-fetch.js';

export interface LazyLayerOptions {
  /** Largest Range request when coalescing neighbouring chunks. */
  maxRangeBytes: number;
  /** Largest Range request for prefetching, which fetches runs of chunks in bulk. */
  maxPrefetchRangeBytes: number;
  /**
   * What the link carries in one round trip (20 ms at 100 MiB/s: 2 MiB), below which bytes cost
   * less than a request: prefetch steps over gaps up to this size to reach the next chunk it
   * wants in the same request (the gap is dropped).
   */
  roundTripBytes: number;
  /** Range requests in flight for this layer for readers (and read-ahead). */
  maxInFlight: number;
  /** Range requests in flight for prefetch, besides those: readers never wait for a slot. */
  prefetchWorkers: number;
  /** Chunks of a file fetched ahead of a reader moving through it. */
  readAheadChunks: number;
  /**
   * Bounds (compressed bytes) of the read-ahead across files: a small file's chunk is fetched with
   * the chunks that follow it in the layer, since files stored together tend to be read together.
   * The window starts at the low bound and doubles each time such a chunk is then read.
   */
  crossFileWindow: [number, number];
  /**
   * Tar bytes of a gzip-indexed layer's inflated spans kept while the layer is held whole (the
   * least recently used dropped first): a chunk read later in a kept span is taken out of it and
   * verified, with no inflate.
   */
  keptSpanBytes: number;
}

export const DEFAULT_LAZY: LazyLayerOptions = { maxRangeBytes: 8 * 1024 * 1024, maxPrefetchRangeBytes: 64 * 1024 * 1024, roundTripBytes: 2 * 1024 * 1024,
  maxInFlight: 4, prefetchWorkers: 4, readAheadChunks: 4,
  crossFileWindow: [256 * 1024, 4 * 1024 * 1024], keptSpanBytes: 32 * 1024 * 1024 };

export interface LazyLayerHooks {
  /** Called once per chunk, on its first read (the access trace). */
  firstAccess?: (file: TocNode, chunk: TocChunk) => void;
  observer?: LazyLayerObserver;
  /** A fetched, verified chunk the store refused (disk full, say). */
  storeFailed?: (digest: string, err: unknown) => void;
}

export class LazyLayer {
  readonly stats: LazyLayerStats = { requests: 0, bytesFetched: 0, chunksFetched: 0, demandFetches: 0, prefetched: 0, fromStore: 0, errors: 0, storeErrors: 0, bytesStored: 0 };
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private readonly chunks: LayerChunks;
  private readonly scheduler: RangeScheduler;
  private readonly ahead: ReadAhead;
  private readonly runSource: RunSource;
  private closed = false;
  /** Chunks read at least once (the access trace records the first read). */
  private readonly accessed = new Set<TocChunk>();
  /**
   * Digests of the layer's chunks the store holds: asked of the index once, then kept by this
   * layer's own stores and misses, so a read runs no SQL. A chunk another process stores
   * meanwhile is fetched again, which costs bytes, never correctness.
   */
  private readonly stored: Set<string>;
  /** The whole compressed layer while it comes in and then while it is held (holdWholeBlob). */
  private whole: WholeBlob | undefined;
  private wholeBlobTimer: NodeJS.Timeout | undefined;
  /** While the layer is held whole: its inflated spans. */
  private readonly kept: KeptSpans;

  /** @param cache the hot chunks shared by the process's layers; none for a layer fetched only into the store (ingest) */
  constructor(
    readonly source: ImageSource,
    readonly desc: Descriptor,
    readonly toc: Toc,
    /** The chunks' bytes the layer's tail read brought (RemoteLayer.tail): served from memory, never fetched. */
    private readonly tail: BlobBytes,
    private readonly store: ChunkStore,
    private readonly pool: CodecPool,
    private readonly cache: ChunkCache | undefined,
    private readonly opts: LazyLayerOptions = DEFAULT_LAZY,
    private readonly hooks: LazyLayerHooks = {},
  ) {
    this.chunks = new LayerChunks(toc);
    this.ahead = new ReadAhead(opts.readAheadChunks, opts.crossFileWindow);
    this.kept = new KeptSpans(opts.keptSpanBytes);
    this.runSource = {
      source, desc, tail, pool, stats: this.stats, observer: hooks.observer, kept: this.kept,
      held: () => this.whole, deliver: (digest, data) => this.cacheAndStore(digest, data),
      closed: () => this.closed ? this.closing() : undefined,
    };
    this.scheduler = new RangeScheduler(opts, (first) => this.runOf(first), (run) => fetchRun(this.runSource, run));
    const digests = this.chunks.refs.map((r) => r.file.chunks[r.index]!.chunkDigest ?? '').filter((d) => d);
    const missing = store.missing(digests);
    this.stored = new Set(digests.filter((d) => !missing.has(d)));
  }

  /** Bytes [offset, offset + length) of a regular file, clipped to its size. */
  async read(file: TocNode, offset: number, length: number): Promise<Buffer> {
    const end = Math.min(file.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const chunks = file.chunks;
    const lo = lastAtOrBefore(chunks, offset, (c) => c.chunkOffset);
    const wanted: number[] = [];
    for (let i = lo; i < chunks.length && chunks[i]!.chunkOffset < end; i++) wanted.push(i);
    const pending = wanted.map((i) => this.chunk(file, i, PRIORITY.demand));
    this.readAhead(file, wanted.at(-1)!);
    const parts = await Promise.all(pending);
    if (parts.length === 1) {
      const c = chunks[wanted[0]!]!;
      return parts[0]!.subarray(offset - c.chunkOffset, end - c.chunkOffset);
    }
    const out = Buffer.allocUnsafe(end - offset);
    for (const [k, i] of wanted.entries()) {
      const c = chunks[i]!;
      const from = Math.max(offset, c.chunkOffset);
      const to = Math.min(end, c.chunkOffset + c.chunkSize);
      parts[k]!.copy(out, from - offset, from - c.chunkOffset, to - c.chunkOffset);
    }
    return out;
  }

  /**
   * Chunk `c` of `file` counts as read (its first access told to firstAccess once), whether it is
   * read through here or, in kernel mode, served by the kernel without asking.
   */
  noteRead(file: TocNode, c: TocChunk): void {
    if (this.accessed.has(c)) return;
    this.accessed.add(c);
    this.hooks.firstAccess?.(file, c);
  }

  /** Chunk `index` of `file`, from wherever it is. */
  chunk(file: TocNode, index: number, priority: Priority): Promise<Buffer> {
    const c = file.chunks[index]!;
    const digest = c.chunkDigest;
    if (!digest) return Promise.reject(new MalformedEstargzError(`layer ${this.desc.digest}`, `chunk of "${file.path}" has no chunkDigest`));
    if (priority === PRIORITY.demand) {
      this.ahead.read(digest);
      this.noteRead(file, c);
    }
    const hot = this.cache?.get(digest);
    if (hot) {
      this.hooks.observer?.chunkServed('memory');
      return Promise.resolve(hot);
    }
    const waiting = this.inflight.get(digest);
    if (waiting) {
      this.scheduler.queue.raise(digest, priority);
      return waiting;
    }
    return this.share(digest, this.load(file, index, priority));
  }

  /** Makes `fetch` the one every reader of `digest` waits on until it settles. */
  private share(digest: string, fetch: Promise<Buffer>): Promise<Buffer> {
    const shared = fetch.finally(() => this.inflight.delete(digest));
    shared.catch(() => undefined); // read-ahead and prefetch may settle with nobody waiting
    this.inflight.set(digest, shared);
    return shared;
  }

  /** Neither in memory, nor being fetched, nor in the store: the chunk must come from the registry. */
  private missing(digest: string): boolean {
    return !this.inflight.has(digest) && !this.cache?.has(digest) && !this.stored.has(digest);
  }

  private async load(file: TocNode, index: number, priority: Priority): Promise<Buffer> {
    const c = file.chunks[index]!;
    const digest = c.chunkDigest!;
    let stored: Buffer | undefined;
    // A chunk the store lacks costs no file lookup on the way to the registry.
    if (this.stored.has(digest)) {
      try {
        stored = await this.store.get(digest, c.chunkSize, this.pool);
      } catch (err) {
        if (!(err instanceof ChunkDigestMismatchError)) throw err; // a rotten file was dropped: fetch it again
      }
      if (!stored) this.stored.delete(digest);
    }
    if (stored) {
      this.stats.fromStore++;
      this.hooks.observer?.chunkServed('store');
      this.cache?.set(digest, stored);
      return stored;
    }
    const span = this.kept.of(c);
    if (span) {
      let data: Buffer;
      try {
        data = await chunkFromSpan(span, c, this.pool, chunkWhere(this.desc.digest, file, c));
      } catch (err) {
        this.stats.errors++;
        throw err;
      }
      this.hooks.observer?.chunkServed('memory');
      this.stats.chunksFetched++;
      this.stats.prefetched++;
      void this.cacheAndStore(digest, data);
      return data;
    }
    return this.scheduler.enqueue({ file, index }, priority);
  }

  /** A verified chunk into the cache and the store (a store failure is counted, the chunk serves all the same). */
  private async cacheAndStore(digest: string, data: Buffer): Promise<void> {
    this.cache?.set(digest, data);
    await this.store.putVerified(digest, data).then((fresh) => {
      this.stored.add(digest);
      if (fresh) this.stats.bytesStored += data.length;
    }, (err: unknown) => {
      this.stats.storeErrors++;
      this.hooks.storeFailed?.(digest, err);
    });
  }

  /** What the request for `first` brings: its bounds by kind, and for a reader the cross-file read-ahead. */
  private runOf(first: Pending): Pending[] {
    const prefetch = first.priority === PRIORITY.prefetch;
    const eStargz = first.chunk.window === undefined;
    // A layer coming in whole costs no round trip to read later: inflating (or fetching) its
    // neighbours now would only take the CPU and the link from start-up.
    const across = first.priority === PRIORITY.demand && (!this.whole || this.whole.failed);
    return takeRun(first, this.scheduler.queue, this.chunks, {
      maxBytes: prefetch ? this.opts.maxPrefetchRangeBytes : this.opts.maxRangeBytes,
      // Dropped bytes cost a gzip-indexed request an inflate through them as well: only eStargz steps over gaps.
      slack: prefetch && eStargz ? this.opts.roundTripBytes : 0,
      reach: across ? this.ahead.reach(first.file, first.chunk) : undefined,
      along: (ref) => {
        const digest = ref.file.chunks[ref.index]!.chunkDigest;
        if (!digest || !this.missing(digest)) return undefined;
        const { pending, settled } = this.scheduler.queue.make(ref, PRIORITY.readahead);
        this.share(digest, settled);
        this.ahead.took(digest);
        return pending;
      },
    });
  }

  /** Keeps the file's next chunks coming while a reader moves through it: a sequential reader finds each fetched (or in flight) when it gets there. */
  private readAhead(file: TocNode, last: number): void {
    for (const i of this.ahead.inFile(file, last)) {
      const d = file.chunks[i]!.chunkDigest;
      if (!d || this.inflight.has(d) || this.cache?.has(d)) continue;
      void this.chunk(file, i, PRIORITY.readahead); // shared and handled: a reader that gets there retries
    }
  }

  /** Compressed bytes of the chunks the store lacks. */
  missingBytes(): number {
    return this.chunks.missingBytes(this.stored);
  }

  /**
   * Downloads the whole compressed layer in one request (but the tail, which opening it brought)
   * and serves chunks from it, as it comes in and then for `holdMs`: a reader then waits for no
   * round trip of its own, and only what is read is inflated and stored (doing all of a layer's
   * chunks at once competes with start-up for the CPU). A reader whose bytes are still to come
   * waits for them rather than fetching them too: no byte comes twice. Every chunk is still
   * verified against its own digest. False if the download failed (what arrived still serves,
   * readers fetch the rest as usual) or the layer was closed meanwhile.
   */
  async holdWholeBlob(holdMs: number): Promise<boolean> {
    const began = performance.now();
    const whole = new WholeBlob(this.desc, this.tail.start);
    this.whole = whole;
    try {
      await whole.download(this.source, () => {
        if (this.closed) throw this.closing();
      });
    } catch {
      if (!this.closed) {
        this.stats.errors++;
        this.hooks.observer?.fetchFailed();
      }
      return false;
    } finally {
      if (!this.closed) this.wholeBlobTimer = setTimeout(() => this.unhold(), holdMs).unref();
    }
    if (whole.size > 0) countRequest(this.runSource, whole.received, 0, 0, began);
    return true;
  }

  /** Ends the hold: the whole layer and its kept spans go. */
  private unhold(): void {
    this.whole = undefined;
    this.kept.clear();
  }

  /** Chunks waiting for a prefetch worker. */
  prefetchQueued(): number {
    return this.scheduler.queued(PRIORITY.prefetch);
  }

  private closing(): MountError {
    return new MountError(`layer ${this.desc.digest} is being unmounted`);
  }

  /** Stops starting fetches and fails the queued ones; fetches in flight finish. */
  close(): void {
    this.closed = true;
    clearTimeout(this.wholeBlobTimer);
    this.whole?.fail();
    this.unhold();
    this.scheduler.close(this.closing());
  }

  /**
   * Fetches `chunks` in the given order at prefetch priority: readers always go first, a reader
   * that needs a chunk being prefetched shares its fetch, and runs of neighbouring chunks go in
   * one request. At most `queueSize` chunks are queued at once. Resolves when all are settled
   * (prefetched chunks are then stored); with `stopOnFailure`, the first failure closes the layer.
   * `fetched` is told of each chunk fetched, with its verified bytes (a chunk is settled once what it returns has).
   */
  prefetch(chunks: ChunkRef[], queueSize = 1000, stopOnFailure = false, fetched?: (ref: ChunkRef, data: Buffer) => Promise<void> | void): Promise<PrefetchReport> {
    return prefetchBatch({
      missing: (digest) => this.missing(digest),
      fetch: (ref, digest) => this.share(digest, this.scheduler.enqueue(ref, PRIORITY.prefetch)),
      stop: () => this.close(),
      fetched,
    }, chunks, queueSize, stopOnFailure);
  }
}
