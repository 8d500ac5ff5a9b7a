// Lazy pulls from a loopback registry with the daemon started as documented (no --plain-http),
// and falls back to a full pull that are never silent: each is logged with its reason, counted in
// dedup_full_pulls_total and recorded in the audit log (#19). Real containerd, registry, FUSE.

import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dedupctlJson } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { teardownStack } from './fixtures/teardown.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage } from './fixtures/images.js';
import { LEVEL, logged } from './fixtures/log.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { startProxy, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { auditedPulls, startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';

describe('lazy pulls from a loopback registry; full-pull fallbacks are reported', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let noRanges: TestProxy | undefined;
  let snap: TestSnapshotter | undefined;
  let ctd: TestContainerd | undefined;
  let n = 0;

  const fullPulls = async (): Promise<Record<string, number>> => {
    const text = await fetch(`${snap!.api}/metrics`).then((r) => r.text());
    return Object.fromEntries([...text.matchAll(/^dedup_full_pulls_total\{reason="(\w+)"\} (\d+)/gm)].map((m) => [m[1]!, Number(m[2])]));
  };
  const pulls = (image: string): { lazy?: boolean; reason?: string }[] => auditedPulls(snap!.root, image);
  const pullAndRun = async (ref: string): Promise<string> => {
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const r = await ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, `c${n++}`, '/bin/cat', '/hello'], 120_000);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-fallback-test-'));
    registry = await startRegistry(tmp);
    // Serves manifests and whole blobs, fails every Range request: a lazy mount cannot read a TOC.
    noRanges = await startProxy(registry.host, { fault: (req) => (req.headers.range ? '500' : 'ok') });
    await writeOciImage(join(tmp, 'src'), 'app', [{ tar: await tarOf([...await busyboxEntries(), { name: 'hello', type: 'file', content: Buffer.from('hello\n') }]), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'app', `${registry.host}/src/app:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/src/app:1`, `${registry.host}/lazy/app:1`]);
    // Layers of their own: containerd pulls no layer twice.
    await writeOciImage(join(tmp, 'src2'), 'other', [{ tar: await tarOf([...await busyboxEntries(), { name: 'hello', type: 'file', content: Buffer.from('other\n') }]), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src2'), 'other', `${registry.host}/src/other:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/src/other:1`, `${registry.host}/lazy/other:1`]);
    snap = await startSnapshotter(tmp, [], { fused: { idle_exit_seconds: 0 } }, { plainHttp: false });
    ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
  });

  after(async () => {
    await teardownStack(tmp, { ctd, snap, servers: [noRanges, registry] });
  });

  it('an eStargz image on 127.0.0.1 is pulled lazily without --plain-http (https is tried, then plain HTTP)', async () => {
    const ref = `${registry!.host}/lazy/app:1`;
    assert.equal(await pullAndRun(ref), 'hello\n');
    assert.ok((await logged(snap!.log, 'remote snapshot mounted lazily')).length > 0, 'a layer was mounted lazily');
    assert.ok(pulls(ref).length > 0 && pulls(ref).every((p) => p.lazy === true), JSON.stringify(pulls(ref)));
    assert.deepEqual(await fullPulls(), { not_estargz: 0, bad_gzip_index: 0, not_in_manifest: 0, registry: 0, mount_failed: 0 });
  });

  it('a plain gzip image is pulled in full, said so with reason not_estargz', async () => {
    const ref = `${registry!.host}/src/app:1`;
    assert.equal(await pullAndRun(ref), 'hello\n');
    assert.ok((await fullPulls()).not_estargz! >= 1);
    const recorded = pulls(ref);
    assert.ok(recorded.length >= 1 && recorded.every((p) => p.lazy === false && p.reason === 'not_estargz'), JSON.stringify(recorded));
  });

  it('a lazy mount that fails (Range requests refused) falls back with a warning naming the reason', async () => {
    const ref = `${noRanges!.host}/lazy/other:1`;
    assert.equal(await pullAndRun(ref), 'other\n');
    assert.ok((await fullPulls()).mount_failed! >= 1);
    assert.ok(pulls(ref).some((p) => p.lazy === false && p.reason === 'mount_failed'), JSON.stringify(pulls(ref)));
    const warned = await logged(snap!.log, 'not mounted lazily; containerd downloads and unpacks the layer', { level: LEVEL.warn, reason: 'mount_failed' });
    assert.ok(warned.length >= 1, 'logged as a warning');
  });
});
