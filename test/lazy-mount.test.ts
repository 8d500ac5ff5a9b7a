// The lazy root filesystem for real: layer mounts (FUSE, or EROFS filled on demand in the suite's
// mount mode erofs) stacked with overlayfs, against a registry behind a byte-counting,
// fault-injecting proxy.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { open, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import type { TraceFile } from '../src/trace-format.js';
import { isAlive, readRecords } from '../src/mount/mount-records.js';
import { dedupctl, dedupctlJson } from './fixtures/cli.js';
import { unmountUnder } from './fixtures/containerd.js';
import { readRange } from './fixtures/erofs.js';
import { pushOci, richLayers, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged } from './fixtures/log.js';
import { layerModes, lazyMode, testMountModeSkip, writeTestConfig } from './fixtures/mount-mode.js';
import { run, waitFor } from './fixtures/process.js';
import { startProxy, type Fault, type TestProxy } from './fixtures/proxy.js';
import { forgeChunkDigest } from './fixtures/tamper.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { canonicalLinks, expectedTree, walkTree } from './fixtures/tree.js';

const MiB = 1024 * 1024;
const hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');


/**
 * Another process holding index.db's write lock (BEGIN IMMEDIATE, as a gc or an ingest does) for
 * `holdMs`: resolves once it holds it; `released` settles when it has let go.
 */
async function holdWriteLock(indexDb: string, holdMs: number): Promise<{ pid: number; released: Promise<void> }> {
  const script = `const Database = require(process.argv[1]); const db = new Database(process.argv[2]);
    db.exec('BEGIN IMMEDIATE'); process.stdout.write('locked\\n');
    setTimeout(() => { db.exec('COMMIT'); db.close(); process.stdout.write('released\\n'); }, Number(process.argv[3]));`;
  const child = spawn(process.execPath, ['-e', script, createRequire(import.meta.url).resolve('better-sqlite3'), indexDb, String(holdMs)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const seen = (line: string): Promise<void> => new Promise((resolve, reject) => {
    const check = (): void => {
      if (out.includes(line + '\n')) resolve();
    };
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      check();
    });
    child.once('exit', (code) => (out.includes(line + '\n') ? resolve() : reject(new Error(`lock holder exited ${code} before "${line}"`))));
  });
  const locked = seen('locked');
  const released = seen('released');
  released.catch(() => undefined);
  await locked;
  return { pid: child.pid!, released: released.then(async () => void (child.exitCode === null && (await once(child, 'exit')))) };
}

