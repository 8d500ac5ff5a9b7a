// npm run bench [-- SCENARIO…] [--reps N] [--latency-ms MS] [--bandwidth-mibps N]: runs the
// scenarios (all by default), prints each one's table as it finishes, and merges the figures into
// one report under bench/results/: results.json, report.md, SVG charts, and the README's
// Performance section. A scenario run again replaces its old figures; the others are kept. Every
// figure compares against a baseline measured in the same run.

import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../test/fixtures/process.js';
import { barChartSvg, type BarGroup } from './chart.js';
import { commitScenario } from './commit.js';
import { convertScenario } from './convert.js';
import { gzipIndexScenario } from './gzip-index.js';
import { GZIP_LAZY_IMAGES, GZIP_LAZY_MODES, gzipLazyScenario } from './gzip-lazy.js';
import { kernelScenario } from './kernel.js';
import { lazyScenarios } from './lazy.js';
import { networks, type Network } from './network.js';
import { poolScenario } from './pool.js';
import { FULL_PULL, prefetchScenario } from './prefetch.js';
import { pullRunScenario } from './snapshotter.js';
import type { Summary } from './stats.js';
import { sharedStoreScenario } from './shared-store.js';
import { storageScenario } from './storage.js';

interface Row {
  scenario: string;
  metric: string;
  ours: string;
  baseline: string;
  ratio: string;
}

type ChartName = 'first-output' | 'bytes-fetched' | 'storage';

interface ScenarioOutput {
  result: unknown;
  rows: Row[];
  charts: Partial<Record<ChartName, BarGroup[]>>;
}

interface Stored extends ScenarioOutput {
  date: string;
  reps: number;
  machine: Record<string, string>;
}

const MiB = 1024 * 1024;
const range = (s: { min: number; max: number }, digits = 2): string => `${s.min.toFixed(digits)}–${s.max.toFixed(digits)} s`;
const bar = (series: string, s: Summary, scale = 1): { series: string; median: number; min: number; max: number } =>
  ({ series, median: s.median / scale, min: s.min / scale, max: s.max / scale });

type Scenario = (tmp: string, reps: number, nets: Network[], log: (s: string) => void) => Promise<ScenarioOutput>;

