// The eStargz format code on its own: footer, TOC parsing and validation, tar headers.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { MalformedEstargzError } from '../src/errors.js';
import { encodeFooter, FOOTER_SIZE, parseFooter } from '../src/estargz/footer.js';
import { extractTocJson } from '../src/estargz/layer.js';
import { encodeTarHeader, TAR_END } from '../src/estargz/tar.js';
import { parsePax, readTar } from '../src/estargz/tar-reader.js';
import { parseToc } from '../src/estargz/toc-parser.js';
import { type TocEntryJson } from '../src/estargz/toc.js';

const D = (c: string): string => 'sha256:' + c.repeat(64);

function toc(entries: TocEntryJson[]): Buffer {
  return Buffer.from(JSON.stringify({ version: 1, entries }));
}

function assertMalformed(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof MalformedEstargzError && re.test(err.message));
}

describe('footer', () => {
  it('round-trips the TOC offset in 51 bytes that gunzip to nothing', () => {
    const f = encodeFooter(0x1234567);
    assert.equal(f.length, FOOTER_SIZE);
    assert.deepEqual(parseFooter(f), { tocOffset: 0x1234567, size: 51 });
    assert.equal(parseFooter(Buffer.concat([Buffer.alloc(100), f])).tocOffset, 0x1234567);
    // A footer is a valid (empty) gzip member: full-pull clients inflate it to nothing.
    assert.equal(gunzipSync(f).length, 0);
  });

  it('reads the legacy 47-byte stargz footer', () => {
    const payload = Buffer.from((0x4242).toString(16).padStart(16, '0') + 'STARGZ', 'latin1');
    const header = Buffer.from([0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, payload.length, 0]);
    const legacy = Buffer.concat([header, payload, Buffer.from([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0])]);
    assert.equal(legacy.length, 47);
    assert.deepEqual(parseFooter(legacy), { tocOffset: 0x4242, size: 47 });
  });

  it('rejects a blob without a footer, a bad payload, and an offset past the blob', () => {
    assertMalformed(() => parseFooter(Buffer.alloc(10)), /only 10 bytes/);
    assertMalformed(() => parseFooter(gzipSync(Buffer.from('plain gzip layer data here, nothing else'))), /no stargz footer/);
    const bad = encodeFooter(1);
    bad.write('zz', 16, 'latin1');
    assertMalformed(() => parseFooter(bad), /not "<16 hex digits>STARGZ"/);
    assertMalformed(() => parseFooter(encodeFooter(5000), 1000), /beyond the blob/);
  });
});

describe('TOC', () => {
  const file = (name: string, size: number, extra: Partial<TocEntryJson> = {}): TocEntryJson => ({
    name, type: 'reg', size, offset: 10, chunkDigest: D('a'), ...extra,
  });

  it('builds a tree with implicit parents, chunks, hard links and landmarks', () => {
    const t = parseToc(toc([
      { name: '.prefetch.landmark', type: 'reg', size: 1, offset: 5, chunkDigest: D('f') },
      { name: './', type: 'dir', mode: 0o755 },
      file('a/b/c', 10, { chunkSize: 4, mode: 0o4755, uid: 7, gid: 8, xattrs: { 'user.x': Buffer.from('y').toString('base64') } }),
      { name: 'a/b/c', type: 'chunk', offset: 20, chunkOffset: 4, chunkSize: 4, chunkDigest: D('b') },
      { name: 'a/b/c', type: 'chunk', offset: 30, chunkOffset: 8, chunkDigest: D('c') },
      { name: 'a/link', type: 'hardlink', linkName: 'a/b/c' },
      { name: 'a/sym', type: 'symlink', linkName: '/etc/passwd' },
      { name: 'dev/null', type: 'char', devMajor: 1, devMinor: 3, mode: 0o666 },
    ]), { tocOffset: 100 });
    assert.equal(t.prefetchLandmark, true);
    assert.equal(t.nodes.get('a')?.type, 'dir');
    const c = t.nodes.get('a/b/c')!;
    assert.equal(c.mode, 0o4755);
    assert.equal(c.uid, 7);
    assert.equal(c.xattrs.get('user.x')?.toString(), 'y');
    assert.deepEqual(c.chunks.map((k) => [k.offset, k.compressedEnd, k.chunkOffset, k.chunkSize]), [[10, 20, 0, 4], [20, 30, 4, 4], [30, 100, 8, 2]]);
    assert.equal(t.nodes.get('a/link'), c);
    assert.equal(c.numLink, 2);
    assert.equal(t.nodes.get('a/sym')?.linkName, '/etc/passwd');
    assert.equal(t.nodes.get('dev/null')?.devMinor, 3);
    assert.equal(t.nodes.has('.prefetch.landmark'), false);
    assert.equal(t.chunkCount, 3);
  });

  it('rejects malformed TOCs with the entry and the reason', () => {
    const opts = { tocOffset: 1000 };
    assertMalformed(() => parseToc(Buffer.from('{"version":1,'), opts), /TOC: not valid JSON/);
    assertMalformed(() => parseToc(Buffer.from('{"version":2,"entries":[]}'), opts), /version 2 is not supported/);
    assertMalformed(() => parseToc(toc([file('../etc/passwd', 1)]), opts), /entry 0 .*escapes the layer root/);
    assertMalformed(() => parseToc(toc([file('a/../../x', 1)]), opts), /escapes the layer root/);
    assertMalformed(() => parseToc(toc([{ name: 'l', type: 'symlink', linkName: '/' }, file('l/x', 1)]), opts), /parent "l" is a symlink/);
    assertMalformed(() => parseToc(toc([{ name: 'h', type: 'hardlink', linkName: 'nowhere' }]), opts), /hard link target "nowhere"/);
    assertMalformed(() => parseToc(toc([{ name: 'x', type: 'whatever' as never }]), opts), /unknown type "whatever"/);
    assertMalformed(() => parseToc(toc([file('big', 2 ** 60)]), opts), /field "size"/);
    assertMalformed(() => parseToc(toc([file('neg', -1)]), opts), /field "size"/);
    assertMalformed(() => parseToc(toc([file('f', 10, { chunkSize: 4 })]), opts), /chunks cover 4 of its 10 bytes/);
    assertMalformed(() => parseToc(toc([file('f', 10, { offset: 5000 })]), opts), /not before the TOC/);
    assertMalformed(() => parseToc(toc([file('f', 10, { chunkDigest: 'md5:abc' })]), opts), /chunkDigest "md5:abc"/);
    assertMalformed(() => parseToc(toc([{ name: 'f', type: 'chunk', offset: 1, chunkOffset: 0 }]), opts), /chunk does not follow/);
    assertMalformed(() => parseToc(toc([{ name: 'x\u0000y', type: 'dir' }]), opts), /NUL/);
  });

  it('extracts the TOC JSON from its tar member and refuses other members', () => {
    const json = toc([]);
    const tar = Buffer.concat([encodeTarHeader({ name: 'stargz.index.json', type: 'file', mode: 0o644, uid: 0, gid: 0, size: json.length, mtime: 0 }),
      json, Buffer.alloc(512 - json.length), TAR_END]);
    assert.deepEqual(extractTocJson(gzipSync(tar)), json);
    const other = Buffer.from(tar);
    other.write('other.json\0', 0);
    assert.throws(() => extractTocJson(gzipSync(other)), /checksum|expected "stargz.index.json"/);
    assertMalformed(() => extractTocJson(Buffer.from('not gzip at all')), /cannot be decompressed/);
  });
});

