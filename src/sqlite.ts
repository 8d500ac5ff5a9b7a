// Opening one of the project's SQLite files (better-sqlite3): WAL, so a daemon and the CLI can use
// a root at once, a busy timeout instead of SQLITE_BUSY, and schema migrations numbered by
// PRAGMA user_version, each applied in one transaction.

import Database from 'better-sqlite3';

export function openSqlite(path: string, migrations: string[], readonly = false): Database.Database {
  const db = new Database(path, { readonly, fileMustExist: readonly });
  db.pragma('busy_timeout = 10000');
  if (!readonly) {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
  }
  db.pragma('foreign_keys = ON');
  if (!readonly) {
    const version = db.pragma('user_version', { simple: true }) as number;
    for (let v = version; v < migrations.length; v++) {
      db.transaction(() => {
        db.exec(migrations[v]!);
        db.pragma(`user_version = ${v + 1}`);
      }).immediate();
    }
  }
  return db;
}
