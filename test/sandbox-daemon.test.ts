// Sandbox pools inside the dedup-snapshotter daemon, driven as an operator would: dedupctl pool
// create/acquire/checkpoint/release/ls/rm over the admin API, its audit entries and metrics, a
// kill -9 of a handed-out sandbox recovered from its checkpoint, and a kill -9 of the daemon
// after which the restarted daemon adopts every sandbox (none lost, none orphaned).

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cgroup2Root } from '../src/cgroup2.js';
import { Criu } from '../src/sandbox/criu.js';
import { dedupctl } from './fixtures/cli.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { waitFor } from './fixtures/process.js';
import { counterOf, startPoolStack, type PoolStack } from './fixtures/sandbox.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';

interface Summary {
  name: string;
  frozen: number;
  active: number;
  failed: number;
  base: string | null;
  sandboxes: { id: string; pid: number; state: string; from: string | null }[];
}

describe('sandbox pools in the daemon: dedupctl pool, admin API, audit, metrics, daemon restarts', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let stack: PoolStack | undefined;
  let snap: TestSnapshotter | undefined;
  let ref: string;
  let criuMissing = '';

  const pool = async <T>(args: string[]): Promise<T> => {
    // Options first: what follows "--" is the sandbox's command.
    const r = await dedupctl(['pool', args[0]!, '--api', snap!.api.replace('http://', ''), '--json', ...args.slice(1)], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, `dedupctl pool ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const ls = async (): Promise<Summary> => (await pool<Summary[]>(['ls'])).find((p) => p.name === 'web')!;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-sandbox-daemon-test-'));
    stack = await startPoolStack(tmp);
    ({ snap, ref } = stack);
    await Criu.at().check().catch((err: Error) => (criuMissing = `no working CRIU: ${err.message}`));
  });

  after(async () => {
    if (snap) for (const name of ['web', 'roll']) await dedupctl(['pool', 'rm', name, '--api', snap.api.replace('http://', '')]);
    await stack?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('create, acquire, checkpoint, recovery after kill -9, daemon kill -9 and restart (sandboxes adopted), rm leaves nothing', async (t) => {
    const created = await pool<Summary>(['create', 'web', '--image', ref, '--min', '1', '--max', '2', '--initial', '2', '--ready', '/ready', '--', '/bin/sh', '/counter.sh']);
    assert.equal(created.frozen, 2);
    const got = await pool<{ id: string; pid: number; ms: number }>(['acquire', 'web', '--timeout', '10000']);
    assert.match(got.id, /^sb-[0-9a-f]+$/);
    assert.ok(existsSync(`/proc/${got.pid}`));
    assert.ok(got.ms >= 0 && got.ms < 10_000);
    const rootfs = join(snap!.root, 'pools', 'web', 'sandboxes', got.id, 'rootfs');
    const c0 = await counterOf(rootfs);
    await waitFor('the sandbox to run', async () => (await counterOf(rootfs)) > c0 + 2, 10_000);
    await waitFor('the pool refilled', async () => (await ls()).frozen >= 1, 30_000);
    assert.equal((await ls()).active, 1);

    const metrics = await (await fetch(`${snap!.api}/metrics`)).text();
    assert.match(metrics, /^dedup_pool_sandboxes\{pool="web",state="active"\} 1$/m);
    assert.match(metrics, /^dedup_pool_acquire_seconds_count\{pool="web"\} 1$/m);
    const audit = (await (await fetch(`${snap!.api}/audit/logs?action=pool.acquire`)).json()) as { entries: { target: string; result: string }[] };
    assert.deepEqual(audit.entries.map((e) => [e.target, e.result]), [['web', 'ok']]);
    const exhausted = await fetch(`${snap!.api}/pools/acquire`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'nope' }) });
    assert.equal(exhausted.status, 404);

    let active = got;
    if (criuMissing) t.diagnostic(`recovery part skipped: ${criuMissing}`);
    else {
      const ck = await pool<{ id: string }>(['checkpoint', 'web', got.id]);
      assert.match(ck.id, /^ck-/);
      process.kill(got.pid, 'SIGKILL');
      await waitFor('the sandbox recovered', async () => {
        const s = (await ls()).sandboxes.find((x) => x.id === got.id);
        return s?.state === 'active' && s.pid !== got.pid;
      }, 30_000);
      active = { ...got, pid: (await ls()).sandboxes.find((x) => x.id === got.id)!.pid };
      const rec = (await (await fetch(`${snap!.api}/audit/logs?action=sandbox.recover`)).json()) as { entries: { target: string; result: string }[] };
      assert.deepEqual(rec.entries.map((e) => [e.target, e.result]), [[`web/${got.id}`, 'ok']]);
      assert.match(await (await fetch(`${snap!.api}/metrics`)).text(), /^dedup_pool_recoveries_total\{outcome="recovered"\} 1$/m);
    }

    // A daemon crash neither kills nor loses a sandbox: the next start adopts them all.
    const before = await ls();
    await snap!.kill9();
    assert.ok(existsSync(`/proc/${active.pid}`), 'the active sandbox outlives the daemon');
    snap = stack!.snap = await startSnapshotter(tmp);
    const adopted = await ls();
    // Every sandbox is still there, same pid and state (the pool may have started more up to initial_size).
    for (const s of before.sandboxes) assert.ok(adopted.sandboxes.some((a) => a.id === s.id && a.pid === s.pid && a.state === s.state), `${s.id} adopted`);
    const c1 = await counterOf(rootfs);
    await waitFor('the adopted sandbox to run on', async () => (await counterOf(rootfs)) > c1, 10_000);
    assert.deepEqual(await pool(['release', 'web', active.id]), { id: active.id, state: 'frozen' });
    assert.equal((await ls()).active, 0);

    const pids = adopted.sandboxes.map((s) => s.pid);
    assert.deepEqual(await pool(['rm', 'web']), { removed: 'web' });
    assert.deepEqual(await pool<Summary[]>(['ls']), []);
    for (const pid of pids) assert.equal(existsSync(`/proc/${pid}`), false, `sandbox pid ${pid} gone`);
    assert.equal((await readFile('/proc/mounts', 'utf8')).includes(join(snap!.root, 'pools')), false, 'no sandbox mount left');
    assert.equal(existsSync(join(snap!.root, 'pools', 'web')), false);
    const parents = await readdir(join(cgroup2Root(), 'dedup-snapshotter')).catch(() => [] as string[]);
    for (const dir of parents) assert.equal(existsSync(join(cgroup2Root(), 'dedup-snapshotter', dir, 'web')), false, 'no pool cgroup left');
  });

  it('pool checkpoint --as-base: the new base rolls through the pool (frozen sandboxes replaced, the handed-out one runs on and goes at its release) and is saved in the config', async (t) => {
    if (criuMissing) return t.skip(criuMissing);
    const summary = async (): Promise<Summary> => (await pool<Summary[]>(['ls'])).find((p) => p.name === 'roll')!;
    const created = await pool<Summary>(['create', 'roll', '--image', ref, '--min', '2', '--max', '2', '--initial', '2', '--ready', '/ready', '--from-checkpoint',
      '--deny-syscalls', 'mkdir,mkdirat', '--', '/bin/sh', '/counter.sh']);
    assert.match(created.base!, /^ck-/);
    const got = await pool<{ id: string; pid: number }>(['acquire', 'roll', '--timeout', '30000']);
    const ck = await pool<{ id: string; kind: string }>(['checkpoint', 'roll', got.id, '--as-base']);
    assert.equal(ck.kind, 'base');
    await waitFor('the frozen sandboxes restored from the new base', async () => {
      const s = await summary();
      const frozen = s.sandboxes.filter((x) => x.state === 'frozen');
      return s.base === ck.id && frozen.length === 2 && frozen.every((x) => x.from === ck.id);
    }, 60_000);
    assert.ok(existsSync(`/proc/${got.pid}`), 'the handed-out sandbox runs on');
    assert.equal((await summary()).sandboxes.find((x) => x.id === got.id)?.from, created.base);
    const saved = JSON.parse(await readFile(join(snap!.root, 'pools', 'roll.json'), 'utf8')) as { base_checkpoint?: string; from_checkpoint: boolean; template: { seccomp?: unknown } };
    assert.deepEqual([saved.base_checkpoint, saved.from_checkpoint], [ck.id, false], 'a restart starts from the new base');
    assert.deepEqual(saved.template.seccomp, { deny: ['mkdir', 'mkdirat'], errno: 'EPERM' });
    for (const s of (await summary()).sandboxes) assert.match(await readFile(`/proc/${s.pid}/status`, 'utf8'), /^Seccomp:\s+2$/m, `${s.id} filtered (--deny-syscalls)`);
    assert.deepEqual(await pool(['release', 'roll', got.id]), { id: got.id, state: 'destroyed' });
    const audit = (await (await fetch(`${snap!.api}/audit/logs?action=pool.checkpoint`)).json()) as { entries: { target: string; details: { as_base?: boolean } }[] };
    assert.ok(audit.entries.some((e) => e.target === `roll/${got.id}` && e.details.as_base === true));
    assert.deepEqual(await pool(['rm', 'roll']), { removed: 'roll' });
  });
});
