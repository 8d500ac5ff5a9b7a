// Scenario "prefetch": a Python interpreter image starting a script that imports a dozen modules,
// over each network (loopback, and a proxy adding latency and a bandwidth cap). Time from the start of the pull to
// the script's first output and bytes fetched, fresh state for each: full pull (containerd's
// overlayfs), lazy without a trace, lazy replaying the first start's trace, and lazy after dedupd
// warmed the store from that trace (warm-up time reported on its own).

import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { binary, dedupctlJson } from '../test/fixtures/cli.js';
import { startContainerd, unmountUnder } from '../test/fixtures/containerd.js';
import { pushOci, tarOf, writeOciImage } from '../test/fixtures/images.js';
import type { TestProxy } from '../test/fixtures/proxy.js';
import { pythonImageEntries } from '../test/fixtures/python-image.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { startSnapshotter } from '../test/fixtures/snapshotter.js';
import { dropCaches, overNetworks, type Network } from './network.js';
import { firstOutput } from './snapshotter.js';
import { summarize, timed, type Summary } from './stats.js';

export const MODES = ['full pull (overlayfs)', 'lazy, no trace', 'lazy, trace replay', 'lazy, after dedupd warm-up'] as const;
export type Mode = (typeof MODES)[number];

export interface PrefetchResult {
  imageBytes: number;
  networks: Partial<Record<Network['name'], PrefetchNetworkResult>>;
}

export interface PrefetchNetworkResult {
  label: string;
  modes: Record<Mode, { seconds: Summary; bytes: Summary }>;
  warmUpSeconds: Summary;
}

/**
 * One cold start: fresh containerd state (and, with `lazy`, our snapshotter on that state root
 * and trace directory, pulling with ctr-remote rpull; else a full pull with ctr image pull into
 * overlayfs), then `ctr run` of `cmd` to its first output. Seconds from the start of the pull; the
 * registry's blob bytes and requests. What the snapshotter mounted under its root is unmounted after.
 */
export async function coldStart(tmp: string, proxy: TestProxy, ref: string, lazy: { root: string; traceDir: string } | undefined, cmd: string[], name: string): Promise<{ seconds: number; bytes: number; requests: number }> {
  const dir = await mkdtemp(join(tmp, 'run-'));
  const snap = lazy ? await startSnapshotter(dir, ['--root', lazy.root, '--trace-dir', lazy.traceDir]) : undefined;
  const ctd = await startContainerd(dir, snap ? { dedupSocket: snap.socket } : {});
  try {
    proxy.reset();
    const started = process.hrtime.bigint();
    const pull = snap
      ? await ctd.rpull(ref, 300_000)
      : await ctd.ctr(['image', 'pull', '--plain-http', ref], 300_000);
    if (pull.code !== 0) throw new Error(`${snap ? 'rpull' : 'ctr image pull'} ${ref}: ${pull.stderr}`);
    const seconds = await firstOutput(ctd.socket, ['--snapshotter', snap ? 'dedup' : 'overlayfs', ref, name, ...cmd], started);
    return { seconds, bytes: proxy.stats.blobBytes, requests: proxy.stats.blobRanges.length };
  } finally {
    await ctd.stop();
    await snap?.stop();
    await unmountUnder(dir);
    if (lazy) await unmountUnder(lazy.root);
    await rm(dir, { recursive: true, force: true });
  }
}

export async function prefetchScenario(tmp: string, reps: number, nets: Network[], log: (s: string) => void): Promise<PrefetchResult> {
  await writeOciImage(join(tmp, 'src'), 'py', [{ tar: await tarOf(await pythonImageEntries()), compression: 'gzip' }]);
  const registry = await startRegistry(tmp);
  try {
    await pushOci(join(tmp, 'src'), 'py', `${registry.host}/bench/python:src`);
    const conv = await dedupctlJson<{ layers: { size: number }[] }>(['convert', '--plain-http', `${registry.host}/bench/python:src`, `${registry.host}/bench/python:esgz`]);
    const result: PrefetchResult = { imageBytes: conv.layers.reduce((a, l) => a + l.size, 0), networks: {} };
    result.networks = await overNetworks(registry.host, nets, (net, proxy) => {
      log(`prefetch (${net.label}): python3.11 image, ${(result.imageBytes / 1048576).toFixed(1)} MiB`);
      return prefetchOver(join(tmp, net.name), proxy, `${proxy.host}/bench/python:esgz`, net.label, reps, log);
    });
    return result;
  } finally {
    await registry.stop();
  }
}

async function prefetchOver(tmp: string, proxy: TestProxy, ref: string, label: string, reps: number, log: (s: string) => void): Promise<PrefetchNetworkResult> {
  await mkdir(tmp, { recursive: true });
  const samples = Object.fromEntries(MODES.map((m) => [m, { seconds: [] as number[], bytes: [] as number[] }])) as Record<Mode, { seconds: number[]; bytes: number[] }>;
  const warmUp: number[] = [];
  let n = 0;
  for (let i = 0; i < reps; i++) {
    const traces = join(tmp, `traces-${i}`);
    for (const mode of MODES) {
      const root = join(tmp, `root-${i}-${n}`);
      if (mode === 'lazy, after dedupd warm-up') {
        warmUp.push(await timed(async () => {
          const r = await binary('dedupd', ['--root', root, '--trace-dir', traces, '--plain-http', ref]);
          if (r.code !== 0) throw new Error(`dedupd: ${r.stderr}`);
        }));
      }
      // Only the trace-replay start reads the traces; the others record theirs elsewhere.
      const traceDir = mode === 'lazy, no trace' || mode === 'lazy, trace replay' ? traces : join(tmp, `unused-traces-${n}`);
      await dropCaches();
      const r = await coldStart(tmp, proxy, ref, mode === 'full pull (overlayfs)' ? undefined : { root, traceDir }, ['/usr/bin/python3', '/app/main.py'], `py-${n++}`);
      samples[mode].seconds.push(r.seconds);
      samples[mode].bytes.push(r.bytes);
      await rm(root, { recursive: true, force: true });
      log(`  repetition ${i + 1}, ${mode}: first output after ${r.seconds.toFixed(2)} s, ${(r.bytes / 1048576).toFixed(1)} MiB fetched`);
    }
  }
  const modes = Object.fromEntries(MODES.map((m) => [m, { seconds: summarize(samples[m].seconds), bytes: summarize(samples[m].bytes) }])) as PrefetchNetworkResult['modes'];
  return { label, modes, warmUpSeconds: summarize(warmUp) };
}
