// Conversion end to end, against a real registry and a real containerd: our eStargz round-trips
// the source tree, reads eStargz made by ctr-remote, and runs under plain containerd.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { CodecPool } from '../src/codec/codec-pool.js';
import { convertImage } from '../src/convert/image-converter.js';
import { RemoteLayer } from '../src/fetch/remote-layer.js';
import { OciLayout } from '../src/image/oci-layout.js';
import type { ImageSource } from '../src/image/source.js';
import { RegistryImage } from '../src/image/registry-image.js';
import { RegistryClient } from '../src/registry/client.js';
import { TOC_DIGEST_ANNOTATION } from '../src/estargz/toc.js';
import { dedupctl, dedupctlJson } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { pushOci, richLayers, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { assertLayerMatches } from './fixtures/verify.js';

const AMD64 = { os: 'linux', architecture: 'amd64' };
const BIG = 50 * 1024 * 1024 + 12345;

describe('convert', () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let containerd: TestContainerd | undefined;
  let client: RegistryClient;
  let layers: { base: FileSpec[]; upper: FileSpec[] };
  let src: string;
  let dst: string;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-convert-test-'));
    registry = await startRegistry(tmp);
    containerd = await startContainerd(tmp);
    client = new RegistryClient({ plainHttp: true });
    layers = await richLayers(BIG);
    await writeOciImage(join(tmp, 'src-layout'), 'rich', [
      { tar: await tarOf(layers.base), compression: 'gzip' },
      { tar: await tarOf(layers.upper), compression: 'none' },
    ]);
    src = `${registry.host}/test/rich:src`;
    dst = `${registry.host}/test/rich:estargz`;
    await pushOci(join(tmp, 'src-layout'), 'rich', src);
  });

  after(async () => {
    await client?.close();
    await containerd?.stop();
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('round-trips: our reader lists exactly the source tree and every file reassembles from its chunks', async () => {
    const report = await dedupctlJson<{ layers: { kept: boolean; tocDigest: string }[]; manifestDigest: string }>(
      ['convert', '--plain-http', '--chunk-size', '1M', src, dst]);
    assert.equal(report.layers.length, 2);
    assert.ok(report.layers.every((l) => !l.kept));
    const img = new RegistryImage(client, dst);
    const resolved = await img.resolve(AMD64);
    assert.equal(resolved.manifestDigest, report.manifestDigest);
    const [base, upper] = await Promise.all(resolved.manifest.layers.map((d) => RemoteLayer.open(img, d)));
    assert.equal(resolved.manifest.layers[0]!.annotations?.[TOC_DIGEST_ANNOTATION], base!.tocDigest);
    assert.ok(base!.toc.nodes.get('data/big')!.chunks.length >= 50, 'the large file is split into 1 MiB chunks');
    await assertLayerMatches(base!, layers.base);
    await assertLayerMatches(upper!, layers.upper);
  });

  it('is deterministic: converting the same source twice gives the same layer digests', async () => {
    const a = await dedupctlJson<{ layers: { digest: string }[] }>(['convert', '--plain-http', '--chunk-size', '1M', src, `${registry!.host}/test/rich:again`]);
    const b = await new RegistryImage(client, dst).resolve(AMD64);
    assert.deepEqual(a.layers.map((l) => l.digest), b.manifest.layers.map((l) => l.digest));
  });

  it('plain containerd pulls and runs the converted image with overlayfs; files are identical to the source', async () => {
    const pull = await containerd!.ctr(['image', 'pull', '--plain-http', dst]);
    assert.equal(pull.code, 0, pull.stderr);
    const script = [
      'sha256sum /data/big /data/text /etc/hostname /opq/c /data/upper-only /bin/busybox',
      'echo opq: $(ls -A /opq)', 'echo del: $(ls -A /del)',
      'stat -c "%n %a %u %g %h %F" /data/setuid /data/secret /data/readonly /tmp /private /data/small /data/fifo /data/null',
      'readlink /bin/abs', `cat /deep/${'d'.repeat(60)}/${'e'.repeat(60)}/${'f'.repeat(80)}.txt`,
    ].join('; ');
    const r = await containerd!.ctr(['run', '--rm', dst, `rich-${process.pid}`, '/bin/sh', '-c', script], 120_000);
    assert.equal(r.code, 0, r.stderr);
    const file = (name: string, specs: FileSpec[]): Buffer => specs.find((s) => s.name === name)!.content!;
    const sum = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    const busybox = await readFile('/bin/busybox');
    const expected = [
      `${sum(file('data/big', layers.base))}  /data/big`,
      `${sum(file('data/text', layers.base))}  /data/text`,
      `${sum(file('etc/hostname', layers.upper))}  /etc/hostname`,
      `${sum(file('opq/c', layers.upper))}  /opq/c`,
      `${sum(file('data/upper-only', layers.upper))}  /data/upper-only`,
      `${sum(busybox)}  /bin/busybox`,
      'opq: c', 'del: kept',
      '/data/setuid 4755 1234 5678 1 regular file', '/data/secret 600 1000 1000 1 regular file',
      '/data/readonly 400 0 0 1 regular file', '/tmp 1777 0 0 2 directory', '/private 700 1234 1234 2 directory',
      '/data/small 644 0 0 2 regular file', '/data/fifo 644 0 0 1 fifo', '/data/null 666 0 0 1 character special file',
      '/bin/busybox', 'long path',
    ];
    assert.deepEqual(r.stdout.trim().split('\n'), expected);
  });

  it('reads an image converted by a third-party tool (ctr-remote image convert --estargz --oci)', async () => {
    const third = `${registry!.host}/test/rich:ctr-remote`;
    const ctd = containerd!;
    assert.equal((await ctd.ctr(['image', 'pull', '--plain-http', src])).code, 0);
    const conv = await runCtrRemote(ctd.socket, ['image', 'convert', '--estargz', '--oci', src, third]);
    assert.equal(conv.code, 0, conv.stderr);
    const push = await ctd.ctr(['image', 'push', '--plain-http', third]);
    assert.equal(push.code, 0, push.stderr);
    const img = new RegistryImage(client, third);
    const resolved = await img.resolve(AMD64);
    const [base, upper] = await Promise.all(resolved.manifest.layers.map((d) => RemoteLayer.open(img, d)));
    await assertLayerMatches(base!, layers.base);
    await assertLayerMatches(upper!, layers.upper);
    // Our TOC tool lists it too.
    const toc = await dedupctlJson<{ layers: { entries: { path: string }[] }[] }>(['toc', '--plain-http', third]);
    assert.ok(toc.layers[0]!.entries.some((e) => e.path === 'data/big'));
  });

  it('converts an uncompressed layer whose blob is all there at once: none of it is lost before its reader starts', async () => {
    const plain: FileSpec[] = [{ name: 'q/', type: 'directory' }, { name: 'q/file', type: 'file', content: Buffer.from('at once') }];
    await writeOciImage(join(tmp, 'eager-layout'), 'v1', [{ tar: await tarOf(plain), compression: 'none' }]);
    const layout = new OciLayout(`oci:${join(tmp, 'eager-layout')}:v1`);
    // Every blob as a stream already holding all of its bytes (a fast disk, a small layer).
    const eager: ImageSource = {
      name: layout.name, location: undefined, resolve: (p) => layout.resolve(p), readBlobRange: (d, a, b) => layout.readBlobRange(d, a, b),
      blobStream: (desc) => {
        const s = new PassThrough();
        s.end(readFileSync(layout.blobPath(desc.digest)));
        return s;
      },
    };
    const pool = new CodecPool(1);
    try {
      const out = new OciLayout(`oci:${join(tmp, 'eager-out')}:v1`);
      let progress = 0;
      const report = await convertImage(eager, out, { platform: AMD64, chunkSize: 4 * 1024 * 1024, compressionLevel: 1, pool, onProgress: (done) => (progress = done) });
      assert.equal(progress, (await layout.resolve(AMD64)).manifest.layers[0]!.size, 'progress counts every byte');
      const resolved = await out.resolve(AMD64);
      await assertLayerMatches(await RemoteLayer.open(out, resolved.manifest.layers[0]!), plain);
      assert.equal(report.layers.length, 1);
    } finally {
      await pool.close();
    }
  });

  it('converts between OCI layout directories, from zstd and plain tar layers', async () => {
    const small: FileSpec[] = [{ name: 'z/', type: 'directory' }, { name: 'z/file', type: 'file', content: Buffer.from('zstd layer content\n'.repeat(1000)) }];
    const plain: FileSpec[] = [{ name: 'p/', type: 'directory' }, { name: 'p/file', type: 'file', content: Buffer.from('plain') }];
    await writeOciImage(join(tmp, 'zstd-layout'), 'v1', [{ tar: await tarOf(small), compression: 'zstd' }, { tar: await tarOf(plain), compression: 'none' }]);
    const out = join(tmp, 'zstd-out');
    await dedupctlJson(['convert', `oci:${join(tmp, 'zstd-layout')}:v1`, `oci:${out}:converted`]);
    const img = new OciLayout(`oci:${out}:converted`);
    const resolved = await img.resolve(AMD64);
    assert.ok(resolved.manifest.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+gzip'));
    await assertLayerMatches(await RemoteLayer.open(img, resolved.manifest.layers[0]!), small);
    await assertLayerMatches(await RemoteLayer.open(img, resolved.manifest.layers[1]!), plain);
    // And pushed to a registry from the layout.
    await dedupctlJson(['convert', '--plain-http', `oci:${out}:converted`, `${registry!.host}/test/zstd:estargz`]);
    const back = await new RegistryImage(client, `${registry!.host}/test/zstd:estargz`).resolve(AMD64);
    assert.equal(back.manifestDigest, resolved.manifestDigest);
  });

  it('keeps layers that are eStargz already, unchanged', async () => {
    const r = await dedupctlJson<{ layers: { kept: boolean; digest: string; transfer: string }[] }>(
      ['convert', '--plain-http', dst, `${registry!.host}/test/other-repo:copy`]);
    const before = await new RegistryImage(client, dst).resolve(AMD64);
    assert.deepEqual(r.layers.map((l) => l.kept), [true, true]);
    assert.deepEqual(r.layers.map((l) => l.digest), before.manifest.layers.map((l) => l.digest));
    assert.deepEqual(r.layers.map((l) => l.transfer), ['mounted', 'mounted'], 'cross-repository mount, no upload');
  });

  it('puts --prefetch-list files first, followed by the prefetch landmark', async () => {
    const list = join(tmp, 'prefetch.txt');
    await writeFile(list, '# start-up files\n/etc/hostname\ndata/small\nnot/in/image\n');
    const out = `oci:${join(tmp, 'prefetch-out')}:p`;
    await dedupctlJson(['convert', '--plain-http', '--prefetch-list', list, src, out]);
    const img = new OciLayout(out);
    const base = await RemoteLayer.open(img, (await img.resolve(AMD64)).manifest.layers[0]!);
    assert.equal(base.toc.prefetchLandmark, true);
    assert.deepEqual(base.toc.prefetchFiles, ['etc/hostname', 'data/small']);
    await assertLayerMatches(base, layers.base);
  });

  it('rejects bad input with a clear error, a non-zero exit and no output image', async () => {
    const out = join(tmp, 'never');
    const cases: [string[], RegExp][] = [
      [['convert', 'UPPER/case:tag', `oci:${out}:x`], /invalid image reference "UPPER\/case:tag"/],
      [['convert', '--plain-http', `${registry!.host}/test/missing:1`, `oci:${out}:x`], /manifest .*test\/missing:1 not found/],
      [['convert', `oci:${join(tmp, 'nothing-here')}:x`, `oci:${out}:x`], /no index.json/],
      [['convert', '--chunk-size', 'lots', src, `oci:${out}:x`], /--chunk-size "lots" is not a size/],
      [['convert', '--plain-http', '--prefetch-list', join(tmp, 'no-such-list'), src, `oci:${out}:x`], /--prefetch-list .*no-such-list/],
      [['convert', '--config', join(tmp, 'no-config.json'), src, `oci:${out}:x`], /no-config.json: cannot read/],
    ];
    for (const [args, re] of cases) {
      const r = await dedupctl(args);
      assert.notEqual(r.code, 0, `dedupctl ${args.join(' ')} fails`);
      assert.match(r.stderr, re);
    }
    // A layer whose bytes are not what its digest says, and a broken gzip layer.
    const bad = join(tmp, 'bad-layout');
    await writeOciImage(bad, 'v1', [{ tar: await tarOf([{ name: 'f', type: 'file', content: Buffer.from('x') }]), compression: 'gzip' }]);
    const idx = JSON.parse(await readFile(join(bad, 'index.json'), 'utf8'));
    const manifest = JSON.parse(await readFile(join(bad, 'blobs', 'sha256', idx.manifests[0].digest.slice(7)), 'utf8'));
    const layerPath = join(bad, 'blobs', 'sha256', manifest.layers[0].digest.slice(7));
    await writeFile(layerPath, Buffer.from('this is not gzip'));
    const r = await dedupctl(['convert', `oci:${bad}:v1`, `oci:${out}:x`]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /expected digest sha256:|malformed layer/);
    await assert.rejects(readFile(join(out, 'index.json')), /ENOENT/, 'no half-written target');
  });
});

function runCtrRemote(socket: string, args: string[]) {
  return import('./fixtures/process.js').then(({ run }) => run('ctr-remote', ['--address', socket, ...args], { timeoutMs: 300_000 }));
}
