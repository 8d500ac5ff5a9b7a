// Shared read-only layer stores (issue "A read-only layer store shared between hosts"): two
// daemons with separate roots, each with its own containerd ("hosts" A and B), and one shared
// directory. A pulls an ordinary image into kernel-mode layers and publishes it; B, configured
// with the directory as a shared store, picks it up and runs it with no layer bytes from the
// registry (B pulls through a counting proxy). A publish killed halfway is never seen by B and the
// next publish completes it; an image unpublished while B runs a container from it keeps the
// container running and is dropped once the container is gone; partial, corrupt and truncated
// images are never served and a store that disappears takes nothing down. Real containerd, runc,
// registry and kernel mounts.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, readFile, rename, truncate, writeFile } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../src/config/config.js';
import { kernelModeUnsupported } from '../src/kernel/kernel-layers.js';
import { mountAt, mountTable, unmount } from '../src/system-mounts.js';
import { snapshotName } from '../src/snapshot/labels.js';
import { StoreLayout, type ImageRecord, type LayerRecord } from '../src/shared-store/layout.js';
import type { PublishReport, UnpublishReport } from '../src/shared-store/publish.js';
import { dedupctlJson } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { walkInodes, type SeenInode } from './fixtures/erofs.js';
import { busyboxEntries, pushOci, richLayers, sha256, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged, logRecords, logSize } from './fixtures/log.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { waitFor } from './fixtures/process.js';
import { startProxy, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { snapshotsClient } from './fixtures/snapshots-client.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';
import { teardownStack } from './fixtures/teardown.js';

const MiB = 1024 * 1024;
const skip = kernelModeUnsupported() ?? testMountModeSkip;
const DEDUPCTL = fileURLToPath(new URL('../src/cmd/dedupctl.js', import.meta.url));

interface Host {
  snap: TestSnapshotter;
  ctd: TestContainerd;
}

describe('shared_stores config', () => {
  it('takes absolute directories, each once, and a refresh period of 1 to 3600 s', () => {
    const c = parseConfig({ shared_stores: ['/mnt/a', '/mnt/b'] }, 'test');
    assert.deepEqual([c.shared_stores, c.shared_stores_refresh_seconds], [['/mnt/a', '/mnt/b'], 5]);
    assert.throws(() => parseConfig({ shared_stores: ['mnt/a'] }, 'test'), /shared_stores\.0: must be an absolute path/);
    assert.throws(() => parseConfig({ shared_stores: ['/mnt/a', '/mnt/a'] }, 'test'), /shared_stores: must not name a directory twice/);
    assert.throws(() => parseConfig({ shared_stores_refresh_seconds: 0 }, 'test'), /shared_stores_refresh_seconds/);
  });
});

describe('shared read-only layer store between two hosts', { skip }, () => {
  let tmp: string;
  let shared: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let a: Partial<Host> = {};
  let b: Partial<Host> = {};
  const images: Record<string, { name: string; layers: string[] }> = {};

  const logEnd = (h: Partial<Host>): Promise<number> => logSize(h.snap!.log);
  /** An image field naming `name` (records name it with its registry host, or as the store recorded it). */
  const named = (name: string): RegExp => new RegExp(`(^|/)${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  const metric = async (h: Partial<Host>, name: string): Promise<number> => {
    const text = await (await fetch(`${h.snap!.api}/metrics`)).text();
    return text.split('\n').filter((l) => l.startsWith(name)).reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
  };
  /** Bytes of the image's layer blobs the proxy (B's registry) has sent since its last reset. */
  const layerBytes = (img: string): number => proxy!.stats.blobRanges.filter((r) => images[img]!.layers.includes(r.digest)).reduce((n, r) => n + r.end - r.start, 0);
  const publish = (img: string): Promise<PublishReport> =>
    dedupctlJson<PublishReport>(['store', 'publish', `${registry!.host}/${images[img]!.name}`, '--to', shared, '--root', a.snap!.root, '--config', a.snap!.config, '--plain-http']);
  /** Waits for B to log `msg` (a record with `fields`) after `from` characters of its log. */
  const bLogged = (from: number, msg: string, fields: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<void> =>
    waitFor(`host B to log "${msg}" ${JSON.stringify(fields, (_, v: unknown) => (v instanceof RegExp ? String(v) : v))}`,
      async () => (await logged(b.snap!.log, msg, fields, from)).length > 0, timeoutMs);
  /** Two of B's refreshes after now: whatever the store showed meanwhile has been seen. */
  const twoRefreshes = async (): Promise<void> => {
    const n = await metric(b, 'dedup_shared_store_refreshes_total');
    await waitFor('two refreshes on host B', async () => (await metric(b, 'dedup_shared_store_refreshes_total')) >= n + 2, 60_000);
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-shared-test-'));
    shared = join(tmp, 'shared');
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host);
    const base = [...await busyboxEntries(), { name: 'bin/sleep', type: 'symlink', linkname: 'busybox' } as FileSpec];
    const build = async (img: string, layers: FileSpec[][]): Promise<void> => {
      const tars = await Promise.all(layers.map((l) => tarOf(l)));
      await writeOciImage(join(tmp, img), img, tars.map((tar) => ({ tar, compression: 'gzip' as const })));
      const index = JSON.parse(await readFile(join(tmp, img, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      const manifest = JSON.parse(await readFile(join(tmp, img, 'blobs', 'sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
      images[img] = { name: `shared/${img}:1`, layers: manifest.layers.map((l) => l.digest) };
      await pushOci(join(tmp, img), img, `${registry!.host}/${images[img]!.name}`);
    };
    await build('app', [base, [{ name: 'app/', type: 'directory' }, { name: 'app/data', type: 'file', content: randomBytes(6 * MiB) }, { name: 'app/hello', type: 'file', content: Buffer.from('hello from the shared store\n') }]]);
    await build('big', [
      [{ name: 'one/', type: 'directory' }, { name: 'one/a', type: 'file', content: randomBytes(8 * MiB) }],
      [{ name: 'two/', type: 'directory' }, ...Array.from({ length: 16 }, (_, i): FileSpec => ({ name: `two/f${i}`, type: 'file', content: randomBytes(4 * MiB) }))],
      base,
    ]);
    const rich = await richLayers(2 * MiB);
    await build('rich', [rich.base, rich.upper]);
    for (const [h, name, config] of [[a, 'a', {}], [b, 'b', { shared_stores: [shared], shared_stores_refresh_seconds: 2 }]] as const) {
      const dir = join(tmp, name);
      await mkdir(dir);
      h.snap = await startSnapshotter(dir, [], config);
      h.ctd = await startContainerd(dir, { dedupSocket: h.snap.socket });
    }
    for (const img of ['app', 'big', 'rich']) {
      const pull = await a.ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', `${registry.host}/${images[img]!.name}`], 240_000);
      assert.equal(pull.code, 0, pull.stderr);
    }
  });

  after(async () => {
    await b.ctd?.stop();
    await b.snap?.stop();
    await teardownStack(tmp, { ctd: a.ctd, snap: a.snap, servers: [proxy, registry] });
  });

  it('host A publishes; host B runs the image with no layer bytes from the registry', async () => {
    const from = (await logEnd(b));
    const r = await publish('app');
    assert.equal(r.layers.length, 2);
    assert.ok(r.layers.every((l) => !l.reused) && r.bytesWritten >= 6 * MiB, JSON.stringify(r));
    await bLogged(from, 'shared image added', { image: named(images.app!.name) });
    const listed = await dedupctlJson<ImageRecord[]>(['store', 'published', '--in', shared]);
    assert.deepEqual(listed.map((i) => i.ref), [`${registry!.host}/${images.app!.name}`]);
    proxy!.reset();
    const ref = `${proxy!.host}/${images.app!.name}`;
    // containerd's pull with unpack (ctr-remote rpull; CRI and nerdctl pull the same way) fetches a
    // layer only when its Prepare does not answer that the layer exists.
    const pull = await b.ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    assert.equal(layerBytes('app'), 0, 'no layer bytes from the registry');
    assert.ok(proxy!.stats.requests > 0, 'containerd read the manifest and config');
    const run = await b.ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, 's1', '/bin/cat', '/app/hello'], 120_000);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'hello from the shared store\n');
    assert.equal(await metric(b, 'dedup_shared_layers_mounted_total'), 2);
    // Publishing again writes nothing: every layer and chunk is there.
    const again = await publish('app');
    assert.ok(again.layers.every((l) => l.reused) && again.bytesWritten === 0, JSON.stringify(again));
  });

  it('a publish killed halfway (kill -9) is never seen by B; publishing again completes it, reusing what was done', async () => {
    const layout = new StoreLayout(shared);
    const layersBefore = (await readdir(layout.layers)).length;
    const from = (await logEnd(b));
    const child = spawn(process.execPath, [DEDUPCTL, 'store', 'publish', `${registry!.host}/${images.big!.name}`, '--to', shared,
      '--root', a.snap!.root, '--config', a.snap!.config, '--plain-http'], { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await waitFor('the first layer of the big image to be placed', async () => (await readdir(layout.layers)).length > layersBefore, 120_000);
    child.kill('SIGKILL');
    await exited;
    assert.equal(child.signalCode, 'SIGKILL', 'killed before it finished');
    assert.equal((await readdir(layout.images)).length, 1, 'only the app image has a record');
    await twoRefreshes();
    assert.ok((await logRecords(b.snap!.log, from)).every((r) => !JSON.stringify(r).includes(images.big!.name)), 'B never mentions the big image');
    const r = await publish('big');
    assert.ok(r.layers[0]!.reused, 'the layer placed before the kill is reused');
    assert.ok(r.layers[2]!.reused, 'the base layer is the app image\'s');
    assert.ok(!r.layers[1]!.reused);
    await bLogged(from, 'shared image added', { image: named(images.big!.name) });
    // ctr image pull fetches every blob before it unpacks (its step 1): the layers are downloaded
    // and unpacked by containerd, then served from the shared store at their Commit, not built here.
    const builtBefore = (await readdir(join(b.snap!.root, 'images')).catch(() => [])).length;
    const mountedBefore = await metric(b, 'dedup_shared_layers_mounted_total');
    const pull = await b.ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', `${proxy!.host}/${images.big!.name}`], 240_000);
    assert.equal(pull.code, 0, pull.stderr);
    assert.equal(await metric(b, 'dedup_shared_layers_mounted_total'), mountedBefore + 3);
    assert.equal((await readdir(join(b.snap!.root, 'images')).catch(() => [])).length, builtBefore, 'no layer built into B\'s own store');
    const run = await b.ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', `${proxy!.host}/${images.big!.name}`, 's2', '/bin/sh', '-c', 'ls /two | wc -l; cat /one/a | wc -c'], 120_000);
    assert.equal(run.stdout.trim().split(/\s+/).join(' '), `16 ${8 * MiB}`);
  });

  it('unpublished while B runs a container from it: the container keeps running; once it is gone the image is dropped on B', async () => {
    const ref = `${proxy!.host}/${images.app!.name}`;
    const start = await b.ctd!.ctr(['run', '-d', '--snapshotter', 'dedup', ref, 'long', '/bin/sleep', '3600'], 120_000);
    assert.equal(start.code, 0, start.stderr);
    const appRecord = JSON.parse(await readFile(new StoreLayout(shared).imageRecord(`${registry!.host}/${images.app!.name}`), 'utf8')) as ImageRecord;
    const from = (await logEnd(b));
    const removed = await dedupctlJson<UnpublishReport>(['store', 'unpublish', `${registry!.host}/${images.app!.name}`, '--from', shared, '--root', a.snap!.root, '--config', a.snap!.config]);
    // Its top layer goes; its base stays, the big image's too.
    assert.equal(removed.layersRemoved, 1);
    const layout = new StoreLayout(shared);
    assert.ok(!existsSync(layout.layer(appRecord.layers[1]!.diffId)) && existsSync(layout.layer(appRecord.layers[0]!.diffId)));
    await bLogged(from, 'shared image removed from its store', { image: named(images.app!.name) });
    await bLogged(from, 'shared layer removed from its store: kept mounted while snapshots use it');
    assert.equal(await metric(b, 'dedup_shared_layers_held'), 2, 'both of its layers are held (their chain ids are the app image\'s only)');
    const exec = await b.ctd!.ctr(['task', 'exec', '--exec-id', 'e1', 'long', '/bin/sha256sum', '/app/data'], 60_000);
    assert.equal(exec.code, 0, exec.stderr);
    assert.match((await b.ctd!.ctr(['task', 'ls'])).stdout, /long\s+\d+\s+RUNNING/);
    await b.ctd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'long']);
    await waitFor('the task to stop', async () => !/long\s+\d+\s+RUNNING/.test((await b.ctd!.ctr(['task', 'ls'])).stdout), 30_000);
    assert.equal((await b.ctd!.ctr(['task', 'rm', 'long'])).code, 0);
    assert.equal((await b.ctd!.ctr(['container', 'rm', 'long'])).code, 0);
    await bLogged(from, 'shared layer dropped: removed from its store and no longer used', {}, 120_000);
    await waitFor('no layer held on B', async () => (await metric(b, 'dedup_shared_layers_held')) === 0, 60_000);
    const client = snapshotsClient(b.snap!.socket);
    try {
      const names = new Set((await client.list([])).map(snapshotName));
      for (const l of appRecord.layers) assert.ok(!names.has(l.chainId), `snapshot ${l.chainId} dropped`);
      const big = JSON.parse(await readFile(new StoreLayout(shared).imageRecord(`${registry!.host}/${images.big!.name}`), 'utf8')) as ImageRecord;
      for (const l of big.layers) assert.ok(names.has(l.chainId), `the big image's snapshot ${l.chainId} stays`);
    } finally {
      client.close();
    }
  });

  it('the layers B mounts from the store show exactly what A\'s own do (modes, owners, times, links, devices, xattrs, whiteouts, opaque)', async () => {
    const from = (await logEnd(b));
    await publish('rich');
    await bLogged(from, 'shared image added', { image: named(images.rich!.name) });
    const rpull = await b.ctd!.rpull(`${proxy!.host}/${images.rich!.name}`);
    assert.equal(rpull.code, 0, rpull.stderr);
    const top = (JSON.parse(await readFile(new StoreLayout(shared).imageRecord(`${registry!.host}/${images.rich!.name}`), 'utf8')) as ImageRecord).layers.at(-1)!.chainId;
    /** The image's root filesystem on host `h`: a view of its top layer through our Snapshots API, mounted here. */
    const rootfs = async (h: Partial<Host>, name: string): Promise<Map<string, unknown>> => {
      const client = snapshotsClient(h.snap!.socket);
      const dir = join(tmp, `view-${name}`);
      await mkdir(dir);
      try {
        const parent = (await client.list([])).find((k) => snapshotName(k) === top)!;
        const { mounts } = await client.call('View', { key: `view-${name}`, parent }) as { mounts: { type: string; source: string; options: string[] }[] };
        await mountAt(dir, mounts[0]!);
        try {
          // Inode numbers and directory sizes are each mount's own.
          return new Map([...await walkInodes(dir)].map(([p, e]: [string, SeenInode]) => {
            const { ino: _ino, ...rest } = e;
            return [p, rest.type === 'dir' ? { ...rest, size: 0, nlink: 0 } : rest];
          }));
        } finally {
          await unmount(dir);
          await client.call('Remove', { key: `view-${name}` });
        }
      } finally {
        client.close();
      }
    };
    const onB = await rootfs(b, 'b');
    assert.ok(onB.has('opq/c') && !onB.has('opq/a') && !onB.has('del/gone') && onB.has('del/kept'));
    assert.deepEqual(onB, await rootfs(a, 'a'));
  });

  it('partial, corrupt and truncated images are never served; a store that disappears takes nothing down', async () => {
    const layout = new StoreLayout(shared);
    const bigRecord = JSON.parse(await readFile(layout.imageRecord(`${registry!.host}/${images.big!.name}`), 'utf8')) as ImageRecord;
    const real = bigRecord.layers[1]!;
    const fake = (): string => sha256(randomBytes(16));
    const rejectedBefore = await metric(b, 'dedup_shared_store_rejected_total');
    const from = (await logEnd(b));
    /** An image record of one layer `diffId` (chain id = diff id), put in place by a rename as a publisher would. */
    const record = async (name: string, diffId: string): Promise<void> => {
      const rec: ImageRecord = { ...bigRecord, ref: name, layers: [{ digest: fake(), diffId, chainId: diffId }] };
      const tmpName = join(layout.tmp, `record-${randomBytes(4).toString('hex')}`);
      await writeFile(tmpName, JSON.stringify(rec));
      await rename(tmpName, layout.imageRecord(name));
    };
    /** A copy of the big image's second layer as layer `diffId`, damaged by `harm`. */
    const damagedLayer = async (diffId: string, harm: (dir: string, rec: LayerRecord) => Promise<LayerRecord>): Promise<void> => {
      const dir = join(layout.tmp, `copy-${diffId.slice(7, 15)}`);
      await cp(layout.layer(real.diffId), dir, { recursive: true });
      const rec = JSON.parse(await readFile(join(dir, 'layer.json'), 'utf8')) as LayerRecord;
      await writeFile(join(dir, 'layer.json'), JSON.stringify(await harm(dir, { ...rec, diffId })));
      await rename(dir, layout.layer(diffId));
    };
    const partial = fake();
    await record('test/partial:1', partial); // names a layer that is not there
    const corrupt = fake();
    await damagedLayer(corrupt, async (_dir, rec) => {
      const pack = rec.devices[0]!;
      const copy = `${randomBytes(16).toString('hex')}.pack`;
      await cp(layout.pack(pack), layout.pack(copy));
      const c = rec.chunks.find((x) => x.pack === pack)!;
      const fh = await open(layout.pack(copy), 'r+');
      await fh.write(Buffer.from([0xff ^ (await fh.read(Buffer.alloc(1), 0, 1, c.offset + 100)).buffer[0]!]), 0, 1, c.offset + 100);
      await fh.close();
      return { ...rec, devices: rec.devices.map((d) => (d === pack ? copy : d)), chunks: rec.chunks.map((x) => (x.pack === pack ? { ...x, pack: copy } : x)) };
    });
    await record('test/corrupt:1', corrupt);
    const truncated = fake();
    await damagedLayer(truncated, async (dir, rec) => {
      await truncate(join(dir, 'layer.erofs'), Math.floor(rec.image.size / 2));
      return rec;
    });
    await record('test/truncated:1', truncated);
    for (const [name, reason] of [['test/partial:1', 'incomplete'], ['test/corrupt:1', 'chunk_digest'], ['test/truncated:1', 'image_digest']]) {
      await bLogged(from, 'shared image not served', { image: named(name!), reason });
    }
    assert.ok(await metric(b, 'dedup_shared_store_rejected_total') >= rejectedBefore + 3);
    // A Prepare naming one of them as its target is an ordinary one: nothing is mounted from the store.
    const client = snapshotsClient(b.snap!.socket);
    try {
      for (const chain of [partial, corrupt, truncated]) {
        await client.call('Prepare', { key: `probe-${chain}`, parent: '', labels: { 'containerd.io/snapshot.ref': chain } });
        await client.call('Remove', { key: `probe-${chain}` });
      }
    } finally {
      client.close();
    }
    assert.equal((await fetch(`${b.snap!.api}/healthz`)).status, 200);
    // The store disappears (an unmounted share), then comes back.
    const gone = (await logEnd(b));
    await rename(shared, `${shared}.away`);
    const snapshots = snapshotsClient(b.snap!.socket);
    try {
      const before = await snapshots.list([]);
      await bLogged(gone, 'shared store unreadable: its images are not served to new pulls (layers mounted from it stay)');
      assert.equal(await metric(b, 'dedup_shared_store_up'), 0);
      await twoRefreshes();
      assert.deepEqual(await snapshots.list([]), before, 'the layers mounted from it stay');
    } finally {
      snapshots.close();
    }
    assert.equal((await fetch(`${b.snap!.api}/healthz`)).status, 200);
    await rename(`${shared}.away`, shared);
    await bLogged(gone, 'shared store readable again');
    await bLogged(gone, 'shared image added', { image: named(images.big!.name) });
    // Set once the whole refresh of the store is over, after the line above.
    await waitFor('dedup_shared_store_up to be 1', async () => (await metric(b, 'dedup_shared_store_up')) === 1, 30_000);
  });

  it('after a reboot (B killed, its mounts gone) with the share not there yet, B mounts its shared layers again once it is', async () => {
    const erofsMounts = async (): Promise<string[]> => (await mountTable()).filter((m) => m.fstype === 'erofs' && m.target.startsWith(b.snap!.root)).map((m) => m.target);
    const before = (await erofsMounts()).length;
    assert.ok(before >= 5, `the big and rich images' layers are mounted (${before})`);
    await b.snap!.kill9();
    for (const m of await erofsMounts()) await unmount(m);
    await rename(shared, `${shared}.away`);
    const from = (await logEnd(b));
    b.snap = await startSnapshotter(join(tmp, 'b'));
    assert.equal((await erofsMounts()).length, 0, 'nothing mounted from a store that is not there');
    assert.ok((await logged(b.snap!.log, 'shared layer not mounted: its store does not serve it now', {}, from)).length > 0, 'B says why it mounted nothing');
    await rename(`${shared}.away`, shared);
    await waitFor('B to mount its shared layers again', async () => (await erofsMounts()).length === before, 60_000);
    assert.ok((await logged(b.snap!.log, 'kernel layer mounted again', { reason: 'its shared store serves it again' }, from)).length > 0, 'B says why it mounted them again');
    let run = { code: -1, stdout: '', stderr: '' };
    await waitFor('containerd to reach the restarted daemon', async () => {
      run = await b.ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', `${proxy!.host}/${images.big!.name}`, 's3', '/bin/sh', '-c', 'ls /two | wc -l'], 120_000);
      return run.code === 0;
    }, 60_000);
    assert.equal(run.stdout.trim(), '16');
  });
});
