// Scenario "pool": the sandbox pool (src/sandbox/) on images lazily pulled into our snapshotter.
// - hand-out: Acquire (thaw of a frozen sandbox) over ≥ 200 hand-outs, alone and with 10
//   concurrent callers, against a cold `ctr run` of the same image to its first output;
// - detection: kill -9 of an active sandbox to the pool's exit handler;
// - recovery: kill -9 to a restored, health-checked sandbox (CRIU checkpoint), against a cold start;
// - memory: 8 identical frozen python sandboxes (14 modules imported), PSS summed over their
//   processes, without and with KSM merging (PR_SET_MEMORY_MERGE in the shim; ksmd run for the
//   measurement and put back as it was), restored from one base checkpoint where CRIU works.

import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { RegistryClient } from '../src/registry/client.js';
import { cgroup2Root } from '../src/cgroup2.js';
import { Cgroup } from '../src/sandbox/cgroup.js';
import { CheckpointStore } from '../src/sandbox/checkpoints.js';
import { Criu } from '../src/sandbox/criu.js';
import { imageChainId } from '../src/sandbox/image-snapshot.js';
import { parsePoolConfig, parseRecoveryStrategy, type PoolConfigInput } from '../src/sandbox/pool-config.js';
import { RecoveryManager, type RecoveryResult } from '../src/sandbox/recovery.js';
import { WarmupPool } from '../src/sandbox/warmup-pool.js';
import { dedupctlJson } from '../test/fixtures/cli.js';
import { pushOci, tarOf, writeOciImage } from '../test/fixtures/images.js';
import { pythonImageEntries } from '../test/fixtures/python-image.js';
import { grpcSnapshots, startPoolStack } from '../test/fixtures/sandbox.js';
import { snapshotsClient } from '../test/fixtures/snapshots-client.js';
import { summarize, type Summary } from './stats.js';

export interface Percentiles {
  n: number;
  median: number;
  p99: number;
  max: number;
}

export interface PoolResult {
  acquireMs: Percentiles;
  acquireConcurrentMs: Percentiles;
  coldCtrRunMs: Summary;
  coldSandboxMs: Summary;
  detectionMs: Percentiles;
  recoveryMs: Percentiles | null;
  memory: { sandboxes: number; fromCheckpoint: boolean; withoutKsmMiB: number; withKsmMiB: number; savedPercent: number } | null;
  notes: string[];
}

function percentiles(xs: number[]): Percentiles {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
  return { n: s.length, median: at(0.5), p99: at(0.99), max: s.at(-1)! };
}

const PY_IMPORTS = 'json, re, collections, datetime, decimal, argparse, logging, typing, dataclasses, pathlib, csv, email.parser, urllib.parse, http.client';
const PY_COMMAND = ['/usr/bin/python3', '-c', `import ${PY_IMPORTS}, time\nopen("/ready", "w").close()\nwhile True: time.sleep(3600)`];

/** PSS of every process in the pool's sandboxes, in MiB. */
async function poolPss(pool: WarmupPool): Promise<number> {
  let kib = 0;
  for (const sb of pool.sandboxes()) {
    for (const pid of await sb.cgroup.pids()) {
      const m = /^Pss:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => ''));
      kib += m ? Number(m[1]) : 0;
    }
  }
  return kib / 1024;
}

const KSM = '/sys/kernel/mm/ksm';

/** Runs ksmd fast until pages_sharing stops growing, then puts its settings back. */
async function ksmSettled<T>(measure: () => Promise<T>): Promise<T> {
  const files = ['run', 'pages_to_scan', 'sleep_millisecs'];
  const saved = await Promise.all(files.map((f) => readFile(join(KSM, f), 'utf8')));
  try {
    await writeFile(join(KSM, 'pages_to_scan'), '20000');
    await writeFile(join(KSM, 'sleep_millisecs'), '10');
    await writeFile(join(KSM, 'run'), '1');
    let last = -1;
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const sharing = Number(await readFile(join(KSM, 'pages_sharing'), 'utf8'));
      if (sharing === last && sharing > 0) break;
      last = sharing;
    }
    return await measure();
  } finally {
    for (const [i, f] of files.entries()) await writeFile(join(KSM, f), saved[i]!.trim()).catch(() => undefined);
  }
}

