// Opening one of the project's SQLite files (better-sqlite3): WAL, so a daemon and the CLI can use
// a root at once, a busy timeout instead of SQLITE_BUSY, and schema migrations numbered by
// PRAGMA user_version, applied under the write lock.

import Database from 'better-sqlite3';

export function openSqlite(path: string, migrations: string[], readonly = false): Database.Database {
  const db = new Database(path, { readonly, fileMustExist: readonly });
  db.pragma('busy_timeout = 10000');
  if (!readonly) {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
  }
  db.pragma('foreign_keys = ON');
  const version = (): number => db.pragma('user_version', { simple: true }) as number;
  if (!readonly && version() < migrations.length) {
    // The version is read again under the write lock: two processes opening a new file at once
    // must not both run the first migration.
    db.transaction(() => {
      for (let v = version(); v < migrations.length; v++) {
        db.exec(migrations[v]!);
        db.pragma(`user_version = ${v + 1}`);
      }
    }).immediate();
  }
  return db;
}
