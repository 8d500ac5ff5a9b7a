// index.db: the chunk store's SQLite index (better-sqlite3, WAL, so a daemon and a CLI can use
// one root at once). Schema migrations are numbered by PRAGMA user_version.

import type Database from 'better-sqlite3';
import { StoreError } from '../errors.js';
import { openSqlite } from '../sqlite.js';
import type { PackLocation } from './pack-files.js';

const MIGRATIONS: string[] = [
  `CREATE TABLE chunks (
     digest      TEXT PRIMARY KEY,
     size        INTEGER NOT NULL,
     -- references from layers: one per place a layer's TOC uses the chunk
     ref_count   INTEGER NOT NULL DEFAULT 0,
     -- 1 once the verified bytes are in chunks/ (the file is the truth; see ChunkStore.get)
     present     INTEGER NOT NULL DEFAULT 0,
     created_at  INTEGER NOT NULL,
     stored_at   INTEGER
   );
   CREATE INDEX chunks_unreferenced ON chunks(ref_count) WHERE ref_count = 0;
   CREATE TABLE layers (
     digest            TEXT PRIMARY KEY,
     toc_digest        TEXT NOT NULL,
     compressed_size   INTEGER NOT NULL,
     uncompressed_size INTEGER NOT NULL,
     chunk_count       INTEGER NOT NULL,
     created_at        INTEGER NOT NULL
   );
   CREATE TABLE layer_chunks (
     layer_digest TEXT NOT NULL REFERENCES layers(digest) ON DELETE CASCADE,
     seq          INTEGER NOT NULL,
     chunk_digest TEXT NOT NULL,
     PRIMARY KEY (layer_digest, seq)
   );
   CREATE INDEX layer_chunks_by_chunk ON layer_chunks(chunk_digest);
   CREATE TABLE images (
     ref             TEXT PRIMARY KEY,
     manifest_digest TEXT NOT NULL,
     created_at      INTEGER NOT NULL
   );
   CREATE TABLE image_layers (
     ref          TEXT NOT NULL REFERENCES images(ref) ON DELETE CASCADE,
     idx          INTEGER NOT NULL,
     layer_digest TEXT NOT NULL REFERENCES layers(digest),
     PRIMARY KEY (ref, idx)
   );
   CREATE INDEX image_layers_by_layer ON image_layers(layer_digest);`,
  // Pack files (pack-files.ts): where a stored chunk's bytes are. NULL: a chunk file of the first
  // layout (chunks/sha256/<2>/<hex>), still read. A layer built into an EROFS image records, per
  // chunk, the place its image points at: that place stays allocated while the layer exists.
  `ALTER TABLE chunks ADD COLUMN pack TEXT;
   ALTER TABLE chunks ADD COLUMN pack_offset INTEGER;
   ALTER TABLE layer_chunks ADD COLUMN pack TEXT;
   ALTER TABLE layer_chunks ADD COLUMN pack_offset INTEGER;
   CREATE INDEX chunks_by_pack ON chunks(pack) WHERE pack IS NOT NULL;
   CREATE INDEX layer_chunks_by_pack ON layer_chunks(pack) WHERE pack IS NOT NULL;`,
];

export function openIndexDb(path: string, readonly = false): Database.Database {
  return openSqlite(path, MIGRATIONS, readonly);
}

/** Where a stored chunk's bytes are: a place in a pack, or (null) its own file of the first layout. */
export type ChunkPlace = PackLocation | null;

/** A chunk stored: its size and place. */
export interface Stored {
  size: number;
  at: PackLocation;
  /** Stored again after this process found it missing or rotten: the place the index has is dropped first. */
  replaces?: boolean;
}

/**
 * Presence changes to record: a digest with where it is stored, or null once its bytes were
 * found missing or rotten. The last change of a digest wins.
 */
export type PresenceChanges = [digest: string, stored: Stored | null][];

/** The statements of a connection that records presence, prepared once per connection. */
const presenceStatements = new WeakMap<Database.Database, { stored: Database.Statement; absent: Database.Statement }>();

/** Records presence changes in one transaction. */
export function recordPresence(db: Database.Database, changes: PresenceChanges, now: number): void {
  let sql = presenceStatements.get(db);
  if (!sql) {
    sql = {
      // A chunk another process stored first keeps its place; ours is then garbage gc frees.
      stored: db.prepare(`INSERT INTO chunks (digest, size, ref_count, present, created_at, stored_at, pack, pack_offset) VALUES (?, ?, 0, 1, ?, ?, ?, ?)
        ON CONFLICT(digest) DO UPDATE SET present = 1, stored_at = COALESCE(stored_at, excluded.stored_at), pack = excluded.pack, pack_offset = excluded.pack_offset
        WHERE present = 0`),
      absent: db.prepare('UPDATE chunks SET present = 0, pack = NULL, pack_offset = NULL WHERE digest = ?'),
    };
    presenceStatements.set(db, sql);
  }
  const { stored, absent } = sql;
  db.transaction(() => {
    for (const [digest, s] of changes) {
      if (s === null || s.replaces) absent.run(digest);
      if (s !== null) stored.run(digest, s.size, now, now, s.at.pack, s.at.offset);
    }
  }).immediate();
}