const SCENARIOS: Record<string, Scenario> = {
  async 'pull-run'(tmp, reps, nets, log) {
    const r = await pullRunScenario(tmp, reps, nets, log);
    const mib = (b: number): string => (b / MiB).toFixed(1);
    const out: ScenarioOutput = { result: r, rows: [], charts: { 'first-output': [], 'bytes-fetched': [] } };
    const loopback = r.networks.loopback;
    for (const n of Object.values(r.networks)) {
      // Over a network the pull phase costs round trips: those it waited for one after another
      // (the proxy's log; on loopback requests are answered too fast for that to mean anything),
      // and the time it takes beyond loopback's, less what the bytes take, in units of the latency.
      const overNetwork = n.latencyMs > 0 && loopback !== undefined && n !== loopback;
      const beyondLoopback = overNetwork
        ? (n.dedup.pullSeconds.median - loopback.dedup.pullSeconds.median - (n.bandwidth ? n.dedup.pullBytes.median / n.bandwidth : 0)) * 1000 / n.latencyMs
        : 0;
      out.rows.push(
        { scenario: 'pull-run', metric: `pull start to first container output, ${mib(r.imageBytes)} MiB image of ${r.layers} layers, ${n.label} (s)`,
          ours: `${n.dedup.seconds.median.toFixed(2)} (${range(n.dedup.seconds)})`, baseline: `overlayfs ${n.overlayfs.seconds.median.toFixed(2)} (${range(n.overlayfs.seconds)})`,
          ratio: `${n.speedup.toFixed(1)}x sooner (${(1 / n.speedup).toFixed(3)}x the time)` },
        { scenario: 'pull-run', metric: `pull phase alone (rpull vs ctr image pull), ${n.label} (s; registry requests until it returned: all, ours${overNetwork ? '; longest chain of requests one after another, the downloads of tiny layers at mount among them' : ''})`,
          ours: `${n.dedup.pullSeconds.median.toFixed(3)} (${range(n.dedup.pullSeconds, 3)}); ${n.dedup.pullRequests.median}, ${n.dedup.ourPullRequests.median}`
            + (overNetwork ? `; ${n.dedup.pullRoundTrips.median} (time beyond loopback's: ${beyondLoopback.toFixed(1)})` : ''),
          baseline: `ctr image pull ${n.overlayfs.pullSeconds.median.toFixed(2)} (${range(n.overlayfs.pullSeconds)})`,
          ratio: `${(n.overlayfs.pullSeconds.median / n.dedup.pullSeconds.median).toFixed(1)}x sooner` },
        { scenario: 'pull-run', metric: `the floor, ${n.label}: the same pull and another container once nothing is left to fetch, pull start to first output (s); ours above our floor`,
          ours: `rpull again + run ${n.floor.dedup.median.toFixed(2)} (${range(n.floor.dedup)}); first start ${(n.dedup.seconds.median - n.floor.dedup.median).toFixed(2)} above it`,
          baseline: `ctr image pull again + run ${n.floor.overlayfs.median.toFixed(2)} (${range(n.floor.overlayfs)})`,
          ratio: `our floor is ${(n.floor.dedup.median / n.overlayfs.seconds.median).toFixed(3)}x the full pull's time` },
        { scenario: 'pull-run', metric: `bytes fetched from the registry, ${n.label} (MiB)`,
          ours: mib(n.dedup.bytes.median), baseline: `overlayfs ${mib(n.overlayfs.bytes.median)}`, ratio: `${n.bytesRatio.toFixed(0)}x fewer` },
      );
      // Through a pull-through cache beside the nodes (loopback), the origin over this network.
      for (const [which, m] of [['first node, mirror empty', n.mirror.first], ['second node, mirror filled', n.mirror.second]] as const) {
        out.rows.push({
          scenario: 'pull-run',
          metric: `through a pull-through cache (docker-registry proxy, loopback; origin ${n.label}), ${which}: pull start to first output (s); MiB from origin / from mirror; mirror's fill from origin`,
          ours: `${m.seconds.median.toFixed(2)} (${range(m.seconds)}); ${mib(m.fromOrigin.median)} / ${mib(m.fromMirror.median)}; ${mib(m.mirrorFill.median)}`,
          baseline: `direct ${n.dedup.seconds.median.toFixed(2)}; ${mib(n.dedup.bytes.median)} from origin`,
          ratio: `${(n.dedup.seconds.median / m.seconds.median).toFixed(2)}x the speed; the node takes ${(m.fromOrigin.median / Math.max(1, n.dedup.bytes.median)).toFixed(2)}x the direct pull's bytes from the origin (the mirror's fill apart)`,
        });
      }
      const label = `pull + run, ${mib(r.imageBytes)} MiB image, ${n.label}`;
      out.charts['first-output']!.push({ label, bars: [bar('ours (lazy)', n.dedup.seconds), bar('overlayfs, full pull', n.overlayfs.seconds)] });
      out.charts['bytes-fetched']!.push({ label, bars: [bar('ours (lazy)', n.dedup.bytes, MiB), bar('overlayfs, full pull', n.overlayfs.bytes, MiB)] });
    }
    return out;
  },
  async prefetch(tmp, reps, nets, log) {
    const r = await prefetchScenario(tmp, reps, nets, log);
    const out: ScenarioOutput = { result: r, rows: [], charts: { 'first-output': [], 'bytes-fetched': [] } };
    // #15's goals, for the network with latency: a start without a trace ≤ 0.5x of the full pull, one replaying a trace ≤ 0.35x.
    const goals: Record<string, number> = { 'no trace': 0.5, 'trace replay': 0.35 };
    for (const [net, n] of Object.entries(r.networks)) {
      const full = n.modes[FULL_PULL]!;
      const lazy = Object.keys(n.modes).filter((m) => m !== FULL_PULL);
      out.rows.push(...lazy.map((m) => {
        const ratio = n.modes[m]!.seconds.median / full.seconds.median;
        const goal = net === 'wan' ? Object.entries(goals).find(([start]) => m.endsWith(start))?.[1] : undefined;
        const warmUp = m.endsWith('dedupd warm-up') ? n.warmUpSeconds[m.includes('(erofs)') ? 'erofs' : 'fuse'] : undefined;
        return {
          scenario: 'prefetch', metric: `python3.11 start to first output, ${n.label}: ${m}${warmUp ? ` (warm-up ${warmUp.median.toFixed(2)} s before)` : ''} (s; MiB fetched)`,
          ours: `${n.modes[m]!.seconds.median.toFixed(2)} (${range(n.modes[m]!.seconds)}); ${(n.modes[m]!.bytes.median / MiB).toFixed(1)} MiB`,
          baseline: `full pull ${full.seconds.median.toFixed(2)} (${range(full.seconds)}); ${(full.bytes.median / MiB).toFixed(1)} MiB`,
          ratio: `${ratio.toFixed(2)}x the time${goal === undefined ? '' : ` (goal ≤ ${goal}x: ${ratio <= goal ? 'met' : 'missed'})`}`,
        };
      }));
      const label = `python3.11 start, ${n.label}`;
      out.charts['first-output']!.push({ label, bars: Object.keys(n.modes).map((m) => bar(m, n.modes[m]!.seconds)) });
      out.charts['bytes-fetched']!.push({ label, bars: Object.keys(n.modes).map((m) => bar(m, n.modes[m]!.bytes, MiB)) });
    }
    return out;
  },
  async storage(tmp, reps, _nets, log) {
    const r = await storageScenario(tmp, reps, log);
    const mib = (s: Summary): string => (s.median / MiB).toFixed(1);
    return {
      result: r,
      rows: [{
        scenario: 'storage', metric: `disk used by ${r.images.length} related images (${(r.logicalBytes / MiB).toFixed(0)} MiB of layers), after pulling all (MiB)`,
        ours: `chunk store ${mib(r.dedup.storeBytes)}`, baseline: `overlayfs snapshots ${mib(r.overlayfs.snapshotBytes)} (+ content store ${mib(r.overlayfs.contentStoreBytes)})`,
        ratio: `${r.ratio.toFixed(2)}x less`,
      }],
      charts: { storage: [{ label: `${r.images.length} related images`, bars: [bar('ours: chunk store', r.dedup.storeBytes, MiB), bar('overlayfs snapshots', r.overlayfs.snapshotBytes, MiB)] }] },
    };
  },
  async 'shared-store'(tmp, reps, _nets, log) {
    const r = await sharedStoreScenario(tmp, reps, log);
    const s = (x: Summary): string => `${x.median.toFixed(2)} (${range(x)})`;
    const mib = (r.imageBytes / MiB).toFixed(0);
    return {
      result: r,
      rows: [
        { scenario: 'shared-store', metric: `publish of a ${mib} MiB image on host A, then from its end to host B having verified and added it (s; refresh period ${r.refreshSeconds} s, inotify on this host's filesystem)`,
          ours: `publish ${s(r.publishSeconds)}; visible to added ${s(r.visibleToAddedSeconds)}`, baseline: `— (the configured refresh period is ${r.refreshSeconds} s)`,
          ratio: '—' },
        { scenario: 'shared-store', metric: `host B: pull + ctr run to first output from the shared store (rpull; ${(r.sharedLayerBytes.median / MiB).toFixed(1)} MiB of layers fetched) vs the image in a host's own store (ctr run) and a full pull (overlayfs), page cache dropped (s)`,
          ours: `shared ${s(r.start.shared)}`, baseline: `own store ${s(r.start.own)}; full pull ${s(r.start.fullPull)}`,
          ratio: `${(r.start.fullPull.median / r.start.shared.median).toFixed(1)}x sooner than a full pull, ${(r.start.shared.median / r.start.own.median).toFixed(2)}x the own store's time` },
      ],
      charts: { 'first-output': [{ label: `container start, ${mib} MiB image, loopback`, bars: [bar('ours: shared store', r.start.shared), bar('ours: own store', r.start.own), bar('overlayfs, full pull', r.start.fullPull)] }] },
    };
  },
  async lazy(tmp, reps, _nets, log) {
    const r = await lazyScenarios(tmp, reps, log);
    const mib = (r.fileBytes / 1048576).toFixed(0);
    return {
      result: r,
      rows: [
        { scenario: 'lazy-cold-read', metric: `${mib} MiB file through a fresh lazy mount vs one HTTP GET of its layer (MiB/s)`,
          ours: `${r.coldRead.lazyMiBps.toFixed(1)} (${range(r.coldRead.lazySeconds)})`, baseline: `GET ${r.coldRead.httpGetMiBps.toFixed(1)} (${range(r.coldRead.httpGetSeconds)})`, ratio: `${r.coldRead.ratio.toFixed(2)}x` },
        { scenario: 'lazy-warm-read', metric: `${mib} MiB file, chunks stored, page cache dropped, vs local disk (MiB/s)`,
          ours: `${r.warmRead.lazyMiBps.toFixed(1)} (${range(r.warmRead.lazySeconds)})`, baseline: `ext4 ${r.warmRead.localDiskMiBps.toFixed(1)} (${range(r.warmRead.localDiskSeconds)})`, ratio: `${r.warmRead.ratio.toFixed(2)}x` },
        ...(r.erofs ? [
          { scenario: 'lazy-cold-read (erofs)', metric: `the same in mount mode erofs: kernel EROFS filled on demand (MiB/s)`,
            ours: `${r.erofs.coldRead.lazyMiBps.toFixed(1)} (${range(r.erofs.coldRead.lazySeconds)})`, baseline: `GET ${r.erofs.coldRead.httpGetMiBps.toFixed(1)} (${range(r.erofs.coldRead.httpGetSeconds)})`, ratio: `${r.erofs.coldRead.ratio.toFixed(2)}x` },
          { scenario: 'lazy-warm-read (erofs)', metric: `the same in mount mode erofs: the image over the packs (MiB/s)`,
            ours: `${r.erofs.warmRead.lazyMiBps.toFixed(1)} (${range(r.erofs.warmRead.lazySeconds)})`, baseline: `ext4 ${r.erofs.warmRead.localDiskMiBps.toFixed(1)} (${range(r.erofs.warmRead.localDiskSeconds)})`, ratio: `${r.erofs.warmRead.ratio.toFixed(2)}x` },
        ] : []),
        { scenario: 'mount-first-byte', metric: 'mount to first byte of a small file vs full pull (s, lower is better)',
          ours: `${r.firstByte.lazySeconds.median.toFixed(3)} (${range(r.firstByte.lazySeconds, 3)})`, baseline: `ctr pull ${r.firstByte.fullPullSeconds.median.toFixed(2)} (${range(r.firstByte.fullPullSeconds)})`, ratio: `${r.firstByte.ratio.toFixed(1)}x faster` },
      ],
      charts: { 'first-output': [{ label: 'mount to first byte, loopback', bars: [bar('ours (lazy)', r.firstByte.lazySeconds), bar('ctr pull, full', r.firstByte.fullPullSeconds)] }] },
    };
  },
  async kernel(tmp, reps, _nets, log) {
    const r = await kernelScenario(tmp, reps, log);
    const { dedup: d, overlayfs: o } = r.modes;
    const mib = (s: Summary): string => (s.median / MiB).toFixed(1);
    const secs = (s: Summary, digits = 3): string => `${s.median.toFixed(digits)} (${range(s, digits)})`;
    const mibps = (bytes: number, s: Summary): string => `${(bytes / MiB / s.median).toFixed(1)} MiB/s (${range(s, 3)})`;
    const images = `${r.images.length} Debian images (bookworm ${r.images.join(', ')}; ${(r.logicalBytes / MiB).toFixed(0)} MiB of layers)`;
    return {
      result: r,
      rows: [
        { scenario: 'kernel', metric: `disk used by ${images} after ctr image pull; overlayfs keeps their shared base layer once too (MiB; goal ≤ 0.5x, ${r.ratios.disk <= 0.5 ? 'met' : 'not met'})`,
          ours: `chunk store + EROFS images ${mib(d.diskBytes)}`, baseline: `overlayfs snapshots ${mib(o.diskBytes)}`, ratio: `${r.ratios.disk.toFixed(2)}x` },
        { scenario: 'kernel', metric: `disk used by the same three root filesystems as single-layer images (built separately or squashed: no layer shared, ${(r.squashedBytes / MiB).toFixed(0)} MiB of layers) after ctr image pull: only deduplication across images saves (MiB; the goal above is the layered row's)`,
          ours: `chunk store + EROFS images ${mib(d.squashedDiskBytes)}`, baseline: `overlayfs snapshots ${mib(o.squashedDiskBytes)}`, ratio: `${r.ratios.squashedDisk.toFixed(2)}x` },
        { scenario: 'kernel', metric: 'ctr image pull of those three single-layer images, one after another (s)',
          ours: `--snapshotter dedup ${secs(d.squashedPullSeconds, 2)}`, baseline: `--snapshotter overlayfs ${secs(o.squashedPullSeconds, 2)}`, ratio: `${r.ratios.squashedPull.toFixed(2)}x the time` },
        { scenario: 'kernel', metric: `ctr image pull of the ${r.images.length} images, one after another (s; goal ≤ 1.2x, ${r.ratios.pull <= 1.2 ? 'met' : 'not met'})`,
          ours: `--snapshotter dedup ${secs(d.pullSeconds, 2)}`, baseline: `--snapshotter overlayfs ${secs(o.pullSeconds, 2)}`, ratio: `${r.ratios.pull.toFixed(2)}x the time` },
        { scenario: 'kernel', metric: 'CPU time of those pulls: containerd and our snapshotter vs containerd (s; steadier than the time on a loaded machine)',
          ours: `${secs(d.pullCpuSeconds, 2)}`, baseline: `${secs(o.pullCpuSeconds, 2)}`, ratio: `${r.ratios.pullCpu.toFixed(2)}x the CPU` },
        { scenario: 'kernel', metric: `warm read (page cache dropped) of the largest file, /${r.bigFile.path} (${(r.bigFile.bytes / MiB).toFixed(1)} MiB), through the python3 image's view (goal ≥ 0.95x, ${r.ratios.bigFileThroughput >= 0.95 ? 'met' : 'not met'})`,
          ours: `EROFS ${mibps(r.bigFile.bytes, d.bigFileSeconds)}`, baseline: `overlayfs on ext4 ${mibps(r.bigFile.bytes, o.bigFileSeconds)}`, ratio: `${r.ratios.bigFileThroughput.toFixed(2)}x the throughput` },
        { scenario: 'kernel', metric: `warm read (page cache dropped) of /${r.smallFiles.path} (${r.smallFiles.files} files, ${(r.smallFiles.bytes / MiB).toFixed(1)} MiB), one after another (goal ≥ 0.95x, ${r.ratios.smallFilesThroughput >= 0.95 ? 'met' : 'not met'})`,
          ours: `EROFS ${mibps(r.smallFiles.bytes, d.smallFilesSeconds)}`, baseline: `overlayfs on ext4 ${mibps(r.smallFiles.bytes, o.smallFilesSeconds)}`, ratio: `${r.ratios.smallFilesThroughput.toFixed(2)}x the throughput` },
        { scenario: 'kernel', metric: `python3 start importing 8 modules (chroot into the view), page cache dropped, our unpacked copies deleted (s; goal ≤ 1.05x, ${r.ratios.pythonCold <= 1.05 ? 'met' : 'not met'})`,
          ours: `EROFS ${secs(d.pythonColdSeconds)}`, baseline: `overlayfs ${secs(o.pythonColdSeconds)}`, ratio: `${r.ratios.pythonCold.toFixed(2)}x the time` },
        { scenario: 'kernel', metric: 'the same, page cache warm (s)',
          ours: `EROFS ${secs(d.pythonWarmSeconds)}`, baseline: `overlayfs ${secs(o.pythonWarmSeconds)}`, ratio: `${r.ratios.pythonWarm.toFixed(2)}x the time` },
      ],
      charts: { storage: [{ label: images, bars: [bar('ours: chunk store + EROFS images', d.diskBytes, MiB), bar('overlayfs snapshots', o.diskBytes, MiB)] }] },
    };
  },
  async commit(tmp, reps, _nets, log) {
    const r = await commitScenario(tmp, reps, log);
    // Under 100 samples the nearest-rank p99 is the largest one: said so.
    const ms = (p50: number, p99: number, n: number): string => `p50 ${p50.toFixed(2)} / p99 ${p99.toFixed(2)}${n < 100 ? ` (the largest of ${n})` : ''}`;
    return {
      result: r,
      rows: [{
        scenario: 'commit', metric: `container pause per commit, ${r.layerMiB} MiB writable layer, writing all the time (ms; ours over ${r.commits} commits, goal p99 ≤ 10)`,
        ours: ms(r.ours.p50, r.ours.p99, r.ours.pauseMs.runs.length), baseline: `ctr task pause + diff + resume (as nerdctl commit) ${ms(r.baseline.p50, r.baseline.p99, r.baseline.pauseMs.runs.length)}`,
        ratio: `${r.ratio.toFixed(0)}x shorter`,
      }],
      charts: {},
    };
  },
  async pool(tmp, _reps, _nets, log) {
    const r = await poolScenario(tmp, 200, log);
    const ms = (p: { median: number; p99: number; n: number }): string => `median ${p.median.toFixed(2)}, p99 ${p.p99.toFixed(2)} (${p.n})`;
    const rows: Row[] = [
      { scenario: 'pool', metric: 'Acquire: hand-out of a frozen sandbox (thaw) vs cold ctr run of the image to its first output (ms)',
        ours: ms(r.acquireMs), baseline: `ctr run ${r.coldCtrRunMs.median.toFixed(0)}`, ratio: `${(r.coldCtrRunMs.median / r.acquireMs.median).toFixed(0)}x sooner` },
      { scenario: 'pool', metric: 'Acquire with 10 concurrent callers (ms)', ours: ms(r.acquireConcurrentMs), baseline: `alone: p99 ${r.acquireMs.p99.toFixed(2)}`,
        ratio: `${(r.acquireConcurrentMs.p99 / r.acquireMs.p99).toFixed(2)}x the p99 alone` },
      { scenario: 'pool', metric: 'kill -9 of an active sandbox to the exit handler (ms; inotify on cgroup.events)', ours: ms(r.detectionMs), baseline: 'goal ≤ 50, seed 1000',
        ratio: `${(1000 / r.detectionMs.p99).toFixed(0)}x under the seed's 1 s` },
    ];
    if (r.recoveryMs) {
      rows.push({ scenario: 'pool', metric: 'kill -9 to a restored, healthy sandbox (CRIU checkpoint) vs a cold sandbox start to ready (ms)', ours: ms(r.recoveryMs),
        baseline: `cold start ${r.coldSandboxMs.median.toFixed(0)}`, ratio: `${(r.recoveryMs.median / r.coldSandboxMs.median).toFixed(1)}x a cold start's time (which loses the state)` });
    }
    if (r.memory) {
      rows.push({ scenario: 'pool', metric: `memory of ${r.memory.sandboxes} frozen python sandboxes${r.memory.fromCheckpoint ? ' restored from one base checkpoint' : ''} (PSS, MiB)`, ours: `KSM ${r.memory.withKsmMiB.toFixed(1)}`,
        baseline: `no KSM ${r.memory.withoutKsmMiB.toFixed(1)}`, ratio: `${r.memory.savedPercent.toFixed(0)}% saved` });
    }
    for (const n of r.notes) log(`pool: ${n}`);
    return { result: r, rows, charts: {} };
  },
  async convert(tmp, reps, _nets, log) {
    const r = await convertScenario(tmp, { repetitions: reps, sizeMiB: 224, level: 6, log });
    return {
      result: r,
      rows: [{
        scenario: 'convert', metric: `throughput, ${(r.imageBytes / 1048576).toFixed(0)} MiB image (MiB/s, median of ${r.repetitions})`,
        ours: `${r.oursMiBps.toFixed(1)} (${r.oursSeconds.min.toFixed(2)}–${r.oursSeconds.max.toFixed(2)} s)`,
        baseline: `ctr-remote ${r.ctrRemoteMiBps.toFixed(1)} (${r.ctrRemoteSeconds.min.toFixed(2)}–${r.ctrRemoteSeconds.max.toFixed(2)} s)`,
        ratio: `${r.ratio.toFixed(2)}x`,
      }],
      charts: {},
    };
  },
};