describe('tar headers', () => {
  it('are read back by tar-stream, long names, long links, big ids and xattrs included', async () => {
    const name = 'dir/' + 'x'.repeat(200);
    const bytes = Buffer.concat([
      encodeTarHeader({ name, type: 'file', mode: 0o4755, uid: 3_000_000, gid: 5, size: 3, mtime: 1_700_000_000, uname: 'u', gname: 'g', xattrs: { 'user.k': Buffer.from('v') } }),
      Buffer.from('abc'), Buffer.alloc(509),
      encodeTarHeader({ name: 'ln', type: 'symlink', mode: 0o777, uid: 0, gid: 0, size: 0, mtime: 0, linkname: 'y'.repeat(150) }),
      encodeTarHeader({ name: 'dev', type: 'block-device', mode: 0o600, uid: 0, gid: 0, size: 0, mtime: 0, devmajor: 8, devminor: 1 }),
      TAR_END,
    ]);
    const seen: tarStream.Header[] = [];
    const extract = tarStream.extract();
    const done = new Promise<void>((resolve, reject) => {
      extract.on('entry', (h, stream, next) => {
        seen.push(h);
        stream.on('end', next);
        stream.resume();
      });
      extract.on('finish', resolve);
      extract.on('error', reject);
    });
    extract.end(bytes);
    await done;
    assert.equal(seen[0]!.name, name);
    assert.equal((seen[0]!.pax as Record<string, string>).uid, '3000000');
    assert.equal(seen[0]!.mode, 0o4755);
    assert.equal((seen[0]!.pax as Record<string, string>)['SCHILY.xattr.user.k'], 'v');
    assert.equal(seen[1]!.linkname, 'y'.repeat(150));
    assert.equal(seen[2]!.type, 'block-device');
    assert.equal(seen[2]!.devmajor, 8);
  });

  it('our reader keeps binary PAX values as bytes', async () => {
    const bin = Buffer.from([0x01, 0x00, 0x00, 0x02, 0xff, 0xfe]);
    const tar = Buffer.concat([
      encodeTarHeader({ name: 'ping', type: 'file', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, xattrs: { 'security.capability': bin } }),
      TAR_END,
    ]);
    const entries = [];
    for await (const e of readTar(Readable.from([tar]))) entries.push(e.header);
    assert.deepEqual(entries[0]!.xattrs!['security.capability'], bin);
    const big = [];
    for await (const e of readTar(Readable.from([encodeTarHeader({ name: 'b', type: 'directory', mode: 0o755, uid: 3_000_000, gid: 0, size: 0, mtime: 0 }), TAR_END]))) big.push(e.header);
    assert.equal(big[0]!.uid, 3_000_000);
    assert.deepEqual(parsePax(Buffer.from('11 path=ab\n')).get('path'), Buffer.from('ab'));
    assert.throws(() => parsePax(Buffer.from('99 path=ab\n')), /length is wrong/);
  });

  it('our reader rejects garbage and truncation', async () => {
    const consume = async (b: Buffer): Promise<void> => {
      for await (const e of readTar(Readable.from([b]))) await e.read(1 << 20);
    };
    await assert.rejects(consume(Buffer.alloc(512, 7)), /bad checksum/);
    const h = encodeTarHeader({ name: 'f', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1000, mtime: 0 });
    await assert.rejects(consume(Buffer.concat([h, Buffer.alloc(10)])), /truncated/);
  });
});
