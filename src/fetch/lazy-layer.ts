// The seeds' LazyLoader for one layer: turns "bytes [a, b) of file F" into chunk reads. A chunk
// comes from the in-memory cache, else from the chunk store (read and verified off the event loop:
// which chunks it has is known in memory), else from the registry: one Range
// request for a run of neighbouring missing chunks (bounded), inflated and verified in the codec
// workers, stored, then served. Concurrent readers of a chunk share one fetch; on-demand reads
// are queued ahead of prefetch; a bounded number of requests is in flight. A chunk that cannot be
// fetched or verified rejects the read (the filesystem answers EIO) and is tried again next time.

import type { CodecPool } from '../codec/codec-pool.js';
import { ChunkDigestMismatchError, MalformedEstargzError, MountError } from '../errors.js';
import { lastAtOrBefore, type Toc, type TocChunk, type TocNode } from '../estargz/toc.js';
import type { Descriptor } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { ChunkCache } from './chunk-cache.js';
import type { BlobBytes } from './remote-layer.js';

export type Priority = 0 | 1 | 2;
/** On-demand reads first, then read-ahead, then prefetch. */
export const PRIORITY = { demand: 0, readahead: 1, prefetch: 2 } as const;

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
}

/** What a layer reports as it works (the daemon's metrics). */
export interface LazyLayerObserver {
  /** A chunk a reader or prefetch asked for, and where it came from. */
  chunkServed(from: 'memory' | 'store' | 'registry'): void;
  /** One Range request done: its bytes, chunks by whether a reader was waiting, its duration. */
  fetched(bytes: number, demandChunks: number, aheadChunks: number, seconds: number): void;
  fetchFailed(): void;
}

export interface LazyLayerHooks {
  /** Called once per chunk, on its first read (the access trace). */
  firstAccess?: (file: TocNode, chunk: TocChunk) => void;
  observer?: LazyLayerObserver;
  /** A fetched, verified chunk the store refused (disk full, say). */
  storeFailed?: (digest: string, err: unknown) => void;
}

/** A chunk of a file, by position in the TOC. */
export interface ChunkRef {
  file: TocNode;
  index: number;
}

/**
 * A layer downloaded whole (up to the bytes its tail read brought): bytes [0, arrived) are in;
 * readers wait for their end offset.
 */
interface WholeBlob {
  blob: Buffer;
  arrived: number;
  /** The download broke off: what arrived still serves, the rest is fetched as usual. */
  failed: boolean;
  /** Settle true once bytes up to `end` are in, false if the download failed first. */
  waiters: { end: number; settle(arrived: boolean): void }[];
}

/**
 * What a held layer's span inflated to: the layer's bytes [in, end) from the checkpoint at `in`,
 * which inflate to the tar stream from `out` on; `bytes` settles once they are in and inflated.
 */
interface KeptSpan {
  in: number;
  end: number;
  out: number;
  bytes: Promise<Buffer>;
  /** Tar bytes, once inflated. */
  size: number;
}

interface Pending {
  file: TocNode;
  index: number;
  chunk: TocChunk;
  priority: Priority;
  /** Queue order: replay keeps the order it was given. */
  seq: number;
  resolve(b: Buffer): void;
  reject(e: unknown): void;
}

/** The end of the compressed bytes a chunk needs: a gzip-indexed one's may stop short of its span's end. */
const needs = (c: TocChunk): number => c.dataEnd ?? c.compressedEnd;

