// Kernel mode for lazily pulled layers (issue "Kernel mode, part 1", item 5): once every chunk of
// an eStargz layer is in the store (here: by use, a walk that reads every file, and by dedupd),
// the snapshotter makes the layer's EROFS image; a container started before keeps its FUSE
// lowerdirs and works on, a new one gets the EROFS mounts, and both show the same tree (modes,
// owners, times, xattrs, whiteouts, opaque directories). The FUSE mounts are let go once no
// snapshot made before the switch is left; after a reboot the EROFS mounts come back. Real
// containerd, runc, registry and kernel mounts. In the suite's mount mode erofs the lazy mounts
// are kernel EROFS where the layer allows it (here the top layer), and switch and are let go alike.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FusedClient, fusedSocket } from '../src/fused/client.js';
import { kernelModeUnsupported } from '../src/kernel/kernel-layers.js';
import { mountTable, unmount } from '../src/system-mounts.js';
import { binary, dedupctlJson } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { walkInodes, type SeenInode } from './fixtures/erofs.js';
import { busyboxEntries, pushOci, richLayers, tarOf, writeOciImage } from './fixtures/images.js';
import { logged } from './fixtures/log.js';
import { lazyMode, testMountModeSkip } from './fixtures/mount-mode.js';
import { mustRun, waitFor } from './fixtures/process.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';
import { teardownStack } from './fixtures/teardown.js';

const MiB = 1024 * 1024;
const skip = kernelModeUnsupported() ?? testMountModeSkip;

