// Mutation fuzzing of the format code: whatever bytes come in, the parsers either return a value
// or throw their own typed error, never anything else and never hang. A mutant they accept must
// round-trip (encoded again, it parses to the same value), and each test counts its rejections:
// one that rejects no mutant tests nothing. Seeded, so a failure reproduces; FUZZ_ITERATIONS
// raises the count for a longer run.

import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { describe, it } from 'node:test';
import { MalformedEstargzError } from '../src/errors.js';
import { encodeFooter, FOOTER_SIZE, parseFooter } from '../src/estargz/footer.js';
import { extractTocJson } from '../src/estargz/layer.js';
import { encodeTarHeader, TAR_END, tarPadding, type TarHeader } from '../src/estargz/tar.js';
import { readTar, TarFormatError } from '../src/estargz/tar-reader.js';
import { parseToc } from '../src/estargz/toc-parser.js';
import { encodeToc, type TocJson } from '../src/estargz/toc.js';
import { rng } from './fixtures/rng.js';

const ITERATIONS = Number(process.env.FUZZ_ITERATIONS ?? 2000);

/**
 * Runs `attempt` on each of `n` mutants: it returns when the mutant is accepted (after checking
 * the round trip) or throws. A throw must be a `typed` error; counts both outcomes.
 */
async function fuzz(n: number, typed: new (...args: never[]) => Error, attempt: (i: number) => unknown): Promise<{ accepted: number; rejected: number }> {
  const seen = { accepted: 0, rejected: 0 };
  for (let i = 0; i < n; i++) {
    try {
      await attempt(i);
      seen.accepted++;
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      assert.ok(err instanceof typed, `iteration ${i}: not a ${typed.name}: ${(err as Error).stack}`);
      seen.rejected++;
    }
  }
  assert.ok(seen.rejected > 0, `no mutant of ${n} was rejected`);
  return seen;
}

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
  it('parseToc rejects mutants with MalformedEstargzError; one it accepts parses the same once encoded again', async () => {
    const rand = rng(0x5eed);
    const { accepted } = await fuzz(ITERATIONS, MalformedEstargzError, () => {
      const mutant = mutate(SAMPLE_TOC, rand);
      const toc = parseToc(mutant, { tocOffset: 1000 });
      const again = parseToc(encodeToc(JSON.parse(mutant.toString()) as TocJson), { tocOffset: 1000 });
      assert.deepEqual(again, toc, `accepted TOC does not round-trip: ${mutant.toString()}`);
    });
    assert.ok(accepted > 0, 'some mutations are still valid TOCs');
  });

  it('parseFooter and extractTocJson reject mutants with MalformedEstargzError; what they accept round-trips', async () => {
    const rand = rng(0xf007);
    const footer = encodeFooter(123456);
    const member = gzipSync(Buffer.concat([encodeTarHeader({ name: 'stargz.index.json', type: 'file', mode: 0o644, uid: 0, gid: 0, size: SAMPLE_TOC.length, mtime: 0 }),
      SAMPLE_TOC, Buffer.alloc((512 - (SAMPLE_TOC.length % 512)) % 512), TAR_END]));
    await fuzz(ITERATIONS, MalformedEstargzError, () => {
      const f = parseFooter(mutate(footer, rand), 1 << 30);
      if (f.size === FOOTER_SIZE) assert.deepEqual(parseFooter(encodeFooter(f.tocOffset)), f, 'accepted footer does not round-trip');
    });
    // The member's CRC covers the tar: whatever mutant is accepted holds the TOC as written.
    await fuzz(ITERATIONS, MalformedEstargzError, () => assert.deepEqual(extractTocJson(mutate(member, rand)), SAMPLE_TOC));
  });

  it('readTar rejects mutants with TarFormatError; the entries of one it accepts read back the same once written again', async () => {
    const rand = rng(0x7a7);
    const tar = Buffer.concat([
      encodeTarHeader({ name: 'x'.repeat(150), type: 'file', mode: 0o644, uid: 0, gid: 0, size: 5, mtime: 0, xattrs: { 'user.a': Buffer.from('b') } }),
      Buffer.from('hello'), Buffer.alloc(507),
      encodeTarHeader({ name: 'l', type: 'link', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0, linkname: 'y'.repeat(120) }),
      TAR_END,
    ]);
    const entries = async (bytes: Buffer): Promise<{ header: TarHeader; data: Buffer }[]> => {
      const out: { header: TarHeader; data: Buffer }[] = [];
      for await (const e of readTar(Readable.from([bytes]))) {
        const parts: Buffer[] = [];
        while (e.remaining > 0) parts.push(await e.read(4096));
        out.push({ header: e.header, data: Buffer.concat(parts) });
      }
      return out;
    };
    const { accepted } = await fuzz(ITERATIONS / 4, TarFormatError, async () => {
      const read = await entries(mutate(tar, rand));
      const written = Buffer.concat([...read.flatMap((e) => [encodeTarHeader(e.header), e.data, Buffer.alloc(tarPadding(e.data.length))]), TAR_END]);
      assert.deepEqual(await entries(written), read, 'accepted tar does not round-trip');
    });
    assert.ok(accepted > 0, 'some mutations are still valid tars');
  });
});