export class LazyLayer {
  readonly stats: LazyLayerStats = { requests: 0, bytesFetched: 0, chunksFetched: 0, demandFetches: 0, prefetched: 0, fromStore: 0, errors: 0, storeErrors: 0 };
  private seq = 0;
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private readonly queued = new Map<string, Pending>();
  private active = 0;
  private activePrefetch = 0;
  private closed = false;
  /** Every chunk of the layer by compressed offset (cross-file read-ahead walks it); eStargz only. */
  private readonly byOffset = new Map<number, ChunkRef>();
  /**
   * A gzip-indexed layer's chunks by the checkpoint their bytes are inflated from (their offset):
   * one request and one inflate serve all of those a fetch takes.
   */
  private readonly bySpan = new Map<number, ChunkRef[]>();
  /** Each checkpoint that chunks are inflated from, to the next and the previous one in the layer. */
  private readonly nextSpan = new Map<number, number>();
  private readonly prevSpan = new Map<number, number>();
  /** Every chunk of the layer, hard links once. */
  private readonly refs: ChunkRef[] = [];
  /** Chunks fetched by cross-file read-ahead that no reader has asked for yet. */
  private readonly crossAhead = new Set<string>();
  private crossWindow: number;
  private scheduled = false;
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
  /** While the layer is held whole: its inflated spans, least recently used first, up to keptSpanBytes. */
  private kept: KeptSpan[] = [];