describe('kernel mode: a lazily pulled layer, once complete, is served by EROFS', { skip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let snap: TestSnapshotter | undefined;
  let ctd: TestContainerd | undefined;
  let ref: string;
  let layers: Awaited<ReturnType<typeof richLayers>>;
  const views: string[] = [];

  const ctr = async (...args: string[]): Promise<string> => {
    const r = await ctd!.ctr(args, 120_000);
    assert.equal(r.code, 0, `ctr ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const mountsOf = async (fstype: string, suffix: string): Promise<string[]> =>
    (await mountTable()).filter((m) => m.fstype === fstype && m.target.startsWith(snap!.root) && m.target.endsWith(suffix)).map((m) => m.target).sort();
  const erofsMounts = (): Promise<string[]> => mountsOf('erofs', '/erofs');
  /** The layers' lazy mounts (their fs directories): FUSE, or in mount mode erofs kernel EROFS filled on demand where the layer allows it. */
  const lazyMounts = async (): Promise<string[]> => [...await mountsOf('fuse.dedup', '/fs'), ...(lazyMode === 'erofs' ? await mountsOf('erofs', '/fs') : [])].sort();
  /**
   * The image's root filesystem over `lowers` (a container's lowerdirs), as a read-only overlay
   * mounted here: what a View shows. (A View snapshot made with ctr has no lease: containerd's
   * garbage collector may remove it under the test.)
   */
  const stack = async (name: string, lowers: string[]): Promise<string> => {
    const dir = join(tmp, name);
    await mkdir(dir);
    await mustRun('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lowers.join(':')}`, dir]);
    views.push(dir);
    return dir;
  };
  /** The lowerdirs of the overlay that is container `id`'s root filesystem. */
  const lowerdirs = async (id: string): Promise<string[]> => {
    const m = (await mountTable()).find((e) => e.fstype === 'overlay' && e.target.includes(`/${id}/rootfs`));
    assert.ok(m, `container ${id} has an overlay root filesystem`);
    return /lowerdir=([^,]+)/.exec(m.options)![1]!.split(':');
  };
  /** What both filesystems must show alike: a directory's size is its own (EROFS: its dirents; FUSE: 4096; overlay: merged). */
  const comparable = (m: Map<string, SeenInode>): Map<string, unknown> => new Map([...m].map(([p, e]) => {
    const { ino: _ino, ...rest } = e;
    return [p, rest.type === 'dir' ? { ...rest, size: 0 } : rest];
  }));
  const count = async (msg: string | RegExp): Promise<number> => (await logged(snap!.log, msg)).length;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-lazy-erofs-test-'));
    registry = await startRegistry(tmp);
    layers = await richLayers(9 * MiB);
    await writeOciImage(join(tmp, 'src'), 'rich', [{ tar: await tarOf(layers.base), compression: 'gzip' }, { tar: await tarOf(layers.upper), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'rich', `${registry.host}/src/rich:1`);
    // 1000000-byte chunks: no power of two from 4 KiB divides them, so the big file is cut again; files of one chunk fit as they are.
    await dedupctlJson(['convert', '--plain-http', '--chunk-size', '1000000', `${registry.host}/src/rich:1`, `${registry.host}/lazy/rich:1`]);
    ref = `${registry.host}/lazy/rich:1`;
    // No prefetch: the chunks arrive when they are read.
    snap = await startSnapshotter(tmp, [], { prefetch: { enabled: false } });
    ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
  });

  after(async () => {
    for (const v of views) await unmount(v).catch(() => undefined);
    await teardownStack(tmp, { ctd, snap, servers: [registry] });
  });

  it('complete layers get EROFS images: a container from before keeps FUSE and works on, a new one gets EROFS, both see the same tree', async () => {
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const lazy = await lazyMounts();
    assert.equal(lazy.length, 2, 'both layers mounted lazily');
    // The base layer's big file is in chunks EROFS cannot point at: FUSE serves that layer in either mode.
    assert.equal((await mountsOf('fuse.dedup', '/fs')).length, lazyMode === 'erofs' ? 1 : 2, 'the layers on FUSE');
    await ctr('run', '-d', '--snapshotter', 'dedup', ref, 'early', '/bin/busybox', 'sleep', '600');
    const early = await lowerdirs('early');
    assert.deepEqual(early.map((d) => d.endsWith('/fs')), [true, true]);
    const before = await stack('before', early);
    assert.deepEqual(await erofsMounts(), [], 'nothing is complete before it is read');

    // Reading every file (the walks) fetches every chunk: the layers are complete.
    const fuseLayers = await Promise.all(lazy.map((d) => walkInodes(d)));
    const fuseTree = await walkInodes(before);
    await waitFor('both layers to be served by EROFS', async () => (await erofsMounts()).length === 2, 60_000);
    const complete = await logged(snap!.log, 'lazy layer complete; new snapshots get its EROFS image');
    assert.equal(complete.length, 2);
    // Files over one chunk (the big one, busybox) are in chunks EROFS cannot point at: cut again.
    const multi = layers.base.filter((f) => (f.content?.length ?? 0) > 1_000_000).map((f) => f.content!.length);
    const recut = { recutFiles: multi.length, recutBytes: multi.reduce((a, b) => a + b, 0) };
    assert.equal(complete.filter((r) => r.recutFiles === recut.recutFiles && r.recutBytes === recut.recutBytes).length, 1, `${JSON.stringify(recut)} in: ${JSON.stringify(complete)}`);

    // Each layer alone, whiteouts and opaque markers as they are, and the stack of both.
    const erofs = await erofsMounts();
    assert.deepEqual(erofs.map(dirname), lazy.map(dirname));
    for (const [i, d] of erofs.entries()) assert.deepEqual(comparable(await walkInodes(d)), comparable(fuseLayers[i]!), d);
    const upper = fuseLayers.find((l) => l.has('opq/c'))!;
    assert.equal(upper.get('del/gone')!.type, 'char');
    assert.ok(upper.get('opq')!.xattrs['trusted.overlay.opaque'] !== undefined);

    // The container from before still reads through FUSE; a new one runs on EROFS.
    assert.equal(await ctr('task', 'exec', '--exec-id', 'e1', 'early', '/bin/busybox', 'cat', '/etc/hostname', '/data/small'), 'rich-upper\nabc');
    assert.deepEqual(await lowerdirs('early'), early);
    await ctr('run', '-d', '--snapshotter', 'dedup', ref, 'late', '/bin/busybox', 'sleep', '600');
    const late = await lowerdirs('late');
    assert.deepEqual(late, erofs.slice().reverse(), 'the top layer first');
    const after = await stack('after', late);
    assert.deepEqual(comparable(await walkInodes(after)), comparable(fuseTree));
    assert.equal(await ctr('task', 'exec', '--exec-id', 'e2', 'late', '/bin/sh', '-c', 'cat /etc/hostname; ls /opq; /data/setuid; sha256sum /data/big | cut -c1-64'),
      `rich-upper\nc\nsuid\n${fuseTree.get('data/big')!.sha256!.replace(/^sha256:/, '')}\n`);
    assert.equal((await lazyMounts()).length, 2, 'the lazy mounts stay while snapshots from before use them');

    // Once the container and the view from before are gone, the FUSE mounts are let go.
    for (const id of ['early', 'late']) {
      await ctr('task', 'kill', '-s', 'SIGKILL', id);
      await ctd!.ctr(['task', 'delete', '-f', id]);
      await ctr('container', 'rm', id);
    }
    await waitFor('the lazy mounts to be let go', async () => (await lazyMounts()).length === 0);
    const status = await dedupctlJson<{ mounts: unknown[] }>(['fused', 'status', '--root', snap!.root, '--config', snap!.config]);
    assert.equal(status.mounts.length, 0, 'the layer server serves none');
    assert.equal(await count(/^FUSE mount of a layer served by EROFS let go/), 2);
    assert.deepEqual(comparable(await walkInodes(after)), comparable(fuseTree), 'the stack on EROFS reads on');
    assert.deepEqual(comparable(await walkInodes(before)), comparable(fuseTree), 'the stack mounted on FUSE before reads on: the layer server serves it until it is unmounted');
  });

  it('after a reboot the EROFS mounts come back; removing the image unmounts and forgets them', async () => {
    for (const v of views.splice(0)) await unmount(v);
    await snap!.kill9();
    for (const m of await erofsMounts()) await unmount(m);
    snap = await startSnapshotter(tmp);
    await waitFor('containerd to reach dedup-snapshotter again', async () => (await ctd!.ctr(['snapshots', '--snapshotter', 'dedup', 'ls'])).code === 0, 30_000);
    assert.equal((await erofsMounts()).length, 2);
    assert.deepEqual(await lazyMounts(), [], 'no lazy mount for layers EROFS serves');
    const run = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 'again', '/bin/cat', '/etc/hostname'], 120_000);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'rich-upper\n');

    await ctr('image', 'rm', '--sync', ref);
    await waitFor('the snapshots to be removed', async () => (await ctr('snapshots', '--snapshotter', 'dedup', 'ls')).split('\n').slice(1).filter(Boolean).length === 0);
    assert.deepEqual(await erofsMounts(), []);
    const images = await dedupctlJson<{ ref: string }[]>(['store', 'ls', '--root', snap!.root]);
    assert.deepEqual(images.filter((i) => i.ref.startsWith('snapshot:')), [], 'their store images forgotten');
  });

  it('a layer dedupd fetched whole is served by EROFS to new containers; one started before keeps FUSE', async () => {
    const otherRef = `${registry!.host}/lazy/other:1`;
    await writeOciImage(join(tmp, 'other'), 'other', [{ tar: await tarOf([...await busyboxEntries(), { name: 'data', type: 'file', content: randomBytes(5 * MiB) }]), compression: 'gzip' }]);
    await pushOci(join(tmp, 'other'), 'other', `${registry!.host}/src/other:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry!.host}/src/other:1`, otherRef]);
    const pull = await ctd!.rpull(otherRef);
    assert.equal(pull.code, 0, pull.stderr);
    await ctr('run', '-d', '--snapshotter', 'dedup', otherRef, 'before-dedupd', '/bin/busybox', 'sleep', '600');
    assert.ok((await lowerdirs('before-dedupd'))[0]!.endsWith('/fs'));
    assert.deepEqual(await erofsMounts(), []);
    const warm = await binary('dedupd', ['--root', snap!.root, '--config', snap!.config, '--plain-http', '--full', otherRef], { timeoutMs: 120_000 });
    assert.equal(warm.code, 0, warm.stderr);
    await waitFor('the layer to be served by EROFS', async () => (await erofsMounts()).length === 1, 60_000);
    await ctr('run', '-d', '--snapshotter', 'dedup', otherRef, 'after-dedupd', '/bin/busybox', 'sleep', '600');
    assert.ok((await lowerdirs('after-dedupd'))[0]!.endsWith('/erofs'));
    assert.ok((await lowerdirs('before-dedupd'))[0]!.endsWith('/fs'));
    const sums = await Promise.all(['before-dedupd', 'after-dedupd'].map((id, i) => ctr('task', 'exec', '--exec-id', `s${i}`, id, '/bin/busybox', 'sha256sum', '/data')));
    assert.equal(sums[0], sums[1]);

    // The container from before gone, its FUSE mount, unused now, is let go of for good: the
    // layer server holds nothing (a plain SIGTERM would stop it).
    const letGo = await count(/^FUSE mount of a layer served by EROFS let go/);
    await ctr('task', 'kill', '-s', 'SIGKILL', 'before-dedupd');
    await ctd!.ctr(['task', 'delete', '-f', 'before-dedupd']);
    await ctr('container', 'rm', 'before-dedupd');
    await waitFor('the FUSE mount to be let go', async () => await count(/^FUSE mount of a layer served by EROFS let go/) === letGo + 1);
    const fused = new FusedClient(fusedSocket(snap!.root));
    await waitFor('the layer server to hold no mount', async () => (await fused.health(0)).mounts === 0, 10_000);
  });
});