export async function poolScenario(tmp: string, hands: number, log: (s: string) => void): Promise<PoolResult> {
  const notes: string[] = [];
  const stack = await startPoolStack(tmp, { prefetch: { enabled: false } });
  const { registry, ctd, ref: counterRef } = stack;
  const grpcClient = snapshotsClient(stack.snap.socket);
  const client = new RegistryClient({ plainHttp: true });
  const cgroupParent = join(cgroup2Root(), `dedup-bench-${process.pid}`);
  const pools: WarmupPool[] = [];
  try {
    await writeOciImage(join(tmp, 'py-src'), 'py', [{ tar: await tarOf(await pythonImageEntries()), compression: 'gzip' }]);
    await pushOci(join(tmp, 'py-src'), 'py', `${registry.host}/src/py:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/src/py:1`, `${registry.host}/lazy/py:1`]);
    const pyRef = `${registry.host}/lazy/py:1`;
    const pull = await ctd.rpull(pyRef);
    if (pull.code !== 0) throw new Error(`rpull ${pyRef}: ${pull.stderr}`);
    let criu: Criu | undefined;
    let checkpoints: CheckpointStore | undefined;
    try {
      criu = Criu.at();
      await criu.check();
      checkpoints = await CheckpointStore.open(join(tmp, 'checkpoints'), criu);
    } catch (err) {
      notes.push(`recovery not measured: ${(err as Error).message}`);
      criu = undefined;
    }
    const snapshots = grpcSnapshots(grpcClient);
    const newPool = async (name: string, config: Partial<PoolConfigInput>, memoryMerge = false): Promise<WarmupPool> => {
      const pool = new WarmupPool(parsePoolConfig({ name, ...config, template: { image: counterRef, command: ['/bin/sh', '/counter.sh'], ready: { file: '/ready' }, ...config.template } }), {
        dir: join(tmp, 'pools', name), cgroupParent, snapshots, checkpoints, criu, memoryMerge,
        resolveImage: (r) => imageChainId(client, r, { os: 'linux', architecture: 'amd64' }),
      });
      pools.push(pool);
      await pool.start();
      return pool;
    };
    const close = async (pool: WarmupPool): Promise<void> => {
      await pool.close();
      pools.splice(pools.indexOf(pool), 1);
    };

    // Cold baselines: ctr run of the image to its first output, and a sandbox started cold to ready.
    const cold: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      const r = await ctd.ctr(['run', '--rm', '--snapshotter', 'dedup', counterRef, `cold-${i}`, '/bin/sh', '-c', 'echo ready']);
      if (r.code !== 0 || !r.stdout.includes('ready')) throw new Error(`ctr run: ${r.stderr}`);
      cold.push(performance.now() - t0);
    }
    const coldSandbox: number[] = [];
    {
      const pool = await newPool('cold', { initial_size: 0, min_size: 0, max_size: 1, refill_batch_size: 1 });
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        const sb = await pool.acquire(30_000);
        coldSandbox.push(performance.now() - t0);
        await pool.release(sb.id, { destroy: true });
      }
      await close(pool);
    }
    log(`pool: cold ctr run ${summarize(cold).median.toFixed(0)} ms, cold sandbox ${summarize(coldSandbox).median.toFixed(0)} ms`);

    // Hand-outs: a thaw each; released sandboxes are frozen back into the pool. min_size 0: with
    // min 10, every hand-out would have the refill loop start one sandbox and the release
    // destroy one (frozen above max), and on 2 cores those starts are what the figures would show.
    const acquire: number[] = [];
    const concurrent: number[] = [];
    {
      const pool = await newPool('handout', { initial_size: 10, min_size: 0, max_size: 10 });
      pool.on('acquired', (_sb, ms) => acquire.push(ms));
      for (let i = 0; i < hands; i++) await pool.release((await pool.acquire()).id);
      const sequential = acquire.splice(0);
      pool.removeAllListeners('acquired');
      pool.on('acquired', (_sb, ms) => concurrent.push(ms));
      await Promise.all(Array.from({ length: 10 }, async () => {
        for (let i = 0; i < Math.ceil(hands / 10); i++) await pool.release((await pool.acquire()).id);
      }));
      acquire.push(...sequential);
      await close(pool);
    }
    log(`pool: acquire p99 ${percentiles(acquire).p99.toFixed(2)} ms, 10 concurrent p99 ${percentiles(concurrent).p99.toFixed(2)} ms`);

    // Detection: kill -9 of an active sandbox to the pool's exit handler.
    const detection: number[] = [];
    {
      // min_size 0: the next sandbox is started when Acquire asks for it, not while one is killed.
      const pool = await newPool('detect', { initial_size: 1, min_size: 0, max_size: 1, refill_batch_size: 1 });
      for (let i = 0; i < hands; i++) {
        const sb = await pool.acquire(60_000);
        const seen = new Promise<number>((resolve) => pool.once('exit', () => resolve(performance.now())));
        const t0 = performance.now();
        process.kill(sb.pid, 'SIGKILL');
        detection.push((await seen) - t0);
        await pool.release(sb.id, { destroy: true });
      }
      await close(pool);
    }
    log(`pool: detection p99 ${percentiles(detection).p99.toFixed(2)} ms`);

    // Recovery: kill -9 to a restored, healthy sandbox.
    let recovery: Percentiles | null = null;
    if (criu && checkpoints) {
      const times: number[] = [];
      const pool = await newPool('recover', { initial_size: 1, min_size: 1, max_size: 2 });
      const manager = new RecoveryManager(parseRecoveryStrategy(), pool, checkpoints);
      try {
        const sb = await pool.acquire(30_000);
        manager.watch(sb.id);
        await pool.checkpoint(sb.id);
        let settle: (r: RecoveryResult) => void = () => undefined;
        manager.on('recovered', (r) => settle(r));
        manager.on('failed', (r) => settle(r));
        for (let i = 0; i < Math.min(hands, 50); i++) {
          const done = new Promise<RecoveryResult>((resolve) => (settle = resolve));
          const t0 = performance.now();
          process.kill(sb.pid, 'SIGKILL');
          const r = await done;
          if (r.outcome !== 'recovered') throw new Error(`recovery failed: ${r.error}`);
          times.push(performance.now() - t0);
        }
      } finally {
        manager.close();
        await close(pool);
      }
      recovery = percentiles(times);
      log(`pool: recovery p99 ${recovery.p99.toFixed(1)} ms`);
    }

    // Memory of 8 identical python sandboxes, frozen, without and with KSM merging.
    let memory: PoolResult['memory'] = null;
    if (existsSync(join(KSM, 'run'))) {
      // Restored from one base checkpoint (when CRIU works): the same memory at the same addresses,
      // which is what KSM can merge; cold-started interpreters differ in every pointer.
      const py = { template: { image: pyRef, command: PY_COMMAND, ready: { file: '/ready', timeout_ms: 60_000 } }, initial_size: 8, min_size: 0, max_size: 8, refill_batch_size: 8, from_checkpoint: criu !== undefined };
      const plain = await newPool('py-plain', py, false);
      const withoutKsm = await poolPss(plain);
      await close(plain);
      const merged = await newPool('py-ksm', py, true);
      const withKsm = await ksmSettled(() => poolPss(merged));
      await close(merged);
      memory = { sandboxes: 8, fromCheckpoint: py.from_checkpoint, withoutKsmMiB: withoutKsm, withKsmMiB: withKsm, savedPercent: 100 * (1 - withKsm / withoutKsm) };
      log(`pool: 8 python sandboxes ${withoutKsm.toFixed(1)} MiB PSS, with KSM ${withKsm.toFixed(1)} MiB`);
    } else notes.push('memory not measured: no KSM in this kernel');

    return {
      acquireMs: percentiles(acquire), acquireConcurrentMs: percentiles(concurrent), coldCtrRunMs: summarize(cold), coldSandboxMs: summarize(coldSandbox),
      detectionMs: percentiles(detection), recoveryMs: recovery, memory, notes,
    };
  } finally {
    for (const p of pools) await p.close().catch(() => undefined);
    await Cgroup.open(cgroupParent).remove().catch(() => undefined);
    grpcClient.close();
    await client.close();
    await stack.stop();
  }
}