SCENARIOS['gzip-index'] = async (tmp, reps, _nets, log) => {
  const r = await gzipIndexScenario(tmp, { repetitions: reps, sizeMiB: 224, log });
  const mib = r.tarBytes / MiB;
  return {
    result: r,
    rows: [{
      scenario: 'gzip-index', metric: `dedupctl index create of an unmodified ${(r.layerBytes / MiB).toFixed(0)} MiB gzip layer (${mib.toFixed(0)} MiB of tar) vs converting it to eStargz (s; index size)`,
      ours: `${r.indexSeconds.median.toFixed(2)} (${range(r.indexSeconds)}); index ${(r.indexBytes / MiB).toFixed(2)} MiB, ${(100 * r.indexBytes / r.layerBytes).toFixed(2)}% of the layer, ${r.checkpoints} checkpoints at ${r.spacing / MiB} MiB`,
      baseline: `dedupctl convert ${r.convertSeconds.median.toFixed(2)} (${range(r.convertSeconds)})`,
      ratio: `${(r.convertSeconds.median / r.indexSeconds.median).toFixed(2)}x sooner, image unchanged`,
    }],
    charts: {},
  };
};

const GZIP_LAZY_GOALS = { big: 0.12, python: 0.8, debian: 0.5 } as const;

SCENARIOS['gzip-lazy'] = async (tmp, reps, nets, log) => {
  const r = await gzipLazyScenario(tmp, reps, nets, log);
  const out: ScenarioOutput = { result: r, rows: [], charts: { 'first-output': [], 'bytes-fetched': [] } };
  const mib = (b: number): string => (b / MiB).toFixed(1);
  for (const name of GZIP_LAZY_IMAGES) {
    const im = r.images[name];
    const full = im.modes[GZIP_LAZY_MODES[0]];
    const image = `${im.describe}; ${mib(im.layerBytes)} MiB unmodified gzip image of ${im.layers} layers, index ${(im.indexBytes / MiB).toFixed(2)} MiB (${(100 * im.indexBytes / im.layerBytes).toFixed(2)}%, ${im.checkpoints} checkpoints at ${r.spacing / MiB} MiB)`;
    const what: Record<string, string> = { lazy: 'ctr-remote rpull (no trace)', 'lazy, trace replay': 'ctr-remote rpull replaying the first start\'s trace',
      'lazy, eStargz copy': 'for reference, ctr-remote rpull of an eStargz copy (converted, so another digest; no trace)' };
    out.rows.push(...GZIP_LAZY_MODES.slice(1).map((m) => {
      const x = im.modes[m];
      const ratio = x.seconds.median / full.seconds.median;
      const reference = m === 'lazy, eStargz copy';
      return {
        scenario: 'gzip-lazy', metric: `${image}, ${r.network}: pull start to first output, ${what[m]} (s; MiB fetched${reference ? '' : ', index included'}; blob requests${reference ? '' : `; goal ≤ ${GZIP_LAZY_GOALS[name]}x`})`,
        ours: `${x.seconds.median.toFixed(2)} (${range(x.seconds)}); ${mib(x.bytes.median)} MiB; ${x.requests.median}`,
        baseline: `ctr image pull (overlayfs) ${full.seconds.median.toFixed(2)} (${range(full.seconds)}); ${mib(full.bytes.median)} MiB`,
        ratio: `${ratio.toFixed(2)}x the time${reference ? '' : ` (goal ${ratio <= GZIP_LAZY_GOALS[name] ? 'met' : 'missed'})`}`,
      };
    }));
    const label = `${name}, unmodified gzip, ${r.network}`;
    out.charts['first-output']!.push({ label, bars: GZIP_LAZY_MODES.map((m) => bar(m, im.modes[m].seconds)) });
    out.charts['bytes-fetched']!.push({ label, bars: GZIP_LAZY_MODES.map((m) => bar(m, im.modes[m].bytes, MiB)) });
  }
  return out;
};

