// The snapshotter as containerd uses it: a real containerd with proxy_plugins.dedup, ctr and
// ctr-remote, runc containers, against a registry behind a byte-counting proxy. The lazy pull's
// round trips are counted there too: an image is resolved once, and every layer's footer and TOC
// is read at the first layer's Prepare, all in parallel.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { dedupctlJson } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { teardownStack } from './fixtures/teardown.js';
import { busyboxEntries, pushOci, richLayers, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged, logRecords, logSize, matches, type LogRecord } from './fixtures/log.js';
import { lazyMode, testMountModeSkip } from './fixtures/mount-mode.js';
import { waitFor } from './fixtures/process.js';
import { startProxy, type ProxyRequest, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { snapshotsClient } from './fixtures/snapshots-client.js';
import { isAlive } from '../src/mount/mount-records.js';
import { DEFAULT_RETRY } from '../src/registry/retry.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';

const MiB = 1024 * 1024;
/** Long enough that requests sent together are in flight together, however loaded the machine. */
const LATENCY_MS = 250;
const LISTING = 'cd / && find bin data del deep etc opq private tmp | sort | while read f; do stat -c "%n %a %u %g %s %F %h" "$f"; done; '
  + 'find data etc opq deep -type f | sort | xargs sha256sum';
/**
 * LISTING with each directory's size left out where lazy layers are EROFS: a directory's size is
 * its filesystem's own (ext4's blocks under containerd's overlayfs, as our FUSE layers show it too;
 * EROFS the bytes of its dirents).
 */
const comparableListing = (listing: string): string => lazyMode === 'erofs' ? listing.replace(/^(.+ \d+ \d+ \d+ )\d+( directory \d+)$/gm, '$1-$2') : listing;

describe('containerd proxy snapshotter', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let snap: TestSnapshotter | undefined;
  let ctd: TestContainerd | undefined;
  let layers: { base: FileSpec[]; upper: FileSpec[] };
  let lazyRef: string;
  let imageBytes = 0;
  let n = 0;
  const runIn = async (snapshotter: string, ref: string, script: string): Promise<string> => {
    const r = await ctd!.ctr(['run', '--rm', '--snapshotter', snapshotter, ref, `c${process.pid}-${n++}`, '/bin/sh', '-c', script], 180_000);
    assert.equal(r.code, 0, `ctr run (${snapshotter}): ${r.stderr}`);
    return r.stdout;
  };

  /**
   * Pushes a three-layer image (busybox at the bottom, a file of its own in each; the middle one
   * with so many files that its TOC does not fit in one tail read) as eStargz; returns its layers'
   * digests.
   */
  const threeLayers = async (name: string): Promise<string[]> => {
    const layer = (i: number, many = 0): FileSpec[] => [{ name: `l${i}/`, type: 'directory' }, { name: `l${i}/data`, type: 'file', content: Buffer.from(`${name} layer ${i}\n`) },
      { name: `l${i}/noise`, type: 'file', content: randomBytes(200_000) },
      ...Array.from({ length: many }, (_, k): FileSpec => ({ name: `l${i}/f${k}`, type: 'file', content: randomBytes(16) }))];
    const tars = [await tarOf([...(await busyboxEntries()), ...layer(0)]), await tarOf(layer(1, 3000)), await tarOf(layer(2))];
    await writeOciImage(join(tmp, name), name, tars.map((tar) => ({ tar, compression: 'gzip' as const })));
    await pushOci(join(tmp, name), name, `${registry!.host}/src/${name}:1`);
    const conv = await dedupctlJson<{ layers: { digest: string }[] }>(['convert', '--plain-http', `${registry!.host}/src/${name}:1`, `${registry!.host}/lazy/${name}:1`]);
    return conv.layers.map((l) => l.digest);
  };

  /** rpull through the proxy with its latency on; returns the requests our daemons sent meanwhile. */
  const rpull = async (name: string): Promise<ProxyRequest[]> => {
    proxy!.reset();
    proxy!.options.latencyMs = LATENCY_MS;
    try {
      const pull = await ctd!.rpull(`${proxy!.host}/lazy/${name}:1`);
      assert.equal(pull.code, 0, pull.stderr);
    } finally {
      proxy!.options.latencyMs = undefined;
    }
    return proxy!.stats.log.filter((r) => r.userAgent.startsWith('dedup-snapshotter'));
  };

  const lazilyMounted = async (digests: string[]): Promise<string[]> => {
    const mounted = await logged(snap!.log, 'remote snapshot mounted lazily');
    return digests.filter((d) => mounted.some((r) => r.layer === d));
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-snapshotter-test-'));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host);
    layers = await richLayers(64 * MiB);
    await writeOciImage(join(tmp, 'src'), 'rich', [{ tar: await tarOf(layers.base), compression: 'gzip' }, { tar: await tarOf(layers.upper), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'rich', `${registry.host}/src/rich:1`);
    // The lazy image has a file more, which no container reads and no other image holds (the plain
    // pull below stores its layers' chunks): its upper layer stays incomplete, so FUSE serves both
    // layers throughout (a complete one is served by EROFS from then on: test/lazy-erofs.test.ts);
    // it makes the layer too large to be fetched whole at mount (prefetch.whole_layer_bytes) too.
    const unread = [...layers.upper, { name: 'unread', type: 'file' as const, content: randomBytes(6 * MiB) }];
    await writeOciImage(join(tmp, 'lazy-src'), 'rich', [{ tar: await tarOf(layers.base), compression: 'gzip' }, { tar: await tarOf(unread), compression: 'gzip' }]);
    await pushOci(join(tmp, 'lazy-src'), 'rich', `${registry.host}/lazy-src/rich:1`);
    const conv = await dedupctlJson<{ layers: { size: number }[] }>(['convert', '--plain-http', `${registry.host}/lazy-src/rich:1`, `${registry.host}/lazy/rich:1`]);
    imageBytes = conv.layers.reduce((a, l) => a + l.size, 0);
    lazyRef = `${proxy.host}/lazy/rich:1`;
    snap = await startSnapshotter(tmp);
    ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
  });

  after(async () => {
    await teardownStack(tmp, { ctd, snap, servers: [proxy, registry] });
  });

  it('ctr-remote rpull mounts the eStargz layers lazily; ctr run runs the image', async () => {
    proxy!.reset();
    const pull = await ctd!.rpull(lazyRef);
    assert.equal(pull.code, 0, pull.stderr);
    const pulled = proxy!.stats.blobBytes;
    assert.ok(pulled < 0.05 * imageBytes, `rpull fetched ${pulled} of ${imageBytes} bytes`);
    assert.ok((await logged(snap!.log, 'remote snapshot mounted lazily')).length > 0, 'a layer was mounted lazily');
    const status = await dedupctlJson<{ mounts: { mode: string }[] }>(['fused', 'status', '--root', snap!.root, '--config', snap!.config]);
    assert.deepEqual(status.mounts.map((m) => m.mode), status.mounts.map(() => lazyMode), 'every layer is served in the mount mode');
    const out = await runIn('dedup', lazyRef, 'cat /etc/hostname; cat /data/small; echo');
    assert.equal(out, 'rich-upper\nabc\n');
    assert.ok(proxy!.stats.blobBytes < 0.1 * imageBytes, `running it fetched ${proxy!.stats.blobBytes} bytes in all`);
  });

  it('a plain gzip image takes the normal path: containerd unpacks it into our snapshots', async () => {
    const ref = `${registry!.host}/src/rich:1`;
    const pull = await ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', ref], 180_000);
    assert.equal(pull.code, 0, pull.stderr);
    assert.equal(await runIn('dedup', ref, 'cat /etc/hostname'), 'rich-upper\n');
  });

  it('shows the same files as containerd\'s overlayfs snapshotter: whiteouts, opaque dirs, modes, owners, contents', async () => {
    const overlayRef = `${registry!.host}/lazy/rich:1`;
    const pull = await ctd!.ctr(['image', 'pull', '--plain-http', overlayRef], 180_000);
    assert.equal(pull.code, 0, pull.stderr);
    const ours = await runIn('dedup', lazyRef, LISTING);
    const theirs = await runIn('overlayfs', overlayRef, LISTING);
    assert.ok(ours.includes('/opq/c') || ours.includes('opq/c'));
    assert.ok(!ours.includes('del/gone'));
    assert.equal(comparableListing(ours), comparableListing(theirs));
  });

  it('ctr snapshots prepare, commit, info, tree, label, usage, rm behave as with overlayfs, errors included', async () => {
    const script = async (sn: string): Promise<string[]> => {
      const out: string[] = [];
      const ctr = async (...args: string[]): Promise<void> => {
        const r = await ctd!.ctr(['snapshots', '--snapshotter', sn, ...args]);
        const err = r.stderr.match(/(not found|already exists|failed precondition|invalid argument|cannot remove snapshot with child|not active)/)?.[1] ?? '';
        out.push(`${args[0]} ${r.code} ${err}`);
      };
      // containerd garbage-collects snapshots nothing references; gc.root keeps these for the test.
      const root = (key: string): Promise<unknown> => ctd!.ctr(['snapshots', '--snapshotter', sn, 'label', key, 'containerd.io/gc.root=test']);
      await ctr('prepare', 'p1');
      await root('p1');
      await ctr('prepare', 'p1');
      await ctr('commit', 'c1', 'p1');
      await root('c1');
      await ctr('commit', 'c2', 'p1');
      await ctr('prepare', 'p2', 'c1');
      await root('p2');
      await ctr('prepare', 'p3', 'nope');
      await ctr('view', 'v1', 'c1');
      await root('v1');
      await ctr('info', 'p2');
      await ctr('info', 'nope');
      await ctr('label', 'c1', 'team=core');
      await ctr('usage', 'p2');
      await ctr('rm', 'c1');
      await ctr('rm', 'p2');
      await ctr('rm', 'v1');
      await ctr('rm', 'c1');
      await ctr('rm', 'c1');
      await ctr('commit', 'c3', 'nope');
      return out;
    };
    const ours = await script('dedup');
    const theirs = await script('overlayfs');
    assert.deepEqual(ours, theirs);
    const info = JSON.parse((await ctd!.ctr(['snapshots', '--snapshotter', 'dedup', 'info', 'p1'])).stdout || 'null');
    assert.equal(info, null, 'p1 became c1 and is gone');
  });

  it('answers every API error with the gRPC code containerd expects', async () => {
    const { call, code, list, close } = snapshotsClient(snap!.socket);
    try {
      await call('Prepare', { key: 'g1', parent: '', labels: {} });
      await call('Commit', { name: 'g-committed', key: 'g1', labels: {} });
      await call('Prepare', { key: 'g2', parent: 'g-committed', labels: {} });
      assert.equal(await code(call('Stat', { key: 'missing' })), grpc.status.NOT_FOUND);
      assert.equal(await code(call('Prepare', { key: 'g2', parent: '', labels: {} })), grpc.status.ALREADY_EXISTS);
      assert.equal(await code(call('Prepare', { key: 'g3', parent: 'g2', labels: {} })), grpc.status.INVALID_ARGUMENT, 'parent not committed');
      assert.equal(await code(call('Prepare', { key: 'g3', parent: 'missing', labels: {} })), grpc.status.NOT_FOUND);
      assert.equal(await code(call('Remove', { key: 'g-committed' })), grpc.status.FAILED_PRECONDITION, 'has a child');
      assert.equal(await code(call('Commit', { name: 'x', key: 'g-committed', labels: {} })), grpc.status.FAILED_PRECONDITION, 'not active');
      assert.equal(await code(call('Commit', { name: 'g-committed', key: 'g2', labels: {} })), grpc.status.ALREADY_EXISTS);
      assert.equal(await code(call('Mounts', { key: 'g-committed' })), grpc.status.FAILED_PRECONDITION);
      assert.equal(await code(call('Update', { info: { name: 'g2', labels: {} }, update_mask: { paths: ['parent'] } })), grpc.status.INVALID_ARGUMENT);
      assert.equal(await code(call('Update', { info: { name: 'missing', labels: {} }, update_mask: { paths: [] } })), grpc.status.NOT_FOUND);
      assert.equal(await code(call('Usage', { key: 'missing' })), grpc.status.NOT_FOUND);
      assert.equal(await code(call('Remove', { key: 'missing' })), grpc.status.NOT_FOUND);
      const updated = (await call('Update', { info: { name: 'g2', labels: { a: '1', b: '2' } }, update_mask: { paths: ['labels.a'] } })) as { info: { labels: Record<string, string> } };
      assert.deepEqual(updated.info.labels, { a: '1' });
      const mounts = (await call('Mounts', { key: 'g2' })) as { mounts: { type: string; options: string[] }[] };
      assert.equal(mounts.mounts[0]!.type, 'overlay');
      assert.ok(mounts.mounts[0]!.options.some((o) => o.startsWith('lowerdir=')));
      assert.deepEqual(await list(['labels.a==1']), ['g2']);
      assert.deepEqual((await list(['kind==committed,name~=^g-'])), ['g-committed']);
      await assert.rejects(list(['labels.a==1,']), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
      await call('Remove', { key: 'g2' });
      await call('Remove', { key: 'g-committed' });
    } finally {
      close();
    }
  });

  /** Restarts the daemon after `crash`; every snapshot must be listed as before, and the lazily pulled image must run. */
  async function restartAndRun(crash: () => Promise<void>): Promise<void> {
    const before = (await ctd!.ctr(['snapshots', '--snapshotter', 'dedup', 'ls'])).stdout;
    await crash();
    snap = await startSnapshotter(tmp);
    // containerd reconnects to the plugin's socket with a backoff: ask until it has.
    let afterLs = await ctd!.ctr(['snapshots', '--snapshotter', 'dedup', 'ls']);
    await waitFor('containerd to reach the snapshotter again', async () => (afterLs = await ctd!.ctr(['snapshots', '--snapshotter', 'dedup', 'ls'])).code === 0, 30_000)
      .catch(() => assert.fail(afterLs.stderr));
    assert.equal(afterLs.stdout, before);
    assert.equal(await runIn('dedup', lazyRef, 'cat /etc/hostname; sha256sum /data/text | cut -c1-16'),
      `rich-upper\n${(await import('node:crypto')).createHash('sha256').update(layers.base.find((s) => s.name === 'data/text')!.content!).digest('hex').slice(0, 16)}\n`);
  }

  it('after kill -9 the restarted daemon re-attaches to the mounts the layer server kept', async () => {
    const fused = snap!.fusedPid;
    await restartAndRun(() => snap!.kill9());
    assert.equal(snap!.fusedPid, fused, 'the same layer server serves on');
    assert.equal((await logged(snap!.log, 'remote snapshots attached', { remote: 2, attached: 2, mounted: 0 })).length, 1);
  });

  it('after the layer server dies too, the restarted daemon mounts the remote snapshots again', async () => {
    const fused = snap!.fusedPid;
    await restartAndRun(async () => {
      await snap!.kill9();
      process.kill(fused, 'SIGKILL');
      await waitFor('the layer server to exit', async () => !isAlive(fused), 10_000);
    });
    assert.notEqual(snap!.fusedPid, fused);
    assert.ok((await logged(snap!.log, 'remote snapshot mounted again')).length > 0, 'a remote snapshot was mounted again');
  });

  it('when the layer server dies under a running daemon, a new one is started and the remote snapshots are mounted again', async () => {
    const fused = snap!.fusedPid;
    process.kill(fused, 'SIGKILL');
    const from = await logSize(snap!.log);
    let changed: LogRecord | undefined;
    await waitFor('the daemon to mount the remote snapshots again', async () => {
      const records = await logRecords(snap!.log, from);
      const at = records.findIndex((r) => matches(r, 'layer server changed; re-attaching'));
      changed = records[at];
      return at >= 0 && records.slice(at).some((r) => matches(r, 'remote snapshots attached', { mounted: 2 }));
    }, 60_000);
    snap!.fusedPid = changed!.to as number;
    assert.notEqual(snap!.fusedPid, fused);
    assert.equal(await runIn('dedup', lazyRef, 'cat /etc/hostname'), 'rich-upper\n');
  });

  // These layers are small enough to be downloaded whole at mount too (prefetch.whole_layer_bytes):
  // those requests start at byte 0, and no footer or TOC read does.
  const footerOrToc = (r: ProxyRequest): boolean => r.range !== undefined && !r.range.startsWith('bytes=0-');

  it('resolves the image once and reads every layer\'s footer and TOC by its end, all in one round trip at the first Prepare', async () => {
    const digests = await threeLayers('three');
    const ours = await rpull('three');
    const what = ours.map((r) => `${r.method} ${r.path} ${r.range ?? ''}`).join('\n');
    const manifests = ours.filter((r) => r.path.includes('/manifests/'));
    assert.equal(manifests.length, 1, `one manifest request (no config, none again per layer):\n${what}`);
    const reads = (digest: string): ProxyRequest[] => ours.filter((r) => r.path.endsWith(`/blobs/${digest}`) && footerOrToc(r));
    const tails = digests.map((d) => reads(d)[0]!);
    // The middle layer's TOC does not fit in the tail: the rest of it in one more range.
    const perRead = (i: number): number => (i === 1 ? 2 : 1);
    // A layer complete before the pull ended (these small ones are fetched whole at mount) may have
    // got its EROFS image meanwhile, which reads its footer and TOC once more (complete-layers.ts):
    // the mount's reads are the first ones.
    const readAgain = digests.filter((d, i) => reads(d).length > perRead(i));
    await waitFor('the layers read again to be those switched to EROFS', async () => {
      const switched = new Set((await logged(snap!.log, 'lazy layer complete; new snapshots get its EROFS image')).map((r) => r.layer));
      return readAgain.every((d) => switched.has(d));
    }, 30_000)
      .catch(() => assert.fail(`footer or TOC read again for a layer not switched to EROFS:\n${what}`));
    for (const [i, d] of digests.entries()) {
      assert.equal(reads(d)[0]?.range, 'bytes=-65536', `layer ${i} read first by its end:\n${what}`);
      assert.equal(reads(d).length, perRead(i) * (readAgain.includes(d) ? 2 : 1), `layer ${i}'s footer and TOC:\n${what}`);
    }
    // In flight together, the manifest too: every one arrived before any was answered.
    const together = [...manifests, ...tails];
    assert.ok(Math.max(...together.map((r) => r.arrived)) < Math.min(...together.map((r) => r.ended ?? Infinity)), `not all in one round trip:\n${what}`);
    assert.deepEqual(await lazilyMounted(digests), digests);
    assert.equal(await runIn('dedup', `${proxy!.host}/lazy/three:1`, 'cat /l0/data /l1/data /l2/data; wc -c < /l1/f2999'), 'three layer 0\nthree layer 1\nthree layer 2\n16\n');
  });

  it('an rpull of a plain gzip image reads ahead in vain: containerd unpacks every layer', async () => {
    const ref = `${proxy!.host}/src/three:1`; // pushed by the test before, never pulled
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const unpacked = await logged(snap!.log, 'not mounted lazily; containerd downloads and unpacks the layer', { image: ref });
    assert.equal(unpacked.length, 3, JSON.stringify(unpacked));
    assert.deepEqual(await logged(snap!.fusedLog, /^reading a layer's TOC ahead failed/, { image: ref }), []);
    assert.equal(await runIn('dedup', ref, 'cat /l0/data /l1/data /l2/data'), 'three layer 0\nthree layer 1\nthree layer 2\n');
  });

  it('a layer whose early read failed is read by its own mount; the other layers are not held up', async () => {
    const digests = await threeLayers('flaky');
    const top = digests[2]!;
    // Every attempt of the first read of the top layer fails (the registry client's retries
    // included); the reads after it get through.
    let failed = 0;
    proxy!.options.fault = (req) => {
      if (!req.headers.range || !req.url?.endsWith(top) || failed > DEFAULT_RETRY.retries) return 'ok';
      failed++;
      return '500';
    };
    let ours: ProxyRequest[];
    try {
      ours = await rpull('flaky');
    } finally {
      proxy!.options.fault = undefined;
    }
    assert.ok(failed > DEFAULT_RETRY.retries, `the early read of ${top} did not fail (${failed} faults)`);
    assert.equal(ours.filter((r) => r.path.endsWith(top) && footerOrToc(r)).length, failed + 1);
    assert.deepEqual(await lazilyMounted(digests), digests, 'every layer mounted lazily');
    assert.ok((await logged(snap!.fusedLog, 'reading a layer\'s TOC ahead failed; its mount tries again', { layer: top })).length > 0, `${top}: the early read's failure was logged`);
    assert.equal(await runIn('dedup', `${proxy!.host}/lazy/flaky:1`, 'cat /l2/data'), 'flaky layer 2\n');
  });
});
