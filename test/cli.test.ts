// The binaries as users run them: help, config validation, exit codes, dedupd and
// dedup-snapshotter, on OCI layouts (no registry needed).

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../src/config/config.js';
import { InvalidConfigError } from '../src/errors.js';
import { binary, dedupctl, dedupctlJson } from './fixtures/cli.js';
import { busyboxEntries, tarOf, writeOciImage } from './fixtures/images.js';

describe('command line', () => {
  let tmp: string;
  let image: string;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-cli-test-'));
    await writeOciImage(join(tmp, 'src'), 'v1', [{ tar: await tarOf(await busyboxEntries()), compression: 'gzip' }]);
    image = `oci:${join(tmp, 'lazy')}:v1`;
    await dedupctlJson(['convert', `oci:${join(tmp, 'src')}:v1`, image]);
  });

  after(() => rm(tmp, { recursive: true, force: true }));

  it('prints help and version; usage errors exit 2', async () => {
    const help = await dedupctl(['--help']);
    assert.equal(help.code, 0);
    for (const c of ['convert', 'toc', 'store', 'stats', 'gc']) assert.match(help.stdout, new RegExp(`\\n\\s+${c}\\b`));
    assert.match((await dedupctl(['--version'])).stdout, /^\d+\.\d+\.\d+/);
    const unknown = await dedupctl(['frobnicate']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command 'frobnicate'/);
    assert.equal((await dedupctl(['convert', 'only-one-arg'])).code, 2);
  });

  it('validates the config: unknown keys and bad values name their path', async () => {
    assert.throws(() => parseConfig({ prefetch: { workerz: 4 } }, 'c.json'), (e: unknown) => e instanceof InvalidConfigError && /c.json: prefetch.workerz: unknown key/.test(e.message));
    assert.throws(() => parseConfig({ chunk_size: 1000 }, 'c.json'), /chunk_size: Number must be greater than or equal to 65536/);
    assert.throws(() => parseConfig({ chunk_size: 3 * 1024 * 1024 }, 'c.json'), /chunk_size: must be a power of two/);
    assert.throws(() => parseConfig({ root: 'relative' }, 'c.json'), /root: must be an absolute path/);
    assert.throws(() => parseConfig({ ksm: { enabled: 'yes' } }, 'c.json'), /ksm.enabled: Expected boolean/);
    assert.throws(() => parseConfig({ mount_mode: 'kernel' }, 'c.json'), /mount_mode: Invalid enum value. Expected 'auto' \| 'erofs' \| 'fuse'/);
    assert.equal(parseConfig({ mount_mode: 'auto' }, 'c.json').mount_mode, 'auto');
    const c = parseConfig({ root: '/srv/dedup' }, 'c.json');
    assert.equal(c.mount_mode, 'fuse');
    assert.equal(c.prefetch.trace_dir, '/srv/dedup/traces');
    assert.equal(c.chunk_size, 4 * 1024 * 1024);

    const bad = join(tmp, 'bad.json');
    await writeFile(bad, JSON.stringify({ root: tmp, log_levle: 'info' }));
    const r = await dedupctl(['stats', '--config', bad]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad.json: log_levle: unknown key \[ERR_INVALID_CONFIG\]/);
    await writeFile(bad, '{ not json');
    assert.match((await dedupctl(['stats', '--config', bad])).stderr, /bad.json: not valid JSON/);
    const good = join(tmp, 'good.json');
    await writeFile(good, JSON.stringify({ root: join(tmp, 'from-config') }));
    await dedupctlJson(['store', 'ingest', '--config', good, image]);
    assert.equal((await dedupctlJson<{ images: number }>(['stats', '--config', good])).images, 1, 'root comes from the config');
    assert.equal((await dedupctlJson<{ images: number }>(['stats', '--config', good, '--root', join(tmp, 'other')])).images, 0, '--root wins');
  });

  it('toc lists an image in text and JSON', async () => {
    const text = await dedupctl(['toc', image]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /-rwxr-xr-x\s+0\s+0\s+\d+ bin\/busybox/);
    assert.match(text.stdout, /lrwxrwxrwx .* bin\/sh -> busybox/);
    const json = await dedupctlJson<{ layers: { entries: { path: string; type: string }[] }[] }>(['toc', image]);
    assert.ok(json.layers[0]!.entries.some((e) => e.path === 'bin/sh' && e.type === 'symlink'));
    const plain = await dedupctl(['toc', `oci:${join(tmp, 'src')}:v1`]);
    assert.equal(plain.code, 1);
    assert.match(plain.stderr, /no stargz footer/);
  });

  it('dedupd prefetches images into the store in one shot and logs JSON lines', async () => {
    const root = join(tmp, 'dedupd-root');
    const r = await binary('dedupd', ['--root', root, image, `oci:${join(tmp, 'missing')}:x`]);
    assert.equal(r.code, 1, 'one image failed');
    const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; image: string; fetched?: number; code?: string });
    assert.ok(lines.some((l) => l.msg === 'prefetch done' && (l.fetched ?? 0) > 0));
    assert.ok(lines.some((l) => l.msg === 'prefetch failed' && l.code === 'ERR_NOT_FOUND'));
    const st = await dedupctlJson<{ images: number; chunksMissing: number }>(['stats', '--root', root]);
    assert.deepEqual([st.images, st.chunksMissing], [1, 0]);
  });

  it('dedup-snapshotter --check validates its config and root', async () => {
    const root = join(tmp, 'snap-root');
    const check = await binary('dedup-snapshotter', ['--root', root, '--check', '--json']);
    assert.equal(check.code, 0, check.stderr);
    assert.equal(JSON.parse(check.stdout).root, root);
    const bad = join(tmp, 'bad-daemon.json');
    await writeFile(bad, JSON.stringify({ enable_lazy: 'yes' }));
    const r = await binary('dedup-snapshotter', ['--config', bad, '--check']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /enable_lazy: Expected boolean/);
  });
});
