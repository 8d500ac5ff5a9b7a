// Scenario "prefetch": a Python interpreter image starting a script that imports a dozen modules,
// over each network (loopback, and a proxy adding latency and a bandwidth cap). Time from the start of the pull to
// the script's first output and bytes fetched, fresh state for each: full pull (containerd's
// overlayfs), then in each mount mode (FUSE, and kernel EROFS where it can run): lazy without a
// trace, lazy replaying that mode's first start's trace, and lazy after dedupd warmed the store from
// that trace (warm-up time reported on its own).

import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { binary, dedupctlJson } from '../test/fixtures/cli.js';
import { startContainerd, unmountUnder } from '../test/fixtures/containerd.js';
import { erofsModeSkipReason } from '../test/fixtures/erofs.js';
import { pushOci, tarOf, writeOciImage } from '../test/fixtures/images.js';
import type { TestProxy } from '../test/fixtures/proxy.js';
import { pythonImageEntries } from '../test/fixtures/python-image.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { startSnapshotter } from '../test/fixtures/snapshotter.js';
import { dropCaches, overNetworks, type Network } from './network.js';
import { firstOutput } from './snapshotter.js';
import { summarize, timed, type Summary } from './stats.js';

export const FULL_PULL = 'full pull (overlayfs)';
const STARTS = ['no trace', 'trace replay', 'after dedupd warm-up'] as const;
type Start = (typeof STARTS)[number];
/** A lazy start's name in the results: its mount mode and how it starts, e.g. `lazy (erofs), trace replay`. */
const lazyMode = (mount: MountMode, start: Start): string => `lazy (${mount}), ${start}`;
type MountMode = 'fuse' | 'erofs';

export interface PrefetchResult {
  imageBytes: number;
  networks: Partial<Record<Network['name'], PrefetchNetworkResult>>;
}

export interface PrefetchNetworkResult {
  label: string;
  /** FULL_PULL first, then each measured mount mode's starts (lazyMode). */
  modes: Record<string, { seconds: Summary; bytes: Summary }>;
  /** dedupd's warm-up before the warmed start, per mount mode. */
  warmUpSeconds: Partial<Record<MountMode, Summary>>;
}

/**
 * One cold start: fresh containerd state (and, with `lazy`, our snapshotter on that state root
 * and trace directory, pulling with ctr-remote rpull; else a full pull with ctr image pull into
 * overlayfs), then `ctr run` of `cmd` to its first output. Seconds from the start of the pull; the
 * registry's blob bytes and requests. What the snapshotter mounted under its root is unmounted after.
 */
export async function coldStart(tmp: string, proxy: TestProxy, ref: string, lazy: { root: string; traceDir: string; mountMode?: MountMode } | undefined, cmd: string[], name: string): Promise<{ seconds: number; bytes: number; requests: number }> {
  const dir = await mkdtemp(join(tmp, 'run-'));
  const snap = lazy ? await startSnapshotter(dir, ['--root', lazy.root, '--trace-dir', lazy.traceDir], lazy.mountMode ? { mount_mode: lazy.mountMode } : {}) : undefined;
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
  const erofsSkip = await erofsModeSkipReason();
  if (erofsSkip) log(`  mount mode erofs not measured: ${erofsSkip}`);
  const mounts: MountMode[] = erofsSkip ? ['fuse'] : ['fuse', 'erofs'];
  const names = [FULL_PULL, ...mounts.flatMap((m) => STARTS.map((s) => lazyMode(m, s)))];
  const samples = Object.fromEntries(names.map((m) => [m, { seconds: [] as number[], bytes: [] as number[] }]));
  const warmUp = Object.fromEntries(mounts.map((m) => [m, [] as number[]])) as Record<MountMode, number[]>;
  let n = 0;
  const start = async (name: string, lazy: Parameters<typeof coldStart>[3]): Promise<void> => {
    await dropCaches();
    const r = await coldStart(tmp, proxy, ref, lazy, ['/usr/bin/python3', '/app/main.py'], `py-${n++}`);
    samples[name]!.seconds.push(r.seconds);
    samples[name]!.bytes.push(r.bytes);
    if (lazy) await rm(lazy.root, { recursive: true, force: true });
    log(`  repetition ${samples[name]!.seconds.length}, ${name}: first output after ${r.seconds.toFixed(2)} s, ${(r.bytes / 1048576).toFixed(1)} MiB fetched`);
  };
  for (let i = 0; i < reps; i++) {
    await start(FULL_PULL, undefined);
    for (const mountMode of mounts) {
      const traces = join(tmp, `traces-${mountMode}-${i}`);
      for (const s of STARTS) {
        const root = join(tmp, `root-${n}`);
        if (s === 'after dedupd warm-up') {
          warmUp[mountMode].push(await timed(async () => {
            const r = await binary('dedupd', ['--root', root, '--trace-dir', traces, '--plain-http', ref]);
            if (r.code !== 0) throw new Error(`dedupd: ${r.stderr}`);
          }));
        }
        // The first start records this mode's trace and the second replays it; the warmed one records elsewhere.
        await start(lazyMode(mountMode, s), { root, mountMode, traceDir: s === 'after dedupd warm-up' ? join(tmp, `unused-traces-${n}`) : traces });
      }
    }
  }
  const modes = Object.fromEntries(names.map((m) => [m, { seconds: summarize(samples[m]!.seconds), bytes: summarize(samples[m]!.bytes) }]));
  return { label, modes, warmUpSeconds: Object.fromEntries(mounts.map((m) => [m, summarize(warmUp[m])])) };
}