describe('lazy root filesystem', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let root: string;
  /** For mounts whose test names no config of its own. */
  let config: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let fault: Fault = 'ok';
  let layers: { base: FileSpec[]; upper: FileSpec[] };
  let image: string;
  let imageBytes = 0;
  const mounted: string[] = [];
  const pids: number[] = [];

  const mount = async (ref: string, dir: string, extra: string[] = []): Promise<{ pid: number; mountMs: number; log: string }> => {
    const r = await dedupctlJson<{ pid: number; mountMs: number; log: string }>(['mount', '--root', root, '--plain-http',
      ...(extra.includes('--config') ? [] : ['--config', config]), ...extra, ref, dir]);
    mounted.push(dir);
    pids.push(r.pid);
    return r;
  };
  const umount = async (dir: string): Promise<void> => {
    const r = await dedupctl(['umount', '--root', root, dir]);
    assert.equal(r.code, 0, r.stderr);
    mounted.splice(mounted.indexOf(dir), 1);
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-lazy-test-'));
    root = join(tmp, 'root');
    config = await writeTestConfig(join(tmp, 'config.json'));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host, { fault: () => fault });
    layers = await richLayers(200 * MiB);
    await writeOciImage(join(tmp, 'src'), 'rich', [{ tar: await tarOf(layers.base), compression: 'gzip' }, { tar: await tarOf(layers.upper), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'rich', `${registry.host}/src/rich:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/src/rich:1`, `${registry.host}/lazy/rich:1`]);
    image = `${proxy.host}/lazy/rich:1`;
    const manifest = JSON.parse((await (await fetch(`http://${registry.host}/v2/lazy/rich/manifests/1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })).text()));
    imageBytes = manifest.layers.reduce((n: number, l: { size: number }) => n + l.size, 0);
  });

  after(async () => {
    for (const dir of [...mounted]) await dedupctl(['umount', '--root', root, dir]).catch(() => undefined);
    for (const pid of pids) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
    await unmountUnder(tmp);
    await proxy?.stop();
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('mounts a 200 MiB image and reads one small file fetching under 2 % of it', async () => {
    proxy!.reset();
    const dir = join(tmp, 'mnt-small');
    const m = await mount(image, dir);
    assert.equal(await readFile(join(dir, 'etc/hostname'), 'utf8'), 'rich-upper\n');
    const fetched = proxy!.stats.blobBytes;
    assert.ok(imageBytes > 200 * MiB);
    assert.ok(fetched < 0.02 * imageBytes, `fetched ${fetched} of ${imageBytes} bytes (${((100 * fetched) / imageBytes).toFixed(2)} %)`);
    assert.ok(m.mountMs < 10_000);
    assert.deepEqual((await layerModes(m.log)).map((l) => l.mode), [lazyMode, lazyMode], 'both layers in the mount mode');
    const status = await dedupctlJson<{ dir: string; running: boolean; layers: { percent: number; complete: boolean }[] }[]>(['status', '--root', root]);
    const s = status.find((x) => x.dir === dir)!;
    assert.equal(s.running, true);
    assert.equal(s.layers.length, 2);
    assert.ok(s.layers[0]!.percent < 2 && !s.layers[0]!.complete);
    // From the directory alone: the root is found through the mount table.
    const r = await dedupctl(['umount', dir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).unmounted, dir);
    mounted.splice(mounted.indexOf(dir), 1);
    assert.equal(isAlive(m.pid), false);
    const missing = await dedupctl(['umount', dir]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /a dedup mount at .*mnt-small not found \(state roots looked in: /);
  });

  it('shows exactly the tree a full pull would: types, modes, owners, sizes, links, xattrs, contents, whiteouts, opaque dirs', async () => {
    const dir = join(tmp, 'mnt-tree');
    await mount(image, dir);
    const actual = canonicalLinks(await walkTree(dir));
    const expected = canonicalLinks(expectedTree([layers.base, layers.upper]));
    assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
    for (const [p, e] of expected) assert.deepEqual(actual.get(p), e, p);
    assert.equal(actual.has('del/gone'), false);
    assert.deepEqual((await readdir(join(dir, 'opq'))).sort(), ['c']);
    // The layer mount itself carries overlay's markers.
    const rec = (await readRecords(root)).find((r) => r.dir === dir)!;
    const upperLayer = rec.layers[1]!.mountpoint;
    const opaque = await run('getfattr', ['--absolute-names', '--only-values', '-n', 'trusted.overlay.opaque', join(upperLayer, 'opq')]);
    assert.equal(opaque.stdout, 'y');
    const wh = await run('stat', ['-c', '%F %t:%T', join(upperLayer, 'del/gone')]);
    assert.equal(wh.stdout.trim(), 'character special file 0:0');
    const chroot = await run('chroot', [dir, '/bin/sh', '-c', 'echo hello from $(cat /etc/hostname); ls /opq; /data/setuid']);
    assert.equal(chroot.code, 0, chroot.stderr);
    assert.equal(chroot.stdout, 'hello from rich-upper\nc\nsuid\n');
    await umount(dir);
  });

  it('serves 16 concurrent readers of the same and of different files correct bytes', async () => {
    const dir = join(tmp, 'mnt-concurrent');
    await mount(image, dir, ['--cache-size', '8M']);
    const files = ['data/big', 'data/big', 'data/big', 'data/big', 'data/big', 'data/big', 'data/big', 'data/big',
      'data/text', 'data/text', 'data/upper-only', 'data/upper-only', 'bin/busybox', 'bin/busybox', 'etc/hostname', 'data/small'];
    const want = (p: string): string => hex(p === 'bin/busybox' ? Buffer.alloc(0) : [...layers.upper, ...layers.base].find((s) => s.name === p)!.content!);
    const busybox = hex(await readFile('/bin/busybox'));
    const results = await Promise.all(files.map((f) => run('sha256sum', [join(dir, f)])));
    for (const [i, r] of results.entries()) {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.split(' ')[0], files[i] === 'bin/busybox' ? busybox : want(files[i]!), files[i]);
    }
    await umount(dir);
  });

  it('gives EIO for a chunk corrupted at the registry while other files keep working', async () => {
    // A copy of the image whose TOC names a wrong digest for data/text's chunk.
    const layout = join(tmp, 'tampered');
    await dedupctlJson(['convert', '--plain-http', `${registry!.host}/lazy/rich:1`, `oci:${layout}:t`]);
    await forgeChunkDigest(`oci:${layout}:t`, 0, 'data/text');
    await dedupctlJson(['convert', '--plain-http', `oci:${layout}:t`, `${registry!.host}/lazy/tampered:1`]);

    const dir = join(tmp, 'mnt-corrupt');
    const m = await mount(`${proxy!.host}/lazy/tampered:1`, dir, ['--root', join(tmp, 'root-corrupt')]);
    await assert.rejects(readFile(join(dir, 'data/text')), (err: NodeJS.ErrnoException) => err.code === 'EIO');
    assert.equal(await readFile(join(dir, 'data/small'), 'utf8'), 'abc');
    assert.equal(await readFile(join(dir, 'etc/hostname'), 'utf8'), 'rich-upper\n');
    assert.ok((await logged(m.log, 'read failed: EIO', { path: '/data/text', code: 'ERR_CHUNK_DIGEST_MISMATCH' })).length > 0, 'the failed read is logged with its code');
    const r = await dedupctl(['umount', '--root', join(tmp, 'root-corrupt'), dir]);
    assert.equal(r.code, 0, r.stderr);
    mounted.splice(mounted.indexOf(dir), 1);
  });

  it('gives EIO when the registry goes away mid-read, and reads again once it is back', async () => {
    const dir = join(tmp, 'mnt-outage');
    // Reads must go to the registry: small layers are not fetched whole at mount here.
    const noSmall = await writeTestConfig(join(tmp, 'no-small-layer-fetch.json'), { prefetch: { small_layer_bytes: 0, whole_layer_bytes: 0 } });
    await mount(image, dir, ['--root', join(tmp, 'root-outage'), '--config', noSmall]);
    assert.equal(await readFile(join(dir, 'data/small'), 'utf8'), 'abc');
    fault = 'reset';
    try {
      await assert.rejects(readFile(join(dir, 'data/upper-only')), (err: NodeJS.ErrnoException) => err.code === 'EIO');
    } finally {
      fault = 'ok';
    }
    assert.equal(hex(await readFile(join(dir, 'data/upper-only'))), hex(layers.upper.find((s) => s.name === 'data/upper-only')!.content!));
    const r = await dedupctl(['umount', '--root', join(tmp, 'root-outage'), dir]);
    assert.equal(r.code, 0, r.stderr);
    mounted.splice(mounted.indexOf(dir), 1);
  });

  it('a second image sharing layers fetches only what the store lacks; traces record what was read', async () => {
    const upper2: FileSpec[] = [{ name: 'etc/', type: 'directory' }, { name: 'etc/hostname', type: 'file', content: Buffer.from('second\n') }];
    await writeOciImage(join(tmp, 'src2'), 'two', [{ tar: await tarOf(layers.base), compression: 'gzip' }, { tar: await tarOf(upper2), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src2'), 'two', `${registry!.host}/src/two:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry!.host}/src/two:1`, `${registry!.host}/lazy/two:1`]);
    const first = join(tmp, 'mnt-first');
    await mount(image, first);
    const big = hex(await readFile(join(first, 'data/big')));
    await umount(first);
    proxy!.reset();
    const second = join(tmp, 'mnt-second');
    await mount(`${proxy!.host}/lazy/two:1`, second);
    assert.equal(hex(await readFile(join(second, 'data/big'))), big);
    assert.equal(await readFile(join(second, 'etc/hostname'), 'utf8'), 'second\n');
    assert.ok(proxy!.stats.blobBytes < 1 * MiB, `the shared base layer came from the store (${proxy!.stats.blobBytes} bytes fetched)`);
    await umount(second);
    const traces = await readdir(join(root, 'traces'), { recursive: true });
    const files = traces.filter((t) => String(t).endsWith('.json'));
    assert.ok(files.length >= 2);
    const docs = await Promise.all(files.map(async (f) => JSON.parse(await readFile(join(root, 'traces', String(f)), 'utf8')) as TraceFile));
    const withBig = docs.find((d) => d.accesses.some((a) => a.path === 'data/big'))!;
    assert.equal(withBig.version, 1);
    assert.ok(withBig.accesses.filter((a) => a.path === 'data/big').length >= 50, 'every chunk of data/big');
    assert.ok(withBig.accesses.every((a) => /^sha256:[0-9a-f]{64}$/.test(a.chunkDigest) && a.ms >= 0 && a.length > 0));
  });

  it('keeps serving reads, from the store and from the registry, while another process holds the index\'s write lock', async () => {
    const lockedRoot = join(tmp, 'root-locked');
    const noSmall = await writeTestConfig(join(tmp, 'no-small-layer-fetch-locked.json'), { prefetch: { small_layer_bytes: 0 } });
    const spec = (p: string): Buffer => [...layers.upper, ...layers.base].find((s) => s.name === p)!.content!;
    const big = spec('data/big');
    // A first mount stores data/text and data/big's first 16 MiB (4 MiB chunks: verified in the workers when read back).
    const first = join(tmp, 'mnt-lock-first');
    await mount(image, first, ['--root', lockedRoot, '--config', noSmall]);
    await readFile(join(first, 'data/text'));
    await readRange(join(first, 'data/big'), 0, 16 * MiB);
    assert.equal((await dedupctl(['umount', '--root', lockedRoot, first])).code, 0);
    mounted.splice(mounted.indexOf(first), 1);
    const before = await dedupctlJson<{ chunks: number }>(['stats', '--root', lockedRoot]);

    const dir = join(tmp, 'mnt-lock');
    await mount(image, dir, ['--root', lockedRoot, '--config', noSmall]);
    const lock = await holdWriteLock(join(lockedRoot, 'index.db'), 5000);
    try {
      let releasedFirst = false;
      void lock.released.then(() => (releasedFirst = true));
      // Stored chunks, and chunks that come from the registry and are stored while the lock is held.
      const [text, stored, fetched, upper] = await Promise.all([readFile(join(dir, 'data/text')), readRange(join(dir, 'data/big'), 0, 16 * MiB),
        readRange(join(dir, 'data/big'), 32 * MiB, 8 * MiB), readFile(join(dir, 'data/upper-only'))]);
      assert.equal(releasedFirst, false, 'the reads were served while the other process held the write lock');
      assert.equal(hex(text), hex(spec('data/text')));
      assert.equal(hex(stored), hex(big.subarray(0, 16 * MiB)));
      assert.equal(hex(fetched), hex(big.subarray(32 * MiB, 40 * MiB)));
      assert.equal(hex(upper), hex(spec('data/upper-only')));
      await lock.released;
      // The chunks fetched meanwhile reach the index once the lock is free.
      await waitFor('the index to record the fetched chunks', async () => (await dedupctlJson<{ chunks: number }>(['stats', '--root', lockedRoot])).chunks >= before.chunks + 3);
    } finally {
      if (isAlive(lock.pid)) process.kill(lock.pid, 'SIGKILL');
      await lock.released.catch(() => undefined);
    }
    assert.equal((await dedupctl(['umount', '--root', lockedRoot, dir])).code, 0);
    mounted.splice(mounted.indexOf(dir), 1);
  });

  it('drops a chunk that rotted in the store and fetches the chunk again: readers get the right bytes', async () => {
    const rotRoot = join(tmp, 'root-rot');
    const noSmall = await writeTestConfig(join(tmp, 'no-small-layer-fetch-rot.json'), { prefetch: { small_layer_bytes: 0 } });
    // One chunk each: data/text (83 KB, checked in a worker when read back) and data/small (3 bytes, checked on the thread).
    const files = ['data/text', 'data/small'].map((p) => ({ path: p, content: layers.base.find((s) => s.name === p)!.content! }));
    /** The chunk's bytes where the index says they are (in a pack). */
    const stored = async (b: Buffer): Promise<{ path: string; offset: number }> => {
      const db = new Database(join(rotRoot, 'index.db'), { readonly: true });
      try {
        const r = db.prepare('SELECT pack, pack_offset AS offset FROM chunks WHERE digest = ? AND present = 1').get(`sha256:${hex(b)}`) as { pack: string; offset: number };
        return { path: join(rotRoot, 'chunks', 'packs', r.pack), offset: r.offset };
      } finally {
        db.close();
      }
    };
    for (const [i, rot] of [false, true].entries()) {
      if (rot) {
        for (const f of files) {
          const at = await stored(f.content);
          const fh = await open(at.path, 'r+');
          await fh.write(Buffer.from('rotten'), 0, 6, at.offset).finally(() => fh.close());
        }
      }
      const dir = join(tmp, `mnt-rot-${i}`);
      await mount(image, dir, ['--root', rotRoot, '--config', noSmall]);
      for (const f of files) assert.equal(hex(await readFile(join(dir, f.path))), hex(f.content), f.path);
      assert.equal((await dedupctl(['umount', '--root', rotRoot, dir])).code, 0);
      mounted.splice(mounted.indexOf(dir), 1);
    }
    // Fetched again (here from the layer's tail, read with its TOC at mount) and stored again.
    for (const f of files) {
      const at = await stored(f.content);
      assert.equal(hex(await readRange(at.path, at.offset, f.content.length)), hex(f.content), `${f.path}: stored again, whole`);
    }
  });

  it('is writable over an upper directory', async () => {
    const dir = join(tmp, 'mnt-rw');
    const upper = join(tmp, 'upper');
    await mount(image, dir, ['--upper', upper]);
    await writeFile(join(dir, 'etc/hostname'), 'changed\n');
    assert.equal(await readFile(join(upper, 'etc/hostname'), 'utf8'), 'changed\n');
    await assert.rejects(writeFile(join(tmp, 'never', 'x'), 'y'));
    await umount(dir);
  });

  it('leaves no mounts and no processes after umount or SIGTERM; refuses bad input cleanly', async () => {
    const dir = join(tmp, 'mnt-term');
    const m = await mount(image, dir);
    process.kill(m.pid, 'SIGTERM');
    await waitFor('the mount process to exit', async () => !isAlive(m.pid), 10_000);
    mounted.splice(mounted.indexOf(dir), 1);
    const mounts = await readFile('/proc/self/mounts', 'utf8');
    assert.equal(mounts.includes(tmp), false, 'no FUSE or overlay mounts left');
    assert.deepEqual(await readRecords(root), []);
    const plain = join(tmp, 'plain');
    await writeOciImage(plain, 'p', [{ tar: await tarOf([{ name: 'f', type: 'file', content: Buffer.from('x') }]), compression: 'gzip' }]);
    const bad = await dedupctl(['mount', '--root', root, '--config', config, `oci:${plain}:p`, join(tmp, 'mnt-bad')]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /not eStargz|no stargz footer/);
    const none = await dedupctl(['umount', '--root', root, join(tmp, 'not-mounted')]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /a dedup mount at .*not-mounted not found/);
    assert.equal((await readFile('/proc/self/mounts', 'utf8')).includes(tmp), false);
  });
});
