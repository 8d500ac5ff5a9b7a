// An unpacked layer directory becomes an EROFS image over pack files (src/kernel/directory-layer.ts):
// the kernel mounts it and shows exactly the tree that was unpacked (contents, modes, owners,
// nanosecond times, hard links, symlinks, devices, FIFOs, whiteouts, opaque and user xattrs), and
// a chunk that two files share is stored once.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, chown, link, lutimes, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CodecPool } from '../src/codec/codec-pool.js';
import { MalformedLayerError } from '../src/errors.js';
import { buildDirectoryLayer, type ChunkSink } from '../src/kernel/directory-layer.js';
import { diskUsage } from '../src/snapshot/disk-usage.js';
import { mountErofs, unmount } from '../src/system-mounts.js';
import { PackWriter, packsDir, type PackLocation } from '../src/store/pack-files.js';
import { erofsSkipReason, walkInodes, type SeenInode } from './fixtures/erofs.js';
import { mustRun } from './fixtures/process.js';

const skip = erofsSkipReason();
const CHUNK = 64 * 1024;

describe('an unpacked layer directory as an EROFS image over pack files', { skip }, () => {
  let tmp: string;
  let src: string;
  let mnt: string;
  let mounted = false;
  const shared = randomBytes(3 * CHUNK);

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-dirlayer-test-'));
    src = join(tmp, 'src');
    mnt = join(tmp, 'mnt');
    await mkdir(mnt);
    const f = (p: string): string => join(src, p);
    await mkdir(f('etc/opq'), { recursive: true });
    await mkdir(f('data'));
    for (const [name, size] of [['empty', 0], ['tiny', 100], ['below-block', 4095], ['block', 4096], ['odd', 3 * CHUNK + 17]] as const) {
      await writeFile(f(`data/${name}`), randomBytes(size));
    }
    await writeFile(f('data/shared-a'), shared);
    await writeFile(f('data/shared-b'), Buffer.concat([shared, Buffer.from('tail')]));
    await link(f('data/shared-a'), f('data/hardlink'));
    await symlink('../data/tiny', f('etc/link'));
    await mustRun('mkfifo', [f('etc/fifo')]);
    await mustRun('mknod', [f('etc/whiteout'), 'c', '0', '0']);
    await mustRun('mknod', [f('etc/loop'), 'b', '7', '300']);
    await mustRun('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', f('etc/opq')]);
    await mustRun('setfattr', ['-n', 'trusted.overlay.origin', '-v', '0x00', f('etc/opq')]);
    await mustRun('setfattr', ['-n', 'user.note', '-v', 'kept', f('data/tiny')]);
    await chown(f('data/odd'), 1000, 2000);
    await chmod(f('data/odd'), 0o4751);
    await lutimes(f('data/block'), new Date(1_600_000_000_123), new Date(1_600_000_000_123));
  });

  const pool = new CodecPool();

  after(async () => {
    await pool.close();
    if (mounted) await unmount(mnt);
    await rm(tmp, { recursive: true, force: true });
  });

  it('mounts and shows the tree as unpacked; shared chunks are stored once', async () => {
    const packs = new PackWriter(tmp);
    const stored = new Map<string, PackLocation>();
    let appended = 0;
    const sink: ChunkSink = {
      async storeChunk(digest, data) {
        let at = stored.get(digest);
        if (!at) {
          stored.set(digest, (at = await packs.append(data)));
          appended += data.length;
        }
        return at;
      },
      packSize: async (p) => (await stat(join(packsDir(tmp), p))).size,
    };
    const layer = await buildDirectoryLayer(src, CHUNK, sink, pool);
    await packs.close();
    assert.deepEqual(layer.usage, await diskUsage(src), 'the walk counts the usage as containerd does');
    assert.equal(layer.devices.length, 1);
    // shared-b is shared-a plus a tail: its first three chunks are shared-a's; the hard link stores nothing.
    assert.equal(new Set(layer.chunks.map((c) => c.digest)).size, 1 + 4 + 3 + 1);
    assert.equal(appended, 4096 + (3 * CHUNK + 17) + 3 * CHUNK + 4, 'block, odd, shared-a, and the tail of shared-b');
    await writeFile(join(tmp, 'layer.erofs'), layer.image);
    mountErofs(join(tmp, 'layer.erofs'), mnt, layer.devices.map((p) => join(packsDir(tmp), p)));
    mounted = true;

    const want = await walkInodes(src);
    const got = await walkInodes(mnt);
    const strip = (m: Map<string, SeenInode>): Map<string, unknown> =>
      new Map([...m].map(([p, e]) => {
        const { ino: _ino, xattrs, ...rest } = e;
        // overlayfs's origin marker describes the directory it was unpacked in, not the layer.
        const kept = Object.fromEntries(Object.entries(xattrs).filter(([k]) => k !== 'trusted.overlay.origin'));
        // A directory's size is its dirents' bytes in EROFS, a block on ext4.
        return [p, { ...rest, size: rest.type === 'dir' ? 0 : rest.size, xattrs: kept }];
      }));
    assert.deepEqual(strip(got), strip(want));
    assert.equal(got.get('data/hardlink')!.ino, got.get('data/shared-a')!.ino, 'hard links share an inode');
    assert.equal(got.get('etc/opq')!.xattrs['trusted.overlay.opaque'], '79');
  });

  it('reads files on the codec workers: pieces whole with their digests, and a file that ends too soon is refused by name', async () => {
    const path = join(src, 'data/odd');
    const want = await readFile(path);
    const got = await pool.readFilePieces([
      { path, offset: 0, length: CHUNK, hash: true },
      { path, offset: 3 * CHUNK, length: 17, hash: false },
      { path: join(src, 'data/tiny'), offset: 0, length: 100, hash: false },
    ]);
    assert.deepEqual(got[0]!.data, want.subarray(0, CHUNK));
    assert.equal(got[0]!.digest, 'sha256:' + createHash('sha256').update(want.subarray(0, CHUNK)).digest('hex'));
    assert.deepEqual(got[1]!.data, want.subarray(3 * CHUNK));
    assert.equal(got[1]!.digest, undefined);
    assert.deepEqual(got[2]!.data, await readFile(join(src, 'data/tiny')));
    await assert.rejects(pool.readFilePieces([{ path, offset: 3 * CHUNK, length: CHUNK, hash: true }]),
      (err: unknown) => err instanceof MalformedLayerError && err.message.includes(path) && err.message.includes('17 of 65536 bytes'));
  });
});
