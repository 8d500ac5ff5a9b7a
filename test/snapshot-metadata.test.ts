// Snapshot times as containerd keeps them: a Commit creates the committed snapshot (created and
// updated both the commit's), only a later Update moves updated, and times keep containerd's
// nanosecond precision on the wire; an older metadata.db (milliseconds) is migrated.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SnapshotMetadata } from '../src/snapshot/metadata.js';
import { snapshotsClient } from './fixtures/snapshots-client.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface WireInfo {
  info: { name: string; created_at: { seconds: number; nanos: number }; updated_at: { seconds: number; nanos: number } };
}

describe('snapshot times', () => {
  let tmp: string;
  let snap: TestSnapshotter | undefined;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-metadata-test-'));
  });

  after(async () => {
    await snap?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('a commit creates the committed snapshot: created = updated = the commit\'s time; an update moves updated only', async () => {
    const md = new SnapshotMetadata(join(tmp, 'metadata.db'));
    try {
      md.create('active', 'a', '', {});
      const prepared = md.stat('a');
      assert.equal(prepared.created, prepared.updated);
      await sleep(5);
      md.commit('c', 'a', {}, { size: 0, inodes: 0 });
      const committed = md.stat('c');
      assert.equal(committed.created, committed.updated);
      assert.ok(committed.created > prepared.created, 'the commit\'s time, not the prepare\'s');
      await sleep(5);
      md.update({ name: 'c', labels: { x: 'y' } }, []);
      const updated = md.stat('c');
      assert.equal(updated.created, committed.created);
      assert.ok(updated.updated > updated.created);
    } finally {
      md.close();
    }
  });

  it('a metadata.db with millisecond times is migrated to nanoseconds', () => {
    const path = join(tmp, 'old.db');
    const old = new Database(path);
    old.exec(`CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, parent TEXT, kind INTEGER NOT NULL,
      labels TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, size INTEGER, inodes INTEGER, remote TEXT);
      INSERT INTO snapshots (key, kind, created_at, updated_at) VALUES ('k', 3, 1700000000123, 1700000000456);`);
    old.close();
    const md = new SnapshotMetadata(path);
    try {
      const s = md.stat('k');
      assert.equal(s.created, 1_700_000_000_123_000_000n);
      assert.equal(s.updated, 1_700_000_000_456_000_000n);
    } finally {
      md.close();
    }
  });

  it('over gRPC: Stat after Commit has equal created_at and updated_at, to the nanosecond', async () => {
    snap = await startSnapshotter(tmp);
    const { call, close } = snapshotsClient(snap.socket);
    try {
      const subMs: number[] = [];
      for (let i = 0; i < 5; i++) {
        await call('Prepare', { key: `k${i}`, parent: '', labels: {} });
        await call('Commit', { name: `c${i}`, key: `k${i}`, labels: {} });
        const { info } = (await call('Stat', { key: `c${i}` })) as WireInfo;
        assert.deepEqual(info.created_at, info.updated_at, `c${i}`);
        subMs.push(info.created_at.nanos % 1_000_000);
      }
      assert.ok(subMs.some((n) => n !== 0), 'times carry more than milliseconds');
    } finally {
      close();
    }
  });
});
