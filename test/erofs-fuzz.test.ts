// Fuzzing the EROFS builder. Random trees (odd names up to 255 bytes, deep nesting, directories of
// many blocks, sizes around block and chunk edges, sparse files over 4 GiB, hard links, devices,
// whiteouts, many xattrs) always build, pass fsck.erofs, mount, and read back what went in; mutated
// input either builds or is refused with InvalidErofsTreeError, never anything else, and enough of
// it is refused; a mutant that builds passes fsck.erofs and reads back what went in too. Seeded,
// so a failure reproduces (EROFS_FUZZ_SEED); EROFS_FUZZ_ITERATIONS raises the count for a longer run.

import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvalidErofsTreeError } from '../src/errors.js';
import { buildErofs, type ErofsBuildOptions } from '../src/erofs/build.js';
import type { ErofsEntry, ErofsExtent, ErofsHole } from '../src/erofs/tree.js';
import {
  assertInodes, erofsSkipReason, erofsWorkdir, expectedInodes, fsckErofs, walkInodes, withErofsMount, type BlobFile, type SeenInode,
} from './fixtures/erofs.js';
import { rng } from './fixtures/rng.js';

const MOUNTS = Number(process.env.EROFS_FUZZ_ITERATIONS ?? 16);
const MUTATIONS = MOUNTS * 100;
/** Mutants that build, mounted and read back. */
const ACCEPTED_MOUNTS = Math.max(4, MOUNTS / 2);
const SEED = Number(process.env.EROFS_FUZZ_SEED ?? 0xe20f5);
const KiB = 1024;
const MiB = 1024 * KiB;
const BLOB_SIZE = 8 * MiB;
const T = { seconds: 1_650_000_000, nanoseconds: 250 };

