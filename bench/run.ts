// npm run bench [-- SCENARIO…] [--reps N]: runs the scenarios, prints a table, writes JSON and
// Markdown under bench/results/. Every figure compares against a baseline measured in the same run.

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../test/fixtures/process.js';
import { convertScenario } from './convert.js';
import { lazyScenarios } from './lazy.js';
import { MODES, prefetchScenario } from './prefetch.js';
import { pullRunScenario } from './snapshotter.js';

interface Row {
  scenario: string;
  metric: string;
  ours: string;
  baseline: string;
  ratio: string;
}

const range = (s: { min: number; max: number }, digits = 2): string => `${s.min.toFixed(digits)}–${s.max.toFixed(digits)} s`;

const SCENARIOS: Record<string, (tmp: string, reps: number, log: (s: string) => void) => Promise<{ result: unknown; rows: Row[] }>> = {
  async 'pull-run'(tmp, reps, log) {
    const r = await pullRunScenario(tmp, reps, log);
    const mib = (b: number): string => (b / 1048576).toFixed(1);
    return {
      result: r,
      rows: [
        { scenario: 'pull-run', metric: `pull start to first container output, ${mib(r.imageBytes)} MiB image (s)`,
          ours: `${r.dedup.seconds.median.toFixed(2)} (${range(r.dedup.seconds)})`, baseline: `overlayfs ${r.overlayfs.seconds.median.toFixed(2)} (${range(r.overlayfs.seconds)})`,
          ratio: `${r.speedup.toFixed(1)}x sooner` },
        { scenario: 'pull-run', metric: 'bytes fetched from the registry (MiB)',
          ours: mib(r.dedup.bytes.median), baseline: `overlayfs ${mib(r.overlayfs.bytes.median)}`, ratio: `${r.bytesRatio.toFixed(0)}x fewer` },
      ],
    };
  },
  async prefetch(tmp, reps, log) {
    const r = await prefetchScenario(tmp, reps, log);
    const full = r.modes[MODES[0]];
    return {
      result: r,
      rows: MODES.slice(1).map((m) => ({
        scenario: 'prefetch', metric: `python3.11 start to first output, ${r.latencyMs} ms/request, ${r.bandwidthMiBps} MiB/s: ${m}${m.includes('dedupd') ? ` (warm-up ${r.warmUpSeconds.median.toFixed(2)} s before)` : ''} (s; MiB fetched)`,
        ours: `${r.modes[m].seconds.median.toFixed(2)} (${range(r.modes[m].seconds)}); ${(r.modes[m].bytes.median / 1048576).toFixed(1)} MiB`,
        baseline: `full pull ${full.seconds.median.toFixed(2)} (${range(full.seconds)}); ${(full.bytes.median / 1048576).toFixed(1)} MiB`,
        ratio: `${(full.seconds.median / r.modes[m].seconds.median).toFixed(1)}x sooner`,
      })),
    };
  },
  async lazy(tmp, reps, log) {
    const r = await lazyScenarios(tmp, reps, log);
    const mib = (r.fileBytes / 1048576).toFixed(0);
    return {
      result: r,
      rows: [
        { scenario: 'lazy-cold-read', metric: `${mib} MiB file through a fresh lazy mount vs one HTTP GET of its layer (MiB/s)`,
          ours: `${r.coldRead.lazyMiBps.toFixed(1)} (${range(r.coldRead.lazySeconds)})`, baseline: `GET ${r.coldRead.httpGetMiBps.toFixed(1)} (${range(r.coldRead.httpGetSeconds)})`, ratio: `${r.coldRead.ratio.toFixed(2)}x` },
        { scenario: 'lazy-warm-read', metric: `${mib} MiB file, chunks stored, page cache dropped, vs local disk (MiB/s)`,
          ours: `${r.warmRead.lazyMiBps.toFixed(1)} (${range(r.warmRead.lazySeconds)})`, baseline: `ext4 ${r.warmRead.localDiskMiBps.toFixed(1)} (${range(r.warmRead.localDiskSeconds)})`, ratio: `${r.warmRead.ratio.toFixed(2)}x` },
        { scenario: 'mount-first-byte', metric: 'mount to first byte of a small file vs full pull (s, lower is better)',
          ours: `${r.firstByte.lazySeconds.median.toFixed(3)} (${range(r.firstByte.lazySeconds, 3)})`, baseline: `ctr pull ${r.firstByte.fullPullSeconds.median.toFixed(2)} (${range(r.firstByte.fullPullSeconds)})`, ratio: `${r.firstByte.ratio.toFixed(1)}x faster` },
      ],
    };
  },
  async convert(tmp, reps, log) {
    const r = await convertScenario(tmp, { repetitions: reps, sizeMiB: 224, level: 6, log });
    return {
      result: r,
      rows: [{
        scenario: 'convert', metric: `throughput, ${(r.imageBytes / 1048576).toFixed(0)} MiB image (MiB/s, median of ${r.repetitions})`,
        ours: `${r.oursMiBps.toFixed(1)} (${r.oursSeconds.min.toFixed(2)}–${r.oursSeconds.max.toFixed(2)} s)`,
        baseline: `ctr-remote ${r.ctrRemoteMiBps.toFixed(1)} (${r.ctrRemoteSeconds.min.toFixed(2)}–${r.ctrRemoteSeconds.max.toFixed(2)} s)`,
        ratio: `${r.ratio.toFixed(2)}x`,
      }],
    };
  },
};

async function machine(): Promise<Record<string, string>> {
  const version = async (cmd: string, args: string[]): Promise<string> => (await run(cmd, args).catch(() => ({ stdout: '?' }))).stdout.split('\n')[0]!.trim();
  return {
    cpu: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`, kernel: release(), node: process.version,
    containerd: await version('containerd', ['--version']), ctrRemote: await version('dpkg-query', ['-W', '-f=${Version}', 'stargz-snapshotter']),
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const repsAt = args.indexOf('--reps');
  const reps = repsAt >= 0 ? Number(args.splice(repsAt, 2)[1]) : 3;
  const names = args.length ? args : Object.keys(SCENARIOS);
  for (const n of names) if (!SCENARIOS[n]) throw new Error(`unknown scenario "${n}" (have: ${Object.keys(SCENARIOS).join(', ')})`);
  const outDir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
  await mkdir(outDir, { recursive: true });
  const results: Record<string, unknown> = {};
  const rows: Row[] = [];
  for (const name of names) {
    const tmp = await mkdtemp(join(tmpdir(), `dedup-bench-${name}-`));
    try {
      const r = await SCENARIOS[name]!(tmp, reps, (s) => process.stderr.write(s + '\n'));
      results[name] = r.result;
      rows.push(...r.rows);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  const env = await machine();
  const table = ['| scenario | metric | ours | baseline | ratio (ours vs baseline) |', '| --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.scenario} | ${r.metric} | ${r.ours} | ${r.baseline} | ${r.ratio} |`)].join('\n');
  const md = `# Benchmark results\n\n${new Date().toISOString()}: ${env.cpu}, Linux ${env.kernel}, Node ${env.node}, ${env.containerd}, stargz-snapshotter ${env.ctrRemote}\n\n${table}\n`;
  await writeFile(join(outDir, 'results.json'), JSON.stringify({ date: new Date().toISOString(), machine: env, results }, null, 2));
  await writeFile(join(outDir, 'results.md'), md);
  process.stdout.write(md);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
