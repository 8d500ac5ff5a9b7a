// The chunk store: ingest through a byte-counting registry proxy, dedup across images, gc,
// concurrent users of one root, faults, and refusal of bad chunks and bad layers.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { CodecPool } from '../src/codec/codec-pool.js';
import { ChunkDigestMismatchError } from '../src/errors.js';
import { parseFooter } from '../src/estargz/footer.js';
import { ingestImage } from '../src/fetch/ingest.js';
import { OciLayout } from '../src/image/oci-layout.js';
import { ChunkStore, type StoreStats } from '../src/store/chunk-store.js';
import { alignUp } from '../src/store/pack-files.js';
import { dedupctl, dedupctlJson } from './fixtures/cli.js';
import { busyboxEntries, pushOci, sha256, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { startProxy, type TestProxy } from './fixtures/proxy.js';
import { forgeChunkDigest } from './fixtures/tamper.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';

const AMD64 = { os: 'linux', architecture: 'amd64' };
const MiB = 1024 * 1024;

/** The index's stored chunks that have a place in a pack, the blocks those places take, and the blocks the packs take on disk. */
async function packed(root: string): Promise<{ chunks: number; liveBytes: number; diskBytes: number }> {
  const db = new Database(join(root, 'index.db'), { readonly: true });
  try {
    const rows = db.prepare('SELECT size FROM chunks WHERE present = 1 AND pack IS NOT NULL').all() as { size: number }[];
    let diskBytes = 0;
    for (const p of await readdir(join(root, 'chunks', 'packs')).catch(() => [] as string[])) diskBytes += (await stat(join(root, 'chunks', 'packs', p))).blocks * 512;
    return { chunks: rows.length, liveBytes: rows.reduce((n, r) => n + alignUp(r.size), 0), diskBytes };
  } finally {
    db.close();
  }
}

describe('chunk store', () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let root: string;
  let shared: Buffer;
  const images: Record<string, string> = {};

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-store-test-'));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host);
    root = join(tmp, 'root');
    // Two images on one base layer; their top layers also hold the same 6 MiB file.
    shared = randomBytes(6 * MiB);
    const base = await tarOf([...(await busyboxEntries()), { name: 'base/', type: 'directory' }, { name: 'base/blob', type: 'file', content: randomBytes(8 * MiB) }]);
    const topA: FileSpec[] = [{ name: 'app/', type: 'directory' }, { name: 'app/shared', type: 'file', content: shared }, { name: 'app/a', type: 'file', content: randomBytes(2 * MiB) }];
    const topB: FileSpec[] = [{ name: 'app/', type: 'directory' }, { name: 'app/shared', type: 'file', content: shared }, { name: 'app/b', type: 'file', content: randomBytes(3 * MiB) }];
    for (const [name, top] of [['a', topA], ['b', topB]] as const) {
      await writeOciImage(join(tmp, `layout-${name}`), name, [{ tar: base, compression: 'gzip' }, { tar: await tarOf(top), compression: 'gzip' }]);
      await pushOci(join(tmp, `layout-${name}`), name, `${registry.host}/src/${name}:1`);
      images[name] = `${proxy.host}/lazy/${name}:1`;
      await dedupctlJson(['convert', '--plain-http', '--chunk-size', '1M', `${registry.host}/src/${name}:1`, `${registry.host}/lazy/${name}:1`]);
    }
  });

  after(async () => {
    await proxy?.stop();
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('stores and downloads the chunks two images share once; stats show it', async () => {
    proxy!.reset();
    const a = await dedupctlJson<{ fetched: number; bytesFetched: number }>(['store', 'ingest', '--root', root, '--plain-http', images.a!]);
    const bytesA = proxy!.stats.blobBytes;
    assert.ok(a.fetched > 0);
    const afterA = await dedupctlJson<StoreStats>(['stats', '--root', root]);
    proxy!.reset();
    const b = await dedupctlJson<{ fetched: number; alreadyStored: number; bytesFetched: number }>(['store', 'ingest', '--root', root, '--plain-http', images.b!]);
    const bytesB = proxy!.stats.blobBytes;
    // B's base layer and the shared file's chunks are in the store: only app/b (3 MiB) is fetched.
    assert.ok(b.alreadyStored >= 8 + 6, `shared chunks were not fetched again (${b.alreadyStored})`);
    assert.ok(bytesB < 4 * MiB, `image b fetched ${bytesB} bytes: app/b (3 MiB) and two TOCs`);
    assert.ok(bytesA > 16 * MiB, `image a fetched ${bytesA} bytes`);
    const st = await dedupctlJson<StoreStats>(['stats', '--root', root]);
    assert.equal(st.images, 2);
    assert.equal(st.layers, 3, 'one shared base layer and two top layers');
    assert.equal(st.chunksMissing, 0);
    assert.ok(st.sharedChunks >= 6, `the shared file's chunks have ref_count 2 (${st.sharedChunks})`);
    assert.ok(st.sharedBytes >= 6 * MiB);
    assert.ok(st.storedBytes - afterA.storedBytes < 3.2 * MiB, 'b added only its own bytes');
    assert.ok(st.logicalBytes > st.storedBytes && st.dedupRatio > 1);
    const text = await dedupctl(['stats', '--root', root]);
    assert.match(text.stdout, /dedup ratio\s+\d\.\d\dx/);
    assert.match(text.stdout, /shared chunks\s+\d+ with ref_count > 1/);
    // Ingesting again fetches no chunk: only the config and the two layers' TOCs (a 64 KiB tail read each).
    proxy!.reset();
    const again = await dedupctlJson<{ fetched: number }>(['store', 'ingest', '--root', root, '--plain-http', images.a!]);
    assert.equal(again.fetched, 0);
    assert.ok(proxy!.stats.blobBytes <= 2 * 64 * 1024 + 4096, `a second ingest read ${proxy!.stats.blobBytes} blob bytes`);
  });

  it('gc frees what no image uses and keeps what another image still uses', async () => {
    const before = await dedupctlJson<StoreStats>(['stats', '--root', root]);
    await dedupctlJson(['store', 'rm', '--root', root, images.a!]);
    const gc = await dedupctlJson<{ layersRemoved: number; chunksRemoved: number; bytesFreed: number }>(['gc', '--root', root]);
    assert.equal(gc.layersRemoved, 1, "a's top layer");
    assert.equal(gc.chunksRemoved, 2, 'app/a: two 1 MiB chunks');
    const after = await dedupctlJson<StoreStats>(['stats', '--root', root]);
    assert.equal(after.storedBytes, before.storedBytes - gc.bytesFreed);
    assert.equal(after.sharedChunks, 0, 'the shared file is now used by b alone');
    const p = await packed(root);
    assert.equal(p.chunks, after.chunks, 'every stored chunk has its place in a pack');
    assert.equal(p.diskBytes, p.liveBytes, 'the packs hold on disk exactly the live chunks\' blocks (the rest punched out)');
    const missing = await dedupctl(['store', 'rm', '--root', root, 'no/such:image']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /image "no\/such:image" in the store not found/);
  });

  it('a root of the first layout (one file per chunk) keeps working: its chunks are read, new ones go to packs', async () => {
    const oldRoot = join(tmp, 'root-first-layout');
    const data = randomBytes(5000);
    const digest = sha256(data);
    const hex = digest.slice(7);
    await mkdir(join(oldRoot, 'chunks', 'sha256', hex.slice(0, 2)), { recursive: true });
    await writeFile(join(oldRoot, 'chunks', 'sha256', hex.slice(0, 2), hex), data);
    const db = new Database(join(oldRoot, 'index.db'));
    db.exec(`CREATE TABLE chunks (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, ref_count INTEGER NOT NULL DEFAULT 0, present INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL, stored_at INTEGER);
      CREATE TABLE layers (digest TEXT PRIMARY KEY, toc_digest TEXT NOT NULL, compressed_size INTEGER NOT NULL, uncompressed_size INTEGER NOT NULL, chunk_count INTEGER NOT NULL, created_at INTEGER NOT NULL);
      CREATE TABLE layer_chunks (layer_digest TEXT NOT NULL, seq INTEGER NOT NULL, chunk_digest TEXT NOT NULL, PRIMARY KEY (layer_digest, seq));
      CREATE TABLE images (ref TEXT PRIMARY KEY, manifest_digest TEXT NOT NULL, created_at INTEGER NOT NULL);
      CREATE TABLE image_layers (ref TEXT NOT NULL, idx INTEGER NOT NULL, layer_digest TEXT NOT NULL, PRIMARY KEY (ref, idx));
      PRAGMA user_version = 1;`);
    db.prepare('INSERT INTO chunks (digest, size, ref_count, present, created_at) VALUES (?, ?, 0, 1, 0)').run(digest, data.length);
    db.close();
    const store = await ChunkStore.open(oldRoot);
    const pool = new CodecPool(1);
    try {
      assert.equal(store.missing([digest]).size, 0);
      assert.deepEqual(await store.get(digest, data.length, pool), data, 'read from its file');
      const fresh = randomBytes(6000);
      assert.equal(await store.put(sha256(fresh), fresh), true);
      assert.deepEqual(await store.get(sha256(fresh), fresh.length, pool), fresh, 'read from a pack');
      await store.flush();
      assert.equal((await readdir(join(oldRoot, 'chunks', 'packs'))).length, 1);
    } finally {
      await pool.close();
      await store.close();
    }
  });

  it('places many stored chunks at once for an image: the packs read in runs, each chunk verified, a rotten one or a lost pack\'s left out and forgotten', async () => {
    const manyRoot = join(tmp, 'root-place-many');
    const chunks = [randomBytes(5000), randomBytes(100), randomBytes(3 * MiB), randomBytes(20_000), randomBytes(7)];
    const absent = randomBytes(64);
    let store = await ChunkStore.open(manyRoot);
    const pool = new CodecPool(1);
    try {
      for (const c of chunks) await store.put(sha256(c), c);
      const wanted = [...chunks, absent, chunks[1]!].map((c) => ({ digest: sha256(c), size: c.length }));
      const places = await store.placeStoredMany(wanted, pool);
      assert.deepEqual([...places.keys()].sort(), chunks.map((c) => sha256(c)).sort(), 'every stored chunk once; the absent one not');
      for (const c of chunks) {
        const at = places.get(sha256(c))!;
        const fh = await readFile(store.packPath(at.pack));
        assert.ok(fh.subarray(at.offset, at.offset + c.length).equals(c), 'each place holds its chunk');
      }
      // One rots in its pack; a later process finds it out and leaves it to be fetched again.
      const rotten = places.get(sha256(chunks[3]!))!;
      const pack = await readFile(store.packPath(rotten.pack));
      pack[rotten.offset + 10]! ^= 0xff;
      await writeFile(store.packPath(rotten.pack), pack);
      await store.close();
      store = await ChunkStore.open(manyRoot);
      const again = await store.placeStoredMany(wanted, pool);
      assert.deepEqual([...again.keys()].sort(), chunks.filter((_, i) => i !== 3).map((c) => sha256(c)).sort());
      assert.deepEqual(again.get(sha256(chunks[2]!)), places.get(sha256(chunks[2]!)), 'the others where they were');
      assert.ok(store.missing([sha256(chunks[3]!)]).has(sha256(chunks[3]!)), 'the rotten chunk no longer counts as stored');
      // A pack gone from under the index: its chunks are not stored any more, and nothing fails.
      await store.close();
      await rm(store.packPath(rotten.pack));
      store = await ChunkStore.open(manyRoot);
      assert.equal((await store.placeStoredMany(wanted, pool)).size, 0);
      assert.equal(store.missing(chunks.map((c) => sha256(c))).size, chunks.length);
    } finally {
      await pool.close();
      await store.close();
    }
  });

  it('places no stored chunk a crash cut short in its pack, even one whose missing bytes are zeros', async () => {
    const shortRoot = join(tmp, 'root-place-short');
    const whole = randomBytes(9000);
    const zeroTail = Buffer.concat([randomBytes(3000), Buffer.alloc(5000)]);
    let store = await ChunkStore.open(shortRoot);
    const pool = new CodecPool(1);
    try {
      for (const c of [whole, zeroTail]) await store.put(sha256(c), c);
      const wanted = [whole, zeroTail].map((c) => ({ digest: sha256(c), size: c.length }));
      const at = (await store.placeStoredMany(wanted, pool)).get(sha256(zeroTail))!;
      await store.close();
      // The last chunk of the pack loses its zeros, as a crash before the pages reached the disk would leave it.
      await truncate(store.packPath(at.pack), at.offset + 3000);
      store = await ChunkStore.open(shortRoot);
      const places = await store.placeStoredMany(wanted, pool);
      assert.deepEqual([...places.keys()], [sha256(whole)]);
      assert.ok(store.missing([sha256(zeroTail)]).has(sha256(zeroTail)));
    } finally {
      await pool.close();
      await store.close();
    }
  });

  it('two processes ingesting into one root at once both succeed', async () => {
    const shared2 = join(tmp, 'root-concurrent');
    const [x, y] = await Promise.all([
      dedupctl(['store', 'ingest', '--root', shared2, '--plain-http', images.a!, '--json']),
      dedupctl(['store', 'ingest', '--root', shared2, '--plain-http', images.b!, '--json']),
    ]);
    assert.equal(x.code, 0, x.stderr);
    assert.equal(y.code, 0, y.stderr);
    const st = await dedupctlJson<StoreStats>(['stats', '--root', shared2]);
    assert.equal(st.images, 2);
    assert.equal(st.chunksMissing, 0);
    assert.equal((await packed(shared2)).chunks, st.chunks);
  });

  it('ingests through a registry that fails requests and resets connections', async () => {
    const flaky = await startProxy(registry!.host, { fault: (_r, n) => (n % 4 === 0 ? '500' : n % 7 === 0 ? 'reset' : 'ok') });
    try {
      const r = await dedupctlJson<{ fetched: number }>(['store', 'ingest', '--root', join(tmp, 'root-flaky'), '--plain-http', `${flaky.host}/lazy/a:1`]);
      assert.ok(r.fetched > 0);
      assert.ok(flaky.stats.faults > 0);
    } finally {
      await flaky.stop();
    }
  });

  it('takes registry credentials from -u and from DOCKER_CONFIG', async () => {
    const locked = await startProxy(registry!.host, { bearer: { username: 'bob', password: 'pw' } });
    try {
      const ref = `${locked.host}/lazy/a:1`;
      const none = await dedupctl(['toc', '--plain-http', ref], { env: { ...process.env, DOCKER_CONFIG: join(tmp, 'no-docker-config') } });
      assert.equal(none.code, 1);
      assert.match(none.stderr, /refused scope "repository:lazy\/a:pull" with HTTP 401 \(no credentials configured\) \[ERR_REGISTRY_AUTH\]/);
      const flag = await dedupctl(['toc', '--plain-http', '-u', 'bob:pw', ref]);
      assert.equal(flag.code, 0, flag.stderr);
      const dir = join(tmp, 'docker-config');
      await import('node:fs/promises').then((fs) => fs.mkdir(dir, { recursive: true }));
      await writeFile(join(dir, 'config.json'), JSON.stringify({ auths: { [locked.host]: { username: 'bob', password: 'pw' } } }));
      const cfg = await dedupctl(['store', 'ingest', '--root', join(tmp, 'root-auth'), '--plain-http', ref], { env: { ...process.env, DOCKER_CONFIG: dir } });
      assert.equal(cfg.code, 0, cfg.stderr);
    } finally {
      await locked.stop();
    }
  });

  it('refuses a chunk whose bytes do not match its digest, naming it, and stores nothing for it', async () => {
    // A copy of image a whose TOC names a wrong digest for app/a's first chunk.
    const layout = join(tmp, 'tampered');
    await dedupctlJson(['convert', '--plain-http', `${registry!.host}/lazy/a:1`, `oci:${layout}:t`]);
    const forged = await forgeChunkDigest(`oci:${layout}:t`, 1, 'app/a');
    const img = new OciLayout(`oci:${layout}:t`);

    const tamperedRoot = join(tmp, 'root-tampered');
    const store = await ChunkStore.open(tamperedRoot);
    const pool = new CodecPool(1);
    try {
      await assert.rejects(ingestImage(img, store, pool, { platform: AMD64 }),
        (err: unknown) => err instanceof ChunkDigestMismatchError && err.chunk === forged && err.message.includes('"app/a"'));
      assert.equal(store.missing([forged]).has(forged), true, 'nothing stored under the forged digest');
      assert.deepEqual(await readdir(join(tamperedRoot, 'chunks', 'tmp')), [], 'no temp files left');
      await assert.rejects(store.put(forged, Buffer.from('x')), ChunkDigestMismatchError);
    } finally {
      await pool.close();
      await store.close();
    }
    const cli = await dedupctl(['store', 'ingest', '--root', tamperedRoot, `oci:${layout}:t`]);
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, new RegExp(`chunk ${forged} \\("app/a" at \\d+ in layer sha256:[0-9a-f]{64}\\) has digest sha256:[0-9a-f]{64}; refusing to store it`));
  });

  it('rejects bad layers (truncated blob, bad footer, bad TOC, not eStargz) and records nothing', async () => {
    const plain = join(tmp, 'plain');
    await writeOciImage(plain, 'p', [{ tar: await tarOf([{ name: 'f', type: 'file', content: Buffer.from('x') }]), compression: 'gzip' }]);
    const badRoot = join(tmp, 'root-bad');
    const r1 = await dedupctl(['store', 'ingest', '--root', badRoot, `oci:${plain}:p`]);
    assert.equal(r1.code, 1);
    assert.match(r1.stderr, /no stargz footer at the end of the blob \(not an eStargz layer\?\)/);

    const layout = join(tmp, 'truncated');
    await dedupctlJson(['convert', `oci:${plain}:p`, `oci:${layout}:t`]);
    const img = new OciLayout(`oci:${layout}:t`);
    const desc = (await img.resolve(AMD64)).manifest.layers[0]!;
    const blob = await readFile(img.blobPath(desc.digest));
    await writeFile(img.blobPath(desc.digest), blob.subarray(0, blob.length - 20));
    const r2 = await dedupctl(['store', 'ingest', '--root', badRoot, `oci:${layout}:t`]);
    assert.equal(r2.code, 1);
    assert.match(r2.stderr, /malformed eStargz/);
    const footer = parseFooter(blob);
    const bad = Buffer.from(blob);
    bad.fill(0x41, footer.tocOffset + 20, footer.tocOffset + 40);
    await writeFile(img.blobPath(desc.digest), bad);
    const r3 = await dedupctl(['store', 'ingest', '--root', badRoot, `oci:${layout}:t`]);
    assert.equal(r3.code, 1);
    assert.match(r3.stderr, /malformed eStargz layer sha256:[0-9a-f]{64}: TOC: cannot be decompressed/);

    const st = await dedupctlJson<StoreStats>(['stats', '--root', badRoot]);
    assert.deepEqual([st.images, st.layers, st.chunks], [0, 0, 0], 'nothing half-recorded');
    assert.equal((await packed(badRoot)).diskBytes, 0, 'no chunk bytes left');
    for (const r of [r2, r3]) assert.match(r.stderr, /\[ERR_MALFORMED_ESTARGZ\]$/m, 'a typed error code');
  });
});
