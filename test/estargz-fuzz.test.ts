// Mutation fuzzing of the format code: whatever bytes come in, the parsers either return a value
// or throw their own typed error, never anything else and never hang. Seeded, so a failure
// reproduces; FUZZ_ITERATIONS raises the count for a longer run.

import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { describe, it } from 'node:test';
import { MalformedEstargzError } from '../src/errors.js';
import { encodeFooter, parseFooter } from '../src/estargz/footer.js';
import { extractTocJson } from '../src/estargz/layer.js';
import { encodeTarHeader, TAR_END } from '../src/estargz/tar.js';
import { readTar, TarFormatError } from '../src/estargz/tar-reader.js';
import { parseToc } from '../src/estargz/toc-parser.js';
import { encodeToc } from '../src/estargz/toc.js';
import { rng } from './fixtures/rng.js';

const ITERATIONS = Number(process.env.FUZZ_ITERATIONS ?? 2000);

function mutate(input: Buffer, rand: () => number): Buffer {
  const b = Buffer.from(input);
  const n = 1 + Math.floor(rand() * 4);
  for (let i = 0; i < n; i++) {
    const at = Math.floor(rand() * b.length);
    switch (Math.floor(rand() * 4)) {
      case 0: b[at] = Math.floor(rand() * 256); break;
      case 1: b[at] = b[at]! ^ (1 << Math.floor(rand() * 8)); break;
      case 2: b.write(['"', '..', '-1', '1e309', '}', 'null', '/'][Math.floor(rand() * 7)]!, at, 'latin1'); break;
      default: return b.subarray(0, at);
    }
  }
  return b;
}

const D = (c: string): string => 'sha256:' + c.repeat(64);
const SAMPLE_TOC = encodeToc({ version: 1, entries: [
  { name: '.', type: 'dir', mode: 0o755 },
  { name: 'a/', type: 'dir', mode: 0o755, uid: 1, gid: 2, modtime: '2024-01-01T00:00:00Z' },
  { name: 'a/f', type: 'reg', size: 10, offset: 10, chunkSize: 4, chunkDigest: D('a'), digest: D('f'), xattrs: { 'user.x': 'eQ==' } },
  { name: 'a/f', type: 'chunk', offset: 20, chunkOffset: 4, chunkSize: 4, chunkDigest: D('b') },
  { name: 'a/f', type: 'chunk', offset: 30, chunkOffset: 8, chunkDigest: D('c') },
  { name: 'a/h', type: 'hardlink', linkName: 'a/f' },
  { name: 'a/s', type: 'symlink', linkName: '../f' },
  { name: 'a/d', type: 'block', devMajor: 8, devMinor: 1 },
] });

describe('fuzzing the format code', () => {
  it('parseToc never throws anything but MalformedEstargzError', () => {
    const rand = rng(0x5eed);
    let accepted = 0;
    for (let i = 0; i < ITERATIONS; i++) {
      try {
        parseToc(mutate(SAMPLE_TOC, rand), { tocOffset: 1000 });
        accepted++;
      } catch (err) {
        assert.ok(err instanceof MalformedEstargzError, `iteration ${i}: ${(err as Error).stack}`);
      }
    }
    assert.ok(accepted > 0, 'some mutations are still valid TOCs');
  });

  it('parseFooter and extractTocJson never throw anything but MalformedEstargzError', () => {
    const rand = rng(0xf007);
    const footer = encodeFooter(123456);
    const member = gzipSync(Buffer.concat([encodeTarHeader({ name: 'stargz.index.json', type: 'file', mode: 0o644, uid: 0, gid: 0, size: SAMPLE_TOC.length, mtime: 0 }),
      SAMPLE_TOC, Buffer.alloc((512 - (SAMPLE_TOC.length % 512)) % 512), TAR_END]));
    for (let i = 0; i < ITERATIONS; i++) {
      for (const [fn, input] of [[() => parseFooter(mutate(footer, rand), 1 << 30), footer], [() => extractTocJson(mutate(member, rand)), member]] as const) {
        try {
          fn();
        } catch (err) {
          assert.ok(err instanceof MalformedEstargzError, `iteration ${i} (${input.length} bytes): ${(err as Error).stack}`);
        }
      }
    }
  });

  it('readTar never throws anything but TarFormatError', async () => {
    const rand = rng(0x7a7);
    const tar = Buffer.concat([
      encodeTarHeader({ name: 'x'.repeat(150), type: 'file', mode: 0o644, uid: 0, gid: 0, size: 5, mtime: 0, xattrs: { 'user.a': Buffer.from('b') } }),
      Buffer.from('hello'), Buffer.alloc(507),
      encodeTarHeader({ name: 'l', type: 'link', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0, linkname: 'y'.repeat(120) }),
      TAR_END,
    ]);
    for (let i = 0; i < ITERATIONS / 4; i++) {
      try {
        for await (const e of readTar(Readable.from([mutate(tar, rand)]))) while (e.remaining > 0) await e.read(4096);
      } catch (err) {
        assert.ok(err instanceof TarFormatError, `iteration ${i}: ${(err as Error).stack}`);
      }
    }
  });
});
