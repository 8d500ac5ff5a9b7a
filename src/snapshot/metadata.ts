// Snapshot metadata with containerd's semantics (its snapshots/storage package): user keys map to
// internal ids (the directory names), parents form chains, kinds are View, Active and Committed,
// a Commit turns an Active snapshot into a Committed one under a new name keeping its id, and a
// snapshot with children cannot be removed. SQLite (better-sqlite3), one transaction per change.
// Times are nanoseconds since the epoch, containerd's precision, read as BigInt.

import type Database from 'better-sqlite3';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../errors.js';
import { openSqlite } from '../sqlite.js';

export type Kind = 'view' | 'active' | 'committed';
const KIND_CODE: Record<Kind, number> = { view: 1, active: 2, committed: 3 };
const KIND_NAME: Record<number, Kind> = { 1: 'view', 2: 'active', 3: 'committed' };

export interface SnapshotInfo {
  /** The key (for Active and View snapshots) or name (Committed). */
  name: string;
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  /** Nanoseconds since the epoch. */
  created: bigint;
  updated: bigint;
}

export interface Snapshot extends SnapshotInfo {
  id: number;
  /** Ids of the parent chain, nearest first. */
  parentIds: number[];
}

/** A committed layer served from an EROFS image (src/kernel/): the image and its packs, in order. */
export interface KernelLayerRef {
  image: string;
  devices: string[];
  /** Set for a layer mounted from a shared store (that directory): image and devices are paths in it. */
  shared?: string;
  /**
   * A remote snapshot's image, made once its lazy layer was complete: the last snapshot id when
   * snapshots began to get the image; those up to it may still use the FUSE mount.
   */
  since?: number;
}

interface Row {
  id: number;
  key: string;
  parent: string | null;
  kind: number;
  labels: string;
  created_at: bigint;
  updated_at: bigint;
  size: number | null;
  inodes: number | null;
  remote: string | null;
  kernel: string | null;
}

/** A row as SQLite hands it over with safe integers: every INTEGER a BigInt. */
type RawRow = { [K in keyof Row]: Row[K] extends number ? bigint : Row[K] extends number | null ? bigint | null : Row[K] };

function fromRaw(r: RawRow): Row {
  const num = (n: bigint | null): number | null => (n === null ? null : Number(n));
  return { ...r, id: Number(r.id), kind: Number(r.kind), size: num(r.size), inodes: num(r.inodes) };
}

// Wall-clock time in nanoseconds: Date.now() has milliseconds only, hrtime has no epoch.
const EPOCH_NS = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6)) - process.hrtime.bigint();
function nowNs(): bigint {
  return EPOCH_NS + process.hrtime.bigint();
}

const MIGRATIONS = [
  `CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent TEXT,
    kind INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    size INTEGER,
    inodes INTEGER,
    -- for remote (lazily mounted) snapshots: where the layer comes from, to mount it again
    remote TEXT
  );
  CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);`,
  // Times were milliseconds before.
  'UPDATE snapshots SET created_at = created_at * 1000000, updated_at = updated_at * 1000000',
  // A committed layer served by the kernel: its EROFS image and packs (KernelLayer, JSON).
  'ALTER TABLE snapshots ADD COLUMN kernel TEXT',
];

/** Where a remote snapshot's layer lives: enough to mount it again after a restart. */
export interface RemoteLayerRef {
  image: string;
  manifestDigest: string;
  layer: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> };
}

/** containerd limits a label's key and value together to 4096 bytes. */
const MAX_LABEL = 4096;

function checkLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL) throw new InvalidArgumentError(`label key and value of "${k.slice(0, 64)}" are larger than ${MAX_LABEL} bytes`);
  }
}

export class SnapshotMetadata {
  private readonly db: Database.Database;

  constructor(path: string) {
    this.db = openSqlite(path, MIGRATIONS);
  }

  private rows(sql: string, ...args: unknown[]): Row[] {
    return (this.db.prepare(sql).safeIntegers(true).all(...args) as RawRow[]).map(fromRaw);
  }

  close(): void {
    this.db.close();
  }

  private row(key: string): Row | undefined {
    return this.rows('SELECT * FROM snapshots WHERE key = ?', key)[0];
  }

  private toInfo(r: Row): SnapshotInfo {
    return { name: r.key, parent: r.parent ?? '', kind: KIND_NAME[r.kind]!, labels: JSON.parse(r.labels) as Record<string, string>,
      created: r.created_at, updated: r.updated_at };
  }

  /** The snapshot with its parent chain; NotFound when the key does not exist. */
  get(key: string): Snapshot {
    const r = this.row(key);
    if (!r) throw new NotFoundError(`snapshot ${key}`);
    const parentIds: number[] = [];
    for (let p = r.parent; p;) {
      const pr = this.row(p);
      if (!pr) break;
      parentIds.push(pr.id);
      p = pr.parent;
    }
    return { ...this.toInfo(r), id: r.id, parentIds };
  }

  stat(key: string): SnapshotInfo {
    const r = this.row(key);
    if (!r) throw new NotFoundError(`snapshot ${key}`);
    return this.toInfo(r);
  }

