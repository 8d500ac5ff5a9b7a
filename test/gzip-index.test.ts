// The gzip index on its own (no root): built from real gzip layers, every chunk it describes comes
// back, verified, from the compressed bytes between its checkpoints alone; a broken or foreign
// index is refused with the reason.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { MalformedGzipIndexError, MalformedLayerError } from '../src/errors.js';
import type { TocNode } from '../src/estargz/toc.js';
import { buildGzipIndex } from '../src/gzip-index/build.js';
import { decodeGzipIndex, encodeGzipIndex, WINDOW_BYTES } from '../src/gzip-index/format.js';
import { CodecPool } from '../src/codec/codec-pool.js';
import { ChunkCache } from '../src/fetch/chunk-cache.js';
import { LazyLayer } from '../src/fetch/lazy-layer.js';
import type { ImageSource } from '../src/image/source.js';
import { ChunkStore } from '../src/store/chunk-store.js';
import { inflateSpan } from '../src/codec/codec-worker.js';
import { findIndexes, readIndexBlob, type ImageIndexRecord } from '../src/convert/gzip-indexer.js';
import { RegistryImage } from '../src/image/registry-image.js';
import { RegistryClient } from '../src/registry/client.js';
import { dedupctl, dedupctlJson } from './fixtures/cli.js';
import { busyboxEntries, pushOci, richLayers, sha256, tarOf, writeOciImage } from './fixtures/images.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';

const MiB = 1024 * 1024;

async function* pieces(b: Buffer, size = 100_000): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

/** Text that compresses (long back-references across block boundaries) mixed with noise (stored blocks). */
function mixed(n: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0, got = 0; got < n; i++) {
    const p = i % 3 === 0 ? randomBytes(50_000) : Buffer.from(`line ${i} of a log that repeats itself\n`.repeat(2000));
    parts.push(p);
    got += p.length;
  }
  return Buffer.concat(parts).subarray(0, n);
}

