// The fetch scheduler on its own (no root, no registry): a real eStargz layer served from memory
// by a fake image source that records every Range request and can hold, fail or corrupt them,
// read through the real LazyLayer, codec workers and chunk store. Coalescing, priorities, close()
// with requests in flight, whole-blob waiters, faults, and every reply's bytes; then ingest
// (`store ingest`, dedupd) through the same scheduler, from an OCI layout.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { CodecPool } from '../src/codec/codec-pool.js';
import { convertImage } from '../src/convert/image-converter.js';
import { convertLayer } from '../src/convert/layer-converter.js';
import { MountError } from '../src/errors.js';
import { TOC_DIGEST_ANNOTATION, type TocNode } from '../src/estargz/toc.js';
import { ChunkCache } from '../src/fetch/chunk-cache.js';
import { ingestImage } from '../src/fetch/ingest.js';
import { DEFAULT_LAZY, LazyLayer, type LazyLayerOptions } from '../src/fetch/lazy-layer.js';
import { RemoteLayer } from '../src/fetch/remote-layer.js';
import type { Descriptor } from '../src/image/oci.js';
import { OciLayout } from '../src/image/oci-layout.js';
import type { ImageSource } from '../src/image/source.js';
import { ChunkStore } from '../src/store/chunk-store.js';
import { tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';

const KiB = 1024;
const CHUNK = 64 * KiB;

/** Bytes that compress a little (so members are not tiny) but not to nothing. */
function content(n: number): Buffer {
  const b = randomBytes(n);
  for (let i = 0; i < n; i += 2) b[i] = 0x61;
  return b;
}

/** A settable promise: `open()` lets everything waiting on `wait` through. */
function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

/** Serves one blob by ranges from memory; records requests; holds, fails or corrupts them on demand. */
class FakeSource implements ImageSource {
  readonly name = 'fake source';
  readonly location = undefined;
  readonly ranges: [number, number][] = [];
  /** While set, new Range requests wait for it. */
  hold: Promise<void> | undefined;
  failNext = 0;
  corrupt = false;
  /** The whole-blob stream: pieces are sent as the test lets them through (`step` resolves per piece). */
  stream: { step: () => Promise<void>; failAt?: number } | undefined;
  private readonly watchers: { n: number; wake(): void }[] = [];

  constructor(private readonly blob: Buffer) {}

  resolve(): never {
    throw new Error('not used');
  }

  async readBlobRange(_desc: Descriptor, start: number, end: number): Promise<Buffer> {
    this.ranges.push([start, end]);
    for (const w of this.watchers.filter((x) => this.ranges.length >= x.n)) w.wake();
    await this.hold;
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error('registry fault');
    }
    const out = Buffer.from(this.blob.subarray(start, end));
    if (this.corrupt) out[out.length >> 1] = out[out.length >> 1]! ^ 0xff;
    return out;
  }

  blobStream(_desc: Descriptor, range?: { start: number; end: number }): Readable {
    const { start = 0, end = this.blob.length } = range ?? {};
    const blob = this.blob;
    const stream = this.stream;
    return Readable.from((async function* () {
      for (let at = start; at < end; at += 16 * KiB) {
        await stream?.step();
        if (stream?.failAt !== undefined && at >= stream.failAt) throw new Error('connection reset');
        yield blob.subarray(at, Math.min(end, at + 16 * KiB));
      }
    })());
  }

  /** Resolves once `n` Range requests have been made in all. */
  requested(n: number): Promise<void> {
    if (this.ranges.length >= n) return Promise.resolve();
    return new Promise((wake) => this.watchers.push({ n, wake }));
  }
}