  /**
   * Creates a snapshot; `parent` must be Committed. Returns its id. A committed one is a layer
   * served from elsewhere: a remote one (lazy) or a kernel one with its usage (a shared store's).
   */
  create(kind: Kind, key: string, parent: string, labels: Record<string, string>,
    from: { remote?: RemoteLayerRef; kernel?: KernelLayerRef; usage?: { size: number; inodes: number } } = {}): number {
    const { remote, kernel, usage } = from;
    if (!key) throw new InvalidArgumentError('snapshot key must not be empty');
    checkLabels(labels);
    return this.db.transaction(() => {
      if (this.row(key)) throw new AlreadyExistsError(`snapshot ${key}`);
      if (parent) {
        const p = this.row(parent);
        if (!p) throw new NotFoundError(`parent snapshot ${parent}`);
        if (p.kind !== KIND_CODE.committed) throw new InvalidArgumentError(`parent "${parent}" is not a committed snapshot`);
      }
      const now = nowNs();
      const size = usage?.size ?? (remote ? 0 : null);
      const inodes = usage?.inodes ?? (remote ? 0 : null);
      const r = this.db.prepare('INSERT INTO snapshots (key, parent, kind, labels, created_at, updated_at, size, inodes, remote, kernel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(key, parent || null, KIND_CODE[kind], JSON.stringify(labels), now, now, size, inodes, remote ? JSON.stringify(remote) : null, kernel ? JSON.stringify(kernel) : null);
      return Number(r.lastInsertRowid);
    }).immediate();
  }

  /**
   * Turns Active `key` into Committed `name` (same id), with its usage recorded. As in
   * containerd, the commit creates the committed snapshot: created and updated are the commit's.
   */
  commit(name: string, key: string, labels: Record<string, string>, usage: { size: number; inodes: number }, kernel?: KernelLayerRef): number {
    if (!name) throw new InvalidArgumentError('committed snapshot name must not be empty');
    checkLabels(labels);
    return this.db.transaction(() => {
      const r = this.row(key);
      if (!r) throw new NotFoundError(`snapshot ${key}`);
      if (r.kind !== KIND_CODE.active) throw new FailedPreconditionError(`requested snapshot ${key} not active`);
      if (this.row(name)) throw new AlreadyExistsError(`snapshot ${name}`);
      const now = nowNs();
      this.db.prepare('UPDATE snapshots SET key = ?, kind = ?, labels = ?, created_at = ?, updated_at = ?, size = ?, inodes = ?, kernel = ? WHERE id = ?')
        .run(name, KIND_CODE.committed, JSON.stringify(labels), now, now, usage.size, usage.inodes, kernel ? JSON.stringify(kernel) : null, r.id);
      return r.id;
    }).immediate();
  }

  /** Removes a snapshot without children; returns its id and kind. */
  remove(key: string): { id: number; kind: Kind; kernel: boolean } {
    return this.db.transaction(() => {
      const r = this.row(key);
      if (!r) throw new NotFoundError(`snapshot ${key}`);
      if (this.db.prepare('SELECT 1 FROM snapshots WHERE parent = ?').get(key)) throw new FailedPreconditionError(`cannot remove snapshot ${key} with child`);
      this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(r.id);
      return { id: r.id, kind: KIND_NAME[r.kind]!, kernel: r.kernel !== null };
    }).immediate();
  }

  /** Updates labels: all of them with no paths or "labels", single ones with "labels.KEY". */
  update(info: { name: string; labels: Record<string, string> }, paths: string[]): SnapshotInfo {
    checkLabels(info.labels);
    return this.db.transaction(() => {
      const r = this.row(info.name);
      if (!r) throw new NotFoundError(`snapshot ${info.name}`);
      let labels = JSON.parse(r.labels) as Record<string, string>;
      if (paths.length === 0) labels = { ...info.labels };
      for (const p of paths) {
        if (p === 'labels') labels = { ...info.labels };
        else if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          if (k in info.labels) labels[k] = info.labels[k]!;
          else delete labels[k];
        } else throw new InvalidArgumentError(`cannot update "${p}" field on snapshot "${info.name}"`);
      }
      this.db.prepare('UPDATE snapshots SET labels = ?, updated_at = ? WHERE id = ?').run(JSON.stringify(labels), nowNs(), r.id);
      return this.toInfo(this.row(info.name)!);
    }).immediate();
  }

  usage(key: string): { kind: Kind; id: number; size: number | null; inodes: number | null } {
    const r = this.row(key);
    if (!r) throw new NotFoundError(`snapshot ${key}`);
    return { kind: KIND_NAME[r.kind]!, id: r.id, size: r.size, inodes: r.inodes };
  }

  list(): SnapshotInfo[] {
    return this.rows('SELECT * FROM snapshots ORDER BY id').map((r) => this.toInfo(r));
  }

  /** Every id, with the remote layer of remote snapshots and the image of kernel ones (restart reconciliation). */
  all(): { id: number; key: string; kind: Kind; parent: string; remote: RemoteLayerRef | undefined; kernel: KernelLayerRef | undefined }[] {
    return this.rows('SELECT * FROM snapshots ORDER BY id').map((r) => ({
      id: r.id, key: r.key, kind: KIND_NAME[r.kind]!, parent: r.parent ?? '',
      remote: r.remote ? (JSON.parse(r.remote) as RemoteLayerRef) : undefined, kernel: r.kernel ? (JSON.parse(r.kernel) as KernelLayerRef) : undefined,
    }));
  }

  /** The largest id given so far. */
  lastId(): number {
    return Number(this.db.prepare("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'snapshots'), 0)").pluck().get());
  }

  /** Records the EROFS image of remote snapshot `id`'s layer; false when it is gone (removed meanwhile). */
  setKernel(id: number, kernel: KernelLayerRef): boolean {
    return this.db.prepare('UPDATE snapshots SET kernel = ? WHERE id = ? AND remote IS NOT NULL AND kernel IS NULL').run(JSON.stringify(kernel), id).changes === 1;
  }
}
