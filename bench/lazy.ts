// Scenarios of the lazy root filesystem, each against a baseline measured in the same run:
//  lazy-cold-read:    a 200 MiB file read through a fresh lazy mount (empty store) vs one HTTP GET
//                     of the same layer blob from the same registry (throughput ratio);
//  lazy-warm-read:    the same file with every chunk in the store, page cache dropped, vs reading
//                     a copy of it on the local disk (throughput ratio);
//                     both again in mount mode erofs where it can run (docs/kernel.md), same baselines;
//  mount-first-byte:  `dedupctl mount` to the first byte of a small file vs a full pull
//                     (`ctr image pull`, containerd's overlayfs snapshotter) of the same image.

import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { binary, dedupctlJson } from '../test/fixtures/cli.js';
import { startContainerd } from '../test/fixtures/containerd.js';
import { erofsModeSkipReason } from '../test/fixtures/erofs.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage } from '../test/fixtures/images.js';
import { startRegistry, type TestRegistry } from '../test/fixtures/registry.js';
import { dropCaches } from './network.js';
import { summarize, timed, type Summary } from './stats.js';

const MiB = 1024 * 1024;

interface ReadResults {
  coldRead: { lazySeconds: Summary; httpGetSeconds: Summary; lazyMiBps: number; httpGetMiBps: number; ratio: number };
  warmRead: { lazySeconds: Summary; localDiskSeconds: Summary; lazyMiBps: number; localDiskMiBps: number; ratio: number };
}

export interface LazyResults extends ReadResults {
  fileBytes: number;
  blobBytes: number;
  /** The same reads in mount mode erofs; absent where it cannot run (the reason is logged). */
  erofs?: ReadResults;
  firstByte: { lazySeconds: Summary; fullPullSeconds: Summary; ratio: number };
}

async function readAll(path: string): Promise<number> {
  let n = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) n += (chunk as Buffer).length;
  return n;
}

async function firstByte(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.read(Buffer.alloc(1), 0, 1, 0);
  } finally {
    await fh.close();
  }
}

interface Ctx {
  tmp: string;
  registry: TestRegistry;
  ref: string;
  blobDigest: string;
  blobBytes: number;
  fileBytes: number;
}

async function prepare(tmp: string, log: (s: string) => void): Promise<Ctx> {
  const big = randomBytes(200 * MiB);
  await writeFile(join(tmp, 'local-copy'), big);
  const tar = await tarOf([...(await busyboxEntries()), { name: 'etc/', type: 'directory' }, { name: 'etc/hostname', type: 'file', content: Buffer.from('bench\n') },
    { name: 'data/', type: 'directory' }, { name: 'data/big', type: 'file', content: big }]);
  await writeOciImage(join(tmp, 'src'), 'src', [{ tar, compression: 'gzip' }]);
  const registry = await startRegistry(tmp);
  await pushOci(join(tmp, 'src'), 'src', `${registry.host}/bench/lazy:src`);
  const ref = `${registry.host}/bench/lazy:estargz`;
  const conv = await dedupctlJson<{ layers: { digest: string; size: number }[] }>(['convert', '--plain-http', `${registry.host}/bench/lazy:src`, ref]);
  log(`lazy: image with a ${big.length / MiB} MiB file, layer ${(conv.layers[0]!.size / MiB).toFixed(0)} MiB compressed`);
  return { tmp, registry, ref, blobDigest: conv.layers[0]!.digest, blobBytes: conv.layers[0]!.size, fileBytes: big.length };
}

async function withMount<T>(ctx: Ctx, root: string, config: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = join(ctx.tmp, 'mnt');
  const m = await dedupctlJson<{ pid: number }>(['mount', '--root', root, '--config', config, '--plain-http', ctx.ref, dir]);
  try {
    return await fn(dir);
  } finally {
    const r = await binary('dedupctl', ['umount', '--root', root, dir]);
    if (r.code !== 0) process.kill(m.pid, 'SIGKILL');
  }
}