async function layerOf(level: number): Promise<{ gz: Buffer; desc: { digest: string; size: number }; files: Map<string, Buffer> }> {
  const { base } = await richLayers(3 * MiB);
  const extra = [{ name: 'data/mixed', type: 'file' as const, content: mixed(9 * MiB) }];
  const tar = await tarOf([...base, ...extra]);
  const gz = gzipSync(tar, { level });
  const files = new Map<string, Buffer>();
  for (const e of [...base, ...extra]) if (e.type === 'file') files.set(e.name.replace(/^\.\//, ''), e.content ?? Buffer.alloc(0));
  return { gz, desc: { digest: sha256(gz), size: gz.length }, files };
}

/** Every file read back chunk by chunk from the compressed bytes each chunk's place names: its span up to its dataEnd, no further. */
function readBack(gz: Buffer, node: TocNode): Buffer {
  return Buffer.concat(node.chunks.map((c) => {
    assert.ok(c.dataEnd! <= c.compressedEnd);
    const [out] = inflateSpan({ member: gz.subarray(c.offset, c.dataEnd), window: c.window!, chunks: [{ innerOffset: c.innerOffset, chunkSize: c.chunkSize, expected: c.chunkDigest! }] }).chunks;
    if (typeof out === 'string') assert.fail(`${node.path} at ${c.chunkOffset}: ${out}`);
    return Buffer.from(out!);
  }));
}

describe('gzip index', () => {
  for (const level of [1, 6, 9]) {
    it(`describes a gzip -${level} layer so that every chunk inflates from its checkpoint and verifies`, async () => {
      const { gz, desc, files } = await layerOf(level);
      const index = await buildGzipIndex(pieces(gz), desc, { spacing: 1 * MiB, chunkSize: 1 * MiB });
      assert.ok(index.checkpoints.length >= 10, `${index.checkpoints.length} checkpoints for ${index.uncompressedSize} bytes`);
      for (const [i, cp] of index.checkpoints.entries()) {
        assert.equal(cp.window.length, Math.min(WINDOW_BYTES, cp.out));
        if (i > 0) assert.ok(cp.out - index.checkpoints[i - 1]!.out >= MiB);
      }
      // Marks (block ends of any kind) between the checkpoints, each at least 1/16 of the spacing after the one before.
      assert.ok(index.marks!.length >= 5 * index.checkpoints.length, `${index.marks!.length} marks, ${index.checkpoints.length} checkpoints`);
      const encoded = encodeGzipIndex(index);
      assert.ok(encoded.length < gz.length / 10, `index ${encoded.length} bytes for a ${gz.length}-byte layer`);
      const { toc } = decodeGzipIndex(encoded, desc, 'test index');
      for (const [name, content] of files) {
        const node = toc.nodes.get(name);
        assert.ok(node, name);
        assert.ok(readBack(gz, node).equals(content), name);
        if (content.length > MiB) assert.ok(node.chunks.length > 1 && node.chunks.every((c) => c.compressedEnd - c.offset < gz.length / 2), `${name}: chunks fetch parts`);
      }
      // What the TOC of an eStargz layer carries.
      assert.equal(toc.nodes.get('data/setuid')?.mode, 0o4755);
      assert.equal(toc.nodes.get('data/setuid')?.uid, 1234);
      assert.equal(toc.nodes.get('data/hard'), toc.nodes.get('data/small'));
      assert.equal(toc.nodes.get('data/null')?.devMinor, 3);
      assert.equal(toc.nodes.get('data/xattr')?.xattrs.get('user.foo')?.toString(), 'bar');
      assert.equal(toc.nodes.get('bin/abs')?.linkName, '/bin/busybox');
      // Most small files need their span only up to a mark after them, not to the next checkpoint.
      const small = [...toc.nodes.values()].filter((n) => n.type === 'reg' && n.size > 0 && n.size < 64 * 1024).map((n) => n.chunks[0]!);
      assert.ok(small.filter((c) => c.dataEnd! < c.compressedEnd).length > small.length / 2, `${small.filter((c) => c.dataEnd! < c.compressedEnd).length} of ${small.length}`);
    });
  }

  it('refuses an index for another layer, a tampered one, and one whose checkpoints are out of order', async () => {
    const tar = await tarOf(await busyboxEntries());
    const gz = gzipSync(tar);
    const desc = { digest: sha256(gz), size: gz.length };
    const index = await buildGzipIndex(pieces(gz), desc, { spacing: 64 * 1024, chunkSize: 64 * 1024 });
    const refused = (bytes: Buffer, d: { digest: string; size: number }, re: RegExp): void =>
      assert.throws(() => decodeGzipIndex(bytes, d, 'idx'), (err: unknown) => err instanceof MalformedGzipIndexError && re.test(err.message));
    refused(encodeGzipIndex(index), { digest: sha256(Buffer.from('other')), size: gz.length }, /is for layer sha256:/);
    refused(Buffer.from('not gzip'), desc, /not gzip-compressed JSON/);
    refused(encodeGzipIndex({ ...index, checkpoints: [...index.checkpoints].reverse() }), desc, /checkpoint|start of the stream/);
    refused(encodeGzipIndex({ ...index, checkpoints: index.checkpoints.map((c) => ({ ...c, window: c.window.subarray(1) })) }), desc, /window of/);
    refused(encodeGzipIndex({ ...index, marks: [{ in: 10, out: 100 }, { in: 5, out: 200 }] }), desc, /mark 1 is not after mark 0/);
    refused(encodeGzipIndex({ ...index, toc: { version: 1, entries: [{ name: '../escape', type: 'reg', size: 1, offset: 0 }] } }), desc, /escapes the layer root/);
  });

  it('refuses a stream that is not the layer: other bytes, two gzip members, truncated', async () => {
    const tar = await tarOf(await busyboxEntries());
    const gz = gzipSync(tar);
    const opts = { spacing: MiB, chunkSize: MiB };
    const refused = (p: Promise<unknown>, re: RegExp): Promise<void> => assert.rejects(p, (err: unknown) => err instanceof MalformedLayerError && re.test(err.message));
    await refused(buildGzipIndex(pieces(gz), { digest: sha256(Buffer.from('x')), size: gz.length }, opts), /not the layer/);
    const two = Buffer.concat([gz, gzipSync(Buffer.alloc(1024))]);
    await refused(buildGzipIndex(pieces(two), { digest: sha256(two), size: two.length }, opts), /more than one gzip member/);
    const cut = gz.subarray(0, gz.length - 100);
    await refused(buildGzipIndex(pieces(cut), { digest: sha256(cut), size: cut.length }, opts), /ends early|truncated/);
  });
});

describe('a gzip-indexed layer read lazily', () => {
  it('a replay of many chunks across checkpoints: neighbouring spans in one request each, no byte fetched twice, every chunk verified', async () => {
    const { gz, desc, files } = await layerOf(6);
    const index = await buildGzipIndex(pieces(gz), desc, { spacing: 256 * 1024, chunkSize: 256 * 1024 });
    const { toc } = decodeGzipIndex(encodeGzipIndex(index), desc, 'test index');
    const ranges: [number, number][] = [];
    const source = {
      name: 'in memory', location: undefined,
      resolve: () => assert.fail('not resolved'), blobStream: () => assert.fail('not streamed'),
      readBlobRange: async (_d: unknown, start: number, end: number): Promise<Buffer> => (ranges.push([start, end]), gz.subarray(start, end)),
    } as unknown as ImageSource;
    const dir = await mkdtemp(join(tmpdir(), 'dedup-gzip-span-test-'));
    const store = await ChunkStore.open(dir);
    const pool = new CodecPool(2);
    try {
      const layer = new LazyLayer(source, { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...desc }, toc, { start: desc.size, bytes: Buffer.alloc(0) },
        store, pool, new ChunkCache(64 * MiB));
      // A reader of a small file, the index at 4 MiB: its span only up to a mark past it and the
      // cross-file window (256 KiB at first), not to the next checkpoint.
      const wide = decodeGzipIndex(encodeGzipIndex(await buildGzipIndex(pieces(gz), desc, { spacing: 4 * MiB, chunkSize: 256 * 1024 })), desc, 'wide index').toc;
      const reader = new LazyLayer(source, { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...desc }, wide, { start: desc.size, bytes: Buffer.alloc(0) },
        store, pool, new ChunkCache(64 * MiB));
      const small = [...wide.nodes.values()].find((n) => n.type === 'reg' && n.size > 0 && n.size < 1024 && n.chunks[0]!.compressedEnd - n.chunks[0]!.dataEnd! > 512 * 1024)!;
      assert.ok((await reader.read(small, 0, small.size)).equals(files.get(small.path)!), small.path);
      const [c] = small.chunks;
      assert.deepEqual(ranges, [[c!.offset, Math.max(c!.dataEnd!, Math.min(c!.compressedEnd, c!.offset + 256 * 1024))]]);
      assert.ok(ranges[0]![1] < c!.compressedEnd - 256 * 1024);
      ranges.length = 0;
      // Every chunk, in an order of their own (as a trace's, the order of first reads): by digest.
      const refs = [...new Set(toc.nodes.values())].filter((n) => n.type === 'reg').flatMap((file) => file.chunks.map((_, index) => ({ file, index })))
        .sort((a, b) => a.file.chunks[a.index]!.chunkDigest!.localeCompare(b.file.chunks[b.index]!.chunkDigest!));
      const spans = new Set(refs.map((r) => r.file.chunks[r.index]!.offset)).size;
      const report = await layer.prefetch(refs);
      assert.equal(report.failed, 0);
      assert.ok(report.fetched > 20, `${report.fetched} chunks`);
      assert.ok(ranges.length * 4 <= spans, `${ranges.length} requests for ${spans} spans`);
      const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < sorted.length; i++) assert.ok(sorted[i]![0] >= sorted[i - 1]![1], `ranges ${JSON.stringify(sorted[i - 1])} and ${JSON.stringify(sorted[i])} overlap`);
      for (const [name, content] of files) {
        const node = toc.nodes.get(name)!;
        assert.ok((await layer.read(node, 0, node.size)).equals(content), name);
      }
      assert.equal(layer.stats.fromStore + layer.stats.chunksFetched >= report.fetched, true);
    } finally {
      await pool.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('dedupctl index', () => {
  let tmp: string;
  let registry: TestRegistry;
  let image: string;
  let layers: { digest: string; size: number }[];
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'gzip-index-'));
    registry = await startRegistry(tmp);
    const { base, upper } = await richLayers(2 * MiB);
    await writeOciImage(join(tmp, 'src'), 'v1', [{ tar: await tarOf(base), compression: 'gzip' }, { tar: await tarOf(upper), compression: 'gzip' }]);
    image = `${registry.host}/plain/app:v1`;
    await pushOci(join(tmp, 'src'), 'v1', image);
    const client = new RegistryClient({ plainHttp: true });
    layers = (await new RegistryImage(client, image).resolve({ os: 'linux', architecture: 'amd64' })).manifest.layers;
    await client.close();
  });
  after(async () => {
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('creates the indexes of an image, pushes them as an artifact about it, lists, shows and removes them', async () => {
    const root = join(tmp, 'root');
    const created = await dedupctlJson<ImageIndexRecord & { seconds: number; pushed: { tag: string } }>(
      ['index', 'create', '--plain-http', '--root', root, '--push', '--spacing', '256K', image]);
    assert.deepEqual(created.layers.map((l) => l.layer), layers.map((l) => l.digest), 'every layer, in order');
    assert.ok(created.layers[0]!.checkpoints > 4);
    assert.match(created.pushed.tag, /^sha256-[0-9a-f]{64}\.dedup-gzip-index$/);
    const text = await dedupctl(['index', 'ls', '--root', root]);
    assert.match(text.stdout, new RegExp(`${image}  ${created.manifestDigest}  2 layers indexed`));
    assert.equal((await dedupctlJson<ImageIndexRecord[]>(['index', 'show', '--root', root, created.manifestDigest]))[0]!.layers.length, 2);

    // The registry has no referrers API: the artifact is found under its tag, and each blob is the index of its layer.
    const client = new RegistryClient({ plainHttp: true });
    try {
      const reg = new RegistryImage(client, image);
      const found = await findIndexes(client, reg, created);
      assert.equal(found?.via, 'tag');
      for (const [i, blob] of found!.manifest.layers.entries()) {
        assert.equal(blob.annotations?.['dev.dedup-snapshotter.gzip-index.layer'], layers[i]!.digest);
        const pulled = await client.getBlob(reg.ref, blob.digest);
        assert.ok(pulled.equals(await readIndexBlob(root, created.layers[i]!.index)));
        decodeGzipIndex(pulled, layers[i]!, `index of layer ${i}`);
      }
    } finally {
      await client.close();
    }

    await dedupctlJson(['index', 'rm', '--root', root, image]);
    assert.deepEqual(await dedupctlJson(['index', 'ls', '--root', root]), []);
    assert.deepEqual(await readdir(join(root, 'indexes', 'blobs', 'sha256')), [], 'blobs of removed indexes are deleted');
    const missing = await dedupctl(['index', 'show', '--root', root, image]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /gzip index of .* not found|not found.*gzip index/);
  });

  it('skips eStargz layers, refuses --push for an OCI layout and a spacing out of range', async () => {
    const root = join(tmp, 'root2');
    const esgz = `${registry.host}/plain/app:esgz`;
    await dedupctlJson(['convert', '--plain-http', image, esgz]);
    const r = await dedupctlJson<ImageIndexRecord>(['index', 'create', '--plain-http', '--root', root, esgz]);
    assert.equal(r.layers.length, 0);
    assert.match(r.skipped[0]!.reason, /eStargz/);
    const layout = await dedupctl(['index', 'create', '--root', root, '--push', `oci:${join(tmp, 'src')}:v1`]);
    assert.equal(layout.code, 1);
    assert.match(layout.stderr, /--push needs a registry image/);
    const spacing = await dedupctl(['index', 'create', '--root', root, '--spacing', '1K', `oci:${join(tmp, 'src')}:v1`]);
    assert.equal(spacing.code, 1);
    assert.match(spacing.stderr, /--spacing 1024/);
  });
});
