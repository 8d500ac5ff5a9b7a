// Scenario "pull-run": from the start of a pull to the container's first output, and the bytes
// the registry served, for (a) `ctr image pull` + `ctr run` with containerd's overlayfs
// snapshotter and (b) `ctr-remote image rpull` + `ctr run` with ours; fresh containerd and
// snapshotter state and a dropped page cache for every repetition, registry behind a byte-counting
// proxy, over each network (loopback, and latency + bandwidth cap). The pull phase alone is timed
// too, with the registry requests it made (ours and containerd's): over a network its cost is
// round trips. Then ours again through a pull-through cache (bench/mirror.ts): a first node while
// the mirror fills, a second once it has.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { dedupctlJson } from '../test/fixtures/cli.js';
import { startContainerd, unmountUnder, type TestContainerd } from '../test/fixtures/containerd.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage } from '../test/fixtures/images.js';
import type { ProxyRequest, TestProxy } from '../test/fixtures/proxy.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { startSnapshotter } from '../test/fixtures/snapshotter.js';
import { pullRunThroughMirror, type MirrorResult } from './mirror.js';
import { dropCaches, overNetworks, type Network } from './network.js';
import { summarize, type Summary } from './stats.js';

const MiB = 1024 * 1024;

export interface PullRunResult {
  imageBytes: number;
  layers: number;
  networks: Partial<Record<Network['name'], PullRunNetworkResult>>;
}

export interface PullRunNetworkResult {
  label: string;
  /** The proxy's per-request latency (ms) and bandwidth cap (bytes/s), if any. */
  latencyMs: number;
  bandwidth: number | undefined;
  /** seconds: pull start to first output; pullSeconds: the pull command alone. */
  overlayfs: { seconds: Summary; pullSeconds: Summary; bytes: Summary };
  /**
   * What a pull and run cost once nothing is left to fetch, in each mode: the same pull command
   * again (process start, resolving the manifest, the snapshots found) plus another container's
   * start to its first output. A first start cannot come sooner than its mode's floor.
   */
  floor: { overlayfs: Summary; dedup: Summary };
  /**
   * pullRequests: registry requests until the pull command returned; ourPullRequests: those our
   * daemons sent; pullRoundTrips: how many of them the pull waited for one after another.
   */
  dedup: { seconds: Summary; pullSeconds: Summary; bytes: Summary; pullRequests: Summary; ourPullRequests: Summary; pullRoundTrips: Summary; pullBytes: Summary };
  /** overlayfs time / ours: above 1 means we start sooner. */
  speedup: number;
  /** overlayfs bytes / ours. */
  bytesRatio: number;
  /** Ours through a docker-registry in proxy mode beside the nodes, named as mirror in hosts.toml. */
  mirror: MirrorResult;
}

/**
 * The round trips a client waited for, from the proxy's log: the longest chain of requests in
 * which each was sent after the one before it had been answered. Requests in flight together
 * count once.
 */
export function roundTripsInSequence(log: ProxyRequest[]): number {
  const sorted = [...log].sort((a, b) => a.arrived - b.arrived);
  const depth: number[] = [];
  sorted.forEach((r, i) => {
    let before = 0;
    for (let j = 0; j < i; j++) if ((sorted[j]!.ended ?? Infinity) <= r.arrived) before = Math.max(before, depth[j]!);
    depth.push(before + 1);
  });
  return Math.max(0, ...depth);
}

/** Runs `ctr run` and resolves when its first output byte arrives (then waits for it to end). */
export function firstOutput(socket: string, args: string[], started: bigint): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('ctr', ['--address', socket, 'run', '--rm', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let at: number | undefined;
    let err = '';
    child.stdout.once('data', () => {
      at = Number(process.hrtime.bigint() - started) / 1e9;
    });
    child.stdout.resume();
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (code === 0 && at !== undefined ? resolve(at) : reject(new Error(`ctr run exited ${code}: ${err}`))));
  });
}

/**
 * The layer tars of the big image: two, as most images have at least: a base (busybox) and the
 * application's (a large model file it does not read at start-up, and the small file it prints,
 * BIG_APP_CMD).
 */
export async function bigAppLayers(): Promise<Buffer[]> {
  return [await tarOf(await busyboxEntries()), await tarOf([{ name: 'etc/', type: 'directory' }, { name: 'etc/motd', type: 'file', content: Buffer.from('ready\n') },
    { name: 'opt/', type: 'directory' }, { name: 'opt/model.bin', type: 'file', content: randomBytes(200 * MiB) }])];
}

export const BIG_APP_CMD = ['/bin/cat', '/etc/motd'];

