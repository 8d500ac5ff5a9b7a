// The layer server's table follows the kernel (#21) and an unused one leaves (#19): a lazy mount
// removed behind its back (umount -l, as an operator's or a script's clean-up does) is dropped,
// counted and audited, a plain SIGTERM then stops the server, and the next container of the
// image finds its layer mounted again; one removed while a file in it is open reads on, and
// letting go of it later leaves the new mount alone; with no mount and no snapshotter it exits
// by itself. In both mount modes (a detached lazy EROFS mount is filled whole, then needs no
// server). Real containerd, runc, FUSE, EROFS and registry.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuditLog } from '../src/audit/audit-log.js';
import { isAlive } from '../src/mount/mount-records.js';
import { isMountpoint } from '../src/system-mounts.js';
import { dedupctlJson } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { erofsModeSkipReason } from './fixtures/erofs.js';
import { teardownStack } from './fixtures/teardown.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage } from './fixtures/images.js';
import { logged, logSize } from './fixtures/log.js';
import { mustRun, waitFor } from './fixtures/process.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { startSnapshotter, teardownFused, type TestSnapshotter } from './fixtures/snapshotter.js';

interface FusedStatus {
  pid: number;
  mounts: { mountpoint: string; layer: { digest: string } }[];
}

for (const mode of ['fuse', 'erofs'] as const) describe(`layer server: mounts removed from outside, idle exit (mount_mode ${mode})`, { skip: mode === 'erofs' ? await erofsModeSkipReason() : undefined }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let snap: TestSnapshotter | undefined;
  let ctd: TestContainerd | undefined;
  let ref: string;
  let unreadContent: Buffer;
  const status = (s: TestSnapshotter): Promise<FusedStatus> => dedupctlJson<FusedStatus>(['fused', 'status', '--root', s.root, '--config', s.config]);

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-fused-test-'));
    registry = await startRegistry(tmp);
    // A file no container reads keeps the layer incomplete, so FUSE serves it throughout (a complete
    // one is served by EROFS from then on, docs/kernel.md); it makes the layer too large to be
    // fetched whole at mount (prefetch.whole_layer_bytes) too.
    unreadContent = randomBytes(6 * 1024 * 1024);
    const unread = { name: 'unread', type: 'file' as const, content: unreadContent };
    await writeOciImage(join(tmp, 'src'), 'app', [{ tar: await tarOf([...await busyboxEntries(), { name: 'hello', type: 'file', content: Buffer.from('hello from a lazy layer\n') }, unread]), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'app', `${registry.host}/src/app:1`);
    ref = `${registry.host}/lazy/app:1`;
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/src/app:1`, ref]);
    snap = await startSnapshotter(tmp, [], { mount_mode: mode });
    ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
  });

  after(async () => {
    await teardownStack(tmp, { ctd, snap, servers: [registry] });
  });

  it('drops a mount removed behind its back; SIGTERM then stops it; the next container mounts the layer again', async () => {
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const first = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 'first', '/bin/cat', '/hello'], 120_000);
    assert.equal(first.stdout, 'hello from a lazy layer\n', first.stderr);
    const served = await status(snap!);
    assert.ok(served.mounts.length >= 1);

    const logBefore = await logSize(snap!.fusedLog);
    for (const m of served.mounts) await mustRun('umount', ['-l', m.mountpoint]);
    await waitFor('the layer server to drop the mounts', async () => (await status(snap!)).mounts.length === 0, 5000);
    await waitFor('the layer server to let go of them', async () => (await logged(snap!.fusedLog, 'detached layer released', {}, logBefore)).length === served.mounts.length, 10_000);
    const metrics = await fetch(`${snap!.api}/metrics`).then((r) => r.text());
    const lost = [...metrics.matchAll(/^dedup_mounts_lost_total\{reason="(\w+)"\} (\d+)/gm)].reduce((n, m) => n + Number(m[2]), 0);
    assert.equal(lost, served.mounts.length, metrics.split('\n').filter((l) => l.includes('lost')).join('\n'));
    const audit = AuditLog.open(snap!.root);
    try {
      const entries = audit.list({ action: 'layer.lost' });
      assert.deepEqual(entries.map((e) => e.details.mountpoint).sort(), served.mounts.map((m) => m.mountpoint).sort());
    } finally {
      audit.close();
    }

    // Nothing left to serve: a plain SIGTERM stops it, as documented.
    process.kill(served.pid, 'SIGTERM');
    await waitFor('the layer server to stop on SIGTERM', async () => !isAlive(served.pid), 10_000);

    // The snapshotter starts a new one and mounts the layer again for the next container.
    const again = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 'again', '/bin/cat', '/hello'], 120_000);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stdout, 'hello from a lazy layer\n');
    const now = await status(snap!);
    assert.notEqual(now.pid, served.pid);
    assert.deepEqual(now.mounts.map((m) => m.mountpoint).sort(), served.mounts.map((m) => m.mountpoint).sort());
    snap!.fusedPid = now.pid;
    assert.ok((await logged(snap!.log, 'remote snapshot mounted again')).length > 0, 'a remote snapshot was mounted again');
  });

  it('a mount removed while a file in it is open reads on; the layer is mounted again beside it; letting go of the old one leaves the new one', async () => {
    const [m] = (await status(snap!)).mounts;
    assert.ok(m);
    const logBefore = await logSize(snap!.fusedLog);
    const held = await open(join(m.mountpoint, 'unread'), 'r');
    try {
      await mustRun('umount', ['-l', m.mountpoint]);
      await waitFor('the layer server to drop the mount', async () => (await status(snap!)).mounts.length === 0, 5000);
      const again = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 'beside', '/bin/cat', '/hello'], 120_000);
      assert.equal(again.stdout, 'hello from a lazy layer\n', again.stderr);
      // Nothing of it was read before: FUSE serves it over the old connection, EROFS through its
      // files moved aside. Its last chunk only (read-ahead goes forward): a layer complete now
      // would switch to EROFS, and the snapshotter would let go of the new mount.
      const at = unreadContent.length - (1 << 20);
      const { buffer } = await held.read(Buffer.alloc(1 << 20), 0, 1 << 20, at);
      assert.ok(buffer.equals(unreadContent.subarray(at)), 'the open file reads the right bytes');
    } finally {
      await held.close();
    }
    await waitFor('the old mount to be let go', async () => (await logged(snap!.fusedLog, 'detached layer released', { mountpoint: m.mountpoint }, logBefore)).length > 0, 30_000);
    assert.ok(await isMountpoint(m.mountpoint), 'the new mount stays');
    assert.deepEqual((await status(snap!)).mounts.map((x) => x.mountpoint), [m.mountpoint]);
    const leftOver = (await readdir(dirname(m.mountpoint))).filter((n) => n.startsWith(`${basename(m.mountpoint)}.lazy-detached-`));
    assert.deepEqual(leftOver, [], 'a detached EROFS mount\'s files are removed once filled');
    const last = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 'after', '/bin/cat', '/hello'], 120_000);
    assert.equal(last.stdout, 'hello from a lazy layer\n', last.stderr);
  });

  it('with no mount and no snapshotter the layer server exits after fused.idle_exit_seconds; a new snapshotter starts one again', async () => {
    const dir = await mkdtemp(join(tmp, 'idle-'));
    const idle = await startSnapshotter(dir, [], { fused: { idle_exit_seconds: 10 } });
    try {
      await idle.stopDaemon();
      assert.ok(isAlive(idle.fusedPid), 'it stays for the grace period');
      await waitFor('the idle layer server to exit', async () => !isAlive(idle.fusedPid), 30_000);
      assert.equal((await logged(idle.fusedLog, 'no mounts and no client; leaving')).length, 1);
      const next = await startSnapshotter(dir);
      assert.notEqual(next.fusedPid, idle.fusedPid);
      assert.ok(isAlive(next.fusedPid));
      await next.stop();
      assert.ok(!isAlive(next.fusedPid));
    } finally {
      await idle.stopDaemon();
      await teardownFused(idle.root, idle.config, idle.fusedPid);
    }
  });
});
