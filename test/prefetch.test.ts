// Prefetch: landmark sets fetched in one request at mount, access traces recorded and replayed,
// dedupd warming a store from a trace, traces exported and imported, bad traces ignored.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { tracePath } from '../src/trace-format.js';
import { RemoteLayer } from '../src/fetch/remote-layer.js';
import { RegistryImage } from '../src/image/registry-image.js';
import { RegistryClient } from '../src/registry/client.js';
import { binary, dedupctl, dedupctlJson } from './fixtures/cli.js';
import { unmountUnder } from './fixtures/containerd.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged, logRecords, type LogRecord } from './fixtures/log.js';
import { layerModes, lazyMode, testMountModeSkip, writeTestConfig } from './fixtures/mount-mode.js';
import { startDaemon, waitFor, type Daemon } from './fixtures/process.js';
import { bytesSentTwice, startProxy, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';

const MiB = 1024 * 1024;
const DEDUPCTL = fileURLToPath(new URL('../src/cmd/dedupctl.js', import.meta.url));
const DEDUPD = fileURLToPath(new URL('../src/cmd/dedupd.js', import.meta.url));
const MODULES = Array.from({ length: 40 }, (_, i) => `lib/mod${String(i).padStart(2, '0')}.py`);

interface Mounted {
  dir: string;
  log: string;
  daemon: Daemon;
  /** JSON log lines so far. */
  lines(): Promise<Record<string, unknown>[]>;
  /** Unmounts (SIGTERM) and returns the per-layer stats the mount process logged. */
  stop(): Promise<{ demandFetches: number; prefetched: number; fromStore: number; requests: number }[]>;
}

/**
 * The held layer's traffic through `proxy`: bytes of it sent twice, and bytes sent in all (the
 * layer named by the mount's "holding" log line).
 */
function heldLayerTraffic(proxy: TestProxy, lines: Record<string, unknown>[]): { twice: number; sent: number; size: number } {
  const holding = lines.find((l) => l.msg === 'holding the whole layer in memory for start-up') as { layer: string; bytes: number };
  const ranges = proxy.stats.blobRanges.filter((r) => r.digest === holding.layer);
  return { twice: bytesSentTwice(ranges, holding.layer), sent: ranges.reduce((n, r) => n + r.end - r.start, 0), size: holding.bytes };
}

describe('prefetch', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  const daemons: Daemon[] = [];
  let n = 0;
  let plainRef: string;
  let landmarkRef: string;
  /** A library layer: 600 small files, as an interpreter's standard library. */
  let libraryRef: string;
  const LIBRARY = Array.from({ length: 600 }, (_, i) => `stdlib/m${String(i).padStart(3, '0')}.py`);

  /** `dedupctl mount --foreground` as a long-running process, as the snapshotter would host it. */
  const mount = async (ref: string, root: string, traceDir: string, smallLayerBytes = 0, wholeLayerBytes = 0): Promise<Mounted> => {
    const dir = join(tmp, `mnt-${n}`);
    const log = join(tmp, `mount-${n++}.log`);
    // By default small layers are not fetched whole here: most tests measure what traces and landmarks do.
    const config = await writeTestConfig(join(tmp, `config-${n}.json`), { prefetch: { small_layer_bytes: smallLayerBytes, whole_layer_bytes: wholeLayerBytes } });
    const daemon = startDaemon(process.execPath, [DEDUPCTL, 'mount', '--foreground', '--config', config, '--root', root, '--trace-dir', traceDir, '--plain-http', ref, dir], log);
    daemons.push(daemon);
    const lines = (): Promise<LogRecord[]> => logRecords(log);
    await waitFor('mount', async () => (await lines()).some((l) => l.msg === 'mounted'), 30_000);
    assert.deepEqual((await layerModes(log)).map((l) => l.mode), [lazyMode], 'the layer in the mount mode');
    return {
      dir, log, daemon, lines,
      async stop() {
        await daemon.stop();
        return (await lines()).filter((l) => l.msg === 'layer unmounted') as unknown as { demandFetches: number; prefetched: number; fromStore: number; requests: number }[];
      },
    };
  };

  /** The "workload": reads every module and the start of the large file, as an interpreter would. */
  const workload = async (dir: string): Promise<void> => {
    for (const m of MODULES) await readFile(join(dir, m));
    const fh = await import('node:fs/promises').then((fs) => fs.open(join(dir, 'opt/model.bin'), 'r'));
    await fh.read(Buffer.alloc(4096), 0, 4096, 0);
    await fh.close();
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-prefetch-test-'));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host);
    const files: FileSpec[] = [...(await busyboxEntries()), { name: 'lib/', type: 'directory' },
      ...MODULES.map((m, i): FileSpec => ({ name: m, type: 'file', content: Buffer.from(`# module ${i}\n` + randomBytes(12_000).toString('base64')) })),
      { name: 'opt/', type: 'directory' }, { name: 'opt/model.bin', type: 'file', content: randomBytes(24 * MiB) },
      { name: 'opt/unused.bin', type: 'file', content: randomBytes(8 * MiB) }];
    await writeOciImage(join(tmp, 'src'), 'app', [{ tar: await tarOf(files), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'app', `${registry.host}/src/app:1`);
    await dedupctlJson(['convert', '--plain-http', '--chunk-size', '1M', `${registry.host}/src/app:1`, `${registry.host}/lazy/app:1`]);
    const list = join(tmp, 'startup.txt');
    await writeFile(list, MODULES.join('\n') + '\n');
    await dedupctlJson(['convert', '--plain-http', '--chunk-size', '1M', '--prefetch-list', list, `${registry.host}/src/app:1`, `${registry.host}/lazy/app:landmark`]);
    const library: FileSpec[] = [{ name: 'stdlib/', type: 'directory' },
      ...LIBRARY.map((m, i): FileSpec => ({ name: m, type: 'file', content: Buffer.from(`# ${i}\n` + randomBytes(3000).toString('base64')) }))];
    await writeOciImage(join(tmp, 'lib'), 'lib', [{ tar: await tarOf(library), compression: 'gzip' }]);
    await pushOci(join(tmp, 'lib'), 'lib', `${registry.host}/src/lib:1`);
    await dedupctlJson(['convert', '--plain-http', `${registry.host}/src/lib:1`, `${registry.host}/lazy/lib:1`]);
    libraryRef = `${proxy.host}/lazy/lib:1`;
    plainRef = `${proxy.host}/lazy/app:1`;
    landmarkRef = `${proxy.host}/lazy/app:landmark`;
  });

  after(async () => {
    for (const d of daemons) await d.stop();
    await unmountUnder(tmp);
    await proxy?.stop();
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('fetches the files before the prefetch landmark in one request at mount', async () => {
    proxy!.reset();
    const m = await mount(landmarkRef, join(tmp, 'root-landmark'), join(tmp, 'traces-landmark'));
    await waitFor('prefetch', async () => (await m.lines()).some((l) => l.msg === 'prefetch done'));
    const done = (await m.lines()).find((l) => l.msg === 'prefetch done') as { source: string; chunks: number; fetched: number };
    assert.equal(done.source, 'landmark');
    assert.equal(done.fetched, MODULES.length);
    assert.equal(proxy!.stats.rangeRequests, 2, 'one for the TOC, one for the start-up files');
    await workload(m.dir);
    const layers = await m.stop();
    assert.ok(layers[0]!.prefetched >= MODULES.length, 'the start-up set (and read-ahead) came before readers asked');
    assert.ok(layers[0]!.demandFetches <= 2, `only the large file was fetched on demand (${layers[0]!.demandFetches})`);
  });

  it('without a trace or landmark, a layer of many small files is downloaded whole in one request and start-up reads it from memory', async () => {
    proxy!.reset();
    const root = join(tmp, 'root-library');
    const m = await mount(libraryRef, root, join(tmp, 'traces-library'), 64 * MiB);
    await waitFor('prefetch', async () => (await m.lines()).some((l) => l.msg === 'prefetch done'));
    const done = (await m.lines()).find((l) => l.msg === 'prefetch done') as { source: string; held: boolean };
    assert.equal(done.source, 'none');
    assert.equal(done.held, true);
    const afterMount = proxy!.stats.rangeRequests;
    const read = LIBRARY.filter((_, i) => i % 2 === 0);
    for (const f of read) await readFile(join(m.dir, f));
    assert.equal(proxy!.stats.rangeRequests, afterMount, 'start-up sent no request of its own');
    const traffic = heldLayerTraffic(proxy!, await m.lines());
    assert.equal(traffic.twice, 0, 'no byte of the layer came twice (footer, TOC, the download)');
    assert.equal(traffic.sent, traffic.size, 'the layer came once, whole');
    const layers = await m.stop();
    assert.equal(layers[0]!.demandFetches, 0, 'no reader waited on the registry');
    const stored = await dedupctlJson<{ chunks: number }>(['stats', '--root', root]);
    assert.ok(stored.chunks >= read.length, `what was read is stored (${stored.chunks} chunks)`);

    // A store that has most of the layer already (here after a full ingest) does not download it again,
    // and a layer of a few large files (plainRef) is read lazily as before.
    await dedupctlJson(['store', 'ingest', '--plain-http', '--root', root, libraryRef]);
    // The decision is logged before the layer is announced as mounted, so its absence is final.
    const holding = (lines: Record<string, unknown>[]): boolean => lines.some((l) => l.msg === 'holding the whole layer in memory for start-up');
    assert.ok(holding(await m.lines()), 'the first mount logged its decision');
    for (const [ref, r] of [[libraryRef, root], [plainRef, join(tmp, 'root-plain-held')]] as const) {
      const again = await mount(ref, r, join(tmp, 'traces-library'), 64 * MiB);
      assert.ok(!holding(await again.lines()), `${ref}: not held`);
      await again.stop();
    }
  });

  it('without a trace or landmark, a layer of at most whole_layer_bytes is fetched whole at mount and all of it stored: its first read sends no request', async () => {
    proxy!.reset();
    const root = join(tmp, 'root-whole');
    const m = await mount(libraryRef, root, join(tmp, 'traces-whole'), 0, 4 * MiB);
    await waitFor('prefetch', async () => (await m.lines()).some((l) => l.msg === 'prefetch done'));
    const done = (await m.lines()).find((l) => l.msg === 'prefetch done') as { source: string; held: boolean; fetched: number };
    assert.equal(done.source, 'none');
    assert.equal(done.held, true);
    assert.equal(done.fetched, LIBRARY.length, 'every file of the layer fetched');
    const afterMount = proxy!.stats.rangeRequests;
    assert.ok((await readFile(join(m.dir, LIBRARY[123]!), 'utf8')).startsWith('# 123\n'));
    assert.equal(proxy!.stats.rangeRequests, afterMount, 'the first read sent no request');
    const traffic = heldLayerTraffic(proxy!, await m.lines());
    assert.equal(traffic.twice, 0, 'no byte of the layer came twice');
    assert.equal(traffic.sent, traffic.size, 'the layer came once, whole');
    const layers = await m.stop();
    assert.equal(layers[0]!.demandFetches, 0, 'no reader waited on the registry');
    const stored = await dedupctlJson<{ chunks: number }>(['stats', '--root', root]);
    assert.ok(stored.chunks >= LIBRARY.length, `all of it is stored (${stored.chunks} chunks)`);
    // A layer above the limit (plainRef, 32 MiB of data) is read lazily as before.
    const plain = await mount(plainRef, join(tmp, 'root-whole-plain'), join(tmp, 'traces-whole'), 0, 4 * MiB);
    assert.ok(!(await plain.lines()).some((l) => l.msg === 'holding the whole layer in memory for start-up'), 'the large layer is not held');
    await plain.stop();
  });

  it('without a trace, reads that come while the layer is still coming in whole wait for it and send no request of their own: no byte comes twice', async () => {
    // 1 MiB/s: the layer (about 2 MiB) takes seconds to come, and the reads start at once.
    const slow = await startProxy(registry!.host, { bandwidth: MiB });
    try {
      const m = await mount(`${slow.host}/lazy/lib:1`, join(tmp, 'root-library-streaming'), join(tmp, 'traces-streaming'), 64 * MiB);
      // From all over the layer, the last ones seconds away from arriving.
      const read = LIBRARY.filter((_, i) => i % 3 === 0);
      const texts = await Promise.all(read.map((f) => readFile(join(m.dir, f), 'utf8')));
      for (const [i, t] of texts.entries()) assert.ok(t.startsWith(`# ${LIBRARY.indexOf(read[i]!)}\n`), read[i]);
      await waitFor('the download', async () => (await m.lines()).some((l) => l.msg === 'prefetch done'));
      // A reader's own request would have brought bytes the download brings again.
      const traffic = heldLayerTraffic(slow, await m.lines());
      assert.equal(traffic.twice, 0, 'no reader sent a request of its own: no byte came twice');
      assert.equal(traffic.sent, traffic.size);
      await m.stop();
    } finally {
      await slow.stop();
    }
  });

  it('records a trace on the first start and replays it on the next: on-demand fetches fall by over 90 %', async () => {
    const traces = join(tmp, 'traces');
    const first = await mount(plainRef, join(tmp, 'root-1'), traces);
    await workload(first.dir);
    const cold = await first.stop();
    // No trace yet: reading small files fetches their neighbours along (cross-file read-ahead).
    assert.ok(cold[0]!.demandFetches >= 1, 'the first start waited on the registry');
    assert.ok(cold[0]!.demandFetches < MODULES.length / 4, `${MODULES.length} small files took ${cold[0]!.demandFetches} blocking fetches`);
    const manifests = await dedupctlJson<{ manifestDigest: string; chunks: number }[]>(['trace', 'ls', '--trace-dir', traces]);
    assert.equal(manifests.length, 1);
    assert.ok(manifests[0]!.chunks >= MODULES.length);

    const second = await mount(plainRef, join(tmp, 'root-2'), traces);
    await workload(second.dir);
    const warm = await second.stop();
    assert.ok(warm[0]!.demandFetches <= cold[0]!.demandFetches * 0.1, `replay: ${warm[0]!.demandFetches} on-demand fetches vs ${cold[0]!.demandFetches}`);
    assert.ok((await second.lines()).some((l) => l.msg === 'prefetch done' && l.source === 'trace'));
  });

  it('replays a trace of scattered small files in one request: gaps cheaper than a round trip are downloaded and dropped', async () => {
    const traces = join(tmp, 'traces-scattered');
    const everyOther = LIBRARY.filter((_, i) => i % 2 === 0);
    const first = await mount(libraryRef, join(tmp, 'root-scattered-1'), traces);
    for (const f of everyOther) await readFile(join(first.dir, f));
    await first.stop();
    const second = await mount(libraryRef, join(tmp, 'root-scattered-2'), traces);
    await waitFor('replay', async () => (await second.lines()).some((l) => l.msg === 'prefetch done'));
    for (const f of everyOther) await readFile(join(second.dir, f));
    const [layer] = await second.stop();
    assert.equal(layer!.demandFetches, 0, 'every traced file was there before it was read');
    assert.equal(layer!.requests, 1, `${everyOther.length} files, each with an unread neighbour, in ${layer!.requests} requests`);
  });

  it('dedupd warms a fresh store from the trace: the next start fetches nothing on demand', async () => {
    const root = join(tmp, 'root-dedupd');
    const traces = join(tmp, 'traces');
    proxy!.reset();
    const r = await binary('dedupd', ['--root', root, '--trace-dir', traces, '--plain-http', plainRef]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(proxy!.stats.blobBytes < 8 * MiB, `warmed the start-up set only (${proxy!.stats.blobBytes} bytes), not the whole image`);
    const m = await mount(plainRef, root, join(tmp, 'no-traces'));
    await workload(m.dir);
    const layers = await m.stop();
    assert.equal(layers[0]!.demandFetches, 0);
  });

  it('dedupd --serve takes jobs on its socket (dedupctl prefetch), warms the store, and leaves no socket when stopped', async () => {
    const root = join(tmp, 'root-dedupd-serve');
    const socket = join(tmp, 'dedupd.sock');
    const log = join(tmp, 'dedupd-serve.log');
    const daemon = startDaemon(process.execPath, [DEDUPD, '--serve', '--socket', socket, '--root', root, '--trace-dir', join(tmp, 'traces'), '--plain-http'], log);
    daemons.push(daemon);
    await waitFor('dedupd socket', async () => existsSync(socket));
    proxy!.reset();
    const [job] = await dedupctlJson<{ id: string; state: string; report: { fetched: number } }[]>(['prefetch', 'add', '--wait', '--socket', socket, plainRef]);
    assert.equal(job!.state, 'done');
    assert.ok(job!.report.fetched >= MODULES.length, `the traced start-up set (${job!.report.fetched} chunks)`);
    assert.ok(proxy!.stats.blobBytes < 8 * MiB, `not the whole image (${proxy!.stats.blobBytes} bytes)`);
    const bad = await dedupctl(['prefetch', 'add', '--wait', '--socket', socket, `${proxy!.host}/lazy/nothing:here`]);
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /failed .*lazy\/nothing:here/);
    const jobs = await dedupctlJson<{ id: string; state: string }[]>(['prefetch', 'ls', '--socket', socket]);
    assert.deepEqual(jobs.map((j) => j.state), ['failed', 'done']);
    const refused = await dedupctl(['prefetch', 'add', '--socket', join(tmp, 'no.sock'), plainRef]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /no\.sock not found \(is dedupd --serve running\?\)/);

    const m = await mount(plainRef, root, join(tmp, 'traces-unused'));
    await workload(m.dir);
    const layers = await m.stop();
    assert.equal(layers[0]!.demandFetches, 0, 'dedupd warmed everything start-up reads');
    await daemon.stop();
    assert.equal(existsSync(socket), false, 'the socket is removed on SIGTERM');
    assert.ok((await logged(log, 'prefetch done')).length > 0, 'dedupd logged its prefetch');
  });

  it('exports and imports traces: another root prefetches the same set', async () => {
    const bundleFile = join(tmp, 'bundle.json');
    await dedupctlJson(['trace', 'export', '--trace-dir', join(tmp, 'traces'), `${proxy!.host}/lazy/app:1`, bundleFile]);
    const elsewhere = join(tmp, 'traces-imported');
    const imported = await dedupctlJson<{ written: string[] }>(['trace', 'import', '--trace-dir', elsewhere, bundleFile]);
    assert.equal(imported.written.length, 1);
    const a = await readFile(join(tmp, 'traces', imported.written[0]!.slice(elsewhere.length + 1)), 'utf8');
    assert.equal(await readFile(imported.written[0]!, 'utf8'), a);
    const m = await mount(plainRef, join(tmp, 'root-imported'), elsewhere);
    await waitFor('prefetch', async () => (await m.lines()).some((l) => l.msg === 'prefetch done'));
    const done = (await m.lines()).find((l) => l.msg === 'prefetch done') as { source: string; chunks: number };
    assert.equal(done.source, 'trace');
    assert.equal(done.chunks, JSON.parse(a).accesses.length);
    await m.stop();
    const show = await dedupctl(['trace', 'show', '--trace-dir', elsewhere, `${proxy!.host}/lazy/app:1`]);
    assert.match(show.stdout, /lib\/mod00\.py/);
    await dedupctlJson(['trace', 'rm', '--trace-dir', elsewhere, `${proxy!.host}/lazy/app:1`]);
    assert.deepEqual(await dedupctlJson(['trace', 'ls', '--trace-dir', elsewhere]), []);
    // Through the registry: pushed next to the image, pulled on a node that never ran it.
    const pushed = await dedupctlJson<{ tag: string }>(['trace', 'push', '--plain-http', '--trace-dir', join(tmp, 'traces'), `${proxy!.host}/lazy/app:1`]);
    assert.match(pushed.tag, /^sha256-[0-9a-f]{64}\.dedup-trace$/);
    const pulledDir = join(tmp, 'traces-pulled');
    const pulled = await dedupctlJson<{ written: string[] }>(['trace', 'pull', '--plain-http', '--trace-dir', pulledDir, `${proxy!.host}/lazy/app:1`]);
    assert.equal(await readFile(pulled.written[0]!, 'utf8'), a);
    const none = await dedupctl(['trace', 'pull', '--plain-http', '--trace-dir', pulledDir, `${proxy!.host}/lazy/app:landmark`]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /a trace for .*lazy\/app:landmark \(tag sha256-[0-9a-f]{64}\.dedup-trace\) not found/);
  });

  it('ignores bad traces with a warning that names them, and still mounts', async () => {
    const client = new RegistryClient({ plainHttp: true });
    const img = new RegistryImage(client, plainRef);
    const resolved = await img.resolve({ os: 'linux', architecture: 'amd64' });
    const layer = resolved.manifest.layers[0]!.digest;
    await client.close();
    const good = JSON.parse(await readFile(tracePath(join(tmp, 'traces'), resolved.manifestDigest, layer), 'utf8'));
    const cases: [string, string, RegExp][] = [
      ['truncated', JSON.stringify(good).slice(0, 100), /ignoring a bad trace/],
      ['wrong-layer', JSON.stringify({ ...good, layer: 'sha256:' + 'e'.repeat(64) }), /ignoring a bad trace/],
      ['unknown-paths', JSON.stringify({ ...good, accesses: [...good.accesses, { path: 'no/such/file', offset: 0, length: 1, chunkDigest: '', ms: 1 }] }), /does not have/],
    ];
    for (const [name, text, re] of cases) {
      const dir = join(tmp, `traces-${name}`);
      const file = tracePath(dir, resolved.manifestDigest, layer);
      await mkdir(join(file, '..'), { recursive: true });
      await writeFile(file, text);
      const m = await mount(plainRef, join(tmp, `root-${name}`), dir);
      await waitFor('a warning', async () => (await m.lines()).some((l) => re.test(String(l.msg)) && String(l.trace) === file));
      assert.equal((await readFile(join(m.dir, MODULES[0]!), 'utf8')).slice(0, 10), '# module 0');
      await m.stop();
    }
    const bad = join(tmp, 'bad-bundle.json');
    await writeFile(bad, '{"kind":"dedup-snapshotter/trace-bundle","traces":[]}');
    const r = await dedupctl(['trace', 'import', '--trace-dir', join(tmp, 'x'), bad]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad-bundle.json: bundle holds no traces \[ERR_MALFORMED_TRACE\]/);
    assert.equal(existsSync(join(tmp, 'x')), false);
  });

  it('fetches the whole image in the background when asked; status shows it complete', async () => {
    const root = join(tmp, 'root-background');
    const m = await mount(plainRef, root, join(tmp, 'no-traces-bg'));
    await m.stop();
    const dir = join(tmp, 'mnt-bg');
    const config = await writeTestConfig(join(tmp, 'config-background.json'));
    await dedupctlJson(['mount', '--background', '--root', root, '--config', config, '--plain-http', plainRef, dir]);
    try {
      await waitFor('background fetch', async () => {
        const st = await dedupctlJson<{ dir: string; layers: { complete: boolean }[] }[]>(['status', '--root', root]);
        return st.find((s) => s.dir === dir)?.layers.every((l) => l.complete) ?? false;
      }, 60_000);
    } finally {
      const r = await dedupctl(['umount', '--root', root, dir]);
      assert.equal(r.code, 0, r.stderr);
    }
  });

  it('convert --prefetch-trace puts the traced files first, before the landmark', async () => {
    const bundleFile = join(tmp, 'bundle.json');
    const out = `oci:${join(tmp, 'traced-layout')}:t`;
    await dedupctlJson(['convert', '--plain-http', '--prefetch-trace', bundleFile, `${registry!.host}/src/app:1`, out]);
    const { OciLayout } = await import('../src/image/oci-layout.js');
    const img = new OciLayout(out);
    const layer = await RemoteLayer.open(img, (await img.resolve({ os: 'linux', architecture: 'amd64' })).manifest.layers[0]!);
    assert.equal(layer.toc.prefetchLandmark, true);
    const traced = new Set((JSON.parse(await readFile(bundleFile, 'utf8')).traces[0].accesses as { path: string }[]).map((a) => a.path));
    assert.deepEqual(new Set(layer.toc.prefetchFiles), traced);
  });
});