export async function pullRunScenario(tmp: string, reps: number, nets: Network[], log: (s: string) => void): Promise<PullRunResult> {
  await writeOciImage(join(tmp, 'src'), 'src', (await bigAppLayers()).map((tar) => ({ tar, compression: 'gzip' as const })));
  const registry = await startRegistry(tmp);
  try {
    await pushOci(join(tmp, 'src'), 'src', `${registry.host}/bench/app:src`);
    const conv = await dedupctlJson<{ layers: { size: number; digest: string }[] }>(['convert', '--plain-http', `${registry.host}/bench/app:src`, `${registry.host}/bench/app:esgz`]);
    const imageBytes = conv.layers.reduce((n, l) => n + l.size, 0);
    const networks = await overNetworks(registry.host, nets, async (net, proxy): Promise<PullRunNetworkResult> => {
      log(`pull-run (${net.label}): ${(imageBytes / MiB).toFixed(0)} MiB eStargz image of ${conv.layers.length} layers, container prints a small file`);
      const ref = `${proxy.host}/bench/app:esgz`;
      const direct = await pullRunOver(tmp, proxy, ref, net, reps, log);
      const mirror = await pullRunThroughMirror(tmp, registry.host, proxy, ref, conv.layers.map((l) => l.digest), net, reps, log);
      return { ...direct, mirror };
    });
    return { imageBytes, layers: conv.layers.length, networks };
  } finally {
    await registry.stop();
  }
}

/** `mode`'s pull again, then another container to its first output (seconds), with `ref` pulled and run already. */
async function pullRunFloor(ctd: TestContainerd, mode: 'overlayfs' | 'dedup', ref: string, i: number): Promise<number> {
  const started = process.hrtime.bigint();
  const again = mode === 'dedup' ? await ctd.rpull(ref, 300_000) : await ctd.ctr(['image', 'pull', '--plain-http', ref], 300_000);
  if (again.code !== 0) throw new Error(`${mode} pull again: ${again.stderr}`);
  return firstOutput(ctd.socket, ['--snapshotter', mode, ref, `bench-floor-${i}`, ...BIG_APP_CMD], started);
}

async function pullRunOver(tmp: string, proxy: TestProxy, ref: string, net: Network, reps: number, log: (s: string) => void): Promise<Omit<PullRunNetworkResult, 'mirror'>> {
  const o = { seconds: [] as number[], pullSeconds: [] as number[], bytes: [] as number[] };
  const floor = { overlayfs: [] as number[], dedup: [] as number[] };
  const d = { seconds: [] as number[], pullSeconds: [] as number[], bytes: [] as number[], pullRequests: [] as number[], ourPullRequests: [] as number[], pullRoundTrips: [] as number[], pullBytes: [] as number[] };
  for (let i = 0; i < reps; i++) {
    for (const mode of ['overlayfs', 'dedup'] as const) {
      const dir = await mkdtemp(join(tmp, `${mode}-${i}-`));
      await dropCaches();
      const snap = mode === 'dedup' ? await startSnapshotter(dir) : undefined;
      const ctd = await startContainerd(dir, snap ? { dedupSocket: snap.socket } : {});
      try {
        proxy.reset();
        const started = process.hrtime.bigint();
        const pull = mode === 'dedup'
          ? await ctd.rpull(ref, 300_000)
          : await ctd.ctr(['image', 'pull', '--plain-http', ref], 300_000);
        if (pull.code !== 0) throw new Error(`${mode} pull: ${pull.stderr}`);
        const pulled = Number(process.hrtime.bigint() - started) / 1e9;
        const requests = proxy.stats.log.length;
        const ours = proxy.stats.log.filter((r) => r.userAgent.startsWith('dedup-snapshotter')).length;
        const roundTrips = roundTripsInSequence(proxy.stats.log);
        const pullBytes = proxy.stats.blobBytes;
        const t = await firstOutput(ctd.socket, ['--snapshotter', mode, ref, `bench-${i}`, ...BIG_APP_CMD], started);
        floor[mode].push(await pullRunFloor(ctd, mode, ref, i));
        if (mode === 'dedup') {
          d.pullRequests.push(requests);
          d.ourPullRequests.push(ours);
          d.pullRoundTrips.push(roundTrips);
          d.pullBytes.push(pullBytes);
        }
        const target = mode === 'dedup' ? d : o;
        target.seconds.push(t);
        target.pullSeconds.push(pulled);
        target.bytes.push(proxy.stats.blobBytes);
        log(`  repetition ${i + 1} ${mode}: pulled after ${pulled.toFixed(3)} s (${requests} registry requests${mode === 'dedup' ? `, ${ours} ours` : ''}, ${roundTrips} in sequence), `
          + `first output after ${t.toFixed(2)} s, ${(proxy.stats.blobBytes / MiB).toFixed(1)} MiB fetched`);
      } finally {
        await ctd.stop();
        await snap?.stop();
        await unmountUnder(dir);
        await rm(dir, { recursive: true, force: true });
      }
    }
  }
  const os = summarize(o.seconds);
  const ds = summarize(d.seconds);
  const ob = summarize(o.bytes);
  const db = summarize(d.bytes);
  return {
    label: net.label, latencyMs: net.proxy.latencyMs ?? 0, bandwidth: net.proxy.bandwidth,
    overlayfs: { seconds: os, pullSeconds: summarize(o.pullSeconds), bytes: ob }, floor: { overlayfs: summarize(floor.overlayfs), dedup: summarize(floor.dedup) },
    dedup: { seconds: ds, pullSeconds: summarize(d.pullSeconds), bytes: db, pullRequests: summarize(d.pullRequests), ourPullRequests: summarize(d.ourPullRequests), pullRoundTrips: summarize(d.pullRoundTrips), pullBytes: summarize(d.pullBytes) },
    speedup: os.median / ds.median, bytesRatio: ob.median / Math.max(1, db.median),
  };
}