  constructor(
    readonly source: ImageSource,
    readonly desc: Descriptor,
    readonly toc: Toc,
    /** The chunks' bytes the layer's tail read brought (RemoteLayer.tail): served from memory, never fetched. */
    private readonly tail: BlobBytes,
    private readonly store: ChunkStore,
    private readonly pool: CodecPool,
    private readonly cache: ChunkCache,
    private readonly opts: LazyLayerOptions = DEFAULT_LAZY,
    private readonly hooks: LazyLayerHooks = {},
  ) {
    this.crossWindow = opts.crossFileWindow[0];
    for (const node of new Set(toc.nodes.values())) {
      if (node.type === 'reg') node.chunks.forEach((_, index) => this.refs.push({ file: node, index }));
    }
    for (const r of this.refs) {
      const c = r.file.chunks[r.index]!;
      if (!c.window) this.byOffset.set(c.offset, r);
      else if (this.bySpan.has(c.offset)) this.bySpan.get(c.offset)!.push(r);
      else this.bySpan.set(c.offset, [r]);
    }
    const starts = [...this.bySpan.keys()].sort((a, b) => a - b);
    starts.forEach((at, i) => {
      if (i + 1 < starts.length) this.nextSpan.set(at, starts[i + 1]!);
      if (i > 0) this.prevSpan.set(at, starts[i - 1]!);
    });
    const digests = this.refs.map((r) => r.file.chunks[r.index]!.chunkDigest ?? '').filter((d) => d);
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
    if (this.opts.readAheadChunks > 0 && wanted.at(-1)! + 1 < chunks.length) this.readAhead(file, wanted.at(-1)!);
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

  /** Chunk `index` of `file`, from wherever it is. */
  chunk(file: TocNode, index: number, priority: Priority): Promise<Buffer> {
    const c = file.chunks[index]!;
    const digest = c.chunkDigest;
    if (!digest) return Promise.reject(new MalformedEstargzError(`layer ${this.desc.digest}`, `chunk of "${file.path}" has no chunkDigest`));
    if (priority === PRIORITY.demand && this.crossAhead.delete(digest)) {
      this.crossWindow = Math.min(this.opts.crossFileWindow[1], this.crossWindow * 2); // read-ahead paid off: widen it
    }
    if (priority === PRIORITY.demand && !this.accessed.has(c)) {
      this.accessed.add(c);
      this.hooks.firstAccess?.(file, c);
    }
    const hot = this.cache.get(digest);
    if (hot) {
      this.hooks.observer?.chunkServed('memory');
      return Promise.resolve(hot);
    }
    const waiting = this.inflight.get(digest);
    if (waiting) {
      const q = this.queued.get(digest);
      if (q && priority < q.priority) q.priority = priority;
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
    return !this.inflight.has(digest) && !this.cache.has(digest) && !this.stored.has(digest);
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
      this.cache.set(digest, stored);
      return stored;
    }
    const span = this.keptSpanOf(c);
    if (span) {
      let data: Buffer;
      try {
        data = await this.fromKept(span, c, this.where(file, c));
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
    return this.enqueue(file, index, priority);
  }

  /** A kept span the chunk's bytes lie in (made most recently used), if any. */
  private keptSpanOf(c: TocChunk): KeptSpan | undefined {
    const at = this.kept.findIndex((k) => k.in <= c.offset && needs(c) <= k.end);
    if (at < 0) return undefined;
    const [span] = this.kept.splice(at, 1);
    this.kept.push(span!);
    return span;
  }

  /** The chunk's bytes out of a kept span, in a buffer of their own, verified. */
  private async fromKept(span: KeptSpan, c: TocChunk, where: string): Promise<Buffer> {
    const bytes = await span.bytes;
    const from = c.checkpointOut! + c.innerOffset - span.out;
    if (from + c.chunkSize > bytes.length) throw new MalformedEstargzError(where, `span holds ${bytes.length} bytes, chunk needs ${from + c.chunkSize}`);
    const own = new Uint8Array(c.chunkSize);
    own.set(bytes.subarray(from, from + c.chunkSize));
    return this.pool.verify(own, c.chunkDigest!, where);
  }

  /**
   * Keeps `span` (most recently used) instead of the kept ones it covers, dropping the least
   * recently used over keptSpanBytes once its size is known.
   */
  private keepSpan(span: KeptSpan): void {
    this.kept = this.kept.filter((k) => k.in < span.in || k.end > span.end);
    this.kept.push(span);
    span.bytes.then((b) => {
      span.size = b.length;
      let total = this.kept.reduce((n, k) => n + k.size, 0);
      while (total > this.opts.keptSpanBytes && this.kept.length > 1) total -= this.kept.shift()!.size;
    }, () => (this.kept = this.kept.filter((k) => k !== span)));
  }

  /** A verified chunk into the cache and the store (a store failure is counted, the chunk serves all the same). */
  private async cacheAndStore(digest: string, data: Buffer): Promise<void> {
    this.cache.set(digest, data);
    await this.store.putVerified(digest, data).then(() => this.stored.add(digest), (err: unknown) => {
      this.stats.storeErrors++;
      this.hooks.storeFailed?.(digest, err);
    });
  }

  private where(file: TocNode, c: TocChunk): string {
    return `"${file.path}" at ${c.chunkOffset} in layer ${this.desc.digest}`;
  }

  private enqueue(file: TocNode, index: number, priority: Priority): Promise<Buffer> {
    if (this.closed) return Promise.reject(new MountError(`layer ${this.desc.digest} is being unmounted`));
    return new Promise<Buffer>((resolve, reject) => {
      this.queued.set(file.chunks[index]!.chunkDigest!, { file, index, chunk: file.chunks[index]!, priority, seq: this.seq++, resolve, reject });
      if (!this.scheduled) {
        // Wait one turn so chunks asked for together are coalesced into one request.
        this.scheduled = true;
        setImmediate(() => {
          this.scheduled = false;
          this.pump();
        });
      }
    });
  }

  /** Compressed bytes of the chunks the store lacks. */
  missingBytes(): number {
    // A gzip-indexed span's chunks share its compressed bytes from their checkpoint (their offset),
    // each needing them up to its own end: counted once, to the furthest missing chunk's end.
    const ends = new Map<number, number>();
    for (const r of this.refs) {
      const c = r.file.chunks[r.index]!;
      if (!this.stored.has(c.chunkDigest ?? '')) ends.set(c.offset, Math.max(ends.get(c.offset) ?? 0, c.compressedEnd));
    }
    let n = 0;
    for (const [offset, end] of ends) n += end - offset;
    return n;
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
    const whole: WholeBlob = { blob: Buffer.allocUnsafe(this.tail.start), arrived: 0, failed: false, waiters: [] };
    this.whole = whole;
    try {
      if (whole.blob.length > 0) for await (const piece of this.source.blobStream(this.desc, { start: 0, end: whole.blob.length })) {
        const b = piece as Buffer;
        if (whole.arrived + b.length > whole.blob.length) throw new MalformedEstargzError(`layer ${this.desc.digest}`, `more than the ${whole.blob.length} bytes asked for came`);
        b.copy(whole.blob, whole.arrived);
        whole.arrived += b.length;
        this.wake(whole, true);
        if (this.closed) throw new MountError(`layer ${this.desc.digest} is being unmounted`);
      }
    } catch {
      whole.failed = true;
      this.wake(whole, false);
      if (!this.closed) {
        this.stats.errors++;
        this.hooks.observer?.fetchFailed();
      }
      return false;
    } finally {
      if (!this.closed) this.wholeBlobTimer = setTimeout(() => this.unhold(), holdMs).unref();
    }
    if (whole.blob.length > 0) this.countRequest(whole.arrived, 0, 0, began);
    return true;
  }

  /** Ends the hold: the whole layer and its kept spans go. */
  private unhold(): void {
    this.whole = undefined;
    this.kept = [];
  }

  /** Wakes the readers waiting on a whole download: those whose bytes are in, or all of them when it failed. */
  private wake(whole: WholeBlob, arrived: boolean): void {
    const ready = arrived ? whole.waiters.filter((w) => w.end <= whole.arrived) : whole.waiters;
    whole.waiters = arrived ? whole.waiters.filter((w) => w.end > whole.arrived) : [];
    for (const w of ready) w.settle(arrived);
  }

  /**
   * Bytes [start, end) of the layer being downloaded whole: at once if they are in, after a wait
   * if they are still to come (fetching them too would bring them twice), else undefined: the
   * download failed before them, or there is none. `waited` says whether a reader waited.
   */
  private async fromWhole(start: number, end: number): Promise<{ bytes: Buffer; waited: boolean } | undefined> {
    const whole = this.whole;
    if (!whole) return undefined;
    if (whole.arrived >= end) return { bytes: whole.blob.subarray(start, end), waited: false };
    if (whole.failed) return undefined;
    const ok = await new Promise<boolean>((settle) => whole.waiters.push({ end, settle }));
    return ok ? { bytes: whole.blob.subarray(start, end), waited: true } : undefined;
  }

  /** One Range request that succeeded, in the stats and for the observer. */
  private countRequest(bytes: number, demandChunks: number, aheadChunks: number, began: number): void {
    this.stats.requests++;
    this.stats.bytesFetched += bytes;
    this.hooks.observer?.fetched(bytes, demandChunks, aheadChunks, (performance.now() - began) / 1000);
  }

  /** Chunks waiting for a prefetch worker. */
  prefetchQueued(): number {
    let n = 0;
    for (const p of this.queued.values()) if (p.priority === PRIORITY.prefetch) n++;
    return n;
  }

  /** Stops starting fetches and fails the queued ones; fetches in flight finish. */
  close(): void {
    this.closed = true;
    clearTimeout(this.wholeBlobTimer);
    if (this.whole) this.wake(this.whole, false);
    this.unhold();
    const err = new MountError(`layer ${this.desc.digest} is being unmounted`);
    for (const p of this.queued.values()) p.reject(err);
    this.queued.clear();
  }

  private pump(): void {
    for (;;) {
      let first: Pending | undefined;
      for (const p of this.queued.values()) {
        const free = p.priority === PRIORITY.prefetch ? this.activePrefetch < this.opts.prefetchWorkers : this.active < this.opts.maxInFlight;
        if (free && (!first || p.priority < first.priority || (p.priority === first.priority && p.seq < first.seq))) first = p;
      }
      if (!first) return;
      const prefetch = first.priority === PRIORITY.prefetch;
      const group = this.takeRun(first);
      if (prefetch) this.activePrefetch++;
      else this.active++;
      void this.fetchGroup(group).finally(() => {
        if (prefetch) this.activePrefetch--;
        else this.active--;
        this.pump();
      });
    }
  }

  /**
   * Fetches `chunks` in the given order at prefetch priority: readers always go first, a reader
   * that needs a chunk being prefetched shares its fetch, and runs of neighbouring chunks go in
   * one request. At most `queueSize` chunks are queued at once. Resolves when all are settled.
   */
  async prefetch(chunks: ChunkRef[], queueSize = 1000): Promise<{ fetched: number; skipped: number; failed: number }> {
    const report = { fetched: 0, skipped: 0, failed: 0 };
    const pending = new Set<Promise<void>>();
    for (const { file, index } of chunks) {
      const d = file.chunks[index]?.chunkDigest;
      if (!d || !this.missing(d)) {
        report.skipped++;
        continue;
      }
      // Missing per the index: queue it straight away (no store read first), so the whole batch
      // is queued before the next turn and neighbours go out in one request.
      const fetch = this.share(d, this.enqueue(file, index, PRIORITY.prefetch));
      const p = fetch.then(() => void report.fetched++, () => void report.failed++).finally(() => pending.delete(p));
      pending.add(p);
      // Refill in batches, not one by one: chunks queued together go out as one Range request.
      if (pending.size >= queueSize) while (pending.size > queueSize >> 1) await Promise.race(pending);
    }
    await Promise.all(pending);
    return report;
  }

  /**
   * `first` plus the queued chunks that follow it in the blob, within the bound; prefetch steps
   * over gaps up to roundTripBytes. A queued chunk is taken where it is met: another place
   * in the layer with the same digest holds the same bytes.
   */
  private takeRun(first: Pending): Pending[] {
    const group = [first];
    this.queued.delete(first.chunk.chunkDigest!);
    if (first.chunk.window) return this.takeSpan(group);
    const prefetch = first.priority === PRIORITY.prefetch;
    const max = prefetch ? this.opts.maxPrefetchRangeBytes : this.opts.maxRangeBytes;
    const maxGap = prefetch ? this.opts.roundTripBytes : 0;
    let gap = 0;
    for (let at = this.byOffset.get(first.chunk.compressedEnd); at;) {
      const c = at.file.chunks[at.index]!;
      if (c.compressedEnd - first.chunk.offset > max) break;
      const next = this.queued.get(c.chunkDigest ?? '');
      if (next) {
        this.queued.delete(c.chunkDigest!);
        Object.assign(next, { file: at.file, index: at.index, chunk: c });
        group.push(next);
        gap = 0;
      } else if ((gap += c.compressedEnd - c.offset) > maxGap) {
        break;
      }
      at = this.byOffset.get(c.compressedEnd);
    }
    // A layer coming in whole costs no round trip to read later: inflating (or fetching) its
    // neighbours now would only take the CPU and the link from start-up.
    if (first.priority === PRIORITY.demand && first.file.chunks.length === 1 && (!this.whole || this.whole.failed)) this.extendAcrossFiles(group, first.chunk.offset);
    return group;
  }

  /**
   * A gzip-indexed chunk with the other chunks its request can bring: those queued whose spans
   * overlap the bytes the group fetches or come right after them (their checkpoints lie on the
   * way: one request and one inflate from the earliest checkpoint serve them all; a trace replay
   * then asks for neighbouring spans in one request, never for bytes twice), within the bound;
   * and for a reader the missing ones whose bytes the request brings anyway, the request going
   * on past the chunk's own bytes (its dataEnd) by the cross-file window, as far as its span goes
   * (the small files around it: an interpreter's start reads its neighbours next; the window
   * widens each time that pays off); not for a layer held whole in memory, whose inflated
   * spans are kept for the chunks read next instead (fetchGroup).
   * The group comes back in layer order: the first chunk's checkpoint is where the request begins.
   */
  private takeSpan(group: Pending[]): Pending[] {
    const first = group[0]!;
    const max = first.priority === PRIORITY.prefetch ? this.opts.maxPrefetchRangeBytes : this.opts.maxRangeBytes;
    const chunkOf = (r: ChunkRef): TocChunk => r.file.chunks[r.index]!;
    // Queued chunks of the spans before whose bytes run into this one's or end where it begins: the request starts at theirs.
    let start = first.chunk.offset;
    for (let p = this.prevSpan.get(start); p !== undefined && needs(first.chunk) - p <= max; p = this.prevSpan.get(p)) {
      const from = p;
      if (!(this.bySpan.get(p) ?? []).some((r) => needs(chunkOf(r)) >= start && needs(chunkOf(r)) - from <= max && this.queued.has(chunkOf(r).chunkDigest!))) break;
      start = p;
    }
    /** Takes the queued chunk `ref` into the group, if it is queued. */
    const take = (ref: ChunkRef): boolean => {
      const c = chunkOf(ref);
      const next = this.queued.get(c.chunkDigest!);
      if (!next) return false;
      this.queued.delete(c.chunkDigest!);
      Object.assign(next, { file: ref.file, index: ref.index, chunk: c });
      group.push(next);
      return true;
    };
    let end = needs(first.chunk);
    for (let at: number | undefined = start; at !== undefined && at <= end; at = this.nextSpan.get(at)) {
      for (const ref of this.bySpan.get(at) ?? []) {
        if (needs(chunkOf(ref)) - start <= max && take(ref)) end = Math.max(end, needs(chunkOf(ref)));
      }
    }
    if (first.priority === PRIORITY.demand && (!this.whole || this.whole.failed)) {
      const reach = Math.max(end, Math.min(first.chunk.compressedEnd, first.chunk.offset + this.crossWindow));
      for (let at: number | undefined = start; at !== undefined && at < reach; at = this.nextSpan.get(at)) {
        for (const ref of this.bySpan.get(at) ?? []) {
          const c = chunkOf(ref);
          const digest = c.chunkDigest!;
          if (needs(c) > reach || take(ref) || !this.missing(digest)) continue;
          let pending!: Pending;
          this.share(digest, new Promise<Buffer>((resolve, reject) => {
            pending = { file: ref.file, index: ref.index, chunk: c, priority: PRIORITY.readahead, seq: this.seq++, resolve, reject };
          }));
          this.crossAhead.add(digest);
          group.push(pending);
        }
      }
    }
    return group.sort((a, b) => a.chunk.offset - b.chunk.offset);
  }

  /** Adds the missing chunks that follow the group in the layer, within the cross-file window. */
  private extendAcrossFiles(group: Pending[], start: number): void {
    for (let last = group.at(-1)!; ;) {
      const next = this.byOffset.get(last.chunk.compressedEnd);
      const c = next?.file.chunks[next.index];
      if (!next || !c?.chunkDigest || c.compressedEnd - start > this.crossWindow || !this.missing(c.chunkDigest)) return;
      let pending!: Pending;
      this.share(c.chunkDigest, new Promise<Buffer>((resolve, reject) => {
        pending = { file: next.file, index: next.index, chunk: c, priority: PRIORITY.readahead, seq: this.seq++, resolve, reject };
      }));
      this.crossAhead.add(c.chunkDigest);
      group.push(pending);
      last = pending;
    }
  }

  /**
   * Keeps a window of the file's next chunks coming while a reader moves through it: a sequential
   * reader then finds each chunk fetched (or in flight) before it gets there.
   */
  private readAhead(file: TocNode, after: number): void {
    const stop = Math.min(file.chunks.length, after + 1 + this.opts.readAheadChunks);
    for (let i = after + 1; i < stop; i++) {
      const d = file.chunks[i]!.chunkDigest;
      if (!d || this.inflight.has(d) || this.cache.has(d)) continue;
      void this.chunk(file, i, PRIORITY.readahead); // shared and handled: a reader that gets there retries
    }
  }

  private async fetchGroup(group: Pending[]): Promise<void> {
    const first = group[0]!.chunk;
    const start = first.offset;
    // A layer held whole: what a reader's span inflates to (from its checkpoint to the mark past
    // the chunks asked for) is kept, so that the chunks read next in it cost no inflate; only
    // those asked for are verified and stored now (prefetch asks for all it wants at once).
    const keep = first.window !== undefined && this.whole !== undefined && !this.whole.failed && group[0]!.priority !== PRIORITY.prefetch;
    const end = Math.max(...group.map((g) => needs(g.chunk)));
    let settleKept: ((bytes: Promise<Buffer>) => void) | undefined;
    if (keep) this.keepSpan({ in: start, end, out: first.checkpointOut!, bytes: new Promise<Buffer>((settle) => (settleKept = settle)), size: 0 });
    // The bytes from the tail on are in memory: only those before it are to be read or fetched.
    const before = Math.min(end, Math.max(start, this.tail.start));
    const observer = this.hooks.observer;
    const held = before > start ? await this.fromWhole(start, before) : { bytes: Buffer.alloc(0), waited: false };
    let bytes: Buffer;
    if (held) {
      bytes = held.bytes;
      for (let i = 0; i < group.length; i++) observer?.chunkServed('memory');
    } else {
      const began = performance.now();
      try {
        bytes = await this.source.readBlobRange(this.desc, start, before);
      } catch (err) {
        this.stats.errors++;
        observer?.fetchFailed();
        settleKept?.(Promise.reject(err));
        for (const g of group) g.reject(err);
        return;
      }
      const demand = group.filter((g) => g.priority === PRIORITY.demand).length;
      this.countRequest(bytes.length, demand, group.length - demand, began);
      for (let i = 0; i < group.length; i++) observer?.chunkServed('registry');
    }
    if (end > before) bytes = Buffer.concat([bytes, this.tail.bytes.subarray(before - this.tail.start, end - this.tail.start)]);
    const where = (g: Pending): string => this.where(g.file, g.chunk);
    // A gzip-indexed group is inflated once, from its first chunk's checkpoint, for all its chunks.
    const { window, checkpointOut: from = 0 } = first;
    const span = window ? this.pool.inflateSpan(bytes, window, group.map((g) => ({
      innerOffset: g.chunk.innerOffset + (g.chunk.checkpointOut ?? 0) - from, chunkSize: g.chunk.chunkSize, expected: g.chunk.chunkDigest!, where: where(g),
    })), keep) : undefined;
    settleKept?.(span!.then((r) => r.inflated ?? Promise.reject(new MalformedEstargzError(`layer ${this.desc.digest}`, `its span at ${start} does not inflate`))));
    await Promise.all(group.map(async (g, i) => {
      const c = g.chunk;
      try {
        const data = span ? await span.then(({ chunks }) => (chunks[i] instanceof Error ? Promise.reject(chunks[i]) : chunks[i] as Buffer)) : await this.pool.inflate(bytes.subarray(c.offset - start, c.compressedEnd - start), c, c.chunkDigest, where(g));
        this.stats.chunksFetched++;
        if (g.priority === PRIORITY.demand && (!held || held.waited)) this.stats.demandFetches++;
        else this.stats.prefetched++;
        // Verified bytes answer a reader before they are stored: a read waits for no disk write.
        // Prefetch is done when its chunks are stored.
        const reader = g.priority !== PRIORITY.prefetch;
        if (reader) g.resolve(data);
        await this.cacheAndStore(c.chunkDigest!, data);
        if (!reader) g.resolve(data);
      } catch (err) {
        this.stats.errors++;
        g.reject(err);
      }
    }));
  }
}
