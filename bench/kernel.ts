// Scenario "kernel": ordinary gzip images pulled with `ctr image pull --snapshotter dedup`, whose
// layers kernel mode (enable_erofs) cuts into the chunk store and serves as EROFS images, vs the
// same pulls with containerd's overlayfs snapshotter (layers unpacked on ext4), fresh state for
// both in every repetition. Three real Debian images sharing their base layer (debian-images.ts):
// minbase, minbase + nginx, minbase + python3. Measured: the time of the three pulls; the disk
// they take, and the CPU time they cost (steadier than the wall time on a loaded machine); through a read-only view of the python3 image (overlayfs of its two layers, as a
// container sees it), page cache dropped, the largest file and the standard library's tree of
// small files read whole, and python3 starting and importing a few modules. Then the same three
// root filesystems as three single-layer images (built separately, or squashed: no layer shared),
// pulled into fresh state: their disk, where only deduplication across images can save anything.
// Disk and reads are measured once our snapshotter has deleted the unpacked copies (in the
// background, after each commit returned); the pull times do not wait for that.

import { existsSync } from 'node:fs';
import { lstat, mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { mountView, startContainerd, unmountUnder, type TestContainerd } from '../test/fixtures/containerd.js';
import { pushOci, sha256, writeOciImage } from '../test/fixtures/images.js';
import { mustRun, run } from '../test/fixtures/process.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { startSnapshotter } from '../test/fixtures/snapshotter.js';
import { APPS, debianLayers } from './debian-images.js';
import { dropCaches } from './network.js';
import { summarize, timed, type Summary } from './stats.js';
import { diskUsage } from './storage.js';

const MODES = ['overlayfs', 'dedup'] as const;
type Mode = (typeof MODES)[number];
const IMAGES = ['base', ...APPS] as const;
/** Where the python3 image keeps its standard library: the tree of small files. */
const STDLIB = 'usr/lib/python3.11';
export const PYTHON_IMPORTS = 'import json, email.parser, http.client, asyncio, decimal, sqlite3, argparse, logging';
const PYTHON = ['/usr/bin/python3', '-c', PYTHON_IMPORTS];

export interface ModeFigures {
  /** The three pulls one after another, and each. */
  pullSeconds: Summary;
  pullsByImage: Record<string, Summary>;
  /** CPU time the pulls took: containerd's, and our snapshotter's (all its threads). */
  pullCpuSeconds: Summary;
  /** du of the snapshots (overlayfs) or of the chunk store and the layers' images (ours). */
  diskBytes: Summary;
  /** The same for the three single-layer images, and the time of their pulls. */
  squashedDiskBytes: Summary;
  squashedPullSeconds: Summary;
  bigFileSeconds: Summary;
  smallFilesSeconds: Summary;
  /** Page cache dropped before (cold), and straight after that (warm). */
  pythonColdSeconds: Summary;
  pythonWarmSeconds: Summary;
}

export interface KernelResult {
  images: string[];
  /** Uncompressed bytes of the layers, each image counted whole. */
  logicalBytes: number;
  /** Uncompressed bytes of the three single-layer images. */
  squashedBytes: number;
  bigFile: { path: string; bytes: number };
  smallFiles: { path: string; files: number; bytes: number };
  modes: Record<Mode, ModeFigures>;
  /** Ours / overlayfs: disk and times (lower is better); read throughput (higher is better). */
  ratios: { disk: number; squashedDisk: number; squashedPull: number; pull: number; pullCpu: number; bigFileThroughput: number; smallFilesThroughput: number; pythonCold: number; pythonWarm: number };
}

/** CPU seconds (user + system, every thread) process `pid` has used so far; /proc counts in USER_HZ, 100 on Linux. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The regular files under `dir` (relative paths) with their sizes. */
async function filesUnder(dir: string, rel = ''): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  for (const name of await readdir(join(dir, rel))) {
    const p = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(dir, p));
    if (st.isDirectory()) out.push(...await filesUnder(dir, p));
    else if (st.isFile()) out.push({ path: p, size: st.size });
  }
  return out;
}

async function readWhole(path: string, buf: Buffer): Promise<number> {
  const fh = await open(path, 'r');
  try {
    let n = 0;
    for (let got; (got = (await fh.read(buf, 0, buf.length, n)).bytesRead) > 0;) n += got;
    return n;
  } finally {
    await fh.close();
  }
}

interface FreshPulls {
  ctd: TestContainerd;
  pulls: Record<string, number>;
  /** CPU time of the pulls: containerd's, and our snapshotter's (all its threads). */
  cpu: number;
  disk: number;
  /** Stops the daemons and unmounts what they left. */
  stop(): Promise<void>;
}

/**
 * Waits (up to a minute) until our snapshotter has deleted the unpacked copies of the layers it
 * committed (snapshots/<id>/unpacked, deleted in the background after each commit returned), so
 * the disk is measured and the reads timed without that deletion's I/O beside them.
 */
