// Scenario "commit": the pause a commit costs a container that writes all the time and has a
// 100 MiB writable layer. Ours: `dedupctl commit` (pre-copy, then a cgroup freeze for the final
// copy only), pause_ms as it reports it (freeze request to thaw), over COMMITS commits of a
// container on a lazily pulled image. Baseline, in the same run: the plain way, as `nerdctl
// commit` does it, on containerd's overlayfs snapshotter: `ctr task pause`, the whole diff
// (`ctr snapshots diff`, containerd's walking differ), `ctr task resume`; its pause counted from
// the end of the pause command to the start of the resume command (ctr's own start-up is not
// charged to it).

import { join } from 'node:path';
import { dedupctl, dedupctlJson } from '../test/fixtures/cli.js';
import { startContainerd, unmountUnder } from '../test/fixtures/containerd.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage, type FileSpec } from '../test/fixtures/images.js';
import { run, waitFor } from '../test/fixtures/process.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { startSnapshotter } from '../test/fixtures/snapshotter.js';
import { summarize, type Summary } from './stats.js';

const COMMITS = 20;
const LAYER_MIB = 100;
const APPLETS = ['mkdir', 'mv', 'dd', 'touch', 'seq'];
// 100 files of 1 MiB, then, without a pause, appends, a file replaced by rename, and a file
// created and removed in each round.
const WORKLOAD = `mkdir -p /data /w; for i in $(seq 1 ${LAYER_MIB}); do dd if=/dev/urandom of=/data/f$i bs=1M count=1 2>/dev/null; done; touch /ready; `
  + 'i=0; while true; do i=$((i+1)); echo "line $i" >> /w/log; echo $i > /w/cur.tmp; mv /w/cur.tmp /w/cur; echo $i > /w/n.$((i % 50)); done';

export interface CommitBenchResult {
  commits: number;
  layerMiB: number;
  ours: { pauseMs: Summary; p50: number; p99: number; secondsPerCommit: Summary };
  baseline: { pauseMs: Summary; p50: number; p99: number };
  /** Baseline p50 / ours p50. */
  ratio: number;
}

/** Nearest-rank percentile. */
export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export async function commitScenario(tmp: string, reps: number, log: (s: string) => void): Promise<CommitBenchResult> {
  const base: FileSpec[] = [...(await busyboxEntries()), ...APPLETS.map((a): FileSpec => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' }))];
  await writeOciImage(join(tmp, 'src'), 'base', [{ tar: await tarOf(base), compression: 'gzip' }]);
  const registry = await startRegistry(tmp);
  const snap = await startSnapshotter(tmp);
  const ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
  const ctr = async (args: string[]): Promise<string> => {
    const r = await ctd.ctr(args, 600_000);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const started = async (id: string): Promise<void> =>
    waitFor(`${id} to fill its writable layer`, async () => (await ctd.ctr(['task', 'exec', '--exec-id', `r${Date.now()}`, id, '/bin/sh', '-c', '[ -e /ready ]'])).code === 0, 300_000);
  try {
    await pushOci(join(tmp, 'src'), 'base', `${registry.host}/bench/base:src`);
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/bench/base:src`, `${registry.host}/bench/base:esgz`]);
    const lazyRef = `${registry.host}/bench/base:esgz`;
    if ((await ctd.rpull(lazyRef)).code !== 0) throw new Error('rpull failed');
    await ctr(['run', '-d', '--snapshotter', 'dedup', lazyRef, 'ours', '/bin/sh', '-c', WORKLOAD]);
    await started('ours');
    const pauses: number[] = [];
    const seconds: number[] = [];
    for (let i = 0; i < COMMITS; i++) {
      const t = process.hrtime.bigint();
      const r = await dedupctl(['commit', '--root', snap.root, '--config', snap.config, '--address', ctd.socket, '--plain-http', '--json', 'ours', `${registry.host}/bench/committed:${i}`], { timeoutMs: 600_000 });
      if (r.code !== 0) throw new Error(`dedupctl commit: ${r.stderr}`);
      seconds.push(Number(process.hrtime.bigint() - t) / 1e9);
      const report = JSON.parse(r.stdout) as { pause_ms: number; freeze_wait_ms: number; pause_copied_files: number; pause_copied_bytes: number };
      pauses.push(report.pause_ms);
      log(`  commit ${i + 1}/${COMMITS}: paused ${report.pause_ms.toFixed(2)} ms (${report.freeze_wait_ms.toFixed(2)} ms until frozen; ${report.pause_copied_files} files, ${report.pause_copied_bytes} bytes copied in the pause), ${seconds.at(-1)!.toFixed(2)} s in all`);
    }
    await ctr(['task', 'kill', '-s', 'SIGKILL', 'ours']);

    const plainRef = `${registry.host}/bench/base:src`;
    await ctr(['image', 'pull', '--plain-http', plainRef]);
    await ctr(['run', '-d', plainRef, 'plain', '/bin/sh', '-c', WORKLOAD]);
    await started('plain');
    const baseline: number[] = [];
    for (let i = 0; i < Math.max(reps, 5); i++) {
      await ctr(['task', 'pause', 'plain']);
      const t = process.hrtime.bigint();
      const diff = await run('sh', ['-c', `ctr --address ${ctd.socket} snapshots diff plain > /dev/null`], { timeoutMs: 600_000 });
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      await ctr(['task', 'resume', 'plain']);
      if (diff.code !== 0) throw new Error(`ctr snapshots diff: ${diff.stderr}`);
      baseline.push(ms);
      log(`  plain ${i + 1}: ctr task pause + diff + resume kept it paused ${ms.toFixed(0)} ms`);
    }
    const ours = { pauseMs: summarize(pauses), p50: percentile(pauses, 50), p99: percentile(pauses, 99), secondsPerCommit: summarize(seconds) };
    const plain = { pauseMs: summarize(baseline), p50: percentile(baseline, 50), p99: percentile(baseline, 99) };
    return { commits: COMMITS, layerMiB: LAYER_MIB, ours, baseline: plain, ratio: plain.p50 / ours.p50 };
  } finally {
    await ctd.stop();
    await snap.stop();
    await unmountUnder(tmp);
    await registry.stop();
  }
}
