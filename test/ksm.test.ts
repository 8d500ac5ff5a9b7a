// KSM against the real /sys/kernel/mm/ksm: status, tune (and its all-or-nothing refusal), the
// daemon applying the config's "ksm" section, and processes opted in with prctl through the native
// addon getting their identical pages merged. Every test puts the machine's settings back.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KSM_DIR, ksmSettings, tuneKsm, type KsmSettings } from '../src/ksm/ksm.js';
import { dedupctl, dedupctlJson } from './fixtures/cli.js';
import { run, waitFor } from './fixtures/process.js';
import { startSnapshotter } from './fixtures/snapshotter.js';

const skip = !existsSync(KSM_DIR) ? `${KSM_DIR} missing: kernel without KSM` : process.getuid?.() !== 0 ? 'needs root to write KSM settings' : false;
const read = async (name: string): Promise<number> => Number((await readFile(join(KSM_DIR, name), 'utf8')).trim());
const DEDUPCTL = fileURLToPath(new URL('../src/cmd/dedupctl.js', import.meta.url));

describe('KSM', { skip }, () => {
  let saved: KsmSettings;
  let tmp: string;

  before(async () => {
    saved = await ksmSettings();
    tmp = await mkdtemp(join(tmpdir(), 'dedup-ksm-test-'));
  });

  after(async () => {
    if (saved) await tuneKsm(saved);
    await rm(tmp, { recursive: true, force: true });
  });

  it('ksm status reads the real sysfs', async () => {
    const before = await read('full_scans');
    const s = await dedupctlJson<Record<string, number>>(['ksm', 'status']);
    for (const k of ['run', 'pages_to_scan', 'sleep_millisecs', 'merge_across_nodes']) assert.equal(s[k], await read(k), k);
    // Counters move while the scanner runs: the figure shown lies between reads taken around it.
    assert.ok(s.full_scans! >= before && s.full_scans! <= (await read('full_scans')), 'full_scans');
    for (const k of ['pages_shared', 'pages_sharing', 'pages_unshared', 'pages_volatile']) {
      // Stopped, the scanner changes nothing: the figures must be exactly what sysfs holds.
      if (s.run === 0) assert.equal(s[k], await read(k), k);
      else assert.ok(Number.isInteger(s[k]) && s[k]! >= 0, k);
    }
    assert.equal(s.memory_saved_bytes, s.pages_sharing! * s.page_size!);
    assert.equal(s.page_size, Number((await run('getconf', ['PAGESIZE'])).stdout.trim()));
  });

  it('ksm tune writes sysfs, refuses bad values without changing anything, and the daemon applies the config', async () => {
    try {
      const want = { pages: saved.pages_to_scan + 7, sleep: saved.sleep_millisecs + 3 };
      const r = await dedupctlJson<{ previous: Record<string, number> }>(['ksm', 'tune', '--root', join(tmp, 'root'), '--pages-to-scan', String(want.pages), '--sleep-ms', String(want.sleep)]);
      assert.deepEqual(r.previous, { pages_to_scan: saved.pages_to_scan, sleep_millisecs: saved.sleep_millisecs });
      assert.equal(await read('pages_to_scan'), want.pages);
      assert.equal(await read('sleep_millisecs'), want.sleep);

      const bad = await dedupctl(['ksm', 'tune', '--root', join(tmp, 'root'), '--pages-to-scan', '0']);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /--pages-to-scan must be an integer from 1/);
      await assert.rejects(tuneKsm({ pages_to_scan: 5, run: 7 }), /KSM run must be an integer from 0 to 2, not 7/);
      assert.equal(await read('pages_to_scan'), want.pages, 'a refused tune writes nothing');
      const audit = await dedupctlJson<{ action: string; details: Record<string, number> }[]>(['audit', 'ls', '--root', join(tmp, 'root'), '--action', 'ksm.tune']);
      assert.deepEqual(audit[0]!.details, { pages_to_scan: want.pages, sleep_millisecs: want.sleep });

      await mkdir(join(tmp, 'daemon'));
      const snap = await startSnapshotter(join(tmp, 'daemon'), [], { enable_mem_dedup: true, ksm: { enabled: saved.run === 1, pages_to_scan: 321, scan_interval: 45 } });
      try {
        assert.equal(await read('pages_to_scan'), 321);
        assert.equal(await read('sleep_millisecs'), 45);
        const change = await fetch(`${snap.api}/config`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"ksm": {"pages_to_scan": 654}}' });
        assert.equal(change.status, 200);
        await waitFor('the daemon to apply ksm.pages_to_scan', async () => (await read('pages_to_scan')) === 654, 10_000);
      } finally {
        await snap.stop();
      }
    } finally {
      await tuneKsm(saved);
    }
  });

  it('processes started through `dedupctl ksm exec` get their identical pages merged: pages_sharing grows', async () => {
    const children: ChildProcess[] = [];
    let holders: number[] = [];
    const MiB = 1024 * 1024;
    try {
      // Each holds 32 MiB of the same non-zero bytes (zero pages are a special case in KSM).
      const hold = `const b = Buffer.alloc(${32 * MiB}, 0x5a); process.stdout.write('ready\\n'); setInterval(() => b[0], 1000);`;
      for (let i = 0; i < 4; i++) {
        const c = spawn(process.execPath, [DEDUPCTL, 'ksm', 'exec', '--root', join(tmp, 'root'), '--', process.execPath, '-e', hold], { stdio: ['ignore', 'pipe', 'inherit'] });
        children.push(c);
        await new Promise<void>((resolve, reject) => {
          c.stdout!.once('data', () => resolve());
          c.once('exit', (code) => reject(new Error(`ksm exec exited ${code}`)));
        });
      }
      // The holders are the launchers' children: ksm exec opted them in across fork and exec.
      holders = await Promise.all(children.map(async (c) => Number((await readFile(`/proc/${c.pid}/task/${c.pid}/children`, 'utf8')).trim())));
      for (const pid of holders) assert.match(await readFile(`/proc/${pid}/ksm_stat`, 'utf8'), /ksm_merge_any: yes/, `pid ${pid} is opted in`);
      const merging = async (): Promise<number> => (await Promise.all(holders.map(async (pid) => Number((await readFile(`/proc/${pid}/ksm_merging_pages`, 'utf8')).trim()))))
        .reduce((a, b) => a + b, 0);
      assert.equal(await merging(), 0, 'nothing merged while the scanner is stopped');
      await tuneKsm({ run: 1, pages_to_scan: 20_000, sleep_millisecs: 10 });
      // Half of the 4 x 32 MiB merged is a clear signal; pages_sharing then counts at least the 3 copies' worth of it.
      const pages = (4 * 32 * MiB) / 4096;
      await waitFor('the holders\' pages to merge', async () => (await merging()) >= pages / 2, 60_000);
      assert.ok((await read('pages_sharing')) >= (3 * pages) / 8, `pages_sharing ${await read('pages_sharing')}`);
    } finally {
      // The launchers forward SIGTERM; their children are killed by PID too, whatever happens.
      for (const c of children) c.kill('SIGTERM');
      for (const pid of holders) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone with its launcher
        }
      }
      await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once('exit', r)))));
      await tuneKsm(saved);
    }
  });
});