async function unpackedCopiesGone(root: string): Promise<void> {
  const left = async (): Promise<boolean> => (await readdir(join(root, 'snapshots'))).some((id) => existsSync(join(root, 'snapshots', id, 'unpacked')));
  for (const deadline = Date.now() + 60_000; await left();) {
    if (Date.now() > deadline) throw new Error(`unpacked copies still under ${root}/snapshots a minute after the pulls`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Fresh state in `dir` (page cache dropped): containerd, with our snapshotter for `dedup`, and
 * the images of `refs` pulled one after another; each pull's time, their CPU time, the disk they take.
 */
async function pullFresh(mode: Mode, dir: string, refs: Record<string, string>): Promise<FreshPulls> {
  await dropCaches();
  const snap = mode === 'dedup' ? await startSnapshotter(dir) : undefined;
  const ctd = await startContainerd(dir, snap ? { dedupSocket: snap.socket } : {}).catch(async (err: unknown) => {
    await snap?.stop();
    throw err;
  });
  const stop = async (): Promise<void> => {
    await ctd.stop();
    await snap?.stop();
    await unmountUnder(dir);
  };
  try {
    const pids = [ctd.daemon.child.pid!, ...(snap ? [snap.daemon.child.pid!] : [])];
    const cpu = async (): Promise<number> => (await Promise.all(pids.map(cpuSeconds))).reduce((a, b) => a + b, 0);
    const cpuBefore = await cpu();
    const pulls: Record<string, number> = {};
    for (const [name, ref] of Object.entries(refs)) {
      pulls[name] = await timed(async () => {
        const r = await ctd.ctr(['image', 'pull', '--plain-http', '--snapshotter', mode, ref], 600_000);
        if (r.code !== 0) throw new Error(`ctr image pull --snapshotter ${mode} ${name}: ${r.stderr}`);
      });
    }
    const used = (await cpu()) - cpuBefore;
    if (snap) await unpackedCopiesGone(snap.root);
    const disk = await diskUsage(...(snap
      ? ['chunks', 'images', 'index.db', 'index.db-wal'].map((f) => join(snap.root, f)).filter((p) => existsSync(p))
      : [join(ctd.root, 'root/io.containerd.snapshotter.v1.overlayfs')]));
    return { ctd, pulls, cpu: used, disk, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

interface Rep {
  pulls: Record<string, number>;
  pullCpu: number;
  disk: number;
  squashedDisk: number;
  squashedPull: number;
  bigFile: number;
  smallFiles: number;
  pythonCold: number;
  pythonWarm: number;
}

export async function kernelScenario(tmp: string, reps: number, log: (s: string) => void): Promise<KernelResult> {
  const layers = await debianLayers(log);
  const tars = { base: await readFile(layers.base), nginx: await readFile(layers.nginx), python3: await readFile(layers.python3) };
  const registry = await startRegistry(tmp);
  try {
    const refs: Record<string, string> = {};
    for (const name of IMAGES) {
      const parts = name === 'base' ? [tars.base] : [tars.base, tars[name]];
      await writeOciImage(join(tmp, 'oci'), name, parts.map((tar) => ({ tar, compression: 'gzip' as const })));
      refs[name] = `${registry.host}/bench/debian:${name}`;
      await pushOci(join(tmp, 'oci'), name, refs[name]);
    }
    const logicalBytes = tars.base.length * IMAGES.length + tars.nginx.length + tars.python3.length;
    // The base image is one layer already; the others as one layer each, sharing none.
    const squashedRefs: Record<string, string> = { base: refs.base! };
    let squashedBytes = tars.base.length;
    for (const app of APPS) {
      const tar = await readFile(layers.squashed[app]);
      squashedBytes += tar.length;
      await writeOciImage(join(tmp, 'oci'), `${app}-squashed`, [{ tar, compression: 'gzip' }]);
      squashedRefs[app] = `${registry.host}/bench/debian:${app}-squashed`;
      await pushOci(join(tmp, 'oci'), `${app}-squashed`, squashedRefs[app]);
    }
    // The python3 image's top snapshot is named by its layers' chain id.
    const pythonChain = sha256(Buffer.from(`${sha256(tars.base)} ${sha256(tars.python3)}`));
    log(`kernel: ${IMAGES.length} Debian ${IMAGES.join(', ')} images, ${(logicalBytes / 2 ** 20).toFixed(0)} MiB of layers in all (tar)`);
    let bigFile = { path: '', bytes: 0 };
    let smallFiles = { path: STDLIB, files: 0, bytes: 0 };
    let smallList: string[] = [];
    const runs: Record<Mode, Rep[]> = { overlayfs: [], dedup: [] };
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let i = 0; i < reps; i++) {
      for (const mode of MODES) {
        const dir = await mkdtemp(join(tmp, `${mode}-${i}-`));
        const state = await pullFresh(mode, dir, refs);
        const { pulls, cpu: pullCpu, disk } = state;
        const view = join(dir, 'view');
        let rep: Omit<Rep, 'squashedDisk' | 'squashedPull'>;
        try {
          await mountView(state.ctd, mode, 'bench-view', pythonChain, view);
          if (!bigFile.bytes) {
            const all = await filesUnder(view, 'usr');
            const big = all.reduce((a, b) => (b.size > a.size ? b : a));
            bigFile = { path: big.path, bytes: big.size };
            const small = all.filter((f) => f.path.startsWith(`${STDLIB}/`));
            smallList = small.map((f) => f.path);
            smallFiles = { path: STDLIB, files: small.length, bytes: small.reduce((n, f) => n + f.size, 0) };
          }
          await dropCaches();
          const big = await timed(() => readWhole(join(view, bigFile.path), buf));
          await dropCaches();
          const small = await timed(async () => {
            for (const p of smallList) await readWhole(join(view, p), buf);
          });
          await dropCaches();
          const pythonCold = await timed(() => mustRun('chroot', [view, ...PYTHON]));
          const pythonWarm = await timed(() => mustRun('chroot', [view, ...PYTHON]));
          rep = { pulls, pullCpu, disk, bigFile: big, smallFiles: small, pythonCold, pythonWarm };
        } finally {
          await run('umount', [view]);
          await state.stop();
          await rm(dir, { recursive: true, force: true });
        }
        const squashedDir = await mkdtemp(join(tmp, `${mode}-squashed-${i}-`));
        const squashed = await pullFresh(mode, squashedDir, squashedRefs);
        await squashed.stop();
        await rm(squashedDir, { recursive: true, force: true });
        const squashedPull = Object.values(squashed.pulls).reduce((a, b) => a + b, 0);
        runs[mode].push({ ...rep, squashedDisk: squashed.disk, squashedPull });
        const total = Object.values(pulls).reduce((a, b) => a + b, 0);
        log(`  repetition ${i + 1} ${mode}: pulls ${total.toFixed(2)} s (${IMAGES.map((n) => `${n} ${pulls[n]!.toFixed(2)}`).join(', ')}; CPU ${pullCpu.toFixed(2)} s), disk ${(disk / 2 ** 20).toFixed(1)} MiB, `
          + `big file ${rep.bigFile.toFixed(3)} s, small files ${rep.smallFiles.toFixed(3)} s, python cold ${rep.pythonCold.toFixed(3)} s / warm ${rep.pythonWarm.toFixed(3)} s; `
          + `single-layer images: pulls ${squashedPull.toFixed(2)} s, disk ${(squashed.disk / 2 ** 20).toFixed(1)} MiB`);
      }
    }
    const figures = (rs: Rep[]): ModeFigures => ({
      pullSeconds: summarize(rs.map((r) => Object.values(r.pulls).reduce((a, b) => a + b, 0))),
      pullsByImage: Object.fromEntries(IMAGES.map((n) => [n, summarize(rs.map((r) => r.pulls[n]!))])),
      pullCpuSeconds: summarize(rs.map((r) => r.pullCpu)),
      diskBytes: summarize(rs.map((r) => r.disk)),
      squashedDiskBytes: summarize(rs.map((r) => r.squashedDisk)),
      squashedPullSeconds: summarize(rs.map((r) => r.squashedPull)),
      bigFileSeconds: summarize(rs.map((r) => r.bigFile)),
      smallFilesSeconds: summarize(rs.map((r) => r.smallFiles)),
      pythonColdSeconds: summarize(rs.map((r) => r.pythonCold)),
      pythonWarmSeconds: summarize(rs.map((r) => r.pythonWarm)),
    });
    const o = figures(runs.overlayfs);
    const d = figures(runs.dedup);
    return {
      images: [...IMAGES], logicalBytes, squashedBytes, bigFile, smallFiles, modes: { overlayfs: o, dedup: d },
      ratios: {
        disk: d.diskBytes.median / o.diskBytes.median, squashedDisk: d.squashedDiskBytes.median / o.squashedDiskBytes.median,
        squashedPull: d.squashedPullSeconds.median / o.squashedPullSeconds.median, pull: d.pullSeconds.median / o.pullSeconds.median, pullCpu: d.pullCpuSeconds.median / o.pullCpuSeconds.median,
        bigFileThroughput: o.bigFileSeconds.median / d.bigFileSeconds.median, smallFilesThroughput: o.smallFilesSeconds.median / d.smallFilesSeconds.median,
        pythonCold: d.pythonColdSeconds.median / o.pythonColdSeconds.median, pythonWarm: d.pythonWarmSeconds.median / o.pythonWarmSeconds.median,
      },
    };
  } finally {
    await registry.stop();
  }
}