describe('the fetch scheduler', () => {
  let tmp: string;
  let pool: CodecPool;
  let blob: Buffer;
  let desc: Descriptor;
  const files = new Map<string, Buffer>();
  const stores: ChunkStore[] = [];

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-fetch-scheduler-'));
    pool = new CodecPool(2);
    const entries: FileSpec[] = [{ name: 'big', type: 'file', content: content(5 * CHUNK) }, { name: 'mid', type: 'file', content: content(2 * CHUNK - 100) }];
    for (let i = 0; i < 12; i++) entries.push({ name: `small/${i}`, type: 'file', content: content(1000 + 300 * i) });
    entries.push({ name: 'tail', type: 'file', content: content(3 * CHUNK) });
    for (const e of entries) files.set(e.name, e.content!);
    const tar = await tarOf(entries);
    const out = join(tmp, 'layer.estargz');
    const r = await convertLayer(async function* () {
      yield tar;
    }, out, 'test layer', { chunkSize: CHUNK, compressionLevel: 1, pool });
    blob = await readFile(out);
    desc = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: r.digest, size: r.size, annotations: { [TOC_DIGEST_ANNOTATION]: r.tocDigest } };
  });
  after(async () => {
    for (const s of stores) await s.close();
    await pool?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  /** A fresh layer (empty store, empty cache) over a fresh fake source; the tail read is left out of `ranges`. */
  async function open(opts: Partial<LazyLayerOptions> = {}): Promise<{ layer: LazyLayer; source: FakeSource; node(path: string): TocNode; store: ChunkStore }> {
    const source = new FakeSource(blob);
    const remote = await RemoteLayer.open(source, desc);
    source.ranges.length = 0;
    const store = await ChunkStore.open(await mkdtemp(join(tmp, 'store-')));
    stores.push(store);
    const layer = new LazyLayer(source, desc, remote.toc, remote.tail, store, pool, new ChunkCache(64 * 1024 * KiB), { ...DEFAULT_LAZY, ...opts });
    return { layer, source, store, node: (path) => remote.toc.nodes.get(path)! };
  }

  /** Reads `length` bytes at `offset` of `path` and checks them against the file's content. */
  async function check(layer: LazyLayer, node: TocNode, offset = 0, length = node.size): Promise<void> {
    const want = files.get(node.path)!.subarray(offset, offset + length);
    assert.ok((await layer.read(node, offset, length)).equals(want), `${node.path} [${offset}, +${length})`);
  }

  it('returns the right bytes for every read: whole files, across chunk boundaries, past the end, empty', async () => {
    const { layer, node } = await open();
    for (const path of files.keys()) await check(layer, node(path));
    const big = node('big');
    for (const [offset, length] of [[CHUNK - 1, 2], [CHUNK - 10, 2 * CHUNK + 20], [3, 5], [5 * CHUNK - 7, 100], [0, 1]] as const) await check(layer, big, offset, length);
    assert.equal((await layer.read(big, big.size, 10)).length, 0);
    assert.ok(big.chunks.length === 5, `${big.chunks.length} chunks`);
    assert.equal(layer.stats.errors, 0);
  });

  it('coalesces: chunks asked for together go in one request, a chunk asked for twice is fetched once', async () => {
    const { layer, source, node } = await open({ readAheadChunks: 0, crossFileWindow: [0, 0] });
    const big = node('big');
    await Promise.all([0, 1, 2, 3, 4].map((i) => check(layer, big, i * CHUNK, CHUNK)));
    assert.deepEqual(source.ranges, [[big.chunks[0]!.offset, big.chunks[4]!.compressedEnd]]);
    source.ranges.length = 0;
    const mid = node('mid');
    await Promise.all([check(layer, mid, 0, 10), check(layer, mid, 5, 100), check(layer, mid, 0, CHUNK + 1)]);
    assert.deepEqual(source.ranges, [[mid.chunks[0]!.offset, mid.chunks[1]!.compressedEnd]]);
  });

  it('brings the small files after a small one in the same request (cross-file read-ahead)', async () => {
    const { layer, source, node } = await open();
    await check(layer, node('small/0'));
    assert.equal(source.ranges.length, 1);
    const [, end] = source.ranges[0]!;
    assert.ok(end >= node('small/3').chunks[0]!.compressedEnd, 'the next small files came with it');
    for (let i = 1; i < 4; i++) await check(layer, node(`small/${i}`));
    assert.equal(source.ranges.length, 1, 'they were read without a request');
  });

  it('prefetches a batch in blob order in one request, no byte twice, each chunk stored', async () => {
    const { layer, source, node, store } = await open();
    const refs = [...files.keys()].flatMap((p) => node(p).chunks.map((_, index) => ({ file: node(p), index })));
    const report = await layer.prefetch(refs);
    assert.deepEqual({ ...report, error: undefined }, { fetched: refs.length, skipped: 0, failed: 0, error: undefined });
    assert.equal(source.ranges.length, 1, JSON.stringify(source.ranges));
    const sorted = [...source.ranges].sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < sorted.length; i++) assert.ok(sorted[i]![0] >= sorted[i - 1]![1], 'ranges overlap');
    const digests = refs.map((r) => r.file.chunks[r.index]!.chunkDigest!);
    assert.equal(store.missing(digests).size, 0);
    assert.deepEqual(await layer.prefetch(refs), { fetched: 0, skipped: refs.length, failed: 0 });
    for (const path of files.keys()) await check(layer, node(path));
    assert.equal(source.ranges.length, 1);
  });

  it('never queues a reader behind prefetch: with every prefetch slot held, readers are fetched at once', async () => {
    // One prefetch slot, one chunk per request: the prefetch queue stays long while its one request hangs.
    const { layer, source, node } = await open({ prefetchWorkers: 1, maxPrefetchRangeBytes: 1, maxRangeBytes: 1, roundTripBytes: 0, readAheadChunks: 0, crossFileWindow: [0, 0] });
    const held = gate();
    source.hold = held.wait;
    const big = node('big');
    const prefetched = layer.prefetch(big.chunks.map((_, index) => ({ file: big, index })));
    await source.requested(1);
    assert.equal(layer.prefetchQueued(), 4);
    source.hold = undefined;
    // A reader of another file, and a reader of a chunk queued for prefetch (it goes at the reader's priority).
    await check(layer, node('mid'));
    await check(layer, big, 3 * CHUNK, 10);
    assert.equal(layer.prefetchQueued(), 3);
    assert.deepEqual(source.ranges.slice(0, 1), [[big.chunks[0]!.offset, big.chunks[0]!.compressedEnd]], 'the prefetch request is still held');
    held.open();
    assert.equal((await prefetched).failed, 0);
    for (let i = 0; i < 5; i++) await check(layer, big, i * CHUNK, CHUNK);
  });

  it('sends a reader before read-ahead asked for earlier when both wait for a reader slot', async () => {
    const { layer, source, node } = await open({ maxInFlight: 1, maxRangeBytes: 1, crossFileWindow: [0, 0] });
    const held = gate();
    source.hold = held.wait;
    const big = node('big');
    // Chunk 0 for the reader, 1 to 4 queued as read-ahead behind it; then a reader of another file.
    const first = check(layer, big, 0, 10);
    await source.requested(1);
    const second = check(layer, node('small/5'));
    await new Promise((r) => setImmediate(r));
    source.hold = undefined;
    held.open();
    await Promise.all([first, second]);
    const small = node('small/5').chunks[0]!;
    assert.deepEqual(source.ranges[1], [small.offset, small.compressedEnd], 'the reader went before the read-ahead');
  });

  it('close() with requests in flight: queued chunks fail at once, those in flight settle with their bytes, nothing starts after', async () => {
    const { layer, source, node, store } = await open({ prefetchWorkers: 1, maxPrefetchRangeBytes: 1, roundTripBytes: 0, readAheadChunks: 0, crossFileWindow: [0, 0] });
    const held = gate();
    source.hold = held.wait;
    const big = node('big');
    const prefetched = layer.prefetch(big.chunks.map((_, index) => ({ file: big, index })));
    const reading = check(layer, node('mid'), 0, 10);
    await source.requested(2);
    layer.close();
    assert.equal(layer.prefetchQueued(), 0);
    await assert.rejects(layer.read(node('tail'), 0, 10), MountError);
    held.open();
    await reading;
    const report = await prefetched;
    assert.equal(report.fetched, 1);
    assert.equal(report.failed, 4);
    assert.ok(report.error instanceof MountError);
    assert.equal(source.ranges.length, 2, 'no request after close');
    assert.equal(store.missing([big.chunks[0]!.chunkDigest!]).size, 0, 'the chunk in flight was stored');
  });

  it('serves readers from a layer held whole as it arrives, with no request of their own', async () => {
    const { layer, source, node } = await open();
    // Pieces come one at a time, each when the test lets it, until the reader has its bytes.
    const steps: (() => void)[] = [];
    let free = false;
    source.stream = { step: () => (free ? Promise.resolve() : new Promise<void>((go) => steps.push(go))) };
    const holding = layer.holdWholeBlob(60_000);
    let done = false;
    const reading = check(layer, node('big'), CHUNK, 2 * CHUNK).then(() => (done = true));
    while (!done) {
      const go = steps.shift();
      if (go) go();
      await new Promise((r) => setImmediate(r));
    }
    await reading;
    assert.deepEqual(source.ranges, [], 'the reader waited for its bytes rather than asking for them');
    free = true;
    steps.splice(0).forEach((go) => go());
    assert.equal(await holding, true);
    for (const path of files.keys()) await check(layer, node(path));
    assert.deepEqual(source.ranges, []);
    layer.close();
  });

  it('a whole-blob download that breaks off wakes its waiters, who fetch their bytes by range', async () => {
    const { layer, source, node } = await open();
    const tail = node('tail');
    source.stream = { step: () => Promise.resolve(), failAt: 32 * KiB };
    const [holding] = await Promise.all([layer.holdWholeBlob(60_000), check(layer, tail)]);
    assert.equal(holding, false);
    assert.ok(source.ranges.length >= 1, 'the reader fetched its bytes');
    await check(layer, node('small/0'));
    layer.close();
  });

  it('answers a registry fault or corrupt bytes with an error, never wrong bytes, and fetches again next time', async () => {
    const { layer, source, node } = await open({ readAheadChunks: 0, crossFileWindow: [0, 0] });
    const mid = node('mid');
    source.failNext = 1;
    await assert.rejects(layer.read(mid, 0, 10), /registry fault/);
    source.corrupt = true;
    await assert.rejects(layer.read(mid, 0, 10));
    source.corrupt = false;
    await check(layer, mid);
    assert.equal(layer.stats.errors >= 2, true);
  });
});

