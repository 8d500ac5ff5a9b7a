// audit.db: who did what to this node and when. The daemon records config changes, remote pulls,
// mounts and removals; dedupctl records what it changes in the root (store rm, gc, mounts, KSM).
// The daemon removes entries older than the retention (audit.retention_days).

import type Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { openSqlite } from '../sqlite.js';

const MIGRATIONS = [
  `CREATE TABLE audit_logs (
     id        INTEGER PRIMARY KEY AUTOINCREMENT,
     timestamp INTEGER NOT NULL,  -- ms since the epoch
     actor     TEXT NOT NULL,     -- "containerd", "api 127.0.0.1", "dedupctl uid=0(root)"
     action    TEXT NOT NULL,     -- "config.update", "snapshot.remove", ...
     target    TEXT NOT NULL,     -- what it acted on: an image, a snapshot key, a config file
     result    TEXT NOT NULL,     -- "ok" or the error code
     details   TEXT NOT NULL      -- JSON object
   );
   CREATE INDEX audit_logs_by_time ON audit_logs(timestamp);
   CREATE INDEX audit_logs_by_action ON audit_logs(action, timestamp);`,
];

export interface AuditEntry {
  id: number;
  /** ISO 8601. */
  time: string;
  actor: string;
  action: string;
  target: string;
  result: string;
  details: Record<string, unknown>;
}

export interface AuditQuery {
  limit?: number;
  /** Entries at or after this time. */
  since?: Date;
  action?: string;
}

export const DAY_MS = 24 * 60 * 60 * 1000;

/** The actor name of a command run by this user. */
export function cliActor(command = 'dedupctl'): string {
  const u = userInfo();
  return `${command} uid=${u.uid}(${u.username})`;
}

export class AuditLog {
  private readonly insert: Database.Statement;

  private constructor(private readonly db: Database.Database, private readonly now: () => number) {
    this.insert = db.prepare('INSERT INTO audit_logs (timestamp, actor, action, target, result, details) VALUES (?, ?, ?, ?, ?, ?)');
  }

  /** Opens (creating) `<root>/audit.db`. */
  static open(root: string, now: () => number = Date.now): AuditLog {
    mkdirSync(root, { recursive: true });
    return new AuditLog(openSqlite(join(root, 'audit.db'), MIGRATIONS), now);
  }

  record(actor: string, action: string, target: string, details: Record<string, unknown> = {}, result = 'ok'): void {
    this.insert.run(this.now(), actor, action, target, result, JSON.stringify(details));
  }

  /** Runs `fn` and records it with its outcome: "ok" or the error's code. */
  async audited<T>(actor: string, action: string, target: string, details: Record<string, unknown>, fn: () => Promise<T>): Promise<T> {
    try {
      const r = await fn();
      this.record(actor, action, target, details);
      return r;
    } catch (err) {
      this.record(actor, action, target, { ...details, error: (err as Error).message }, (err as { code?: string }).code ?? 'error');
      throw err;
    }
  }

  /** Newest first. */
  list(q: AuditQuery = {}): AuditEntry[] {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (q.since) {
      where.push('timestamp >= ?');
      args.push(q.since.getTime());
    }
    if (q.action) {
      where.push('action = ?');
      args.push(q.action);
    }
    const rows = this.db.prepare(`SELECT * FROM audit_logs ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY timestamp DESC, id DESC LIMIT ?`).all(...args, q.limit ?? 100) as { id: number; timestamp: number; actor: string; action: string; target: string; result: string; details: string }[];
    return rows.map((r) => ({ id: r.id, time: new Date(r.timestamp).toISOString(), actor: r.actor, action: r.action, target: r.target, result: r.result,
      details: JSON.parse(r.details) as Record<string, unknown> }));
  }

  /** Removes entries older than `days`; returns how many. */
  prune(days: number): number {
    return this.db.prepare('DELETE FROM audit_logs WHERE timestamp < ?').run(this.now() - days * DAY_MS).changes;
  }

  close(): void {
    this.db.close();
  }
}
