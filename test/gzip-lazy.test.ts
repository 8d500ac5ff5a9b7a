// Lazy pulls of unmodified gzip images through their gzip index (docs/gzip-index.md): real
// containerd, registry, FUSE and runc. The image is not converted (its digest is what was pushed);
// `dedupctl index create --push` put its index beside it; ctr-remote rpull then mounts its layers
// lazily, each chunk a span between checkpoints, verified. The root filesystem is the one
// containerd's overlayfs snapshotter shows, and once every chunk is in, each layer is an EROFS
// image (kernel mode) showing it too. A broken index means a full pull, said so; a corrupted span
// is EIO for the file in it, and the rest still reads.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { kernelModeUnsupported } from '../src/kernel/kernel-layers.js';
import { mountTable, unmount } from '../src/system-mounts.js';
import { GZIP_INDEX_ARTIFACT_TYPE, INDEXED_LAYER_ANNOTATION, readIndexBlob, type ImageIndexRecord } from '../src/convert/gzip-indexer.js';
import { pushArtifact } from '../src/image/artifacts.js';
import { GZIP_INDEX_MEDIA_TYPE, decodeGzipIndex } from '../src/gzip-index/format.js';
import { RegistryImage } from '../src/image/registry-image.js';
import { RegistryClient } from '../src/registry/client.js';
import { dedupctlJson } from './fixtures/cli.js';
import { mountView, startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { comparableTree, walkInodes, type SeenInode } from './fixtures/erofs.js';
import { busyboxEntries, pushOci, richLayers, sha256, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged } from './fixtures/log.js';
import { layerModes, lazyMode, testMountModeSkip } from './fixtures/mount-mode.js';
import { waitFor } from './fixtures/process.js';
import { startProxy, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { auditedPulls, startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';
import { teardownStack } from './fixtures/teardown.js';

const MiB = 1024 * 1024;
const PLATFORM = { os: 'linux', architecture: 'amd64' };
/** The digest as sha256sum prints it. */
const hex = (b: Buffer): string => sha256(b).slice('sha256:'.length);

describe('lazy pulls of unmodified gzip images through their gzip index', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let snap: TestSnapshotter | undefined;
  let ctd: TestContainerd | undefined;
  /** Range requests from this compressed offset on come back with their bytes flipped. */
  let corruptFrom = Infinity;
  let n = 0;
  /** Each image's big file: its own, so that no image finds another's chunks in the store. */
  const bigs = new Map<string, Buffer>();
  const text = Buffer.from(Array.from({ length: 40_000 }, (_, i) => `line ${i}: the quick brown fox\n`).join(''));

  const files = (tag: string): FileSpec[] => [
    { name: 'hello', type: 'file', content: Buffer.from(`hello from ${tag}\n`) },
    { name: 'data/', type: 'directory' },
    { name: 'data/big', type: 'file', content: bigs.set(tag, bigs.get(tag) ?? randomBytes(8 * MiB)).get(tag)! },
    { name: 'data/text', type: 'file', content: text },
    { name: 'data/setuid', type: 'file', mode: 0o4755, uid: 1234, gid: 5678, content: Buffer.from('#!/bin/sh\necho suid\n') },
    { name: 'data/link', type: 'symlink', linkname: '/hello' },
  ];
  const push = async (tag: string): Promise<string> => {
    await writeOciImage(join(tmp, tag), tag, [{ tar: await tarOf([...await busyboxEntries(), ...files(tag)]), compression: 'gzip' }]);
    await pushOci(join(tmp, tag), tag, `${registry!.host}/plain/${tag}:1`);
    return `${proxy!.host}/plain/${tag}:1`;
  };
  const index = (tag: string): Promise<ImageIndexRecord> =>
    dedupctlJson(['index', 'create', '--plain-http', '--root', join(tmp, 'indexer'), '--push', '--spacing', '1M', `${registry!.host}/plain/${tag}:1`]);
  const run = (ref: string, script: string): Promise<{ code: number; stdout: string; stderr: string }> =>
    ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, `g${n++}`, '/bin/sh', '-c', script], 120_000);
  const pulls = (image: string): { lazy?: boolean; reason?: string }[] => auditedPulls(snap!.root, image);
  /** Mounted views, unmounted before the daemons stop. */
  const views: string[] = [];
  /** The rich image (richLayers), its top snapshot (the chain id of its two layers), and what containerd's overlayfs snapshotter shows of it. */
  let rich: { ref: string; top: string; layers: string[]; overlayfs: Map<string, SeenInode> } | undefined;
  /** A view of snapshot `top` of `snapshotter`, walked; the view's lowerdirs too. */
  const viewOf = async (snapshotter: string, top: string): Promise<{ tree: Map<string, SeenInode>; lowers: string[] }> => {
    const dir = join(tmp, `view-${n++}`);
    await mountView(ctd!, snapshotter, `view-${n}`, top, dir);
    views.push(dir);
    const m = (await mountTable()).find((e) => e.target === dir);
    return { tree: await walkInodes(dir), lowers: /lowerdir=([^,]+)/.exec(m?.options ?? '')?.[1]?.split(':') ?? [] };
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-gzip-lazy-test-'));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host, { fault: (req) => (Number(/bytes=(\d+)-/.exec(String(req.headers.range ?? ''))?.[1] ?? -1) >= corruptFrom ? 'corrupt' : 'ok') });
    snap = await startSnapshotter(tmp);
    ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
  });

  after(async () => {
    for (const v of views) await unmount(v).catch(() => undefined);
    await teardownStack(tmp, { ctd, snap, servers: [proxy, registry] });
  });

  it('pulls and runs an unmodified gzip image lazily: a small part fetched, every file right', async () => {
    const ref = await push('app');
    const record = await index('app');
    assert.equal(record.layers.length, 1);
    proxy!.reset();
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const hello = await run(ref, 'cat /hello');
    assert.equal(hello.code, 0, hello.stderr);
    assert.equal(hello.stdout, 'hello from app\n');
    assert.ok(pulls(ref).length === 1 && pulls(ref)[0]!.lazy === true, JSON.stringify(pulls(ref)));
    assert.ok((await logged(snap!.log, 'remote snapshot mounted lazily')).length > 0, 'a layer was mounted lazily');
    const layer = record.layers[0]!;
    const mode = (await layerModes(snap!.fusedLog)).find((l) => l.layer === layer.layer);
    assert.equal(mode?.mode, lazyMode, `the layer in the mount mode: ${JSON.stringify(mode)}`);
    const fetched = proxy!.stats.blobRanges.filter((r) => r.digest === layer.layer).reduce((sum, r) => sum + r.end - r.start, 0);
    assert.ok(fetched < layer.layerSize / 4, `${fetched} of the layer's ${layer.layerSize} bytes fetched to print a small file`);
    assert.ok(proxy!.stats.blobRanges.some((r) => r.digest === layer.index && r.end - r.start === layer.indexSize), 'the index came from the registry');

    const all = await run(ref, 'sha256sum /data/big /data/text; stat -c "%a %u %g" /data/setuid; /data/setuid; readlink /data/link');
    assert.equal(all.code, 0, all.stderr);
    assert.equal(all.stdout, `${hex(bigs.get('app')!)}  /data/big\n${hex(text)}  /data/text\n4755 1234 5678\nsuid\n/hello\n`);
  });

  it('a layer of many small files, held whole at mount, serves reads of neighbouring files right out of what earlier reads inflated', async () => {
    // Enough small files for prefetch.small_layer_bytes, and too big for whole_layer_bytes (which
    // would store all of it at mount): the layer comes whole and each read inflates its span only
    // to the mark past its chunk, the reads after it taking their chunks from those bytes.
    const library = Array.from({ length: 600 }, (_, i): FileSpec => ({ name: `lib/m${String(i).padStart(3, '0')}.py`, type: 'file', content: Buffer.from(`# ${i}\n` + randomBytes(3000).toString('base64')) }));
    const tag = 'library';
    await writeOciImage(join(tmp, tag), tag, [{ tar: await tarOf([...await busyboxEntries(), { name: 'lib/', type: 'directory' }, ...library,
      { name: 'opt/', type: 'directory' }, { name: 'opt/model.bin', type: 'file', content: randomBytes(6 * MiB) }]), compression: 'gzip' }]);
    await pushOci(join(tmp, tag), tag, `${registry!.host}/plain/${tag}:1`);
    await index(tag);
    const ref = `${proxy!.host}/plain/${tag}:1`;
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const read = library.filter((_, i) => i % 3 === 0);
    const r = await run(ref, `cat ${read.map((f) => `/${f.name}`).join(' ')} | sha256sum`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${hex(Buffer.concat(read.map((f) => f.content!)))}  -\n`);
    assert.ok((await logged(snap!.fusedLog, 'holding the whole layer in memory for start-up')).length > 0, 'the layer was held whole');
  });

  it('a broken index (one for another layer) is refused: the image is pulled in full, with reason bad_gzip_index', async () => {
    const ref = await push('other');
    const app = (await dedupctlJson<ImageIndexRecord[]>(['index', 'show', '--root', join(tmp, 'indexer'), `${registry!.host}/plain/app:1`]))[0]!;
    const client = new RegistryClient({ plainHttp: true });
    try {
      const image = new RegistryImage(client, `${registry!.host}/plain/other:1`);
      const resolved = await image.resolve(PLATFORM);
      await pushArtifact(client, image, { mediaType: resolved.manifestMediaType, digest: resolved.manifestDigest, size: resolved.manifestBytes.length },
        GZIP_INDEX_ARTIFACT_TYPE, [{ mediaType: GZIP_INDEX_MEDIA_TYPE, bytes: await readIndexBlob(join(tmp, 'indexer'), app.layers[0]!.index),
          annotations: { [INDEXED_LAYER_ANNOTATION]: resolved.manifest.layers[0]!.digest } }], 'dedup-gzip-index');
    } finally {
      await client.close();
    }
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const r = await run(ref, 'cat /hello');
    assert.equal(r.stdout, 'hello from other\n', r.stderr);
    assert.ok(pulls(ref).length >= 1 && pulls(ref).every((p) => p.lazy === false && p.reason === 'bad_gzip_index'), JSON.stringify(pulls(ref)));
    assert.ok((await logged(snap!.log, 'not mounted lazily; containerd downloads and unpacks the layer', { reason: 'bad_gzip_index', err: /malformed gzip index .* is for layer/ })).length > 0, 'the index for another layer is logged');
  });

  it('a corrupted span is EIO for the file in it; files elsewhere in the layer still read', async () => {
    const ref = await push('rotten');
    const record = await index('rotten');
    const { toc } = decodeGzipIndex(await readIndexBlob(join(tmp, 'indexer'), record.layers[0]!.index),
      { digest: record.layers[0]!.layer, size: record.layers[0]!.layerSize }, 'rotten index');
    const chunks = toc.nodes.get('data/big')!.chunks;
    corruptFrom = chunks[Math.floor(chunks.length / 2)]!.offset; // the second half of data/big, past every small file before it
    try {
      const pull = await ctd!.rpull(ref);
      assert.equal(pull.code, 0, pull.stderr);
      const ok = await run(ref, 'cat /hello; head -c 100000 /data/big | wc -c');
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout, 'hello from rotten\n100000\n');
      const bad = await run(ref, 'cat /data/big > /dev/null');
      assert.notEqual(bad.code, 0);
      assert.match(bad.stdout + bad.stderr, /Input\/output error/);
    } finally {
      corruptFrom = Infinity;
    }
  });
  it('shows the same tree as containerd\'s overlayfs snapshotter: types, modes, owners, sizes, contents, links, xattrs, whiteouts', async () => {
    const layers = await richLayers(9 * MiB);
    const tars = [await tarOf(layers.base), await tarOf(layers.upper)];
    await writeOciImage(join(tmp, 'rich'), 'rich', tars.map((tar) => ({ tar, compression: 'gzip' as const })));
    await pushOci(join(tmp, 'rich'), 'rich', `${registry!.host}/plain/rich:1`);
    const record = await index('rich');
    assert.equal(record.layers.length, 2);
    const ref = `${proxy!.host}/plain/rich:1`;
    const pull = await ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    assert.ok(pulls(ref).length === 2 && pulls(ref).every((p) => p.lazy === true), JSON.stringify(pulls(ref)));
    const full = await ctd!.ctr(['image', 'pull', '--plain-http', ref], 180_000);
    assert.equal(full.code, 0, full.stderr);
    const top = sha256(Buffer.from(`${sha256(tars[0]!)} ${sha256(tars[1]!)}`));
    const overlayfs = (await viewOf('overlayfs', top)).tree;
    // Reading every file of the lazy view fetches every chunk of both layers.
    const lazy = await viewOf('dedup', top);
    // Each lowerdir is the layer's FUSE mount, or its EROFS image where the layer is complete
    // already (a layer this small is fetched whole at mount: prefetch.whole_layer_bytes).
    assert.ok(lazy.lowers.length === 2 && lazy.lowers.every((d) => d.endsWith('/fs') || d.endsWith('/erofs')), `lazy lowerdirs: ${lazy.lowers.join(':')}`);
    assert.ok(lazy.tree.has('opq/c') && !lazy.tree.has('opq/a') && !lazy.tree.has('del/gone') && lazy.tree.has('del/kept'), 'whiteouts and opaque directories applied');
    assert.equal(lazy.tree.get('data/hard')!.nlink, 2);
    assert.ok(Object.keys(lazy.tree.get('data/xattr')!.xattrs).length === 2);
    assert.deepEqual(comparableTree(lazy.tree), comparableTree(overlayfs));
    rich = { ref, top, layers: record.layers.map((l) => l.layer), overlayfs };
  });

  it('an indexed layer, once all its chunks are in, is an EROFS image for new snapshots, showing the same tree', { skip: kernelModeUnsupported() }, async (t) => {
    if (!rich) return t.skip('the tree test before did not get this far');
    // The layer's TOC comes from its index (the local one, or the artifact), not from the blob.
    const served = async (): Promise<string[]> => (await logged(snap!.log, 'lazy layer complete; new snapshots get its EROFS image'))
      .flatMap((r) => rich!.layers.filter((d) => r.layer === d));
    await waitFor('both layers of the rich image to be served by EROFS', async () => new Set(await served()).size === 2, 60_000);
    const after = await viewOf('dedup', rich.top);
    assert.ok(after.lowers.length === 2 && after.lowers.every((d) => d.endsWith('/erofs')), `lowerdirs after the switch: ${after.lowers.join(':')}`);
    assert.deepEqual(comparableTree(after.tree), comparableTree(rich.overlayfs));
    const r = await run(rich.ref, 'cat /etc/hostname; ls /opq; /data/setuid');
    assert.equal(r.stdout, 'rich-upper\nc\nsuid\n', r.stderr);
  });
});