/** Cold and warm reads of the big file in mount mode `mode`, `reps` times, with their baselines measured alongside. */
async function reads(ctx: Ctx, mode: 'fuse' | 'erofs', reps: number, log: (s: string) => void): Promise<ReadResults> {
  const config = join(ctx.tmp, `config-${mode}.json`);
  await writeFile(config, JSON.stringify({ mount_mode: mode }));
  const cold: number[] = [];
  const get: number[] = [];
  const warm: number[] = [];
  const disk: number[] = [];
  for (let i = 0; i < reps; i++) {
    const root = join(ctx.tmp, `root-${mode}-${i}`);
    cold.push(await withMount(ctx, root, config, (dir) => timed(() => readAll(join(dir, 'data/big')))));
    get.push(await timed(async () => {
      const res = await fetch(`http://${ctx.registry.host}/v2/bench/lazy/blobs/${ctx.blobDigest}`);
      for await (const _ of res.body!) { /* consume */ }
    }));
    warm.push(await withMount(ctx, root, config, async (dir) => {
      await dropCaches();
      return timed(() => readAll(join(dir, 'data/big')));
    }));
    await dropCaches();
    disk.push(await timed(() => readAll(join(ctx.tmp, 'local-copy'))));
    await rm(root, { recursive: true, force: true });
    log(`  ${mode} repetition ${i + 1}: cold ${cold.at(-1)!.toFixed(2)} s (GET ${get.at(-1)!.toFixed(2)} s), warm ${warm.at(-1)!.toFixed(2)} s (disk ${disk.at(-1)!.toFixed(2)} s)`);
  }
  const c = summarize(cold);
  const g = summarize(get);
  const w = summarize(warm);
  const d = summarize(disk);
  const mib = ctx.fileBytes / MiB;
  return {
    coldRead: { lazySeconds: c, httpGetSeconds: g, lazyMiBps: mib / c.median, httpGetMiBps: ctx.blobBytes / MiB / g.median, ratio: (mib / c.median) / (ctx.blobBytes / MiB / g.median) },
    warmRead: { lazySeconds: w, localDiskSeconds: d, lazyMiBps: mib / w.median, localDiskMiBps: mib / d.median, ratio: d.median / w.median },
  };
}

export async function lazyScenarios(tmp: string, reps: number, log: (s: string) => void): Promise<LazyResults> {
  const ctx = await prepare(tmp, log);
  try {
    const fuse = await reads(ctx, 'fuse', reps, log);
    const erofsSkip = await erofsModeSkipReason();
    if (erofsSkip) log(`  mount mode erofs not measured: ${erofsSkip}`);
    const erofs = erofsSkip ? undefined : await reads(ctx, 'erofs', reps, log);
    const lazyFirst: number[] = [];
    const fullPull: number[] = [];
    const containerd = await startContainerd(tmp);
    try {
      for (let i = 0; i < reps; i++) {
        const root = join(tmp, `root-first-${i}`);
        const dir = join(tmp, 'mnt');
        lazyFirst.push(await timed(async () => {
          await dedupctlJson(['mount', '--root', root, '--plain-http', ctx.ref, dir]);
          await firstByte(join(dir, 'etc/hostname'));
        }));
        await binary('dedupctl', ['umount', '--root', root, dir]);
        await rm(root, { recursive: true, force: true });
        fullPull.push(await timed(async () => {
          const r = await containerd.ctr(['image', 'pull', '--plain-http', ctx.ref]);
          if (r.code !== 0) throw new Error(`ctr image pull: ${r.stderr}`);
        }));
        await containerd.ctr(['image', 'rm', ctx.ref]);
        await containerd.ctr(['content', 'prune', 'references']).catch(() => undefined);
        log(`  first byte ${i + 1}: lazy ${lazyFirst.at(-1)!.toFixed(3)} s, full pull ${fullPull.at(-1)!.toFixed(2)} s`);
      }
    } finally {
      await containerd.stop();
    }
    const f = summarize(lazyFirst);
    const p = summarize(fullPull);
    return {
      fileBytes: ctx.fileBytes, blobBytes: ctx.blobBytes, ...fuse, erofs,
      firstByte: { lazySeconds: f, fullPullSeconds: p, ratio: p.median / f.median },
    };
  } finally {
    await ctx.registry.stop();
  }
}
