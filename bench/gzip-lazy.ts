// Scenario "gzip-lazy": lazy starts of unmodified gzip images through their gzip index
// (docs/gzip-index.md), behind the proxy's latency and bandwidth cap, against full pulls of the
// same images in the same run. Three images, each pushed as gzip and indexed with `dedupctl index
// create --push` (the image is not changed): the pull-run scenario's big image printing one small
// file, the prefetch scenario's python3.11 image starting a script, and the kernel scenario's
// real Debian root filesystem with python3 importing modules. From the start of the pull to the
// first output, fresh state and a dropped page cache for each: ctr image pull into overlayfs,
// ctr-remote rpull without a trace (it records one), rpull replaying that trace, and, for
// reference, rpull of an eStargz copy of the image (dedupctl convert; no trace): what converting
// would give on the same machine in the same run.

import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ImageIndexRecord } from '../src/convert/gzip-indexer.js';
import { dedupctlJson } from '../test/fixtures/cli.js';
import { pushOci, tarOf, writeOciImage } from '../test/fixtures/images.js';
import type { TestProxy } from '../test/fixtures/proxy.js';
import { pythonImageEntries } from '../test/fixtures/python-image.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { debianLayers } from './debian-images.js';
import { PYTHON_IMPORTS } from './kernel.js';
import { dropCaches, overNetworks, type Network } from './network.js';
import { coldStart } from './prefetch.js';
import { BIG_APP_CMD, bigAppLayers } from './snapshotter.js';
import { summarize, type Summary } from './stats.js';

export const GZIP_LAZY_MODES = ['full pull (overlayfs)', 'lazy', 'lazy, trace replay', 'lazy, eStargz copy'] as const;
type Mode = (typeof GZIP_LAZY_MODES)[number];

export const GZIP_LAZY_IMAGES = ['big', 'python', 'debian'] as const;
type ImageName = (typeof GZIP_LAZY_IMAGES)[number];

interface BenchImage {
  describe: string;
  layers: () => Promise<Buffer[]>;
  cmd: string[];
}

const IMAGES: Record<ImageName, BenchImage> = {
  big: { describe: 'big image, one small file read (cat /etc/motd)', layers: bigAppLayers, cmd: BIG_APP_CMD },
  python: { describe: 'python3.11 start importing 14 modules', layers: async () => [await tarOf(await pythonImageEntries())], cmd: ['/usr/bin/python3', '/app/main.py'] },
  debian: {
    describe: 'Debian 12 root filesystem + python3, python3 importing 8 modules',
    layers: async () => {
      const d = await debianLayers(() => undefined);
      return [await readFile(d.base), await readFile(d.python3)];
    },
    cmd: ['/usr/bin/python3', '-c', `${PYTHON_IMPORTS}; print("ready")`],
  },
};

export interface GzipLazyImageResult {
  describe: string;
  /** Compressed bytes of the image's layers, and of their gzip indexes. */
  layerBytes: number;
  indexBytes: number;
  layers: number;
  checkpoints: number;
  /** Per mode: seconds to first output, blob bytes the registry served (indexes included), blob requests. */
  modes: Record<Mode, { seconds: Summary; bytes: Summary; requests: Summary }>;
}

export interface GzipLazyResult {
  network: string;
  spacing: number;
  images: Record<ImageName, GzipLazyImageResult>;
}

export async function gzipLazyScenario(tmp: string, reps: number, nets: Network[], log: (s: string) => void): Promise<GzipLazyResult> {
  const wan = nets.filter((n) => n.name === 'wan');
  const registry = await startRegistry(tmp);
  try {
    const indexed: Partial<Record<ImageName, ImageIndexRecord>> = {};
    for (const name of GZIP_LAZY_IMAGES) {
      const layout = join(tmp, `oci-${name}`);
      await writeOciImage(layout, name, (await IMAGES[name].layers()).map((tar) => ({ tar, compression: 'gzip' as const })));
      await pushOci(layout, name, `${registry.host}/bench/${name}:gzip`);
      await rm(layout, { recursive: true, force: true });
      indexed[name] = await dedupctlJson<ImageIndexRecord>(['index', 'create', '--plain-http', '--root', join(tmp, 'indexer'), '--push', `${registry.host}/bench/${name}:gzip`]);
      await dedupctlJson(['convert', '--plain-http', `${registry.host}/bench/${name}:gzip`, `${registry.host}/bench/${name}:esgz`]);
    }
    const out = await overNetworks(registry.host, wan, async (net, proxy) => {
      const images = {} as Record<ImageName, GzipLazyImageResult>;
      for (const name of GZIP_LAZY_IMAGES) {
        const rec = indexed[name]!;
        const sum = (f: (l: ImageIndexRecord['layers'][number]) => number): number => rec.layers.reduce((a, l) => a + f(l), 0);
        log(`gzip-lazy (${net.label}): ${IMAGES[name].describe}; ${rec.layers.length} gzip layers of ${(sum((l) => l.layerSize) / 2 ** 20).toFixed(1)} MiB, index ${(sum((l) => l.indexSize) / 2 ** 20).toFixed(2)} MiB`);
        images[name] = {
          describe: IMAGES[name].describe, layerBytes: sum((l) => l.layerSize), indexBytes: sum((l) => l.indexSize), layers: rec.layers.length, checkpoints: sum((l) => l.checkpoints),
          modes: await startsOver(join(tmp, `${net.name}-${name}`), proxy, `${proxy.host}/bench/${name}`, IMAGES[name].cmd, reps, log),
        };
      }
      return images;
    });
    return { network: wan[0]!.label, spacing: indexed.big!.spacing, images: out.wan! };
  } finally {
    await registry.stop();
  }
}

/** `repo`: the image's repository behind the proxy, tagged gzip (indexed) and esgz (the eStargz copy). */
async function startsOver(tmp: string, proxy: TestProxy, repo: string, cmd: string[], reps: number, log: (s: string) => void): Promise<GzipLazyImageResult['modes']> {
  await mkdir(tmp, { recursive: true });
  const samples = Object.fromEntries(GZIP_LAZY_MODES.map((m) => [m, { seconds: [] as number[], bytes: [] as number[], requests: [] as number[] }])) as Record<Mode, Record<'seconds' | 'bytes' | 'requests', number[]>>;
  let n = 0;
  for (let i = 0; i < reps; i++) {
    // The lazy start records its trace here; the replay reads it (each with an empty store).
    const traces = join(tmp, `traces-${i}`);
    for (const mode of GZIP_LAZY_MODES) {
      const root = join(tmp, `root-${n}`);
      await dropCaches();
      const ref = `${repo}:${mode === 'lazy, eStargz copy' ? 'esgz' : 'gzip'}`;
      const r = await coldStart(tmp, proxy, ref, mode === 'full pull (overlayfs)' ? undefined : { root, traceDir: mode === 'lazy, eStargz copy' ? join(tmp, `esgz-traces-${n}`) : traces }, cmd, `gz-${n++}`);
      await rm(root, { recursive: true, force: true });
      for (const k of ['seconds', 'bytes', 'requests'] as const) samples[mode][k].push(r[k]);
      log(`  repetition ${i + 1}, ${mode}: first output after ${r.seconds.toFixed(2)} s, ${(r.bytes / 2 ** 20).toFixed(1)} MiB in ${r.requests} blob requests`);
    }
  }
  return Object.fromEntries(GZIP_LAZY_MODES.map((m) => [m, { seconds: summarize(samples[m].seconds), bytes: summarize(samples[m].bytes), requests: summarize(samples[m].requests) }])) as GzipLazyImageResult['modes'];
}
