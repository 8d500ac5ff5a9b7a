// Kernel mode (issue "Kernel mode, part 1"): an ordinary gzip image pulled with plain
// `ctr image pull --snapshotter dedup` lands in the chunk store, each layer an EROFS image the
// kernel mounts; the root filesystem is identical to containerd's overlayfs snapshotter's (contents,
// modes, owners, times, links, devices, xattrs, whiteouts, opaque directories); the mounts come
// back after a reboot (here: unmounted behind the daemon's back, then a restart). Real
// containerd, runc, registry and kernel mounts.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { kernelModeUnsupported } from '../src/kernel/kernel-layers.js';
import { mountTable, unmount } from '../src/system-mounts.js';
import type { StoreStats } from '../src/store/chunk-store.js';
import { dedupctlJson } from './fixtures/cli.js';
import { mountView, startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { teardownStack } from './fixtures/teardown.js';
import { comparableTree, walkInodes, type SeenInode } from './fixtures/erofs.js';
import { busyboxEntries, pushOci, richLayers, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged, logSize } from './fixtures/log.js';
import { mustRun, waitFor } from './fixtures/process.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';

const MiB = 1024 * 1024;
const skip = kernelModeUnsupported();

describe('kernel mode: ordinary images in the store, served as EROFS', { skip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let snap: TestSnapshotter | undefined;
  let ctd: TestContainerd | undefined;
  let ref: string;
  const views: string[] = [];

  /** `ctr snapshots ls` of ours, once containerd reaches the (restarted) daemon again: its client backs off a while. */
  const snapshotList = async (): Promise<string[]> => {
    let out = '';
    await waitFor('containerd to reach dedup-snapshotter', async () => {
      const r = await ctd!.ctr(['snapshots', '--snapshotter', 'dedup', 'ls']);
      out = r.stdout;
      return r.code === 0;
    }, 30_000);
    return out.split('\n');
  };
  const erofsMounts = async (): Promise<string[]> => (await mountTable()).filter((m) => m.fstype === 'erofs' && m.target.startsWith(snap!.root)).map((m) => m.target);

  /** The image's root filesystem through `snapshotter`: a read-only view of its top layer, mounted here. */
  const rootfs = async (snapshotter: string): Promise<Map<string, SeenInode>> => {
    const ls = await mustRun('ctr', ['--address', ctd!.socket, 'snapshots', '--snapshotter', snapshotter, 'ls']);
    const rows = ls.split('\n').slice(1).filter(Boolean).map((l) => l.split(/\s+/));
    const parents = new Set(rows.map((r) => r[1]));
    const top = rows.find((r) => r[2] === 'Committed' && !parents.has(r[0]))![0]!;
    const key = `view-${snapshotter}`;
    const dir = join(tmp, key);
    await mountView(ctd!, snapshotter, key, top, dir);
    views.push(dir);
    return walkInodes(dir);
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-kernel-test-'));
    registry = await startRegistry(tmp);
    const layers = await richLayers(9 * MiB);
    await writeOciImage(join(tmp, 'src'), 'rich', [{ tar: await tarOf(layers.base), compression: 'gzip' }, { tar: await tarOf(layers.upper), compression: 'gzip' }]);
    ref = `${registry.host}/src/rich:1`;
    await pushOci(join(tmp, 'src'), 'rich', ref);
    snap = await startSnapshotter(tmp);
    ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
  });

  after(async () => {
    for (const v of views) await unmount(v).catch(() => undefined);
    await teardownStack(tmp, { ctd, snap, servers: [registry] });
  });

  it('ctr image pull: every layer goes into the store and is an EROFS mount; ctr run reads it', async () => {
    const pull = await ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', ref], 180_000);
    assert.equal(pull.code, 0, pull.stderr);
    assert.equal((await erofsMounts()).length, 2, 'one EROFS mount per layer');
    const run = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 'k1', '/bin/sh', '-c', 'cat /etc/hostname; ls /opq; /data/setuid'], 120_000);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'rich-upper\nc\nsuid\n');
    const stats = await dedupctlJson<StoreStats>(['stats', '--root', snap!.root]);
    assert.ok(stats.chunks >= 3 && stats.storedBytes >= 9 * MiB, JSON.stringify(stats));
    assert.ok((await logged(snap!.log, /^layer committed into the store; served by the kernel/)).length > 0, 'a layer was committed into the store');
  });

  it('shows exactly what containerd\'s overlayfs snapshotter shows', async () => {
    const pull = await ctd!.ctr(['image', 'pull', '--plain-http', ref], 180_000);
    assert.equal(pull.code, 0, pull.stderr);
    const ours = await rootfs('dedup');
    const theirs = await rootfs('overlayfs');
    assert.ok(ours.has('opq/c') && !ours.has('opq/a') && !ours.has('del/gone') && ours.has('del/kept'));
    assert.deepEqual(comparableTree(ours), comparableTree(theirs));
  });

  it('three related images: chunks shared, counted by the seed\'s SQL, the store smaller than the overlayfs snapshots', async () => {
    const base = [...await busyboxEntries(), ...Array.from({ length: 24 }, (_, i): FileSpec => ({ name: `usr/lib/lib${i}.so`, type: 'file', content: randomBytes(256 * 1024) }))];
    const shared = randomBytes(8 * MiB);
    const images: Record<string, FileSpec[]> = {
      app1: [{ name: 'app/', type: 'directory' }, { name: 'app/model.bin', type: 'file', content: shared }, { name: 'app/one', type: 'file', content: randomBytes(MiB) }],
      app2: [{ name: 'app/', type: 'directory' }, { name: 'app/model.bin', type: 'file', content: shared }, { name: 'app/two', type: 'file', content: randomBytes(MiB) }],
      // The base with two of its libraries changed, and every other one again in a new layer.
      base2: base.filter((f) => f.name.startsWith('usr/lib/lib')).map((f, i) => (i < 2 ? { ...f, content: randomBytes(256 * 1024) } : f)),
    };
    const baseTar = await tarOf(base);
    const refs: string[] = [];
    for (const [name, top] of Object.entries(images)) {
      await writeOciImage(join(tmp, name), name, [{ tar: baseTar, compression: 'gzip' }, { tar: await tarOf(top), compression: 'gzip' }]);
      refs.push(`${registry!.host}/related/${name}:1`);
      await pushOci(join(tmp, name), name, refs.at(-1)!);
    }
    const root = snap!.root;
    const before = await dedupctlJson<StoreStats>(['stats', '--root', root]);
    for (const r of refs) {
      for (const sn of ['dedup', 'overlayfs']) {
        const pull = await ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', sn, r], 180_000);
        assert.equal(pull.code, 0, pull.stderr);
      }
    }
    const db = new Database(join(root, 'index.db'), { readonly: true });
    let seed: { n: number; bytes: number };
    try {
      seed = db.prepare('SELECT COUNT(*) AS n, SUM(size) AS bytes FROM chunks WHERE ref_count > 1').get() as typeof seed;
    } finally {
      db.close();
    }
    // model.bin (two 4 MiB chunks) in app1 and app2; 22 libraries in the base and in base2's top layer.
    assert.ok(seed.n >= 2 + 22, `shared chunks: ${JSON.stringify(seed)}`);
    assert.ok(seed.bytes >= 8 * MiB + 22 * 256 * 1024);
    const after = await dedupctlJson<StoreStats>(['stats', '--root', root]);
    assert.ok(after.storedBytes - before.storedBytes < 8 * MiB + 2 * MiB + 26 * 256 * 1024 + MiB, 'each distinct chunk once');
    // Blocks on disk (packs are sparse), not crossing into mounts (our layers are EROFS mounts of the store).
    const du = async (...dirs: string[]): Promise<number> => Number((await mustRun('du', ['-sx', '-B1', '--total', ...dirs])).trim().split('\n').at(-1)!.split('\t')[0]);
    const ours = await du(join(root, 'chunks'), join(root, 'images'), join(root, 'snapshots'));
    const overlay = await du(join(ctd!.root, 'root', 'io.containerd.snapshotter.v1.overlayfs', 'snapshots'));
    assert.ok(ours < overlay, `store ${ours} bytes, overlayfs snapshots ${overlay} bytes`);
  });

  it('kill -9 during the commit of a pulled layer: after the restart nothing is half-built, and the pull succeeds again', async () => {
    const big: FileSpec[] = [{ name: 'big/', type: 'directory' }, ...Array.from({ length: 48 }, (_, i): FileSpec => ({ name: `big/f${i}`, type: 'file', content: randomBytes(4 * MiB) }))];
    await writeOciImage(join(tmp, 'big'), 'big', [{ tar: await tarOf([...await busyboxEntries(), ...big]), compression: 'gzip' }]);
    const bigRef = `${registry!.host}/big/img:1`;
    await pushOci(join(tmp, 'big'), 'big', bigRef);
    const from = await logSize(snap!.log);
    const pull = ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', bigRef], 180_000);
    await waitFor('the commit to start', async () => (await logged(snap!.log, 'committing the layer into the store', {}, from)).length > 0, 120_000);
    await snap!.kill9();
    assert.notEqual((await pull).code, 0, 'the pull fails with the daemon gone');
    snap = await startSnapshotter(tmp);
    const images = new Set((await readdir(join(snap.root, 'images'))).map((n) => Number(n.replace('.erofs', ''))));
    const committed = (await snapshotList()).filter((l) => l.includes('Committed')).length;
    assert.equal(images.size, committed, 'one image per committed layer: none left by the killed commit');
    const db = new Database(join(snap.root, 'index.db'), { readonly: true });
    try {
      const layers = db.prepare("SELECT digest FROM layers WHERE digest LIKE 'snapshot:%'").pluck().all() as string[];
      assert.deepEqual(layers.map((d) => Number(d.slice(9))).sort(), [...images].sort(), 'no layer recorded without its image');
    } finally {
      db.close();
    }
    const again = await ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', bigRef], 180_000);
    assert.equal(again.code, 0, again.stderr);
    const run = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', bigRef, 'k3', '/bin/sh', '-c', 'ls /big | wc -l'], 120_000);
    assert.equal(run.stdout.trim(), '48');
  });

  it('after a reboot (the mounts gone, the daemon killed) the restarted daemon mounts every layer again', async () => {
    for (const v of views.splice(0)) await unmount(v);
    await snap!.kill9();
    for (const m of await erofsMounts()) await unmount(m);
    assert.deepEqual(await erofsMounts(), []);
    snap = await startSnapshotter(tmp);
    const committed = (await snapshotList()).filter((l) => l.includes('Committed')).length;
    assert.equal((await erofsMounts()).length, committed);
    assert.ok((await logged(snap.log, 'kernel layer mounted again')).length > 0, 'a kernel layer was mounted again');
    const run = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 'k2', '/bin/cat', '/etc/hostname'], 120_000);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'rich-upper\n');
  });
});
