// The networks a scenario runs over: the registry on loopback (what a test sees) and behind a
// proxy that adds a per-request latency and caps bandwidth (what a node across a network sees,
// and what lazy pulling is for). `--latency-ms` and `--bandwidth-mibps` change the second.

import { writeFile } from 'node:fs/promises';
import { run } from '../test/fixtures/process.js';
import { startProxy, type ProxyOptions, type TestProxy } from '../test/fixtures/proxy.js';

export interface Network {
  name: 'loopback' | 'wan';
  label: string;
  proxy: ProxyOptions;
}

export function networks(latencyMs: number, bandwidthMiBps: number): Network[] {
  return [
    { name: 'loopback', label: 'loopback', proxy: {} },
    { name: 'wan', label: `${latencyMs} ms, ${bandwidthMiBps} MiB/s`, proxy: { latencyMs, bandwidth: bandwidthMiBps * 1024 * 1024 } },
  ];
}

/** Cold start for what follows: dirty pages written, page cache, dentries and inodes dropped. */
export async function dropCaches(): Promise<void> {
  await run('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3');
}

/** Runs `fn` once per network, each with its own proxy in front of the registry at `upstream`. */
export async function overNetworks<T>(upstream: string, nets: Network[], fn: (net: Network, proxy: TestProxy) => Promise<T>): Promise<Partial<Record<Network['name'], T>>> {
  const out: Partial<Record<Network['name'], T>> = {};
  for (const net of nets) {
    const proxy = await startProxy(upstream, net.proxy);
    try {
      out[net.name] = await fn(net, proxy);
    } finally {
      await proxy.stop();
    }
  }
  return out;
}