async function machine(): Promise<Record<string, string>> {
  const version = async (cmd: string, args: string[]): Promise<string> => (await run(cmd, args).catch(() => ({ stdout: '?' }))).stdout.split('\n')[0]!.trim();
  return {
    cpu: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`, memory: `${(totalmem() / 1024 ** 3).toFixed(0)} GiB`, kernel: release(), node: process.version,
    containerd: await version('containerd', ['--version']), runc: await version('runc', ['--version']),
    stargzSnapshotter: await version('dpkg-query', ['-W', '-f=${Version}', 'stargz-snapshotter']),
  };
}

const CHARTS: Record<ChartName, { title: string; unit: string; format: (v: number) => string }> = {
  'first-output': { title: 'Time to first output: lazy pull vs full pull', unit: 'seconds from the start of the pull, lower is better', format: (v) => `${v.toFixed(2)} s` },
  'bytes-fetched': { title: 'Bytes fetched from the registry until first output', unit: 'MiB, lower is better', format: (v) => `${v.toFixed(1)} MiB` },
  storage: { title: 'Disk used by related images', unit: 'MiB on disk (du), lower is better', format: (v) => `${v.toFixed(1)} MiB` },
};

const ORDER = ['pull-run', 'prefetch', 'lazy', 'convert', 'gzip-index', 'gzip-lazy', 'storage', 'kernel', 'shared-store', 'commit', 'pool'];

function table(rows: Row[]): string {
  return ['| scenario | metric | ours | baseline | ratio (ours vs baseline) |', '| --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.scenario} | ${r.metric} | ${r.ours} | ${r.baseline} | ${r.ratio} |`)].join('\n');
}

