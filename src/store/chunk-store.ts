// The content-addressed chunk store (the seeds' DedupStore): each distinct chunk, keyed by the
// sha256 of its uncompressed bytes, is stored once, however many layers and images use it, at a
// 4 KiB-aligned offset of a pack file (chunks/packs/, pack-files.ts) where an EROFS image can point
// at it; chunk files of the first layout (chunks/sha256/<2 hex>/<hex>) are still read. index.db
// records chunks (and where they are), layers, images and their references.
//
// Invariants: a chunk is verified before it is stored and on every read through here; pack
// writes are not synced for the lazy path (a chunk a crash tore fails that check and is fetched
// again), but are before an EROFS image, which the kernel reads unchecked, points at them (the
// image's layer records the places it uses, and gc never frees those). The index may lag the
// packs after a crash, a concurrent gc, or while the presence changes wait in the index writer's
// queue, so a chunk not found means "not present", never an error. Nothing on the path of a read
// runs SQL (past the layer's one query at mount) or hashes on the calling thread.

import { mkdir, open, readdir, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { ChunkDigestMismatchError, InvalidArgumentError, NotFoundError, StoreError } from '../errors.js';
import { openIndexDb, placesAmong, type ChunkPlace, type LayerRecord, type StoreStats } from './index-db.js';
import { listPacks, PackReader, PackWriter, packsDir, packWriterAlive, punchGaps, readPieces, type PackLocation } from './pack-files.js';
import { IndexWriter } from './index-writer.js';
import { SHA256_DIGEST, sha256Digest } from '../digest.js';
import { eachLimited } from '../each-limited.js';

export type { LayerRecord, StoreStats } from './index-db.js';

/** A temp file older than this belongs to a writer that died. */
const STALE_TEMP_MS = 10 * 60 * 1000;
/**
 * placeStoredMany reads two chunks of a pack in one read when at most RUN_GAP_BYTES lie between
 * them, at most RUN_MAX_BYTES at once, READS_IN_FLIGHT reads at a time.
 */
const RUN_GAP_BYTES = 64 * 1024;
const RUN_MAX_BYTES = 8 * 1024 * 1024;
const READS_IN_FLIGHT = 4;

export interface GcReport {
  layersRemoved: number;
  chunksRemoved: number;
  /** The removed chunks' bytes (those that were stored). */
  bytesFreed: number;
  /** Disk blocks given back by the packs (the removed chunks', and what nothing pointed at), in bytes. */
  packBytesFreed: number;
  tempFilesRemoved: number;
}

function hexOf(digest: string): string {
  if (!SHA256_DIGEST.test(digest)) throw new InvalidArgumentError(`"${digest}" is not a sha256 digest`);
  return digest.slice('sha256:'.length);
}

/** Checks a chunk's bytes against its digest, off the calling thread (the codec workers); owns `data` from then on. */
export interface ChunkVerifier {
  verify(data: Uint8Array<ArrayBuffer>, expected: string, where: string): Promise<Buffer>;
}

export class ChunkStore {
  /** Started on the first change or figures asked for: a command that only reads needs no thread. */
  private writer: IndexWriter | undefined;
  /** Where the stored chunks this process has met are: from the index's answers and its own writes. */
  private readonly places = new Map<string, ChunkPlace>();
  private writerOfPacks: PackWriter | undefined;
  /** Packs of stored copies placeForImage, placeStored and placeStoredMany handed out since the last syncPacks(). */
  private readonly reusedPacks = new Set<string>();
  private readonly packs: PackReader;

  private constructor(readonly root: string, private readonly db: Database.Database) {
    this.packs = new PackReader(root);
  }

  private get packWriter(): PackWriter {
    return (this.writerOfPacks ??= new PackWriter(this.root));
  }

  private get index(): IndexWriter {
    return (this.writer ??= new IndexWriter(join(this.root, 'index.db')));
  }

  /**
   * Starts the index writer's thread and connection now: a daemon that serves reads pays for them
   * at start rather than at its first mount (measured: the first layer's record took 352 ms,
   * the next 10 ms).
   */
  async startIndexWriter(): Promise<void> {
    try {
      await this.index.open();
    } catch (err) {
      throw new StoreError(`cannot open ${this.index.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  static async open(root: string): Promise<ChunkStore> {
    await mkdir(join(root, 'chunks', 'sha256'), { recursive: true });
    await mkdir(join(root, 'chunks', 'tmp'), { recursive: true });
    try {
      return new ChunkStore(root, openIndexDb(join(root, 'index.db')));
    } catch (err) {
      throw new StoreError(`cannot open ${join(root, 'index.db')}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Commits the presence changes still queued, then closes the index. */
  async close(): Promise<void> {
    try {
      await this.writerOfPacks?.close();
      await this.packs.close();
      await this.writer?.close();
    } finally {
      this.db.close();
    }
  }

  /** Resolves once the presence changes made so far are in the index (other processes see them). */
  async flush(): Promise<void> {
    await this.writer?.flush();
  }

  chunkPath(digest: string): string {
    const hex = hexOf(digest);
    return join(this.root, 'chunks', 'sha256', hex.slice(0, 2), hex);
  }

  /**
   * The digests among `digests` whose bytes the index says are not stored (with this process's
   * changes not committed yet): one query for them all.
   */
  missing(digests: Iterable<string>): Set<string> {
    const all = [...new Set(digests)];
    const present = placesAmong(this.db, all);
    // A place the index still lists but this process found rotten (its absence not committed yet) is not taken back.
    for (const [d, place] of present) if (!this.places.has(d) && this.writer?.pending(d) !== false) this.places.set(d, place);
    const out = new Set<string>();
    for (const d of all) if (!(this.writer?.pending(d) ?? present.has(d))) out.add(d);
    return out;
  }

  /** Where a stored chunk is, as far as this process knows or the index says; undefined: not stored. */
  private placeOf(digest: string): ChunkPlace | undefined {
    if (!this.places.has(digest)) this.missing([digest]); // callers that asked missing() first never query here
    return this.places.get(digest);
  }

  /**
   * The chunk's bytes, verified by `verifier`, or undefined when it is not stored. One read of
   * the `size` bytes the chunk has (a pack or file a crash left short fails the check).
   */
  async get(digest: string, size: number, verifier: ChunkVerifier): Promise<Buffer | undefined> {
    const place = this.placeOf(digest);
    const where = place ? `pack ${place.pack} at ${place.offset}` : `stored file ${this.chunkPath(digest)}`;
    let data: Uint8Array<ArrayBuffer>;
    try {
      data = place ? await this.packs.read(place, size) : await this.readChunkFile(digest, size);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.forget(digest);
      return undefined;
    }
    return this.verified(digest, data, verifier, where, !place);
  }

  /** `data`, read of stored chunk `digest`, once `verifier` passes it; one that fails is dropped (ChunkDigestMismatchError). */
  private async verified(digest: string, data: Uint8Array<ArrayBuffer>, verifier: ChunkVerifier, where: string, inChunkFile: boolean): Promise<Buffer> {
    try {
      return await verifier.verify(data, digest, where);
    } catch (err) {
      if (err instanceof ChunkDigestMismatchError) {
        // Bit rot, tampering or a short write: drop it so the next read fetches it again.
        if (inChunkFile) await unlink(this.chunkPath(digest)).catch(() => undefined);
        this.forget(digest);
      }
      throw err;
    }
  }

  /** A chunk file of the first layout (chunks/sha256/...), read whole into an unpooled buffer (a worker may take it). */
  private async readChunkFile(digest: string, size: number): Promise<Uint8Array<ArrayBuffer>> {
    const fh = await open(this.chunkPath(digest), 'r');
    try {
      return await readPieces(fh, 0, size);
    } finally {
      await fh.close();
    }
  }

  private forget(digest: string): void {
    this.places.delete(digest);
    this.index.absent(digest);
  }

  /** Verifies and stores a chunk; returns false when it was stored already. */
  async put(digest: string, data: Uint8Array): Promise<boolean> {
    const actual = sha256Digest(data);
    if (actual !== digest) throw new ChunkDigestMismatchError(digest, actual, 'bytes offered to the store');
    return this.putVerified(digest, data);
  }

  /**
   * Stores a chunk the caller has verified against `digest` (the codec workers do), appended to
   * this process's pack; false when this process knows it stored already. Not synced: a read
   * verifies it, and a crash that tore it only means fetching it again.
   */
  async putVerified(digest: string, data: Uint8Array): Promise<boolean> {
    if (this.places.has(digest)) return false;
    await this.append(digest, data);
    return true;
  }

  private async append(digest: string, data: Uint8Array): Promise<PackLocation> {
    hexOf(digest);
    const at = await this.packWriter.append(data);
    if (!this.places.has(digest)) this.places.set(digest, at);
    this.index.stored(digest, { size: data.length, at });
    return at;
  }

  /**
   * A place in a pack that holds `data` (which hashes to `digest`) for an EROFS image to point at:
   * a stored copy if it reads back right (the kernel will not check it), else a new one. The
   * caller records the places in its layer (which keeps them allocated) after syncPacks().
   */
  async placeForImage(digest: string, data: Uint8Array): Promise<PackLocation> {
    const place = this.placeOf(digest);
    if (place) {
      const stored = await this.packs.read(place, data.length).catch(() => undefined);
      if (stored && Buffer.compare(stored, data) === 0) {
        // Another process may have written it without a sync (the lazy path never syncs).
        this.reusedPacks.add(place.pack);
        return place;
      }
    }
    return this.append(digest, data);
  }

  /**
   * A place in a pack for an EROFS image to point at, of a chunk stored already (a lazily fetched
   * one), with its bytes: read and verified now, as the kernel will not check them. A chunk file
   * of the first layout is copied into this process's pack. Undefined when the chunk is not
   * stored or fails the check (then it is forgotten, and fetched again when read).
   */
  async placeStored(digest: string, size: number, verifier: ChunkVerifier): Promise<{ at: PackLocation; data: Buffer } | undefined> {
    const place = this.placeOf(digest);
    if (place === undefined) return undefined;
    const data = await this.get(digest, size, verifier).catch((err: unknown) => {
      if (err instanceof ChunkDigestMismatchError) return undefined;
      throw err;
    });
    if (!data) return undefined;
    if (place === null) return { at: await this.append(digest, data), data };
    this.reusedPacks.add(place.pack); // the lazy path never syncs
    return { at: place, data };
  }

  /**
   * placeStored for many chunks at once, for an image to point at them: each pack's bytes read in
   * runs of neighbouring chunks, one read per run (a python layer's 1,194 stored chunks from a
   * cold page cache: 242–367 ms, against 262–407 ms one by one), each chunk verified on its own.
   * The places of those stored and verified; a chunk of the first layout goes into a pack as
   * placeStored does. A chunk that fails its check, or whose pack is gone, is forgotten (get()).
   */
  async placeStoredMany(chunks: readonly { digest: string; size: number }[], verifier: ChunkVerifier): Promise<Map<string, PackLocation>> {
    const out = new Map<string, PackLocation>();
    const sizes = new Map<string, number>();
    for (const c of chunks) if (!sizes.has(c.digest)) sizes.set(c.digest, c.size);
    const unknown = [...sizes.keys()].filter((d) => !this.places.has(d));
    if (unknown.length) this.missing(unknown); // one query, not one per chunk
    const inPacks: { digest: string; size: number; at: PackLocation }[] = [];
    const firstLayout: { digest: string; size: number }[] = [];
    for (const [digest, size] of sizes) {
      const place = this.placeOf(digest);
      if (place) inPacks.push({ digest, size, at: place });
      else if (place === null) firstLayout.push({ digest, size });
    }
    inPacks.sort((a, b) => a.at.pack.localeCompare(b.at.pack) || a.at.offset - b.at.offset);
    const runs: { chunks: typeof inPacks; end: number }[] = [];
    for (const c of inPacks) {
      const run = runs.at(-1);
      const first = run?.chunks[0];
      if (run && first!.at.pack === c.at.pack && c.at.offset - run.end <= RUN_GAP_BYTES && c.at.offset + c.size - first!.at.offset <= RUN_MAX_BYTES) {
        run.chunks.push(c);
        run.end = Math.max(run.end, c.at.offset + c.size);
      } else {
        runs.push({ chunks: [c], end: c.at.offset + c.size });
      }
    }
    const verifyOne = async (c: { digest: string; size: number; at: PackLocation }, data: Uint8Array<ArrayBuffer>): Promise<void> => {
      try {
        await this.verified(c.digest, data, verifier, `pack ${c.at.pack} at ${c.at.offset}`, false);
      } catch (err) {
        if (!(err instanceof ChunkDigestMismatchError)) throw err;
        return; // dropped: fetched again by whoever needs it
      }
      this.reusedPacks.add(c.at.pack);
      out.set(c.digest, c.at);
    };
    await eachLimited(runs, READS_IN_FLIGHT, async ({ chunks: run, end }) => {
      const from = run[0]!.at.offset;
      let bytes: Uint8Array<ArrayBuffer>;
      try {
        bytes = await this.packs.read({ pack: run[0]!.at.pack, offset: from }, end - from);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        for (const c of run) this.forget(c.digest); // as get() does: the pack is gone
        return;
      }
      // Each in its own buffer (a big one is moved to a worker to be hashed), as long as what was
      // read of it: a pack a crash left short fails the check, as in get().
      const verified = await Promise.allSettled(run.map((c) => verifyOne(c, run.length === 1 ? bytes
        : new Uint8Array(bytes.subarray(c.at.offset - from, c.at.offset - from + c.size)))));
      const failed = verified.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    });
    await eachLimited(firstLayout, READS_IN_FLIGHT, async (c) => {
      const got = await this.placeStored(c.digest, c.size, verifier);
      if (got) out.set(c.digest, got.at);
    });
    return out;
  }

  /**
   * Flushes to disk what the places handed out by placeForImage, placeStored and placeStoredMany point at: this process's pack
   * writes, and the packs of the stored copies it reused. Before an EROFS image is published.
   */
  async syncPacks(): Promise<void> {
    const reused = [...this.reusedPacks];
    this.reusedPacks.clear();
    await Promise.all([this.writerOfPacks?.sync(), this.packs.sync(reused)]);
  }

  packPath(pack: string): string {
    return join(packsDir(this.root), pack);
  }

  /**
   * Records a layer and references its chunks; a layer recorded before is left as it is. On the
   * index writer's thread: a mount waits for the write lock without holding up the reads of others.
   */
  async addLayer(layer: LayerRecord): Promise<boolean> {
    for (const c of layer.chunks) hexOf(c.digest);
    try {
      return await this.index.addLayer(layer);
    } catch (err) {
      throw new StoreError(`cannot record layer ${layer.digest}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Records (or re-points) an image name at its layers; the layers must be recorded. */
  addImage(ref: string, manifestDigest: string, layers: string[]): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM images WHERE ref = ?').run(ref);
      this.db.prepare('INSERT INTO images (ref, manifest_digest, created_at) VALUES (?, ?, ?)').run(ref, manifestDigest, Date.now());
      const ins = this.db.prepare('INSERT INTO image_layers (ref, idx, layer_digest) VALUES (?, ?, ?)');
      for (const [i, l] of layers.entries()) ins.run(ref, i, l);
    }).immediate();
  }

  /** Forgets an image; its layers and chunks go at the next gc if nothing else uses them. */
  removeImage(ref: string): void {
    const r = this.db.prepare('DELETE FROM images WHERE ref = ?').run(ref);
    if (r.changes === 0) throw new NotFoundError(`image "${ref}" in the store`);
  }

  listImages(): { ref: string; manifestDigest: string; layers: number; createdAt: number }[] {
    return this.db.prepare(`SELECT i.ref, i.manifest_digest AS manifestDigest, COUNT(l.idx) AS layers, i.created_at AS createdAt
      FROM images i LEFT JOIN image_layers l ON l.ref = i.ref GROUP BY i.ref ORDER BY i.ref`).all() as never;
  }

  /** Per layer: chunks referenced, chunks stored, and their bytes. */
  layerProgress(digest: string): { chunks: number; present: number; bytes: number; presentBytes: number } {
    return this.db.prepare(`SELECT COUNT(*) AS chunks, COALESCE(SUM(c.present), 0) AS present, COALESCE(SUM(c.size), 0) AS bytes,
      COALESCE(SUM(c.size * c.present), 0) AS presentBytes FROM layer_chunks lc JOIN chunks c ON c.digest = lc.chunk_digest
      WHERE lc.layer_digest = ?`).get(digest) as never;
  }

  /** The TOC digest a layer was recorded with (a lazy mount records the TOC it serves), or undefined when it is not recorded. */
  layerTocDigest(digest: string): string | undefined {
    return this.db.prepare('SELECT toc_digest FROM layers WHERE digest = ?').pluck().get(digest) as string | undefined;
  }

  /** The store's figures, from a scan of the index on the index writer's thread. */
  stats(): Promise<StoreStats> {
    return this.index.stats();
  }

  /**
   * Removes layers no image names, chunks no layer references, and temp files of dead writers;
   * frees the blocks of packs (whose writers are gone) that no chunk and no EROFS image points at.
   * Rows go first (one transaction), files after: a concurrent writer that re-adds a chunk in
   * between loses at most a file, which get() then reports as absent.
   */
  async gc(): Promise<GcReport> {
    const { layers, chunks } = this.db.transaction(() => {
      const dead = this.db.prepare('SELECT digest FROM layers WHERE digest NOT IN (SELECT layer_digest FROM image_layers)').pluck().all() as string[];
      const unref = this.db.prepare(`UPDATE chunks SET ref_count = ref_count - (SELECT COUNT(*) FROM layer_chunks WHERE layer_digest = ? AND chunk_digest = chunks.digest)
        WHERE digest IN (SELECT chunk_digest FROM layer_chunks WHERE layer_digest = ?)`);
      for (const l of dead) {
        unref.run(l, l);
        this.db.prepare('DELETE FROM layers WHERE digest = ?').run(l);
      }
      const gone = this.db.prepare('DELETE FROM chunks WHERE ref_count <= 0 RETURNING digest, size, present, pack').all() as { digest: string; size: number; present: number; pack: string | null }[];
      return { layers: dead.length, chunks: gone };
    }).immediate();
    for (const c of chunks) this.places.delete(c.digest);
    const packBytesFreed = await this.freePackSpace();
    const bytesFreed = chunks.reduce((n, c) => n + c.size * c.present, 0);
    for (const c of chunks.filter((x) => x.pack === null)) {
      try {
        await unlink(this.chunkPath(c.digest));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    let tempFilesRemoved = 0;
    const tmpDir = join(this.root, 'chunks', 'tmp');
    for (const name of await readdir(tmpDir)) {
      const s = await stat(join(tmpDir, name)).catch(() => undefined);
      if (s && Date.now() - s.mtimeMs > STALE_TEMP_MS) {
        await rm(join(tmpDir, name), { force: true });
        tempFilesRemoved++;
      }
    }
    return { layersRemoved: layers, chunksRemoved: chunks.length, bytesFreed, packBytesFreed, tempFilesRemoved };
  }

  /** Punches what nothing points at out of every pack whose writer is gone; a pack left with nothing is removed. */
  private async freePackSpace(): Promise<number> {
    const live = this.db.prepare(`SELECT pack_offset AS offset, size FROM chunks WHERE pack = ?
      UNION ALL SELECT lc.pack_offset, c.size FROM layer_chunks lc JOIN chunks c ON c.digest = lc.chunk_digest WHERE lc.pack = ?`);
    let freed = 0;
    for (const pack of await listPacks(this.root)) {
      if (packWriterAlive(pack)) continue;
      const ranges = live.all(pack, pack) as { offset: number; size: number }[];
      if (ranges.length === 0) {
        freed += (await stat(this.packPath(pack))).blocks * 512;
        await unlink(this.packPath(pack));
      } else {
        freed += await punchGaps(this.root, pack, ranges);
      }
    }
    return freed;
  }
}
