// The sandbox pool (src/sandbox/) for real: the seed's unit and integration tables, on sandboxes
// whose root filesystem is an active snapshot of a busybox image lazily pulled through containerd
// into our snapshotter, in cgroup v2 cgroups, frozen with cgroup.freeze, checkpointed and
// restored with Debian 13's CRIU from the private prefix scripts/setup.sh installs. Every test
// closes its pool and checks that no process, cgroup, mount or directory of it is left.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { RegistryClient } from '../src/registry/client.js';
import { cgroup2Root, parseEvents } from '../src/cgroup2.js';
import { Cgroup } from '../src/sandbox/cgroup.js';
import { CheckpointStore } from '../src/sandbox/checkpoints.js';
import { Criu } from '../src/sandbox/criu.js';
import { chainId, imageChainId } from '../src/sandbox/image-snapshot.js';
import {
  canTransition, defaultPoolConfig, parsePoolConfig, parseRecoveryStrategy, seccompArg, type PoolConfigInput, type PooledState,
} from '../src/sandbox/pool-config.js';
import { RecoveryManager, type RecoveryResult } from '../src/sandbox/recovery.js';
import { parseStatus, type Sandbox } from '../src/sandbox/sandbox.js';
import type { SnapshotService } from '../src/sandbox/sandbox-resources.js';
import { WarmupPool } from '../src/sandbox/warmup-pool.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { mustRun, waitFor } from './fixtures/process.js';
import { counterOf, grpcSnapshots, leftovers, startPoolStack, type PoolStack } from './fixtures/sandbox.js';
import { snapshotsClient, type SnapshotsClient } from './fixtures/snapshots-client.js';

const TEMPLATE = { image: '', command: ['/bin/sh', '/counter.sh'], ready: { file: '/ready' } };