/** report.md, the charts, and the README section, from every scenario's latest figures. */
async function writeReport(outDir: string, stored: Record<string, Stored>): Promise<string> {
  const names = ORDER.filter((n) => stored[n]);
  const charts: ChartName[] = [];
  for (const [name, spec] of Object.entries(CHARTS) as [ChartName, (typeof CHARTS)[ChartName]][]) {
    const groups = names.flatMap((n) => stored[n]!.charts[name] ?? []);
    if (!groups.length) continue;
    await writeFile(join(outDir, `${name}.svg`), barChartSvg({ ...spec, groups }));
    charts.push(name);
  }
  const runs = names.map((n) => `- \`${n}\`: ${stored[n]!.date}, ${stored[n]!.reps} repetitions, ${stored[n]!.machine.cpu}, Linux ${stored[n]!.machine.kernel}, Node ${stored[n]!.machine.node}, ${stored[n]!.machine.containerd}, stargz-snapshotter ${stored[n]!.machine.stargzSnapshotter}`);
  const body = `${table(names.flatMap((n) => stored[n]!.rows))}\n\nMedians of the repetitions, (min–max) where given.\n\n${runs.join('\n')}\n`;
  await writeFile(join(outDir, 'report.md'), `# Benchmark report\n\nRegenerate: \`npm run bench\` (one scenario: \`npm run bench -- NAME\`).\n\n${body}\n${charts.map((c) => `![${CHARTS[c].title}](${c}.svg)`).join('\n\n')}\n`);
  return `${body}\n${charts.map((c) => `![${CHARTS[c].title}](bench/results/${c}.svg)`).join('\n')}\n`;
}

