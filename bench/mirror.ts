// The pull-run scenario through a pull-through cache: a docker-registry in proxy mode beside the
// nodes (reached over loopback) in front of the origin (reached over the scenario's network, by
// the mirror and by the nodes alike), named as mirror in a hosts.toml that containerd and our
// daemon read. Each repetition starts a fresh, empty mirror; the first node pulls while it fills
// (its ranges come from the origin), the second node (fresh state) once it has cached the blobs.
// Bytes are counted by proxies: nodes ← origin, nodes ← mirror, mirror ← origin.

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startContainerd, unmountUnder } from '../test/fixtures/containerd.js';
import { startProxy, type TestProxy } from '../test/fixtures/proxy.js';
import { startRegistry, waitUntilCached } from '../test/fixtures/registry.js';
import { startSnapshotter } from '../test/fixtures/snapshotter.js';
import { dropCaches, type Network } from './network.js';
import { firstOutput } from './snapshotter.js';
import { summarize, type Summary } from './stats.js';

const MiB = 1024 * 1024;

export interface MirrorNodeResult {
  /** Pull start to the container's first output. */
  seconds: Summary;
  /** Blob bytes the node got from the origin, and from the mirror. */
  fromOrigin: Summary;
  fromMirror: Summary;
  /** Blob bytes the mirror got from the origin: for the first node until it had cached the blobs (its fill), for the second while it ran. */
  mirrorFill: Summary;
}

export interface MirrorResult {
  first: MirrorNodeResult;
  second: MirrorNodeResult;
}

/**
 * `toOrigin`: the proxy the nodes reach the origin through (the scenario's network), also the
 * image's registry name (`ref`'s host); `origin`: the registry itself, for the mirror's own proxy.
 */
export async function pullRunThroughMirror(tmp: string, origin: string, toOrigin: TestProxy, ref: string, layers: string[], net: Network, reps: number,
  log: (s: string) => void): Promise<MirrorResult> {
  const nodes = { first: [] as number[][], second: [] as number[][] };
  const repository = ref.slice(ref.indexOf('/') + 1, ref.lastIndexOf(':'));
  for (let i = 0; i < reps; i++) {
    const dir = await mkdtemp(join(tmp, `mirror-${i}-`));
    const fill = await startProxy(origin, net.proxy);
    const servers: { stop(): Promise<void> }[] = [fill];
    try {
      const mirror = await startRegistry(dir, { name: 'mirror', proxyOf: fill.host });
      servers.unshift(mirror);
      const viaMirror = await startProxy(mirror.host);
      servers.unshift(viaMirror);
      const hostsDir = join(dir, 'certs.d');
      await mkdir(join(hostsDir, toOrigin.host), { recursive: true });
      await writeFile(join(hostsDir, toOrigin.host, 'hosts.toml'),
        `server = "http://${toOrigin.host}"\n\n[host."http://${viaMirror.host}"]\n  capabilities = ["pull", "resolve"]\n`);
      for (const node of ['first', 'second'] as const) {
        if (node === 'second') {
          for (const digest of layers) await waitUntilCached(mirror.host, repository, digest, 300_000);
        }
        const nodeDir = join(dir, node);
        await mkdir(nodeDir);
        await dropCaches();
        const snap = await startSnapshotter(nodeDir, [], { registry_hosts_dir: hostsDir });
        const ctd = await startContainerd(nodeDir, { dedupSocket: snap.socket, hostsDir });
        try {
          if (node === 'second') nodes.first[i]![3] = fill.stats.blobBytes;
          for (const p of [toOrigin, viaMirror, fill]) p.reset();
          const started = process.hrtime.bigint();
          const pull = await ctd.rpull(ref, 300_000);
          if (pull.code !== 0) throw new Error(`pull through the mirror (${node} node): ${pull.stderr}`);
          const t = await firstOutput(ctd.socket, ['--snapshotter', 'dedup', ref, `bench-mirror-${i}`, '/bin/cat', '/etc/motd'], started);
          nodes[node].push([t, toOrigin.stats.blobBytes, viaMirror.stats.blobBytes, fill.stats.blobBytes]);
          log(`  repetition ${i + 1} through the mirror, ${node} node: first output after ${t.toFixed(2)} s, ${(toOrigin.stats.blobBytes / MiB).toFixed(1)} MiB from the origin, `
            + `${(viaMirror.stats.blobBytes / MiB).toFixed(1)} MiB from the mirror; the mirror got ${(fill.stats.blobBytes / MiB).toFixed(1)} MiB from the origin until then`);
        } finally {
          await ctd.stop();
          await snap.stop();
          await unmountUnder(nodeDir);
        }
      }
    } finally {
      for (const s of servers) await s.stop();
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    }
  }
  const of = (rows: number[][]): MirrorNodeResult => ({
    seconds: summarize(rows.map((r) => r[0]!)), fromOrigin: summarize(rows.map((r) => r[1]!)),
    fromMirror: summarize(rows.map((r) => r[2]!)), mirrorFill: summarize(rows.map((r) => r[3]!)),
  });
  return { first: of(nodes.first), second: of(nodes.second) };
}
