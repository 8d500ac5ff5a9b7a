// Mount mode `erofs` for real (docs/kernel.md, "Lazy layers on EROFS"): `dedupctl mount` serves
// each layer of an eStargz image by the kernel, an EROFS image of its TOC whose unfetched chunks
// are empty device files filled on demand through fanotify pre-content events, against a registry
// behind a byte-counting, fault-injecting, slow proxy. Never wrong bytes: a chunk corrupted at the
// registry reads EIO every time, and when the process serving the events is killed, what it had
// not fetched reads EIO, never zeros.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isAlive, readRecords } from '../src/mount/mount-records.js';
import { mountTable } from '../src/system-mounts.js';
import { dedupctl, dedupctlJson } from './fixtures/cli.js';
import { unmountUnder } from './fixtures/containerd.js';
import { erofsModeSkipReason } from './fixtures/erofs.js';
import { pushOci, richLayers, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged } from './fixtures/log.js';
import { run, waitFor } from './fixtures/process.js';
import { startProxy, type Fault, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { forgeChunkDigest } from './fixtures/tamper.js';
import { canonicalLinks, expectedTree, walkTree } from './fixtures/tree.js';

const MiB = 1024 * 1024;
const hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** `file` read in order by another process until the end or an error: how many bytes, their sha256, the error's code. */
async function readUntilError(file: string): Promise<{ bytes: number; sha256: string; err?: string }> {
  const script = `const fs = require('fs'); const h = require('crypto').createHash('sha256'); const fd = fs.openSync(process.argv[1], 'r');
    const b = Buffer.alloc(1 << 20); let n = 0, err;
    for (;;) { let k; try { k = fs.readSync(fd, b, 0, b.length, n); } catch (e) { err = e.code; break; } if (!k) break; h.update(b.subarray(0, k)); n += k; }
    process.stdout.write(JSON.stringify({ bytes: n, sha256: h.digest('hex'), err }));`;
  const r = await run(process.execPath, ['-e', script, file]);
  return JSON.parse(r.stdout) as { bytes: number; sha256: string; err?: string };
}

/** `file` read by dd (another process: a read the kernel holds blocks dd, not the test), buffered or O_DIRECT. */
async function ddRead(file: string, direct = false): Promise<{ code: number; stderr: string; bytes: number }> {
  const r = await run('sh', ['-c', `dd if='${file}' bs=1M status=none ${direct ? 'iflag=direct' : ''} | wc -c`]);
  return { code: r.code, stderr: r.stderr.trim(), bytes: Number(r.stdout.trim()) };
}

describe('lazy layers in mount mode erofs', { skip: await erofsModeSkipReason() }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let slow: TestProxy | undefined;
  let faulty: TestProxy | undefined;
  let layers: { base: FileSpec[]; upper: FileSpec[] };
  let config: string;
  const mounted: { dir: string; root: string }[] = [];
  const pids: number[] = [];

  const mount = async (ref: string, dir: string, root: string, cfg = config): Promise<{ pid: number; log: string }> => {
    const r = await dedupctlJson<{ pid: number; log: string }>(['mount', '--config', cfg, '--root', root, '--plain-http', ref, dir]);
    mounted.push({ dir, root });
    pids.push(r.pid);
    return r;
  };
  const umount = async (dir: string, root: string): Promise<void> => {
    const r = await dedupctl(['umount', '--root', root, dir]);
    assert.equal(r.code, 0, r.stderr);
    mounted.splice(mounted.findIndex((m) => m.dir === dir), 1);
  };
  const content = (p: string): Buffer => [...layers.upper, ...layers.base].find((s) => s.name === p)!.content!;
  /** An image whose start-up set (before its prefetch landmark) is these small files. */
  const STARTUP: FileSpec[] = Array.from({ length: 40 }, (_, i) => ({ name: `app/m${i}.py`, type: 'file', content: Buffer.from(`# ${i}\n` + randomBytes(6000).toString('base64')) }));

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-erofs-mode-test-'));
    config = join(tmp, 'config.json');
    await writeFile(config, JSON.stringify({ mount_mode: 'erofs', prefetch: { enabled: false } }));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host);
    slow = await startProxy(registry.host, { latencyMs: 1500 });
    // One request in ten fails, in turn with a 500, a reset before the answer, a reset in its body.
    const faults: Fault[] = ['500', 'reset', 'reset-mid-body'];
    faulty = await startProxy(registry.host, { fault: (_req, n) => (n % 10 === 0 ? faults[(n / 10) % faults.length]! : 'ok') });
    layers = await richLayers(24 * MiB);
    await writeOciImage(join(tmp, 'src'), 'rich', [{ tar: await tarOf(layers.base), compression: 'gzip' }, { tar: await tarOf(layers.upper), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'rich', `${registry.host}/src/rich:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/src/rich:1`, `${registry.host}/lazy/rich:1`]);
    await writeOciImage(join(tmp, 'startup'), 'startup', [{ tar: await tarOf([{ name: 'app/', type: 'directory' }, ...STARTUP,
      { name: 'app/unused.bin', type: 'file', content: randomBytes(6 * MiB) }]), compression: 'gzip' }]);
    await pushOci(join(tmp, 'startup'), 'startup', `${registry.host}/src/startup:1`);
    const list = join(tmp, 'startup.txt');
    await writeFile(list, STARTUP.map((f) => f.name).join('\n') + '\n');
    await dedupctlJson(['convert', '--plain-http', '--prefetch-list', list, `${registry.host}/src/startup:1`, `${registry.host}/lazy/startup:1`]);
  });

  after(async () => {
    for (const m of [...mounted]) await dedupctl(['umount', '--root', m.root, m.dir]).catch(() => undefined);
    for (const pid of pids) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
    await unmountUnder(tmp);
    await Promise.all([proxy?.stop(), slow?.stop(), faulty?.stop()]);
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('serves each layer by the kernel, fetching on demand, the tree exactly as a full pull shows it', async () => {
    const root = join(tmp, 'root');
    const dir = join(tmp, 'mnt');
    proxy!.reset();
    const m = await mount(`${proxy!.host}/lazy/rich:1`, dir, root);
    assert.equal((await logged(m.log, 'lazy layers mount mode', { mode: 'erofs' })).length, 1);
    assert.equal((await logged(m.log, /^enable_fscache: EROFS over fscache \(\/dev\/cachefiles\) is not used; lazy EROFS layers use file-backed mounts/)).length, 1);
    assert.equal((await logged(m.log, 'layer mode erofs: kernel EROFS, filled on demand')).length, 2);
    const rec = (await readRecords(root)).find((r) => r.dir === dir)!;
    const table = await mountTable();
    for (const l of rec.layers) assert.equal(table.find((t) => t.target === l.mountpoint)?.fstype, 'erofs', l.mountpoint);

    assert.equal(await readFile(join(dir, 'etc/hostname'), 'utf8'), 'rich-upper\n');
    const blobBytes = proxy!.stats.blobBytes;
    assert.ok(blobBytes < 4 * MiB, `one small file fetched ${blobBytes} bytes`);

    const actual = canonicalLinks(await walkTree(dir));
    const expected = canonicalLinks(expectedTree([layers.base, layers.upper]));
    assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
    for (const [p, e] of expected) assert.deepEqual(actual.get(p), e, p);
    const chroot = await run('chroot', [dir, '/bin/sh', '-c', 'echo hello from $(cat /etc/hostname); ls /opq; /data/setuid']);
    assert.equal(chroot.code, 0, chroot.stderr);
    assert.equal(chroot.stdout, 'hello from rich-upper\nc\nsuid\n');
    // Read again once filled: from the kernel, nothing fetched.
    proxy!.reset();
    assert.equal(hex(await readFile(join(dir, 'data/big'))), hex(content('data/big')));
    assert.equal(proxy!.stats.blobBytes, 0);
    await umount(dir, root);
  });

  it('writes the chunks prefetched at mount (a landmark\'s start-up set) into their chunk files ahead: reading them waits for no event', async () => {
    const root = join(tmp, 'root-ahead');
    const dir = join(tmp, 'mnt-ahead');
    const prefetching = join(tmp, 'config-prefetch.json');
    await writeFile(prefetching, JSON.stringify({ mount_mode: 'erofs' }));
    const m = await mount(`${proxy!.host}/lazy/startup:1`, dir, root, prefetching);
    await waitFor('the prefetch', async () => (await logged(m.log, 'prefetch done', { source: 'landmark' })).length === 1, 30_000);
    proxy!.reset();
    for (const f of STARTUP) assert.equal(hex(await readFile(join(dir, f.name))), hex(f.content!), f.name);
    assert.equal(proxy!.stats.blobBytes, 0, 'all of it came with the prefetch');
    // Stopped by its signal rather than umount (which removes the log): it unmounts and logs the layer's counts as it goes.
    process.kill(m.pid, 'SIGTERM');
    await waitFor('the mount process to stop', async () => !isAlive(m.pid), 30_000);
    mounted.splice(mounted.findIndex((x) => x.dir === dir), 1);
    const [layer] = await logged(m.log, 'layer unmounted');
    assert.equal(layer!.filledAhead, STARTUP.length);
    assert.deepEqual([layer!.reads, layer!.filled], [0, 0], 'no read waited for an event');
  });

  it('reads every file back exactly with one registry request in ten failing', async () => {
    const root = join(tmp, 'root-faults');
    const dir = join(tmp, 'mnt-faults');
    faulty!.reset();
    await mount(`${faulty!.host}/lazy/rich:1`, dir, root);
    const actual = canonicalLinks(await walkTree(dir));
    const expected = canonicalLinks(expectedTree([layers.base, layers.upper]));
    for (const [p, e] of expected) assert.deepEqual(actual.get(p), e, p);
    assert.ok(faulty!.stats.faults > 0, 'faults were injected');
    await umount(dir, root);
  });

  it('gives EIO on every read of a chunk corrupted at the registry, buffered or O_DIRECT, never a short read', async () => {
    const layout = join(tmp, 'tampered');
    await dedupctlJson(['convert', '--plain-http', `${registry!.host}/lazy/rich:1`, `oci:${layout}:t`]);
    await forgeChunkDigest(`oci:${layout}:t`, 0, 'data/text');
    await dedupctlJson(['convert', '--plain-http', `oci:${layout}:t`, `${registry!.host}/lazy/tampered:1`]);
    const root = join(tmp, 'root-corrupt');
    const dir = join(tmp, 'mnt-corrupt');
    const m = await mount(`${proxy!.host}/lazy/tampered:1`, dir, root);
    for (let i = 0; i < 3; i++) {
      await assert.rejects(readFile(join(dir, 'data/text')), (err: NodeJS.ErrnoException) => err.code === 'EIO');
      const dd = await ddRead(join(dir, 'data/text'));
      assert.match(dd.stderr, /Input\/output error/);
      assert.equal(dd.bytes, 0, 'no short read');
    }
    // Overlayfs over file-backed EROFS opens nothing O_DIRECT: refused at open, so no bytes either.
    const direct = await ddRead(join(dir, 'data/text'), true);
    assert.match(direct.stderr, /Input\/output error|Invalid argument/);
    assert.equal(direct.bytes, 0);
    assert.equal(await readFile(join(dir, 'etc/hostname'), 'utf8'), 'rich-upper\n');
    assert.ok((await logged(m.log, 'read failed: EIO', { path: '/data/text', code: 'ERR_CHUNK_DIGEST_MISMATCH' })).length > 0, 'the failed read is logged with its code');
    await umount(dir, root);
  });

  it('kill -9 of the process serving the events mid-read: what it had not fetched reads EIO, never zeros; what it had stays right', async () => {
    const root = join(tmp, 'root-kill');
    const dir = join(tmp, 'mnt-kill');
    const m = await mount(`${slow!.host}/lazy/rich:1`, dir, root);
    assert.equal(await readFile(join(dir, 'etc/hostname'), 'utf8'), 'rich-upper\n');
    // A read held while its chunk comes through the slow proxy (1.5 s a request) when the
    // server is killed: EIO, whether the kill found it waiting or it came after.
    const asked = slow!.stats.requests;
    const held = readUntilError(join(dir, 'data/big'));
    await waitFor('the read to reach the registry', async () => slow!.stats.requests > asked, 30_000);
    process.kill(m.pid, 'SIGKILL');
    const got = await held;
    assert.equal(got.err, 'EIO');
    assert.equal(got.sha256, hex(content('data/big').subarray(0, got.bytes)), 'what was read before the EIO is right');
    const upper = await readUntilError(join(dir, 'data/upper-only'));
    assert.deepEqual([upper.err, upper.bytes], ['EIO', 0]);
    const dd = await ddRead(join(dir, 'data/upper-only'));
    assert.match(dd.stderr, /Input\/output error/);
    assert.equal(dd.bytes, 0);
    // What the kernel has: the tree, and the file read before.
    assert.equal(await readFile(join(dir, 'etc/hostname'), 'utf8'), 'rich-upper\n');
    const ls = await run('ls', [join(dir, 'data')]);
    assert.equal(ls.code, 0);
    await umount(dir, root);
  });
});