/** Replaces what sits between the README's bench markers. */
async function updateReadme(section: string): Promise<void> {
  const readme = fileURLToPath(new URL('../../README.md', import.meta.url));
  const text = await readFile(readme, 'utf8');
  const begin = '<!-- bench:begin -->';
  const end = '<!-- bench:end -->';
  const a = text.indexOf(begin);
  const b = text.indexOf(end);
  if (a < 0 || b < a) return;
  await writeFile(readme, `${text.slice(0, a + begin.length)}\n${section}${text.slice(b)}`);
}

function flag(args: string[], name: string, fallback: number): number {
  const at = args.indexOf(name);
  if (at < 0) return fallback;
  const v = Number(args.splice(at, 2)[1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} wants a positive number`);
  return v;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const reps = flag(args, '--reps', 3);
  const nets = networks(flag(args, '--latency-ms', 20), flag(args, '--bandwidth-mibps', 100));
  const names = args.length ? args : ORDER;
  for (const n of names) if (!SCENARIOS[n]) throw new Error(`unknown scenario "${n}" (have: ${ORDER.join(', ')})`);
  const outDir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
  await mkdir(outDir, { recursive: true });
  const jsonFile = join(outDir, 'results.json');
  const previous = existsSync(jsonFile) ? (JSON.parse(await readFile(jsonFile, 'utf8')) as { scenarios?: Record<string, Stored> }).scenarios : undefined;
  const stored: Record<string, Stored> = { ...previous };
  const env = await machine();
  for (const name of names) {
    const tmp = await mkdtemp(join(tmpdir(), `dedup-bench-${name}-`));
    try {
      const r = await SCENARIOS[name]!(tmp, reps, nets, (s) => process.stderr.write(s + '\n'));
      stored[name] = { ...r, date: new Date().toISOString(), reps, machine: env };
      process.stdout.write(`\n${table(r.rows)}\n`);
      await writeFile(jsonFile, JSON.stringify({ scenarios: stored }, null, 2) + '\n');
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  await updateReadme(await writeReport(outDir, stored));
  process.stdout.write(`\nreport: ${join(outDir, 'report.md')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