describe('sandbox pool: configuration (unit)', () => {
  it('TestDefaultPoolConfig: defaults', () => {
    const c = defaultPoolConfig('web', { image: 'r/x:1', command: ['/bin/true'] });
    assert.deepEqual({ min: c.min_size, max: c.max_size, initial: c.initial_size, interval: c.refill_interval_ms, batch: c.refill_batch_size, timeout: c.acquire_timeout_ms },
      { min: 1, max: 4, initial: 1, interval: 1000, batch: 2, timeout: 5000 });
    assert.deepEqual(c.template.namespaces, { pid: true, mount: true, uts: true, ipc: true, network: false });
    assert.equal(c.template.env.PATH, '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
    assert.equal(c.from_checkpoint, false);
  });

  it('TestPoolConfigValidation: min > max, initial > max, bad names and ranges are refused, naming the key', () => {
    const t = { image: 'r/x:1', command: ['/bin/true'] };
    const bad: [PoolConfigInput, RegExp][] = [
      [{ name: 'p', min_size: 5, max_size: 2, template: t }, /min_size 5 is above max_size 2/],
      [{ name: 'p', initial_size: 9, max_size: 4, template: t }, /initial_size 9 is above max_size 4/],
      [{ name: 'Bad Name', template: t }, /name: must be/],
      [{ name: 'p', min_size: -1, template: t }, /min_size/],
      [{ name: 'p', max_size: 0, template: t }, /max_size/],
      [{ name: 'p', refill_batch_size: 0, template: t }, /refill_batch_size/],
      [{ name: 'p', base_checkpoint: 'ck-1', from_checkpoint: true, template: t }, /exclude each other/],
      [{ name: 'p', template: t, extra: 1 } as PoolConfigInput, /Unrecognized key/],
    ];
    for (const [input, message] of bad) assert.throws(() => parsePoolConfig(input), (err: Error & { code?: string }) => err.code === 'ERR_INVALID_CONFIG' && message.test(err.message), JSON.stringify(input));
  });

  it('TestRecoveryStrategyDefaults: defaults and ranges', () => {
    assert.deepEqual(parseRecoveryStrategy(), { max_retries: 3, retry_interval_ms: 100, snapshot_selector: 'latest', health_timeout_ms: 2000 });
    assert.throws(() => parseRecoveryStrategy({ snapshot_selector: 'oldest' }), /snapshot_selector/);
    assert.throws(() => parseRecoveryStrategy({ max_retries: -1 }), /max_retries/);
  });

  it('TestPooledStateTransitions: frozen ⇄ active, active → failed → active, anything → destroyed, nothing out of destroyed', () => {
    const ok: [PooledState, PooledState][] = [['starting', 'frozen'], ['frozen', 'active'], ['active', 'frozen'], ['active', 'failed'], ['failed', 'active'], ['frozen', 'destroyed'], ['active', 'destroyed'], ['failed', 'destroyed']];
    const no: [PooledState, PooledState][] = [['frozen', 'failed'], ['starting', 'active'], ['failed', 'frozen'], ['destroyed', 'active'], ['destroyed', 'frozen']];
    for (const [a, b] of ok) assert.equal(canTransition(a, b), true, `${a} → ${b}`);
    for (const [a, b] of no) assert.equal(canTransition(a, b), false, `${a} → ${b}`);
  });

  it('TestSandboxTemplateValidation: a template the pool cannot run is refused with the reason', () => {
    const bad: [unknown, RegExp][] = [
      [{ image: 'r/x:1', command: [] }, /command: needs at least the program/],
      [{ image: 'r/x:1', command: ['/x'], namespaces: { pid: false } }, /own PID namespace/],
      [{ image: 'r/x:1', command: ['/x'], namespaces: { mount: false } }, /own mount namespace/],
      [{ image: 'r/x:1', command: ['/x'], cgroup: { limits: { 'bad file': '1' } } }, /cgroup v2 interface file/],
      [{ image: 'r/x:1', command: ['/x'], ready: { file: 'relative' } }, /absolute path/],
      [{ image: 'r/x:1', command: ['/x'], ready: { file: '/../etc' } }, /must not contain \.\./],
      [{ image: '', command: ['/x'] }, /image/],
      [{ image: 'r/x:1', command: ['/x'], seccomp: {} }, /seccomp\.deny: Required/],
      [{ image: 'r/x:1', command: ['/x'], seccomp: { deny: [] } }, /seccomp\.deny: needs at least one system call/],
      [{ image: 'r/x:1', command: ['/x'], seccomp: { deny: ['Mount'] } }, /seccomp\.deny\.0: must be system call names/],
      [{ image: 'r/x:1', command: ['/x'], seccomp: { deny: ['mount', 'mount'] } }, /seccomp\.deny: names a system call twice/],
      [{ image: 'r/x:1', command: ['/x'], seccomp: { deny: ['mount'], errno: 'EIO' } }, /seccomp\.errno/],
    ];
    for (const [template, message] of bad) {
      assert.throws(() => parsePoolConfig({ name: 'p', template }), (err: Error & { code?: string }) => err.code === 'ERR_INVALID_CONFIG' && message.test(err.message), JSON.stringify(template));
    }
    const ok = parsePoolConfig({ name: 'p', template: { image: 'r/x:1', command: ['/x'], seccomp: { deny: ['mount', 'umount2'] } } });
    assert.deepEqual(ok.template.seccomp, { deny: ['mount', 'umount2'], errno: 'EPERM' });
    assert.equal(seccompArg(ok.template.seccomp!), '1:mount,umount2');
  });

  it('exit status, cgroup.events and chain ids parse as the kernel, the shim and the OCI spec write them', () => {
    assert.deepEqual(parseStatus('exited 3\n'), { code: 3, signal: null });
    assert.deepEqual(parseStatus('signaled 9\n'), { code: null, signal: 9 });
    assert.deepEqual(parseStatus(undefined), { code: null, signal: null });
    assert.deepEqual(parseEvents('populated 1\nfrozen 0\n'), { populated: true, frozen: false });
    const a = 'sha256:' + 'a'.repeat(64);
    const b = 'sha256:' + 'b'.repeat(64);
    assert.equal(chainId([a]), a);
    // sha256("sha256:aaa… sha256:bbb…"), computed with sha256sum.
    assert.equal(chainId([a, b]), 'sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c');
  });
});

describe('sandbox pool on our snapshotter (integration)', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let stack: PoolStack | undefined;
  let grpcClient: SnapshotsClient | undefined;
  let snapshots: SnapshotService;
  let registryClient: RegistryClient;
  let ref: string;
  let criu: Criu | undefined;
  let criuMissing = '';
  let checkpoints: CheckpointStore | undefined;
  const cgroupParent = join(cgroup2Root(), `dedup-test-${process.pid}`);
  const seenPids: number[] = [];
  /** What the refill loops reported; a test that waits on a refill shows them when it times out. */
  const refillErrors: string[] = [];

  const newPool = async (name: string, config: Partial<PoolConfigInput> = {}, opts: { start?: boolean; memoryMerge?: boolean } = {}): Promise<WarmupPool> => {
    const pool = new WarmupPool(parsePoolConfig({ name, ...config, template: { ...TEMPLATE, ...config.template, image: config.template?.image || ref } }), {
      dir: join(tmp, 'pools', name), cgroupParent, snapshots,
      resolveImage: (r) => imageChainId(registryClient, r, { os: 'linux', architecture: 'amd64' }),
      checkpoints, criu, memoryMerge: opts.memoryMerge,
    });
    pool.on('ready', (sb) => seenPids.push(sb.pid, sb.shimPid));
    pool.on('refillFailed', (err) => refillErrors.push(`${name}: ${err.message}`));
    if (opts.start !== false) await pool.start();
    return pool;
  };

  /** Closes the pool, then checks that nothing of it is left and no sandbox snapshot remains. */
  const closeAndCheck = async (pool: WarmupPool, extraPids: number[] = []): Promise<void> => {
    const pids = [...seenPids, ...extraPids, ...pool.sandboxes().flatMap((s) => [s.pid, s.shimPid])];
    await pool.close();
    assert.deepEqual(await leftovers(pids, join(cgroupParent, pool.name), join(tmp, 'pools', pool.name)), []);
    assert.deepEqual((await grpcClient!.list([])).filter((n) => n.startsWith('dedup-sandbox/')), []);
  };

  const withPool = async (name: string, config: Partial<PoolConfigInput>, body: (pool: WarmupPool) => Promise<void>): Promise<void> => {
    const pool = await newPool(name, config);
    try {
      await body(pool);
    } finally {
      await closeAndCheck(pool);
    }
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-sandbox-test-'));
    stack = await startPoolStack(tmp);
    ref = stack.ref;
    grpcClient = snapshotsClient(stack.snap.socket);
    snapshots = grpcSnapshots(grpcClient);
    registryClient = new RegistryClient({ plainHttp: true });
    try {
      criu = Criu.at();
      await criu.check();
      checkpoints = await CheckpointStore.open(join(tmp, 'checkpoints'), criu);
    } catch (err) {
      criu = undefined;
      criuMissing = `no working CRIU: ${(err as Error).message}`;
    }
  });

  after(async () => {
    grpcClient?.close();
    await registryClient?.close();
    await stack?.stop();
    await rm(cgroupParent, { recursive: true, force: true }).catch(() => undefined);
    await Cgroup.open(cgroupParent).remove().catch(() => undefined);
    await rm(tmp, { recursive: true, force: true });
  });

  it('TestWarmupPoolInit: initial_size sandboxes, frozen, each in its own namespaces on an active snapshot of the image', async () => {
    await withPool('init', { initial_size: 3, min_size: 1, max_size: 3 }, async (pool) => {
      assert.equal(pool.size(), 3);
      assert.equal(pool.activeCount(), 0);
      const ours = (ns: string): Promise<string> => readlink(`/proc/self/ns/${ns}`);
      for (const sb of pool.sandboxes()) {
        assert.equal(sb.state, 'frozen');
        assert.deepEqual(await sb.cgroup.events(), { populated: true, frozen: true });
        assert.ok((await sb.cgroup.pids()).includes(sb.pid));
        for (const ns of ['pid', 'mnt', 'uts', 'ipc']) assert.notEqual(await readlink(`/proc/${sb.pid}/ns/${ns}`), await ours(ns), `${ns} namespace`);
        assert.equal(await readlink(`/proc/${sb.pid}/ns/net`), await ours('net'), 'network namespace shared (template: network false)');
        const status = await readFile(`/proc/${sb.pid}/status`, 'utf8');
        assert.match(status, /^NSpid:\s+\d+\s+1$/m, 'PID 1 of its own PID namespace');
        const mountinfo = await readFile(`/proc/${sb.pid}/mountinfo`, 'utf8');
        const root = mountinfo.split('\n').find((l) => l.split(' ')[4] === '/')!;
        assert.match(root, / - overlay overlay .*upperdir=[^,]*\/snapshots\/\d+\/fs/, 'root is an overlay of our snapshotter');
        assert.equal(mountinfo.trim().split('\n').length, 3, `only /, /proc and /dev: ${mountinfo}`);
        assert.ok(existsSync(join(sb.rootfs, 'counter.sh')));
      }
      const keys = (await grpcClient!.list([])).filter((n) => n.startsWith('dedup-sandbox/init/'));
      assert.equal(keys.length, 3);
    });
  });

  it('template options: a network namespace, the host name, KSM merging (enable_mem_dedup) for the whole tree', async () => {
    const pool = await newPool('opts', { initial_size: 1, min_size: 0, max_size: 1, template: { ...TEMPLATE, image: '', hostname: 'box', namespaces: { network: true } } }, { memoryMerge: true });
    try {
      const [sb] = pool.sandboxes();
      assert.notEqual(await readlink(`/proc/${sb!.pid}/ns/net`), await readlink('/proc/self/ns/net'));
      // The host name in the sandbox's UTS namespace (procfs answers for the reader's namespace).
      assert.equal((await mustRun('nsenter', ['--target', String(sb!.pid), '--uts', 'cat', '/proc/sys/kernel/hostname'])).trim(), 'box');
      for (const pid of await sb!.cgroup.pids()) assert.match(await readFile(`/proc/${pid}/ksm_stat`, 'utf8'), /^ksm_merge_any: yes$/m, `pid ${pid}`);
    } finally {
      await closeAndCheck(pool);
    }
  });

  // mkdir in the sandbox on demand: /try-X makes it run `mkdir` once and write its exit status
  // and message to /tmp/rc-X and /tmp/err-X.
  const MKDIR_ON_DEMAND = ['/bin/sh', '-c', `i=0
while true; do
  i=$((i+1)); echo $i > /tmp/counter
  [ $i -ge 2 ] && [ ! -e /ready ] && touch /ready
  for t in a b; do
    if [ -e /try-$t ] && [ ! -e /tmp/rc-$t ]; then mkdir /tmp/made-$t 2>/tmp/err-$t; echo $? > /tmp/rc-$t; fi
  done
  sleep 0.05
done`];
  const SECCOMP = { ...TEMPLATE, image: '', command: MKDIR_ON_DEMAND, seccomp: { deny: ['mkdir', 'mkdirat'] } };
  /** Runs mkdir in the sandbox (try `t`); its exit status and message. */
  const mkdirIn = async (sb: Sandbox, t: string): Promise<{ rc: string; err: string }> => {
    await writeFile(join(sb.rootfs, `try-${t}`), '');
    const rc = join(sb.rootfs, `tmp/rc-${t}`);
    await waitFor(`mkdir ${t} to have run`, async () => (await readFile(rc, 'utf8').catch(() => '')).endsWith('\n'), 10_000);
    return { rc: (await readFile(rc, 'utf8')).trim(), err: await readFile(join(sb.rootfs, `tmp/err-${t}`), 'utf8') };
  };

  it('seccomp: the template\'s denied system calls fail with EPERM in the sandbox (a filter on its whole tree); an unknown name fails the start', async () => {
    await withPool('seccomp', { initial_size: 1, min_size: 0, max_size: 1, template: SECCOMP }, async (pool) => {
      const sb = await pool.acquire();
      assert.match(await readFile(`/proc/${sb.pid}/status`, 'utf8'), /^Seccomp:\s+2$/m, 'a seccomp filter (mode 2) on the sandbox');
      const r = await mkdirIn(sb, 'a');
      assert.equal(r.rc, '1');
      assert.match(r.err, /Operation not permitted/);
      assert.equal(existsSync(join(sb.rootfs, 'tmp/made-a')), false);
      await writeFile(join(sb.rootfs, 'tmp/allowed'), 'other system calls work');
    });
    const unknown = await newPool('seccomp-bad', { template: { ...SECCOMP, seccomp: { deny: ['mkdir', 'nosuchcall'] } } }, { start: false });
    await assert.rejects(unknown.start(), (err: Error & { code?: string }) =>
      err.code === 'ERR_INVALID_CONFIG' && /pool seccomp-bad: template\.seccomp\.deny: unknown system call "nosuchcall"/.test(err.message));
    assert.deepEqual(await leftovers([], join(cgroupParent, 'seccomp-bad'), join(tmp, 'pools', 'seccomp-bad')), []);
  });

  it('TestAcquireRelease and TestAcquireActivation: a thawed sandbox runs, a released one is frozen again and back in the pool', async () => {
    await withPool('acq', { initial_size: 2, min_size: 1, max_size: 2 }, async (pool) => {
      const sb = await pool.acquire();
      assert.equal(sb.state, 'active');
      assert.ok(sb.activatedAt);
      assert.equal(pool.activeCount(), 1);
      assert.deepEqual(await sb.cgroup.events(), { populated: true, frozen: false });
      const c0 = await counterOf(sb.rootfs);
      await waitFor('the counter to advance', async () => (await counterOf(sb.rootfs)) > c0 + 2, 10_000);
      assert.equal(await pool.release(sb.id), 'frozen');
      assert.equal(sb.state, 'frozen');
      assert.equal(pool.activeCount(), 0);
      assert.ok(pool.sandboxes().includes(sb));
      const frozenAt = await counterOf(sb.rootfs);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(await counterOf(sb.rootfs), frozenAt, 'a frozen sandbox does not run');
      await assert.rejects(pool.release('sb-nope'), (err: Error & { code?: string }) => err.code === 'ERR_NOT_FOUND');
    });
  });

  it('a frozen sandbox killed from outside is not handed out: Acquire destroys it and takes the next', async () => {
    await withPool('killed', { initial_size: 2, min_size: 0, max_size: 2 }, async (pool) => {
      const [first, second] = pool.sandboxes();
      process.kill(first!.pid, 'SIGKILL');
      // The kill lands asynchronously; then the frozen shim cannot reap it (a zombie).
      await waitFor('the killed sandbox to be a zombie', async () => !(await first!.alive()), 10_000);
      const got = await pool.acquire();
      assert.equal(got.id, second!.id);
      assert.ok(await got.alive());
      assert.equal(first!.state, 'destroyed');
    });
  });

  it('TestPoolRefill: below min_size the refill loop starts sandboxes again, in the background', async () => {
    await withPool('refill', { initial_size: 2, min_size: 2, max_size: 4, refill_interval_ms: 50 }, async (pool) => {
      const a = await pool.acquire();
      const b = await pool.acquire();
      assert.notEqual(a.id, b.id);
      await waitFor('two frozen again', async () => pool.size() === 2, 30_000);
      assert.equal(pool.activeCount(), 2);
    });
  });

  it('TestPoolShrink: above max_size the refill loop destroys frozen sandboxes', async () => {
    await withPool('shrink', { initial_size: 2, min_size: 2, max_size: 2, refill_interval_ms: 50 }, async (pool) => {
      const taken = [await pool.acquire(), await pool.acquire()];
      await waitFor('the pool refilled', async () => pool.size() === 2, 30_000);
      for (const sb of taken) await pool.release(sb.id);
      await waitFor('the pool back at max_size', async () => pool.size() === 2, 30_000);
      assert.equal(pool.sandboxes().length, 2);
    });
  });

  it('TestAcquireTimeout: an empty pool answers ERR_POOL_EXHAUSTED once the timeout passes', async () => {
    // Sandboxes that never become ready: the pool stays empty.
    await withPool('empty', { initial_size: 0, min_size: 0, max_size: 1, template: { ...TEMPLATE, image: '', ready: { file: '/never', timeout_ms: 60_000 } } }, async (pool) => {
      const t0 = performance.now();
      await assert.rejects(pool.acquire(300), (err: Error & { code?: string }) => err.code === 'ERR_POOL_EXHAUSTED' && /pool empty: no sandbox ready within 300 ms/.test(err.message));
      assert.ok(performance.now() - t0 >= 290);
    });
  });

  it('TestConcurrentAcquire: 10 concurrent Acquires get 10 different sandboxes; concurrent Releases return all', async () => {
    await withPool('conc', { initial_size: 10, min_size: 0, max_size: 10 }, async (pool) => {
      const got = await Promise.all(Array.from({ length: 10 }, () => pool.acquire()));
      assert.equal(new Set(got.map((s) => s.id)).size, 10);
      assert.equal(pool.activeCount(), 10);
      assert.equal(pool.size(), 0);
      const released = await Promise.all(got.map((s) => pool.release(s.id)));
      assert.deepEqual(released, Array(10).fill('frozen'));
      assert.equal(pool.size(), 10);
    });
  });

  it('TestPoolClose: Close kills active sandboxes too and leaves no process, cgroup, mount, snapshot or directory', async () => {
    const pool = await newPool('close', { initial_size: 2, min_size: 2, max_size: 3 });
    const active = await pool.acquire();
    const pids = [active.pid, active.shimPid];
    await closeAndCheck(pool, pids);
    await assert.rejects(pool.acquire(), (err: Error & { code?: string }) => err.code === 'ERR_FAILED_PRECONDITION');
  });

  it('an unknown image fails the start with the reason', async () => {
    const unknown = await newPool('unknown', { template: { ...TEMPLATE, image: `${stack!.registry.host}/src/counter:1` } }, { start: false });
    await assert.rejects(unknown.start(), (err: Error & { code?: string }) => err.code === 'ERR_NOT_FOUND' && /no committed snapshot sha256:[0-9a-f]{64}; pull it with the dedup snapshotter/.test(err.message));
    assert.deepEqual(await leftovers([], join(cgroupParent, 'unknown'), join(tmp, 'pools', 'unknown')), []);
  });

  it('template cgroup limits: written into every sandbox\'s cgroup where cgroup v2 has the controller; where it has not, the start fails saying the limit is not supported on this host', async (t) => {
    const controllers = new Set((await readFile(join(cgroup2Root(), 'cgroup.controllers'), 'utf8')).split(/\s+/).filter(Boolean));
    const limits: Record<string, string> = {};
    if (controllers.has('hugetlb')) limits['hugetlb.2MB.max'] = '2097152';
    if (controllers.has('pids')) limits['pids.max'] = '16';
    if (controllers.has('memory')) limits['memory.max'] = '67108864';
    if (controllers.has('cpu')) limits['cpu.max'] = '50000 100000';
    if (Object.keys(limits).length) {
      await withPool('limits', { initial_size: 1, min_size: 0, max_size: 1, template: { ...TEMPLATE, image: '', cgroup: { limits } } }, async (pool) => {
        const [sb] = pool.sandboxes();
        for (const [file, value] of Object.entries(limits)) assert.equal((await readFile(join(sb!.cgroup.path, file), 'utf8')).trim(), value, file);
      });
    }
    const missing = ['pids', 'memory', 'cpu'].filter((c) => !controllers.has(c));
    for (const c of missing) {
      const file = { pids: 'pids.max', memory: 'memory.max', cpu: 'cpu.max' }[c]!;
      const limited = await newPool(`no-${c}`, { template: { ...TEMPLATE, image: '', cgroup: { limits: { [file]: '16' } } } }, { start: false });
      await assert.rejects(limited.start(), (err: Error & { code?: string }) => err.code === 'ERR_UNSUPPORTED'
        && new RegExp(`^pool no-${c}: template\\.cgroup\\.limits: limits on "${c}" are not supported on this host: cgroup v2 at \\S+ has no ${c} controller`).test(err.message));
      assert.deepEqual(await leftovers([], join(cgroupParent, `no-${c}`), join(tmp, 'pools', `no-${c}`)), []);
    }
    if (missing.length) t.skip(`${missing.join(', ')} limits not applied here: cgroup v2 at ${cgroup2Root()} has only ${[...controllers].join(', ') || 'no controllers'} (the others are bound to cgroup v1); their refusal was checked`);
  });

  it('a sandbox that exits 0 is a release, not a failure: destroyed, and the pool refills', async () => {
    await withPool('clean', { initial_size: 1, min_size: 1, max_size: 1, refill_interval_ms: 50 }, async (pool) => {
      const sb = await pool.acquire();
      const exit = new Promise<{ code: number | null }>((resolve) => pool.once('exit', (_s, status) => resolve(status)));
      await writeFile(join(sb.rootfs, 'stop'), '');
      assert.deepEqual(await exit, { code: 0, signal: null });
      assert.equal(sb.state, 'destroyed');
      assert.equal(pool.failedCount(), 0);
      await waitFor('a new sandbox', async () => pool.size() === 1, 30_000);
    });
  });

  describe('with CRIU', () => {
    const watchPool = async (name: string, config: Partial<PoolConfigInput>, strategy: object, body: (pool: WarmupPool, rm: RecoveryManager, sb: Sandbox) => Promise<void>, health?: (sb: Sandbox) => Promise<void>): Promise<void> => {
      await withPool(name, config, async (pool) => {
        const manager = new RecoveryManager(parseRecoveryStrategy(strategy), pool, checkpoints!, health);
        try {
          const sb = await pool.acquire();
          manager.watch(sb.id);
          await body(pool, manager, sb);
        } finally {
          manager.close();
        }
      });
    };
    const outcome = (manager: RecoveryManager): Promise<RecoveryResult> => new Promise((resolve) => {
      manager.once('recovered', resolve);
      manager.once('failed', resolve);
    });

    it('TestFaultDetection and TestRecoverFromSnapshot: kill -9 of an active sandbox is seen and it is restored with its state (its in-memory counter continues from the checkpoint)', async (t) => {
      if (!criu) return t.skip(criuMissing);
      await watchPool('recover', { initial_size: 1, min_size: 0, max_size: 1 }, {}, async (pool, manager, sb) => {
        await waitFor('the counter to pass 5', async () => (await counterOf(sb.rootfs)) > 5, 10_000);
        // The tree keeps counting while criu dumps it: its value at the dump lies between these.
        const beforeCheckpoint = await counterOf(sb.rootfs);
        const ck = await pool.checkpoint(sb.id);
        const atCheckpoint = await counterOf(sb.rootfs);
        await waitFor('the counter to run on past the checkpoint', async () => (await counterOf(sb.rootfs)) > atCheckpoint + 20, 10_000);
        const atKill = await counterOf(sb.rootfs);
        const oldPid = sb.pid;
        const detected = new Promise<number>((resolve) => manager.once('detected', (_s, status, at) => {
          assert.deepEqual(status, { code: null, signal: 9 });
          resolve(at);
        }));
        const result = outcome(manager);
        const killedAt = performance.now();
        process.kill(oldPid, 'SIGKILL');
        const at = await detected;
        t.diagnostic(`detected ${(at - killedAt).toFixed(1)} ms after kill -9`);
        const r = await result;
        assert.equal(r.outcome, 'recovered', r.error);
        assert.equal(r.checkpoint, ck.id);
        assert.equal(sb.state, 'active');
        assert.notEqual(sb.pid, oldPid);
        t.diagnostic(`recovered in ${r.ms.toFixed(1)} ms`);
        // The restored tree counts on from its memory at the checkpoint, not from the file's value.
        let seen = atKill;
        await waitFor('the restored counter to write', async () => (seen = await counterOf(sb.rootfs)) !== atKill, 10_000);
        assert.ok(seen > beforeCheckpoint && seen <= atCheckpoint + 3 && seen < atKill, `restored counter ${seen}: checkpoint ${beforeCheckpoint}-${atCheckpoint}, kill ${atKill}`);
        assert.match(await readFile(`/proc/${sb.pid}/status`, 'utf8'), /^NSpid:\s+\d+\s+1$/m, 'PID 1 of a new PID namespace');
        seenPids.push(oldPid, sb.pid, sb.shimPid);
      });
    });

    it('TestRecoveryRetry and TestRecoveryHealthCheck: a failing health check is retried up to max_retries, then the sandbox is failed and reported', async (t) => {
      if (!criu) return t.skip(criuMissing);
      let checks = 0;
      const pids: number[] = [];
      const flaky = async (sb: Sandbox): Promise<void> => {
        checks++;
        pids.push(sb.pid);
        assert.ok(await sb.alive(), 'the health check sees the restored tree running');
        if (checks < 3) throw new Error(`health check ${checks} fails`);
      };
      await watchPool('retry', { initial_size: 1, min_size: 0, max_size: 1 }, { max_retries: 3, retry_interval_ms: 10 }, async (pool, manager, sb) => {
        await pool.checkpoint(sb.id);
        const result = outcome(manager);
        process.kill(sb.pid, 'SIGKILL');
        const r = await result;
        assert.equal(r.outcome, 'recovered', r.error);
        assert.equal(r.attempts, 3);
        assert.equal(new Set(pids).size, 3, 'each attempt restored a new tree');
        seenPids.push(...pids, sb.shimPid);
      }, flaky);

      await watchPool('giveup', { initial_size: 1, min_size: 0, max_size: 1 }, { max_retries: 2, retry_interval_ms: 10 }, async (pool, manager, sb) => {
        await pool.checkpoint(sb.id);
        const result = outcome(manager);
        process.kill(sb.pid, 'SIGKILL');
        const r = await result;
        assert.equal(r.outcome, 'failed');
        assert.equal(r.attempts, 3);
        assert.match(r.error!, /never healthy/);
        assert.equal(sb.state, 'failed');
        assert.equal(pool.failedCount(), 1);
        assert.deepEqual(await sb.cgroup.events(), { populated: false, frozen: false }, 'the last restored tree was killed');
        assert.equal(await pool.release(sb.id), 'destroyed');
      }, async () => {
        throw new Error('never healthy');
      });
    });

    it('a sandbox without a checkpoint is reported failed at once (selector latest), or restored from the pool base (nearest)', async (t) => {
      if (!criu) return t.skip(criuMissing);
      await watchPool('nock', { initial_size: 1, min_size: 0, max_size: 1 }, {}, async (pool, manager, sb) => {
        const result = outcome(manager);
        await writeFile(join(sb.rootfs, 'fail'), '');
        const r = await result;
        assert.equal(r.outcome, 'failed');
        assert.match(r.error!, /checkpoint of sandbox sb-[0-9a-f]+ not found \(none taken\)/);
        assert.equal(sb.state, 'failed');
        assert.equal(await pool.release(sb.id), 'destroyed');
      });
    });

    it('seccomp with CRIU: a base checkpoint of a filtered sandbox restores with its filter (mkdir still fails with EPERM)', async (t) => {
      if (!criu) return t.skip(criuMissing);
      await withPool('seccomp-base', { initial_size: 1, min_size: 0, max_size: 1, from_checkpoint: true, template: SECCOMP }, async (pool) => {
        const sb = await pool.acquire();
        assert.equal(sb.from, pool.baseCheckpoint);
        assert.match(await readFile(`/proc/${sb.pid}/status`, 'utf8'), /^Seccomp:\s+2$/m);
        const r = await mkdirIn(sb, 'b');
        assert.equal(r.rc, '1');
        assert.match(r.err, /Operation not permitted/);
      });
    });

    it('a pool from a base checkpoint: sandboxes are restored warm from it; a new base rolls through the pool; the base is not removed while in use', async (t) => {
      if (!criu) return t.skip(criuMissing);
      await withPool('based', { initial_size: 2, min_size: 2, max_size: 2, refill_interval_ms: 50, from_checkpoint: true }, async (pool) => {
        const base = pool.baseCheckpoint!;
        assert.ok(base);
        for (const sb of pool.sandboxes()) assert.equal(sb.from, base);
        await assert.rejects(checkpoints!.remove(base), (err: Error & { code?: string }) => err.code === 'ERR_FAILED_PRECONDITION');
        const sb = await pool.acquire();
        // Warm: the restored counter starts where the base's was, not from 1.
        let baseCounter = 0;
        await waitFor('the restored sandbox to write its counter', async () => (baseCounter = await counterOf(sb.rootfs)) > 0, 10_000);
        assert.ok(baseCounter > 1, `counter ${baseCounter}`);
        const next = await pool.checkpoint(sb.id, { asBase: true });
        assert.equal(next.kind, 'base');
        assert.equal(pool.baseCheckpoint, next.id);
        // Frozen sandboxes of the old base are replaced (a batch of 2 per pass); the handed-out one runs on.
        await waitFor('every frozen sandbox from the new base', async () => pool.size() === 2 && pool.sandboxes().filter((s) => s !== sb).every((s) => s.from === next.id), 60_000)
          .catch((err: Error) => assert.fail(`${err.message}; refill errors: ${refillErrors.join('; ') || 'none'}`));
        assert.equal(sb.state, 'active');
        assert.ok(await sb.alive());
        await assert.rejects(checkpoints!.remove(base), (err: Error & { code?: string }) => err.code === 'ERR_FAILED_PRECONDITION', 'the old base is held while a sandbox of it runs');
        assert.equal(await pool.release(sb.id), 'destroyed', 'a sandbox of the old base is not returned to the pool');
        await waitFor('the old base released', async () => checkpoints!.remove(base).then(() => true, () => false), 10_000);
        await assert.rejects(checkpoints!.remove(next.id), (err: Error & { code?: string }) => err.code === 'ERR_FAILED_PRECONDITION', 'the new base is held');
        seenPids.push(sb.pid);
      });
    });
  });
});
