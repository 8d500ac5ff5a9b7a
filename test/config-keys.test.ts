// Config keys that the seed's config.json carries: each one works or is refused with a message
// naming it. Without root: parsing, references without a host, and dedupd refusing to run.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../src/config/config.js';
import { InvalidConfigError } from '../src/errors.js';
import { RegistryImage } from '../src/image/registry-image.js';
import { RegistryClient } from '../src/registry/client.js';
import { parseReference } from '../src/registry/reference.js';
import { binary } from './fixtures/cli.js';

/** The seed's config.json (../shared/seeds/002_*), as installed. */
const SEED = {
  root: '/var/lib/containerd/io.containerd.snapshotter.v1.dedup', enable_erofs: true, enable_fscache: true, enable_lazy: true, enable_mem_dedup: true,
  registry: '', chunk_size: 4194304, log_level: 'info',
  prefetch: { enabled: true, workers: 4, queue_size: 1000, trace_dir: '/var/lib/containerd/io.containerd.snapshotter.v1.dedup/traces' },
  ksm: { enabled: true, scan_interval: 100, pages_to_scan: 100, merge_across_nodes: false },
  dedupd: { enabled: true, workers: 4, registry: 'https://registry-1.docker.io', fscache_domain: 'dedup-snapshotter' },
};

describe('config keys', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-config-keys-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('loads the seed\'s config as it is', () => {
    const c = parseConfig(SEED, 'seed.json');
    assert.equal(c.dedupd.registry, 'https://registry-1.docker.io');
    assert.equal(c.registry, '');
  });

  it('refuses what the seed\'s dedupd keys cannot mean here, and a registry that is not a host, naming the key', () => {
    const refused = (doc: object, pattern: RegExp): void =>
      assert.throws(() => parseConfig(doc, 'c.json'), (e: unknown) => e instanceof InvalidConfigError && pattern.test(e.message), JSON.stringify(doc));
    refused({ dedupd: { registry: 'https://ghcr.io' } }, /^c\.json: dedupd\.registry: dedupd pulls from the registry each reference names/);
    refused({ dedupd: { fscache_domain: 'other' } }, /^c\.json: dedupd\.fscache_domain: fscache is not used/);
    refused({ registry: 'https://registry.local' }, /^c\.json: registry: must be a registry host/);
    assert.equal(parseConfig({ registry: 'registry.local:5000' }, 'c.json').registry, 'registry.local:5000');
    assert.equal(parseConfig({ registry: '[::1]:5000' }, 'c.json').registry, '[::1]:5000');
  });

  it('takes `registry` for references without a host; docker.io otherwise, with library/', async () => {
    assert.deepEqual(parseReference('app:1', 'registry.local:5000'), { host: 'registry.local:5000', repository: 'app', tag: '1', digest: undefined });
    assert.equal(parseReference('ghcr.io/x/y', 'registry.local:5000').host, 'ghcr.io', 'a reference that names its host keeps it');
    assert.equal(parseReference('alpine').repository, 'library/alpine');
    const withDefault = new RegistryClient({ defaultRegistry: 'registry.local:5000' });
    const plain = new RegistryClient({ defaultRegistry: '' });
    try {
      assert.equal(new RegistryImage(withDefault, 'team/app:2').name, 'registry.local:5000/team/app:2');
      assert.equal(new RegistryImage(plain, 'alpine').name, 'docker.io/library/alpine:latest');
    } finally {
      await withDefault.close();
      await plain.close();
    }
  });

  it('dedupd refuses to run with dedupd.enabled false', async () => {
    const file = join(tmp, 'config.json');
    await writeFile(file, JSON.stringify({ root: join(tmp, 'root'), dedupd: { enabled: false } }));
    const r = await binary('dedupd', ['--config', file, 'registry.local/app:1']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /dedupd\.enabled is false in the config.*\[ERR_FAILED_PRECONDITION\]/);
  });
});
