// Worker side of the index writer (src/store/index-writer.ts): the index.db work of a process
// that serves reads, on a thread of its own with its own connection, so that waiting for the
// write lock (another process's gc or ingest, for up to the busy timeout) or scanning every chunk
// row never holds up its event loop.

import type Database from 'better-sqlite3';
import { openIndexDb, recordLayer, recordPresence, storeStats, type LayerRecord, type PresenceChanges, type StoreStats } from './index-db.js';

/** This thread's connections, by index.db path; better-sqlite3 closes them when the thread ends. */
const connections = new Map<string, Database.Database>();

function connection(path: string): Database.Database {
  let db = connections.get(path);
  if (!db) {
    db = openIndexDb(path);
    connections.set(path, db);
  }
  return db;
}

export interface RecordTask {
  path: string;
  changes: PresenceChanges;
  now: number;
}

/** Opens this thread's connection ahead of the first task that needs it. */
export function open(task: { path: string }): void {
  connection(task.path);
}

export function record(task: RecordTask): void {
  recordPresence(connection(task.path), task.changes, task.now);
}

export function stats(task: { path: string }): StoreStats {
  return storeStats(connection(task.path));
}

export function addLayer(task: { path: string; layer: LayerRecord; now: number }): boolean {
  return recordLayer(connection(task.path), task.layer, task.now);
}