class Gen {
  constructor(readonly rand: () => number) {}
  int(n: number): number {
    return Math.floor(this.rand() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  chance(p: number): boolean {
    return this.rand() < p;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

// Bytes that sort before and after ".", spaces, and multi-byte UTF-8.
const ALPHABET = [...'abcxyzABC019_-.!#+~= ,@', 'é', 'ü', '日', '\u{1f600}'];

function randomName(g: Gen, taken: Set<string>): string {
  for (;;) {
    let name = '';
    const target = g.chance(0.05) ? 255 : 1 + g.int(g.chance(0.2) ? 80 : 12);
    while (Buffer.byteLength(name) < target) {
      const c = g.pick(ALPHABET);
      if (Buffer.byteLength(name + c) > target) break;
      name += c;
    }
    if (name === '' || name === '.' || name === '..' || taken.has(name)) continue;
    taken.add(name);
    return name;
  }
}

function randomXattrs(g: Gen, type: ErofsEntry['type'], pool: [string, Buffer][]): Record<string, Buffer> | undefined {
  if (!g.chance(0.35)) return undefined;
  const out: Record<string, Buffer> = {};
  // user.* xattrs exist only on regular files and directories (the VFS refuses them elsewhere).
  const userOk = type === 'reg' || type === 'dir';
  const n = g.chance(0.1) ? 40 + g.int(40) : 1 + g.int(6);
  for (let i = 0; i < n; i++) {
    const [name, value] = g.chance(0.5) ? g.pick(pool) : [`${g.pick(['user.', 'trusted.', 'security.'])}k${g.int(1e6)}`, g.bytes(g.chance(0.05) ? 3000 : g.int(60))];
    if (name.startsWith('user.') && !userOk) continue;
    out[name] = value;
  }
  return out;
}

/** Consecutive extents over the blobs and holes that add up to `size`: whole chunks, then the rest. */
function randomExtents(g: Gen, size: number, chunkSize: number, blobs: number): (ErofsExtent | ErofsHole)[] {
  const out: (ErofsExtent | ErofsHole)[] = [];
  let left = size;
  while (left > 0) {
    const chunks = Math.ceil(left / chunkSize);
    const take = Math.min(left, (1 + g.int(Math.min(chunks, 3))) * chunkSize);
    if (g.chance(0.25) || take > BLOB_SIZE) out.push({ hole: true, length: take });
    else out.push({ device: g.int(blobs), offset: g.int(Math.floor((BLOB_SIZE - take) / 4096) + 1) * 4096, length: take });
    left -= take;
  }
  return out;
}

interface Shape {
  maxEntries?: number;
  /** Hundreds of entries piled into few directories, so those span several blocks. */
  wide?: boolean;
  /** A sparse file over 4 GiB (needs a chunk size of at least 1 MiB). */
  huge?: boolean;
}

function randomTree(g: Gen, chunkSize: number, blobs: number, shape: Shape = {}): ErofsEntry[] {
  const entries: ErofsEntry[] = [];
  const dirs: { path: string; taken: Set<string> }[] = [{ path: '', taken: new Set() }];
  const linkable: string[] = [];
  const pool: [string, Buffer][] = Array.from({ length: 8 }, (_, i) => [`${g.pick(['user.', 'trusted.', 'security.'])}shared${i}`, g.bytes(g.int(40))]);
  pool.push(['trusted.overlay.opaque', Buffer.from('y')]);
  const at = (parent: string, name: string): string => (parent ? `${parent}/${name}` : name);
  const meta = (type: ErofsEntry['type']): Partial<ErofsEntry> => ({
    mode: g.chance(0.7) ? (type === 'dir' ? 0o755 : 0o644) : g.int(0o10000),
    ...(g.chance(0.3) ? { uid: g.pick([0, 1000, 65535, 65536, 0xfffffffe]), gid: g.pick([0, 5, 65536, 0x7fffffff]) } : {}),
    ...(g.chance(0.6) ? { mtime: T.seconds, mtimeNsec: T.nanoseconds } : g.chance(0.5) ? { mtime: g.pick([-1, 0, 1, 2 ** 31, 2 ** 33, -(2 ** 31)]), mtimeNsec: g.int(1e9) } : {}),
    xattrs: randomXattrs(g, type, pool),
  });
  const n = Math.min(shape.maxEntries ?? Infinity, shape.wide ? 400 + g.int(400) : 5 + g.int(120));
  for (let i = 0; i < n; i++) {
    const parent = shape.wide && g.chance(0.8) ? dirs[Math.min(dirs.length - 1, 1)]! : g.pick(dirs);
    const path = at(parent.path, randomName(g, parent.taken));
    const type = g.pick(['dir', 'dir', 'reg', 'reg', 'reg', 'reg', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'whiteout'] as const);
    if (type === 'dir') {
      dirs.push({ path, taken: new Set() });
      // Sometimes no entry: the builder implies the directory from what is inside it.
      if (g.chance(0.85)) entries.push({ path, type, ...meta(type) });
    } else if (type === 'reg') {
      const size = g.pick([0, 1, 4095, 4096, 4097, chunkSize - 1, chunkSize, chunkSize + 1, 3 * chunkSize + g.int(chunkSize), g.int(40_000)]);
      const content = g.chance(0.5) && size <= 2 * MiB ? { data: g.bytes(size) } : { extents: randomExtents(g, size, chunkSize, blobs) };
      entries.push({ path, type, ...meta(type), ...content });
      linkable.push(path);
    } else if (type === 'symlink') {
      entries.push({ path, type, ...meta(type), linkTarget: 'x/'.repeat(g.chance(0.1) ? 2047 : g.int(20)) + 't' });
      linkable.push(path);
    } else if (type === 'hardlink') {
      if (linkable.length) entries.push({ path, type, linkTarget: g.pick(linkable) });
    } else if (type === 'whiteout') {
      entries.push({ path, type: 'char', mode: 0, devMajor: 0, devMinor: 0, mtime: T.seconds, mtimeNsec: T.nanoseconds });
    } else {
      entries.push({ path, type, ...meta(type), ...(type === 'fifo' ? {} : { devMajor: g.int(4096), devMinor: g.int(0x100000) }) });
      linkable.push(path);
    }
  }
  if (shape.huge && chunkSize >= MiB) {
    // Sparse beyond 4 GiB: an extended inode, thousands of chunk indexes, data at the very end.
    const holes = Math.ceil((4 * 1024 * MiB + 1) / chunkSize) * chunkSize;
    entries.push({ path: at(g.pick(dirs).path, `sparse${g.int(1e6)}`), type: 'reg', extents: [{ hole: true, length: holes }, { device: 0, offset: 0, length: 1 + g.int(chunkSize) }] });
  }
  // Entries in any order: parents may come after what they hold.
  if (g.chance(0.5)) for (let i = entries.length - 1; i > 0; i--) {
    const j = g.int(i + 1);
    [entries[i], entries[j]] = [entries[j]!, entries[i]!];
  }
  return entries;
}

const COVERAGE = [
  'a directory over one block', 'a file over 4 GiB', 'a 255-byte name', 'a hard link', 'an inode with 40 xattrs',
  'an empty file', 'a 4095-byte file', 'a 4096-byte file', 'a 4097-byte file', 'a whiteout', 'an implied directory',
] as const;
const covered = new Set<string>();

function noteCoverage(entries: readonly ErofsEntry[], seen: Map<string, SeenInode>): void {
  const listed = new Set(entries.map((e) => e.path));
  for (const [path, s] of seen) {
    const note = (what: (typeof COVERAGE)[number], yes: boolean): void => {
      if (yes) covered.add(what);
    };
    note('a directory over one block', s.type === 'dir' && s.size > 4096);
    note('a file over 4 GiB', s.size > 2 ** 32);
    note('a 255-byte name', Buffer.byteLength(path.slice(path.lastIndexOf('/') + 1)) === 255);
    note('a hard link', s.type !== 'dir' && s.nlink > 1);
    note('an inode with 40 xattrs', Object.keys(s.xattrs).length >= 40);
    note('an empty file', s.type === 'reg' && s.size === 0);
    for (const n of [4095, 4096, 4097] as const) note(`a ${n}-byte file`, s.type === 'reg' && s.size === n);
    note('a whiteout', s.type === 'char' && s.rdev?.[0] === 0 && s.rdev[1] === 0);
    note('an implied directory', path !== '' && s.type === 'dir' && !listed.has(path));
  }
}

const WEIRD: unknown[] = [undefined, null, -1, 1.5, 2 ** 53, NaN, '', '..', '/', 'x', {}, [], [null], Buffer.from('b'), 0o10000, 0xffffffff + 1, 'toString'];

function mutate(g: Gen, entries: ErofsEntry[]): ErofsEntry[] {
  const out = entries.map((e) => ({ ...e })) as Record<string, unknown>[];
  const n = 1 + g.int(3);
  for (let i = 0; i < n && out.length; i++) {
    const e = g.pick(out);
    switch (g.int(6)) {
      case 0: e[g.pick(['path', 'type', 'mode', 'uid', 'gid', 'mtime', 'mtimeNsec', 'data', 'extents', 'size', 'linkTarget', 'devMajor', 'devMinor', 'xattrs'])] = g.pick(WEIRD); break;
      case 1: out.push({ ...e }); break;
      case 2: e.path = `${String(e.path)}/../${g.pick(['x', '..', ''])}`; break;
      case 3: if (Array.isArray(e.extents) && e.extents.length) e.extents = e.extents.map((x: Record<string, unknown>) => ({ ...x, [g.pick(['offset', 'length', 'device', 'hole'])]: g.pick([...WEIRD, 100, 4096, 7]) })); break;
      case 4: e.xattrs = { [g.pick(['user.', 'system.x', 'trusted.a', 'nope', 'security.' + 'x'.repeat(300)])]: g.pick(['v', Buffer.alloc(70_000), 5]) }; break;
      default: out.splice(g.int(out.length), 1);
    }
  }
  return out as unknown as ErofsEntry[];
}

/** A mutated small tree of `i`, and the options to build it with (sometimes mutated too). */
function mutant(g: Gen, i: number, devices: number): { entries: ErofsEntry[]; opts: ErofsBuildOptions } {
  const chunkSize = g.pick([4096, 65536, MiB]);
  const entries = mutate(g, randomTree(new Gen(rng(SEED + i)), chunkSize, devices, { maxEntries: 30 }));
  const opts: ErofsBuildOptions = { devices: Array.from({ length: devices }, (_, k) => ({ tag: `blob${k}`, size: BLOB_SIZE })), chunkSize, buildTime: T };
  if (g.chance(0.05)) (opts as Record<string, unknown>)[g.pick(['devices', 'chunkSize', 'buildTime', 'uuid', 'volumeName'])] = g.pick(WEIRD);
  return { entries, opts };
}

/** The image, or undefined where the builder refused the mutant with InvalidErofsTreeError. */
function buildOrRefuse(entries: ErofsEntry[], opts: ErofsBuildOptions, what: string): Buffer | undefined {
  try {
    return buildErofs(entries, opts).image;
  } catch (err) {
    if (!(err instanceof InvalidErofsTreeError)) assert.fail(`${what} (seed ${SEED}): ${String((err as Error).stack)}`);
    return undefined;
  }
}

describe('fuzzing the EROFS builder', () => {
  it('mutated input builds or is refused with InvalidErofsTreeError, nothing else', () => {
    const g = new Gen(rng(SEED ^ 0x55));
    let refused = 0;
    for (let i = 0; i < MUTATIONS; i++) {
      const { entries, opts } = mutant(g, i, 2);
      if (!buildOrRefuse(entries, opts, `iteration ${i}`)) refused++;
    }
    assert.ok(refused > MUTATIONS / 4, `only ${refused} of ${MUTATIONS} mutations were refused: the mutations are too mild`);
  });

  describe('random trees mount and read back', { skip: erofsSkipReason() }, () => {
    let work: { dir: string; cleanup: () => Promise<void> };
    const blobs: BlobFile[] = [];
    before(async () => {
      work = await erofsWorkdir();
      const g = new Gen(rng(SEED ^ 0xb10b));
      for (const i of [0, 1]) {
        const bytes = g.bytes(BLOB_SIZE);
        const path = join(work.dir, `blob${i}`);
        await writeFile(path, bytes);
        blobs.push({ path, bytes });
      }
    });
    after(async () => {
      await work?.cleanup();
    });

    for (let i = 0; i < MOUNTS; i++) {
      it(`tree ${i} (seed ${SEED})`, async () => {
        const g = new Gen(rng(SEED * 31 + i));
        const huge = i % 4 === 2;
        const chunkSize = huge ? g.pick([MiB, 4 * MiB]) : g.pick([4096, 8192, 65536, MiB, 4 * MiB]);
        const entries = randomTree(g, chunkSize, blobs.length, { wide: i % 3 === 1, huge });
        const { image } = buildErofs(entries, { devices: blobs.map((b, k) => ({ tag: `blob${k}`, size: b.bytes.length })), chunkSize, buildTime: T });
        await fsckErofs(work.dir, image, blobs);
        await withErofsMount(work.dir, image, blobs, async (mnt) => {
          const seen = await walkInodes(mnt);
          await assertInodes(mnt, seen, expectedInodes(entries, T, blobs));
          noteCoverage(entries, seen);
        });
      });
    }

    it(`mutants that build pass fsck.erofs, mount and read back what went in (${ACCEPTED_MOUNTS} of them)`, async () => {
      const g = new Gen(rng(SEED ^ 0xacce));
      let checked = 0;
      for (let i = 0; checked < ACCEPTED_MOUNTS && i < MUTATIONS; i++) {
        const { entries, opts } = mutant(g, i, blobs.length);
        const image = buildOrRefuse(entries, opts, `mutant ${i}`);
        if (!image) continue;
        await fsckErofs(work.dir, image, blobs);
        await withErofsMount(work.dir, image, blobs, async (mnt) => assertInodes(mnt, await walkInodes(mnt), expectedInodes(entries, T, blobs)));
        checked++;
      }
      assert.equal(checked, ACCEPTED_MOUNTS, 'too few mutants built');
    });

    it('covered every case it is meant to', () => {
      const missing = COVERAGE.filter((c) => !covered.has(c));
      assert.deepEqual(missing, [], `no tree had ${missing.join(', ')}: raise EROFS_FUZZ_ITERATIONS or change EROFS_FUZZ_SEED`);
    });
  });
});
