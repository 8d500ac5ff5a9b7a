// The main job (npm run demo): a local registry, two generated images that share a base, converted
// to eStargz, read without downloading (TOC only), mounted lazily and run with chroot, ingested
// into the deduplicating chunk store through a byte-counting proxy, then pulled lazily and run by
// containerd through dedup-snapshotter, with a look at its admin API; then the snapshotter is
// killed and restarted and the layer server upgraded, and a new container still starts; last a
// running container is committed to a new image.

import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CodecPool } from '../src/codec/codec-pool.js';
import { formatBytes } from '../src/startup/common.js';
import { convertImage } from '../src/convert/image-converter.js';
import { ingestImage } from '../src/fetch/ingest.js';
import { mountTable } from '../src/system-mounts.js';
import { RemoteLayer } from '../src/fetch/remote-layer.js';
import { RegistryImage } from '../src/image/registry-image.js';
import { RegistryClient } from '../src/registry/client.js';
import { ChunkStore } from '../src/store/chunk-store.js';
import { dedupctl } from '../test/fixtures/cli.js';
import { startContainerd, unmountUnder, type TestContainerd } from '../test/fixtures/containerd.js';
import { run } from '../test/fixtures/process.js';
import { erofsModeSkipReason } from '../test/fixtures/erofs.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage, type FileSpec } from '../test/fixtures/images.js';
import { startProxy, type TestProxy } from '../test/fixtures/proxy.js';
import { startRegistry, type TestRegistry } from '../test/fixtures/registry.js';
import { startSnapshotter, type TestSnapshotter } from '../test/fixtures/snapshotter.js';

const MiB = 1024 * 1024;
const AMD64 = { os: 'linux', architecture: 'amd64' };
const say = (s = ''): boolean => process.stdout.write(s + '\n');

