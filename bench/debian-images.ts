// Real images for the benchmarks, built from Debian packages the way an image build makes them:
// a `debootstrap --variant=minbase bookworm` root filesystem as the base layer, and one layer on
// top of it per application, what `apt-get install` of that package wrote (an overlayfs upper
// directory, its whiteouts turned into tar's `.wh.` entries). The layer tars are cached under
// CACHE (DEDUP_BENCH_CACHE overrides it), so only the first run downloads packages; each step is
// published by rename, so an interrupted set-up starts that step again.

import { existsSync } from 'node:fs';
import { lstat, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { native, isSysError } from '../src/native.js';
import { mustRun, run } from '../test/fixtures/process.js';

export const CACHE = process.env.DEDUP_BENCH_CACHE ?? '/var/cache/dedup-bench';
const SUITE = 'bookworm';
const MIRROR = 'http://deb.debian.org/debian';
export const APPS = ['nginx', 'python3'] as const;
export type App = (typeof APPS)[number];

/**
 * The uncompressed layer tars: `base`, and one per application (to go on top of `base`); and
 * `squashed`, per application the whole root filesystem as one layer (the base with the
 * application's layer applied), as separate image builds or squashed images have it.
 */
export type DebianLayers = Record<'base' | App, string> & { squashed: Record<App, string> };

const SLOW = { timeoutMs: 30 * 60_000 };

/** Builds `target` with `make(partial)` unless it exists; published by rename. */
async function cached(target: string, make: (partial: string) => Promise<void>): Promise<void> {
  if (existsSync(target)) return;
  const partial = `${target}.partial`;
  await rm(partial, { recursive: true, force: true });
  await make(partial);
  await rename(partial, target);
}

/** tar of `dir`'s tree, numeric owners, entries relative to it (`./usr/...`), as image builders write. */
async function tarDir(dir: string, out: string, exclude: string[] = []): Promise<void> {
  await mustRun('tar', ['--numeric-owner', ...exclude.map((e) => `--exclude=${e}`), '-C', dir, '-cf', out, '.'], SLOW);
}

/**
 * An overlayfs upper directory over `lower` as a layer: each whiteout (a 0/0 character device)
 * becomes an empty `.wh.NAME`, each opaque directory that hides one of `lower` gets `.wh..wh..opq`
 * (tar does not carry the xattr; overlayfs also marks the directories it creates anew, which hide nothing).
 */
async function upperToLayer(upper: string, lower: string): Promise<void> {
  const visit = async (rel: string): Promise<void> => {
    const dir = join(upper, rel);
    const x = native().readXattrs(dir);
    if (!isSysError(x) && x['trusted.overlay.opaque']?.toString() === 'y' && existsSync(join(lower, rel))) await writeFile(join(dir, '.wh..wh..opq'), '');
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      const st = await lstat(path);
      if (st.isDirectory()) await visit(join(rel, name));
      else if (st.isCharacterDevice() && st.rdev === 0) {
        await rm(path);
        await writeFile(join(dir, `.wh.${name}`), '');
      }
    }
  };
  await visit('');
}

/** Runs `script` in a chroot of `base` with an overlay on top; what it wrote becomes the layer tar `out`. */
async function layerOver(base: string, work: string, script: string, out: string): Promise<void> {
  await rm(work, { recursive: true, force: true });
  const [upper, ovlWork, merged] = ['upper', 'work', 'merged'].map((d) => join(work, d)) as [string, string, string];
  for (const d of [upper, ovlWork, merged]) await mkdir(d, { recursive: true });
  await mustRun('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${base},upperdir=${upper},workdir=${ovlWork}`, merged]);
  try {
    await mustRun('mount', ['-t', 'proc', 'proc', join(merged, 'proc')]);
    try {
      // Services are not started in an image build (policy-rc.d), and the chroot resolves names as the host does.
      await writeFile(join(merged, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n', { mode: 0o755 });
      await mustRun('cp', ['/etc/resolv.conf', join(merged, 'etc/resolv.conf')]);
      await mustRun('chroot', [merged, '/usr/bin/env', '-i', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'DEBIAN_FRONTEND=noninteractive', 'HOME=/root',
        '/bin/sh', '-ec', script], SLOW);
      await rm(join(merged, 'usr/sbin/policy-rc.d'));
    } finally {
      await run('umount', [join(merged, 'proc')]);
    }
  } finally {
    await run('umount', [merged]);
  }
  await upperToLayer(upper, base);
  await tarDir(upper, out);
  await rm(work, { recursive: true, force: true });
}

/**
 * `base` with `app` applied, as one layer tar `out`. The application layers have no whiteouts
 * (apt-get install only adds and replaces files), which is checked: a plain extraction over the
 * base is then what an overlay of the two shows.
 */
async function squash(base: string, app: string, work: string, out: string): Promise<void> {
  const listing = await mustRun('tar', ['-tf', app], SLOW);
  if (listing.split('\n').some((p) => p.split('/').pop()!.startsWith('.wh.'))) throw new Error(`${app} has whiteouts: it cannot be squashed by extraction`);
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  for (const tar of [base, app]) await mustRun('tar', ['--numeric-owner', '-xpf', tar, '-C', work], SLOW);
  await tarDir(work, out);
  await rm(work, { recursive: true, force: true });
}

/** The layers, built (and cached) when missing: debootstrap and apt-get download from Debian's mirror the first time. */
export async function debianLayers(log: (s: string) => void): Promise<DebianLayers> {
  await mkdir(CACHE, { recursive: true });
  if ((await run('sh', ['-c', 'command -v debootstrap'])).code !== 0) {
    log('debian images: installing debootstrap');
    await mustRun('apt-get', ['install', '-y', 'debootstrap'], SLOW);
  }
  const rootfs = join(CACHE, `${SUITE}-minbase`);
  await cached(rootfs, async (partial) => {
    log(`debian images: debootstrap --variant=minbase ${SUITE} into ${rootfs} (once; minutes)`);
    await mustRun('debootstrap', ['--variant=minbase', SUITE, partial, MIRROR], SLOW);
    // As Debian's own images: no downloaded packages or package lists (apt-get update fetches them).
    await mustRun('sh', ['-c', `rm -rf ${partial}/var/cache/apt/archives/*.deb ${partial}/var/lib/apt/lists/*`]);
  });
  const layers = { base: join(CACHE, `${SUITE}-base.tar`) } as DebianLayers;
  // A container image's /dev and /proc are empty: the runtime mounts them.
  await cached(layers.base, (partial) => tarDir(rootfs, partial, ['./dev/*', './proc/*']));
  for (const app of APPS) {
    layers[app] = join(CACHE, `${SUITE}-${app}.tar`);
    await cached(layers[app], (partial) => {
      log(`debian images: apt-get install ${app} on the base (once; minutes)`);
      return layerOver(rootfs, join(CACHE, `build-${app}`),
        `apt-get update; apt-get install -y --no-install-recommends ${app}; apt-get clean; rm -rf /var/lib/apt/lists/*`, partial);
    });
  }
  layers.squashed = {} as Record<App, string>;
  for (const app of APPS) {
    layers.squashed[app] = join(CACHE, `${SUITE}-${app}-squashed.tar`);
    await cached(layers.squashed[app], (partial) => squash(layers.base, layers[app], join(CACHE, `squash-${app}`), partial));
  }
  const all = [layers.base, ...APPS.map((a) => layers[a]), ...APPS.map((a) => layers.squashed[a])];
  log(`debian images: layers in ${CACHE} (${all.map((p) => p.slice(CACHE.length + 1)).join(', ')})`);
  return layers;
}
