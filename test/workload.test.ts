// A realistic workload through containerd: a Python interpreter image starting a script that
// imports a dozen modules, behind a registry proxy that adds 20 ms per request. The first lazy
// start records traces; a start on a fresh store replays them; dedupd warms a store from them.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { binary, dedupctlJson } from './fixtures/cli.js';
import { startContainerd, unmountUnder } from './fixtures/containerd.js';
import { pushOci, tarOf, writeOciImage } from './fixtures/images.js';
import { logRecords, type LogRecord } from './fixtures/log.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { bytesSentTwice, startProxy, type TestProxy } from './fixtures/proxy.js';
import { pythonImageEntries } from './fixtures/python-image.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { startSnapshotter } from './fixtures/snapshotter.js';

describe('interpreter workload', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let ref: string;
  /** The image's one layer. */
  let layer: { digest: string; size: number };
  let runs = 0;

  /**
   * One container start on fresh containerd and snapshotter state; returns the blocking fetches
   * and the layer's Range requests. Small layers are not fetched whole unless `holdSmallLayers`.
   */
  const start = async (root: string, traceDir: string, holdSmallLayers = false): Promise<{ output: string; demandFetches: number; fetched: number; requests: number; held: boolean }> => {
    const dir = await mkdtemp(join(tmp, `run-${runs++}-`));
    const snap = await startSnapshotter(dir, ['--root', root, '--trace-dir', traceDir], holdSmallLayers ? {} : { prefetch: { small_layer_bytes: 0 } });
    const ctd = await startContainerd(dir, { dedupSocket: snap.socket });
    let output = '';
    try {
      const pull = await ctd.rpull(ref);
      assert.equal(pull.code, 0, pull.stderr);
      const r = await ctd.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, `py-${runs}`, '/usr/bin/python3', '/app/main.py'], 120_000);
      assert.equal(r.code, 0, r.stderr);
      output = r.stdout;
    } finally {
      await ctd.stop();
      await snap.stop();
      await unmountUnder(dir);
    }
    const lines = (await logRecords(snap.fusedLog)) as (LogRecord & { demandFetches?: number; chunksFetched?: number; requests?: number })[];
    const unmounted = lines.filter((l) => l.msg === 'layer unmounted');
    await rm(dir, { recursive: true, force: true });
    const sum = (k: 'demandFetches' | 'chunksFetched' | 'requests'): number => unmounted.reduce((n, l) => n + (l[k] ?? 0), 0);
    const held = lines.some((l) => l.msg === 'holding the whole layer in memory for start-up');
    return { output, demandFetches: sum('demandFetches'), fetched: sum('chunksFetched'), requests: sum('requests'), held };
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-workload-test-'));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host, { latencyMs: 20 });
    await writeOciImage(join(tmp, 'src'), 'py', [{ tar: await tarOf(await pythonImageEntries()), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'py', `${registry.host}/src/python:3.11`);
    await dedupctlJson(['convert', '--plain-http', '--chunk-size', '1M', `${registry.host}/src/python:3.11`, `${registry.host}/lazy/python:3.11`]);
    ref = `${proxy.host}/lazy/python:3.11`;
    const manifest = await (await fetch(`http://${registry.host}/v2/lazy/python/manifests/3.11`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })).json() as
      { layers: { digest: string; size: number }[] };
    assert.equal(manifest.layers.length, 1);
    layer = manifest.layers[0]!;
  });

  after(async () => {
    await unmountUnder(tmp);
    await proxy?.stop();
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('without a trace, the interpreter\'s layer comes in one request, as in a full pull, and start-up reads it as it arrives; no byte comes twice', async () => {
    proxy!.reset();
    const r = await start(join(tmp, 'root-whole'), join(tmp, 'traces-whole'), true);
    const ranges = proxy!.stats.blobRanges.filter((x) => x.digest === layer.digest);
    assert.equal(bytesSentTwice(ranges, layer.digest), 0, 'footer, TOC, the download and start-up\'s reads never asked for the same bytes');
    const sent = ranges.reduce((n, x) => n + x.end - x.start, 0);
    assert.ok(sent <= layer.size, `${sent} bytes of the ${layer.size}-byte layer sent`);
    assert.match(r.output, /^ready \{"modules": 14\}/);
    assert.ok(r.held, 'the layer was downloaded whole');
    // The download counts once complete; a start that outran it still sent no request of its own.
    assert.ok(r.requests <= 1, `the whole layer, and ${r.requests - 1} requests of start-up's own`);
  });

  it('replaying the first start\'s trace cuts blocking fetches by over 90 %; dedupd warm-up leaves none', async () => {
    const traces = join(tmp, 'traces');
    const cold = await start(join(tmp, 'root-1'), traces);
    assert.match(cold.output, /^ready \{"modules": 14\}/);
    assert.ok(cold.demandFetches > 0, 'the first start waited on the registry');
    const listed = await dedupctlJson<{ chunks: number }[]>(['trace', 'ls', '--trace-dir', traces]);
    assert.ok(listed.length >= 1 && listed[0]!.chunks > 0, 'the first start left a trace');

    const replay = await start(join(tmp, 'root-2'), traces);
    assert.match(replay.output, /^ready/);
    assert.ok(replay.demandFetches <= cold.demandFetches * 0.1, `replay: ${replay.demandFetches} blocking fetches vs ${cold.demandFetches} on the first start`);

    const warmRoot = join(tmp, 'root-3');
    const warm = await binary('dedupd', ['--root', warmRoot, '--trace-dir', traces, '--plain-http', ref]);
    assert.equal(warm.code, 0, warm.stderr);
    const warmed = await start(warmRoot, join(tmp, 'no-traces'));
    assert.match(warmed.output, /^ready/);
    assert.equal(warmed.demandFetches, 0, 'everything start-up needs was in the store');
  });
});