async function main(): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'dedup-demo-'));
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let containerd: TestContainerd | undefined;
  let snapshotter: TestSnapshotter | undefined;
  const client = new RegistryClient({ plainHttp: true });
  const pool = new CodecPool();
  let store: ChunkStore | undefined;
  let mountedAt: string | undefined;
  try {
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host);
    say(`== registry: docker-registry on ${registry.host}, byte-counting proxy on ${proxy.host}`);

    const base = await tarOf([...(await busyboxEntries()), { name: 'usr/', type: 'directory' }, { name: 'usr/lib/', type: 'directory' },
      { name: 'usr/lib/libbig.so', type: 'file', content: randomBytes(48 * MiB) },
      ...Array.from({ length: 200 }, (_, i): FileSpec => ({ name: `usr/lib/mod${i}.py`, type: 'file', content: Buffer.from(`# module ${i}\n`.repeat(200)) }))]);
    const model = randomBytes(12 * MiB);
    for (const [name, extra] of [['web', 4], ['worker', 6]] as const) {
      const top = await tarOf([{ name: 'app/', type: 'directory' }, { name: 'app/model.bin', type: 'file', content: model },
        { name: `app/${name}`, type: 'file', mode: 0o755, content: randomBytes(extra * MiB) },
        { name: 'etc/', type: 'directory' }, { name: 'etc/motd', type: 'file', content: Buffer.from(`hello from the ${name} image\n`) }]);
      await writeOciImage(join(tmp, name), name, [{ tar: base, compression: 'gzip' }, { tar: top, compression: 'gzip' }]);
      await pushOci(join(tmp, name), name, `${registry.host}/demo/${name}:plain`);
    }
    say('== pushed demo/web:plain and demo/worker:plain (gzip layers; one base layer shared, and a 12 MiB file in both top layers)');

    say('\n== dedupctl convert: gzip layers -> eStargz (4 MiB chunks, compressed in parallel worker threads)');
    for (const name of ['web', 'worker']) {
      const r = await convertImage(new RegistryImage(client, `${registry.host}/demo/${name}:plain`), new RegistryImage(client, `${registry.host}/demo/${name}:estargz`),
        { platform: AMD64, chunkSize: 4 * MiB, compressionLevel: 6, pool });
      say(`   demo/${name}:estargz  ${r.layers.length} layers, ${formatBytes(r.inputBytes)} in ${r.seconds.toFixed(2)} s (${(r.inputBytes / MiB / r.seconds).toFixed(0)} MiB/s), manifest ${r.manifestDigest.slice(0, 19)}…`);
    }

    say('\n== dedupctl toc: the table of contents, read with one or two small Range requests per layer');
    proxy.reset();
    const lazy = new RegistryImage(client, `${proxy.host}/demo/web:estargz`);
    const resolved = await lazy.resolve(AMD64);
    for (const d of resolved.manifest.layers) {
      const layer = await RemoteLayer.open(lazy, d);
      say(`   layer ${d.digest.slice(7, 19)}: ${formatBytes(d.size)}, ${layer.toc.nodes.size} entries, ${layer.toc.chunkCount} chunks`);
    }
    say(`   fetched ${formatBytes(proxy.stats.blobBytes)} of ${formatBytes(resolved.manifest.layers.reduce((n, l) => n + l.size, 0))} to read them`);

    say('\n== dedupctl mount: the root filesystem, lazily (one FUSE mount per layer, overlayfs on top), then chroot into it');
    const root = join(tmp, 'root');
    const rootfs = join(tmp, 'rootfs');
    proxy.reset();
    const started = Date.now();
    const mounted = await dedupctl(['mount', '--root', root, '--plain-http', `${proxy.host}/demo/web:estargz`, rootfs]);
    if (mounted.code !== 0) throw new Error(`dedupctl mount: ${mounted.stderr}`);
    mountedAt = rootfs;
    const chroot = await run('chroot', [rootfs, '/bin/sh', '-c', 'cat /etc/motd; echo "$(ls /usr/lib | wc -l) files in /usr/lib"; head -c 64 /usr/lib/mod7.py']);
    say(`   mounted and ran in ${Date.now() - started} ms; chroot printed:`);
    for (const line of chroot.stdout.trim().split('\n')) say(`     ${line}`);
    say(`   ${formatBytes(proxy.stats.blobBytes)} fetched of ${formatBytes(resolved.manifest.layers.reduce((n, l) => n + l.size, 0))}: only the TOCs and the chunks those commands read`);
    for (const line of (await dedupctl(['status', '--root', root])).stdout.trim().split('\n')) say(`   ${line}`);
    await dedupctl(['umount', '--root', root, rootfs]);
    mountedAt = undefined;

    say('\n== mount_mode erofs: the same lazy root filesystem served by the kernel, each layer an EROFS image filled on demand through fanotify pre-content events');
    const noErofsMode = await erofsModeSkipReason();
    if (noErofsMode) say(`   skipped: ${noErofsMode}`);
    else {
      const erofsRoot = join(tmp, 'root-erofs');
      const erofsConfig = join(tmp, 'erofs-mode.json');
      await writeFile(erofsConfig, JSON.stringify({ mount_mode: 'erofs' }));
      proxy.reset();
      const m = await dedupctl(['mount', '--root', erofsRoot, '--config', erofsConfig, '--plain-http', `${proxy.host}/demo/web:estargz`, rootfs]);
      if (m.code !== 0) throw new Error(`dedupctl mount (mount_mode erofs): ${m.stderr}`);
      mountedAt = rootfs;
      const out = await run('chroot', [rootfs, '/bin/sh', '-c', 'cat /etc/motd']);
      const kernelMounts = (await mountTable()).filter((e) => e.fstype === 'erofs' && e.target.startsWith(erofsRoot)).length;
      say(`   chroot printed "${out.stdout.trim()}"; ${kernelMounts} EROFS mounts (lookups, stat and readdir never leave the kernel); ${formatBytes(proxy.stats.blobBytes)} fetched`);
      await dedupctl(['umount', '--root', erofsRoot, rootfs]);
      mountedAt = undefined;
    }

    say('\n== dedupctl store ingest: every chunk into the content-addressed store, each distinct chunk once');
    store = await ChunkStore.open(root);
    for (const name of ['web', 'worker']) {
      proxy.reset();
      const r = await ingestImage(new RegistryImage(client, `${proxy.host}/demo/${name}:estargz`), store, pool, { platform: AMD64 });
      say(`   demo/${name}: ${r.chunks} chunks, ${r.fetched} fetched, ${r.alreadyStored} already in the store; ${formatBytes(proxy.stats.blobBytes)} crossed the wire`);
    }
    const st = await store.stats();
    say('\n== dedupctl stats');
    say(`   images ${st.images}, layers ${st.layers}, chunks ${st.chunks}`);
    say(`   logical ${formatBytes(st.logicalBytes)}, stored ${formatBytes(st.storedBytes)}: dedup ratio ${st.dedupRatio.toFixed(2)}x, saved ${formatBytes(st.savedBytes)}`);
    say(`   chunks with ref_count > 1: ${st.sharedChunks}, ${formatBytes(st.sharedBytes)}`);

    say('\n== containerd with dedup-snapshotter: ctr-remote image rpull mounts the eStargz layers lazily, ctr run starts the container');
    const daemonDir = join(tmp, 'daemon');
    await mkdir(daemonDir);
    snapshotter = await startSnapshotter(daemonDir);
    containerd = await startContainerd(tmp, { dedupSocket: snapshotter.socket });
    say(`   dedup-snapshotter on ${snapshotter.socket}, admin API on ${snapshotter.api}; containerd with proxy_plugins.dedup`);
    const lazyRef = `${proxy.host}/demo/worker:estargz`;
    const imageBytes = (await new RegistryImage(client, lazyRef).resolve(AMD64)).manifest.layers.reduce((n, l) => n + l.size, 0);
    proxy.reset();
    const pullStarted = Date.now();
    const pull = await containerd.rpull(lazyRef);
    if (pull.code !== 0) throw new Error(`ctr-remote image rpull: ${pull.stderr}`);
    const ran = await containerd.ctr(['run', '--rm', '--snapshotter', 'dedup', lazyRef, `demo-${process.pid}`, '/bin/sh', '-c', 'cat /etc/motd; ls /usr/lib | wc -l'], 120_000);
    if (ran.code !== 0) throw new Error(`ctr run: ${ran.stderr}`);
    say(`   pulled and ran in ${Date.now() - pullStarted} ms; the container printed:`);
    for (const line of ran.stdout.trim().split('\n')) say(`     ${line}`);
    say(`   ${formatBytes(proxy.stats.blobBytes)} fetched of a ${formatBytes(imageBytes)} image: the layers' TOCs and what the container read`);
    const metrics = (await (await fetch(`${snapshotter.api}/metrics`)).text()).split('\n')
      .filter((l) => /^dedup_(mounts|fetch_bytes_total|fetch_requests_total\{result="ok"\}|store_dedup_ratio) /.test(l));
    say('   GET /metrics (excerpt):');
    for (const line of metrics) say(`     ${line}`);
    const audit = (await (await fetch(`${snapshotter.api}/audit/logs?limit=3`)).json()) as { entries: { time: string; actor: string; action: string; target: string }[] };
    say('   GET /audit/logs?limit=3:');
    for (const e of audit.entries) say(`     ${e.time}  ${e.action}  ${e.actor}  ${e.target}`);

    say('\n== kernel mode: a plain ctr image pull of the gzip image; its layers go into the chunk store and the kernel serves them (EROFS)');
    const plainRef = `${registry.host}/demo/web:plain`;
    const plainPull = await containerd.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', plainRef], 180_000);
    if (plainPull.code !== 0) throw new Error(`ctr image pull: ${plainPull.stderr}`);
    const erofs = (await mountTable()).filter((m) => m.fstype === 'erofs' && m.target.startsWith(snapshotter!.root));
    say(`   ${erofs.length} layers mounted as EROFS, e.g. ${erofs[0]?.target.slice(snapshotter.root.length + 1) ?? '(none)'}`);
    const plainRan = await containerd.ctr(['run', '--rm', '--snapshotter', 'dedup', plainRef, `demo-plain-${process.pid}`, '/bin/cat', '/etc/motd'], 120_000);
    if (plainRan.code !== 0) throw new Error(`ctr run: ${plainRan.stderr}`);
    say(`   the container printed: ${plainRan.stdout.trim()}`);
    const kst = JSON.parse((await dedupctl(['stats', '--root', snapshotter.root, '--json'])).stdout) as { chunks: number; storedBytes: number; logicalBytes: number };
    say(`   the daemon's store: ${kst.chunks} chunks, ${formatBytes(kst.storedBytes)} stored for ${formatBytes(kst.logicalBytes)} of layers`);

    say('\n== dedupctl store publish: the kernel-mode image into a read-only store other hosts mount from (shared_stores)');
    const shared = join(tmp, 'shared-store');
    const published = await dedupctl(['store', 'publish', '--root', snapshotter.root, '--plain-http', '--json', '--to', shared, plainRef]);
    if (published.code !== 0) throw new Error(`dedupctl store publish: ${published.stderr}`);
    const pub = JSON.parse(published.stdout) as { layers: { reused: boolean }[]; bytesWritten: number; seconds: number };
    say(`   ${pub.layers.length} layers published to ${shared.slice(tmp.length + 1)} in ${pub.seconds.toFixed(2)} s (${formatBytes(pub.bytesWritten)} of chunks), each visible only once whole; a daemon with shared_stores: ["${shared.slice(tmp.length + 1)}"] mounts them without a byte from the registry`);

    say('\n== dedupctl index: an unmodified gzip image made lazily pullable without converting it (its digest stays): a gzip index pushed beside it');
    const gzPlain = `${registry.host}/demo/worker:plain`;
    const indexRun = await dedupctl(['index', 'create', '--plain-http', '--root', join(tmp, 'indexer'), '--push', '--json', gzPlain]);
    if (indexRun.code !== 0) throw new Error(`dedupctl index create: ${indexRun.stderr}`);
    const idx = JSON.parse(indexRun.stdout) as { seconds: number; pushed: { tag: string }; layers: { layerSize: number; indexSize: number; checkpoints: number }[] };
    const gzBytes = idx.layers.reduce((n, l) => n + l.layerSize, 0);
    say(`   ${idx.layers.length} layers indexed in ${idx.seconds.toFixed(2)} s: ${formatBytes(idx.layers.reduce((n, l) => n + l.indexSize, 0))} of index `
      + `(${idx.layers.reduce((n, l) => n + l.checkpoints, 0)} checkpoints) for ${formatBytes(gzBytes)} of layers; pushed as ${idx.pushed.tag.slice(0, 20)}…`);
    proxy.reset();
    const gzRef = `${proxy.host}/demo/worker:plain`;
    const gzPull = await containerd.rpull(gzRef);
    if (gzPull.code !== 0) throw new Error(`ctr-remote image rpull: ${gzPull.stderr}`);
    const gzRan = await containerd.ctr(['run', '--rm', '--snapshotter', 'dedup', gzRef, `demo-gz-${process.pid}`, '/bin/cat', '/etc/motd'], 120_000);
    if (gzRan.code !== 0) throw new Error(`ctr run: ${gzRan.stderr}`);
    say(`   rpull + ctr run of the gzip image: the container printed "${gzRan.stdout.trim()}"; ${formatBytes(proxy.stats.blobBytes)} fetched (indexes included) of ${formatBytes(gzBytes)}`);

    say('\n== restart: the lazy layers belong to the layer server (dedup-fused), so running containers keep reading');
    const fusedArgs = ['--root', snapshotter.root, '--config', snapshotter.config];
    await snapshotter.kill9();
    say(`   dedup-snapshotter killed (SIGKILL); dedup-fused ${snapshotter.fusedPid} still serves the mounts`);
    const restarted = await startSnapshotter(daemonDir);
    snapshotter = restarted;
    say(`   restarted: ${(await readFile(restarted.log, 'utf8')).split('\n').filter((l) => l.includes('remote snapshots attached')).map((l) => {
      const o = JSON.parse(l) as { remote: number; attached: number };
      return `${o.attached} of ${o.remote} remote snapshots re-attached`;
    }).pop()}`);
    const up = JSON.parse((await dedupctl(['fused', 'upgrade', ...fusedArgs, '--json'])).stdout) as { from: number; to: number; mounts: number };
    restarted.fusedPid = up.to;
    say(`   dedupctl fused upgrade: pid ${up.from} -> ${up.to}, ${up.mounts} layers handed over without unmounting`);
    const again = await containerd.ctr(['run', '--rm', '--snapshotter', 'dedup', lazyRef, `demo-again-${process.pid}`, '/bin/cat', '/etc/motd'], 120_000);
    if (again.code !== 0) throw new Error(`ctr run after the restart: ${again.stderr}`);
    say(`   a new container after both: ${again.stdout.trim()}`);

    say('\n== dedupctl commit: a container that keeps writing becomes a new image; it is frozen only for the final copy');
    const writer = await containerd.ctr(['run', '-d', '--snapshotter', 'dedup', lazyRef, 'demo-writer', '/bin/sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i >> /log; done']);
    if (writer.code !== 0) throw new Error(`ctr run -d: ${writer.stderr}`);
    await new Promise((r) => setTimeout(r, 1000));
    proxy.reset();
    const committed = await dedupctl(['commit', '--root', snapshotter.root, '--config', snapshotter.config, '--address', containerd.socket, '--plain-http', '--json', 'demo-writer', `${proxy.host}/demo/worker:committed`]);
    if (committed.code !== 0) throw new Error(`dedupctl commit: ${committed.stderr}`);
    const c = JSON.parse(committed.stdout) as { pause_ms: number; manifest_digest: string; layer: { size: number }; base_layers: { transfer: string }[] };
    say(`   paused ${c.pause_ms.toFixed(2)} ms; new eStargz layer ${formatBytes(c.layer.size)}; base layers ${c.base_layers.map((l) => l.transfer).join(', ')}, ${formatBytes(proxy.stats.blobBytes)} of them fetched; manifest ${c.manifest_digest.slice(0, 19)}…`);

    say('\n== dedupctl pool: frozen sandboxes of the image, handed out in milliseconds');
    const api = ['--api', snapshotter.api.replace('http://', ''), '--json'];
    const poolCmd = async (args: string[]): Promise<unknown> => {
      const r = await dedupctl(['pool', args[0]!, ...api, ...args.slice(1)], { timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`dedupctl pool ${args[0]}: ${r.stderr}`);
      return JSON.parse(r.stdout);
    };
    const created = (await poolCmd(['create', 'demo', '--image', lazyRef, '--min', '1', '--max', '2', '--initial', '2', '--ready', '/ready', '--',
      '/bin/busybox', 'sh', '-c', 'busybox touch /ready; exec busybox sleep 100000'])) as { frozen: number };
    const got = (await poolCmd(['acquire', 'demo', '--timeout', '10000'])) as { id: string; pid: number; ms: number };
    say(`   pool "demo": ${created.frozen} frozen sandboxes; acquire handed out ${got.id} (pid ${got.pid}) in ${got.ms.toFixed(2)} ms`);
    await poolCmd(['release', 'demo', got.id]);
    await poolCmd(['rm', 'demo']);
    say('   released and removed: no sandbox, cgroup or mount left');
  } finally {
    if (mountedAt) await dedupctl(['umount', '--root', join(tmp, 'root'), mountedAt]);
    await store?.close();
    await pool.close();
    await client.close();
    await containerd?.stop();
    await snapshotter?.stop();
    await unmountUnder(tmp);
    await proxy?.stop();
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