describe('ingest through the scheduler', () => {
  let tmp: string;
  let pool: CodecPool;
  let layout: string;
  const platform = { os: 'linux', architecture: 'amd64' };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-fetch-ingest-'));
    pool = new CodecPool(2);
    const entries: FileSpec[] = [{ name: 'a', type: 'file', content: content(3 * CHUNK) }];
    for (let i = 0; i < 8; i++) entries.push({ name: `f${i}`, type: 'file', content: content(2000 + i) });
    await writeOciImage(join(tmp, 'plain'), 'v1', [{ tar: await tarOf(entries), compression: 'gzip' }]);
    layout = `oci:${join(tmp, 'esgz')}:v1`;
    await convertImage(new OciLayout(`oci:${join(tmp, 'plain')}:v1`), new OciLayout(layout), { platform, chunkSize: CHUNK, compressionLevel: 1, pool });
  });
  after(async () => {
    await pool?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  /** The layout, its Range requests counted; after the first `okRequests` (the TOC's), they fail. */
  function counted(okRequests = Infinity): ImageSource & { ranges: number } {
    const image = new OciLayout(layout);
    const source = {
      name: image.name, location: undefined, ranges: 0,
      resolve: (p: typeof platform) => image.resolve(p),
      blobStream: (d: Descriptor, r?: { start: number; end: number }) => image.blobStream(d, r),
      readBlobRange: async (d: Descriptor, start: number, end: number): Promise<Buffer> => {
        if (++source.ranges > okRequests) throw new Error('registry fault');
        return image.readBlobRange(d, start, end);
      },
    };
    return source;
  }

  it('fetches every missing chunk in one request per run, stores each once, and skips them the second time', async () => {
    const store = await ChunkStore.open(await mkdtemp(join(tmp, 'store-')));
    try {
      const first = await ingestImage(counted(), store, pool, { platform });
      assert.equal(first.fetched, first.chunks);
      assert.equal(first.alreadyStored, 0);
      assert.equal(first.layers[0]!.requests, 1, 'neighbouring chunks in one request');
      assert.ok(first.bytesStored > 3 * CHUNK);
      const again = await ingestImage(counted(), store, pool, { platform });
      assert.deepEqual([again.fetched, again.alreadyStored, again.bytesFetched, again.bytesStored], [0, first.chunks, 0, 0]);
    } finally {
      await store.close();
    }
  });

  it('stops at the first failure: no request after it, the error is the registry\'s', async () => {
    const store = await ChunkStore.open(await mkdtemp(join(tmp, 'store-')));
    try {
      const source = counted(1);
      await assert.rejects(ingestImage(source, store, pool, { platform, fetch: { maxRangeBytes: 1, concurrency: 1 } }), /registry fault/);
      assert.equal(source.ranges, 2, 'the TOC, then one chunk request that failed');
    } finally {
      await store.close();
    }
  });
});
