// Scenario "storage": three related images, as a team ships them: two apps on the same base layer,
// and a third on that base after a security update (the same files but two libraries and
// os-release). Disk used once all three are on the node: containerd's overlayfs snapshotter
// after `ctr image pull` (snapshots; the compressed blobs it also keeps are reported apart) vs our
// chunk store after `dedupctl store ingest` (chunks/ and index.db), both measured with du.

import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { dedupctlJson } from '../test/fixtures/cli.js';
import { startContainerd, unmountUnder } from '../test/fixtures/containerd.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage, type FileSpec } from '../test/fixtures/images.js';
import { run } from '../test/fixtures/process.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { summarize, type Summary } from './stats.js';

const MiB = 1024 * 1024;

export interface StorageResult {
  images: string[];
  /** Uncompressed bytes of the images' layers, each image counted whole. */
  logicalBytes: number;
  overlayfs: { snapshotBytes: Summary; contentStoreBytes: Summary };
  dedup: { storeBytes: Summary };
  /** overlayfs snapshot bytes / our store bytes. */
  ratio: number;
}

/** Disk blocks used under `paths` (du -sB1, what the filesystem actually allocated). */
export async function diskUsage(...paths: string[]): Promise<number> {
  const r = await run('du', ['-scB1', ...paths]);
  if (r.code !== 0) throw new Error(`du: ${r.stderr}`);
  return Number(r.stdout.trim().split('\n').at(-1)!.split('\t')[0]);
}

/** Deterministic pseudo-random bytes, so a file is identical wherever it is built from the same seed. */
function seeded(seed: string, size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let off = 0, i = 0; off < size; i++) off += createHash('sha256').update(`${seed}/${i}`).digest().copy(out, off);
  return out;
}

function baseLayer(version: 1 | 2): FileSpec[] {
  const files: FileSpec[] = [{ name: 'usr/', type: 'directory' }, { name: 'usr/lib/', type: 'directory' }, { name: 'etc/', type: 'directory' }];
  for (let i = 0; i < 24; i++) {
    // The update replaces two of the 24 libraries.
    const seed = version === 2 && i < 2 ? `lib-${i}-patched` : `lib-${i}`;
    files.push({ name: `usr/lib/lib${i}.so`, type: 'file', content: seeded(seed, 2 * MiB) });
  }
  files.push({ name: 'etc/os-release', type: 'file', content: Buffer.from(`NAME=bench\nVERSION_ID=1.${version}\n`) });
  return files;
}

export async function storageScenario(tmp: string, reps: number, log: (s: string) => void): Promise<StorageResult> {
  const busybox = await busyboxEntries();
  const base1 = await tarOf([...busybox, ...baseLayer(1)]);
  const base2 = await tarOf([...busybox, ...baseLayer(2)]);
  const app = async (name: string): Promise<Buffer> => tarOf([{ name: 'app/', type: 'directory' }, { name: `app/${name}.bin`, type: 'file', content: randomBytes(6 * MiB) }]);
  const images: [string, Buffer, Buffer][] = [['app-a', base1, await app('a')], ['app-b', base1, await app('b')], ['app-c', base2, await app('c')]];
  const registry = await startRegistry(tmp);
  try {
    for (const [name, base, top] of images) {
      await writeOciImage(join(tmp, name), name, [{ tar: base, compression: 'gzip' }, { tar: top, compression: 'gzip' }]);
      await pushOci(join(tmp, name), name, `${registry.host}/bench/${name}:src`);
      await dedupctlJson(['convert', '--plain-http', `${registry.host}/bench/${name}:src`, `${registry.host}/bench/${name}:esgz`]);
    }
    const logicalBytes = images.reduce((n, [, base, top]) => n + base.length + top.length, 0);
    log(`storage: ${images.length} images, ${(logicalBytes / MiB).toFixed(0)} MiB of layers in all (tar)`);
    const snapshots: number[] = [];
    const content: number[] = [];
    const ours: number[] = [];
    for (let i = 0; i < reps; i++) {
      const dir = join(tmp, `rep-${i}`);
      const ctd = await startContainerd(dir);
      try {
        for (const [name] of images) {
          const r = await ctd.ctr(['image', 'pull', '--plain-http', `${registry.host}/bench/${name}:src`], 300_000);
          if (r.code !== 0) throw new Error(`ctr pull ${name}: ${r.stderr}`);
        }
        snapshots.push(await diskUsage(join(ctd.root, 'root/io.containerd.snapshotter.v1.overlayfs')));
        content.push(await diskUsage(join(ctd.root, 'root/io.containerd.content.v1.content')));
      } finally {
        await ctd.stop();
        await unmountUnder(dir);
      }
      const root = join(dir, 'dedup-root');
      for (const [name] of images) await dedupctlJson(['store', 'ingest', '--plain-http', '--root', root, `${registry.host}/bench/${name}:esgz`]);
      ours.push(await diskUsage(...['chunks', 'index.db', 'index.db-wal'].map((f) => join(root, f)).filter((p) => existsSync(p))));
      await run('rm', ['-rf', dir]);
      log(`  repetition ${i + 1}: overlayfs snapshots ${(snapshots.at(-1)! / MiB).toFixed(1)} MiB (+ content store ${(content.at(-1)! / MiB).toFixed(1)} MiB), chunk store ${(ours.at(-1)! / MiB).toFixed(1)} MiB`);
    }
    const s = summarize(snapshots);
    const o = summarize(ours);
    return { images: images.map(([n]) => n), logicalBytes, overlayfs: { snapshotBytes: s, contentStoreBytes: summarize(content) }, dedup: { storeBytes: o }, ratio: s.median / o.median };
  } finally {
    await registry.stop();
  }
}