/** placesAmong's statement, prepared once per connection (a kernel-mode commit asks once per chunk: preparing cost more than the query). */
const placesStatements = new WeakMap<Database.Database, Database.Statement>();

/** The digests among `digests` whose bytes the index says are stored, with their places: one query, however many. */
export function placesAmong(db: Database.Database, digests: string[]): Map<string, ChunkPlace> {
  let sql = placesStatements.get(db);
  if (!sql) {
    sql = db.prepare('SELECT c.digest, c.pack, c.pack_offset AS offset FROM json_each(?) j JOIN chunks c ON c.digest = j.value WHERE c.present = 1');
    placesStatements.set(db, sql);
  }
  const rows = sql.all(JSON.stringify(digests)) as { digest: string; pack: string | null; offset: number | null }[];
  return new Map(rows.map((r) => [r.digest, r.pack === null ? null : { pack: r.pack, offset: r.offset! }]));
}

export interface StoreStats {
  images: number;
  layers: number;
  /** Chunks whose bytes are stored. */
  chunks: number;
  /** Chunks referenced by some layer but not fetched yet. */
  chunksMissing: number;
  /** Bytes of stored chunks: what the store holds on disk (before filesystem overhead). */
  storedBytes: number;
  /** Bytes the stored chunks stand for, counted once per layer reference: the size without dedup. */
  logicalBytes: number;
  /** logicalBytes / storedBytes (1 when nothing is stored). */
  dedupRatio: number;
  savedBytes: number;
  /** The seed's figure: chunks with ref_count > 1, and their total size. */
  sharedChunks: number;
  sharedBytes: number;
}

/** The store's figures: a scan of every chunk row (the index worker runs it, off the main thread). */
export function storeStats(db: Database.Database): StoreStats {
  const s = db.prepare(`SELECT
      (SELECT COUNT(*) FROM images) AS images,
      (SELECT COUNT(*) FROM layers) AS layers,
      COALESCE(SUM(present), 0) AS chunks,
      COALESCE(SUM(CASE WHEN present = 0 AND ref_count > 0 THEN 1 ELSE 0 END), 0) AS chunksMissing,
      COALESCE(SUM(size * present), 0) AS storedBytes,
      COALESCE(SUM(size * ref_count * present), 0) AS logicalBytes,
      COALESCE(SUM(CASE WHEN ref_count > 1 AND present = 1 THEN 1 ELSE 0 END), 0) AS sharedChunks,
      COALESCE(SUM(CASE WHEN ref_count > 1 AND present = 1 THEN size ELSE 0 END), 0) AS sharedBytes
    FROM chunks`).get() as Omit<StoreStats, 'dedupRatio' | 'savedBytes'>;
  return { ...s, dedupRatio: s.storedBytes > 0 ? s.logicalBytes / s.storedBytes : 1, savedBytes: s.logicalBytes - s.storedBytes };
}

export interface LayerRecord {
  digest: string;
  tocDigest: string;
  compressedSize: number;
  uncompressedSize: number;
  /**
   * Every chunk of the layer in TOC order (repeats included). `at`: the place a kernel layer's
   * EROFS image points at (kept allocated while the layer is recorded).
   */
  chunks: { digest: string; size: number; at?: PackLocation }[];
}

/** Records a layer and references its chunks in one transaction; false when it was recorded before. */
export function recordLayer(db: Database.Database, layer: LayerRecord, now: number): boolean {
  return db.transaction(() => {
    if (db.prepare('SELECT 1 FROM layers WHERE digest = ?').get(layer.digest) !== undefined) return false;
    db.prepare('INSERT INTO layers (digest, toc_digest, compressed_size, uncompressed_size, chunk_count, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(layer.digest, layer.tocDigest, layer.compressedSize, layer.uncompressedSize, layer.chunks.length, now);
    const ref = db.prepare(`INSERT INTO chunks (digest, size, ref_count, present, created_at) VALUES (?, ?, 1, 0, ?)
      ON CONFLICT(digest) DO UPDATE SET ref_count = ref_count + 1 RETURNING size`);
    const link = db.prepare('INSERT INTO layer_chunks (layer_digest, seq, chunk_digest, pack, pack_offset) VALUES (?, ?, ?, ?, ?)');
    for (const [seq, c] of layer.chunks.entries()) {
      const row = ref.get(c.digest, c.size, now) as { size: number };
      if (row.size !== c.size) throw new StoreError(`chunk ${c.digest} is ${c.size} bytes in layer ${layer.digest} but ${row.size} bytes in the store`);
      link.run(layer.digest, seq, c.digest, c.at?.pack ?? null, c.at?.offset ?? null);
    }
    return true;
  }).immediate();
}
