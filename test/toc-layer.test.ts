// The EROFS image of a lazily pulled layer (src/kernel/toc-layer.ts): a TOC's tree over chunks
// in a real chunk store, mounted by the kernel. What each file's chunk size becomes, the files cut
// again where the TOC's chunks do not fit EROFS, the overlay form of whiteouts and opaque
// directories, hard links, and the refusal while a chunk is missing or rotten.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CodecPool } from '../src/codec/codec-pool.js';
import { parseToc } from '../src/estargz/toc-parser.js';
import { type TocEntryJson } from '../src/estargz/toc.js';
import { NotFoundError } from '../src/errors.js';
import { buildTocLayer, fileChunkSize, type StoredChunks } from '../src/kernel/toc-layer.js';
import { ChunkStore, type ChunkVerifier } from '../src/store/chunk-store.js';
import { erofsSkipReason, erofsWorkdir, walkInodes } from './fixtures/erofs.js';
import { mountErofs, unmount } from '../src/system-mounts.js';
import { sha256 } from './fixtures/images.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const verifier: ChunkVerifier = {
  async verify(data, expected) {
    assert.equal(sha256(Buffer.from(data)), expected);
    return Buffer.from(data);
  },
};

describe('fileChunkSize', () => {
  it('is the largest power of two dividing every chunk but the last; one chunk takes one index', () => {
    assert.equal(fileChunkSize([4 * MiB, 4 * MiB, 10]), 4 * MiB);
    assert.equal(fileChunkSize([3 * MiB, 3 * MiB, 5]), MiB);
    assert.equal(fileChunkSize([12 * KiB, 8 * KiB, 1]), 4 * KiB);
    assert.equal(fileChunkSize([100_000, 100_000, 7]), undefined);
    assert.equal(fileChunkSize([6000]), 8 * KiB);
    assert.equal(fileChunkSize([10]), 4 * KiB);
    assert.equal(fileChunkSize([5 * MiB]), 8 * MiB);
  });
});

