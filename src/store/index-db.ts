// index.db: the chunk store's SQLite index (better-sqlite3, WAL, so a daemon and a CLI can use
// one root at once). Schema migrations are numbered by PRAGMA user_version.

import type Database from 'better-sqlite3';
import { openSqlite } from '../sqlite.js';

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
];

export function openIndexDb(path: string, readonly = false): Database.Database {
  return openSqlite(path, MIGRATIONS, readonly);
}