describe('EROFS image of a lazy layer', { skip: erofsSkipReason() }, () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let store: ChunkStore;
  const pool = new CodecPool(1);
  const mounts: string[] = [];
  const files = new Map<string, Buffer>();
  const entries: TocEntryJson[] = [];
  let offset = 0;

  /** A regular file cut into chunks of `cuts` bytes (the last takes the rest), each stored. */
  const reg = async (name: string, data: Buffer, cuts: number, extra: Partial<TocEntryJson> = {}): Promise<void> => {
    files.set(name, data);
    for (let at = 0, i = 0; at < data.length || i === 0; at += cuts, i++) {
      const piece = data.subarray(at, Math.min(data.length, at + cuts));
      if (piece.length) await store.put(sha256(piece), piece);
      const chunk = { offset: (offset += 100), chunkOffset: at, chunkSize: piece.length, chunkDigest: piece.length ? sha256(piece) : undefined };
      entries.push(i === 0 ? { name, type: 'reg', size: data.length, mode: 0o644, modtime: '2024-01-02T03:04:05Z', ...chunk, ...extra } : { name, type: 'chunk', ...chunk });
      if (!data.length) break;
    }
  };
  const source = (): StoredChunks => ({
    placeStored: (d, size) => store.placeStored(d, size, verifier),
    placeStoredMany: (chunks) => store.placeStoredMany(chunks, verifier),
    storeChunk: (d, data) => store.placeForImage(d, data),
    packSize: async (p) => (await stat(store.packPath(p))).size,
  });
  const mountImage = async (image: Buffer, devices: string[], name: string): Promise<string> => {
    const path = join(dir, `${name}.erofs`);
    await writeFile(path, image);
    const mnt = join(dir, name);
    await mkdir(mnt);
    mountErofs(path, mnt, devices.map((p) => store.packPath(p)));
    mounts.push(mnt);
    return mnt;
  };

  before(async () => {
    ({ dir, cleanup } = await erofsWorkdir());
    store = await ChunkStore.open(join(dir, 'root'));
    entries.push({ name: './', type: 'dir', mode: 0o755, modtime: '2024-01-01T00:00:00Z' });
    await reg('big', randomBytes(9 * MiB + 3), 4 * MiB);
    await reg('odd-pow', randomBytes(7 * MiB), 3 * MiB);
    await reg('recut', randomBytes(250_003), 100_000); // no power of two from 4 KiB divides 100000
    await reg('small', Buffer.from('hello\n'), 4 * MiB, { uid: 1234, gid: 5678, mode: 0o4755, xattrs: { 'user.k': Buffer.from('v').toString('base64') } });
    await reg('empty', Buffer.alloc(0), 4 * MiB);
    entries.push(
      { name: 'hard', type: 'hardlink', linkName: 'small' },
      { name: 'link', type: 'symlink', linkName: '/small' },
      { name: 'null', type: 'char', devMajor: 1, devMinor: 3, mode: 0o666 },
      { name: 'pipe', type: 'fifo' },
      { name: 'opq/', type: 'dir' },
      { name: 'opq/.wh..wh..opq', type: 'reg', size: 0 },
      { name: 'opq/c', type: 'reg', size: 0 },
      { name: '.wh.gone', type: 'reg', size: 0 },
      { name: 'kept', type: 'reg', size: 0 },
      { name: '.wh.kept', type: 'reg', size: 0 }, // an entry wins over its own whiteout
    );
  });

  after(async () => {
    for (const m of mounts) await unmount(m).catch(() => undefined);
    await store?.close();
    await pool.close();
    await cleanup?.();
  });

  it('mounts with every file\'s bytes read from the stored chunks, and re-cuts only what does not fit', async () => {
    const toc = parseToc(Buffer.from(JSON.stringify({ version: 1, entries })), { tocOffset: offset + 100 });
    const built = await buildTocLayer(toc, 4 * MiB, source(), pool);
    assert.deepEqual(built.recut, { files: 1, bytes: 250_003 });
    await store.syncPacks();
    const mnt = await mountImage(built.image, built.devices, 'lazy');
    for (const [name, data] of files) assert.ok((await readFile(join(mnt, name))).equals(data), name);
    const seen = await walkInodes(mnt);
    assert.equal(seen.get('small')!.mode, 0o4755);
    assert.deepEqual([seen.get('small')!.uid, seen.get('small')!.gid], [1234, 5678]);
    assert.deepEqual(seen.get('small')!.xattrs, { 'user.k': Buffer.from('v').toString('hex') });
    assert.equal(seen.get('small')!.mtimeNs, BigInt(Date.parse('2024-01-02T03:04:05Z')) * 1_000_000n);
    assert.equal(seen.get('hard')!.ino, seen.get('small')!.ino);
    assert.equal(seen.get('hard')!.nlink, 2);
    assert.equal(seen.get('link')!.target, '/small');
    assert.deepEqual(seen.get('null')!.rdev, [1, 3]);
    assert.equal(seen.get('pipe')!.type, 'fifo');
    assert.equal(seen.get('opq')!.xattrs['trusted.overlay.opaque'], Buffer.from('y').toString('hex'));
    assert.deepEqual([...seen.keys()].filter((p) => p.startsWith('opq/')), ['opq/c']);
    assert.deepEqual(seen.get('gone'), { ...seen.get('gone')!, type: 'char', mode: 0, uid: 0, gid: 0, mtimeNs: 0n, rdev: [0, 0] });
    assert.equal(seen.get('kept')!.type, 'reg');
    // The chunks the image points at: the TOC's own where they fit (no copy), new ones for the re-cut file.
    const tocChunks = new Set(toc.nodes.get('big')!.chunks.map((c) => c.chunkDigest));
    assert.ok([...tocChunks].every((d) => built.chunks.some((c) => c.digest === d)));
    assert.ok(!built.chunks.some((c) => toc.nodes.get('recut')!.chunks.some((t) => t.chunkDigest === c.digest)));
  });

  it('is refused while a stored chunk has rotted in its pack, which the store then forgets', async () => {
    const data = randomBytes(6000);
    await store.put(sha256(data), data);
    const at = (await store.placeStoredMany([{ digest: sha256(data), size: data.length }], pool)).get(sha256(data))!;
    const fh = await open(store.packPath(at.pack), 'r+'); // one byte: other images point into this pack
    try {
      await fh.write(Buffer.from([data[100]! ^ 0xff]), 0, 1, at.offset + 100);
    } finally {
      await fh.close();
    }
    const toc = parseToc(Buffer.from(JSON.stringify({ version: 1, entries: [{ name: 'y', type: 'reg', size: 6000, offset: 10, chunkDigest: sha256(data) }] })), { tocOffset: 100 });
    // Verified by the codec pool, which names a mismatch (the test's verifier asserts).
    const checked = { ...source(), placeStored: (d: string, size: number) => store.placeStored(d, size, pool), placeStoredMany: (c: { digest: string; size: number }[]) => store.placeStoredMany(c, pool) };
    await assert.rejects(buildTocLayer(toc, 4 * MiB, checked, pool), (err: unknown) => err instanceof NotFoundError && err.message.includes(`chunk ${sha256(data)} of "y"`));
    assert.ok(store.missing([sha256(data)]).has(sha256(data)));
  });

  it('is refused while a chunk is missing, naming it', async () => {
    const data = randomBytes(5000);
    const toc = parseToc(Buffer.from(JSON.stringify({ version: 1, entries: [{ name: 'x', type: 'reg', size: 5000, offset: 10, chunkDigest: sha256(data) }] })), { tocOffset: 100 });
    await assert.rejects(buildTocLayer(toc, 4 * MiB, source(), pool), (err: unknown) => err instanceof NotFoundError && err.message.includes(`chunk ${sha256(data)} of "x"`));
  });
});
