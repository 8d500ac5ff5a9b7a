// What the kernel does with fanotify pre-content events on the blob of a file-backed EROFS mount
// (docs/kernel.md, "Lazy layers on EROFS: what the kernel does"): each fact the design of lazy
// EROFS layers rests on, shown with a real mount, a blob on the root's filesystem (tmpfs refuses
// pre-content marks) and a listener process (test/fixtures/pre-content-listener.ts) that is
// killed with SIGKILL where the fact is about its death.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildErofs } from '../src/erofs/build.js';
import { PreContentGroup } from '../src/kernel/pre-content.js';
import { mountErofs, unmount } from '../src/system-mounts.js';
import { erofsSkipReason } from './fixtures/erofs.js';
import { pattern } from './fixtures/pre-content.js';

const LISTENER = fileURLToPath(new URL('./fixtures/pre-content-listener.js', import.meta.url));
const SIZE = 8 << 20;
const BLOCK = 4096;
/** Where the blobs go: the root's filesystem (ext4 here); /tmp may be a tmpfs. */
const WORK_PARENT = '/var/tmp';

function skipReason(): string | undefined {
  const why = erofsSkipReason(['chunked_file', 'device_table']);
  if (why) return why;
  try {
    void PreContentGroup.open().close();
  } catch (err) {
    return `no fanotify pre-content groups here: ${(err as Error).message}`;
  }
  return undefined;
}

interface Listener {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  /** The first line that has `key`. */
  line(key: string): Promise<Record<string, unknown>>;
}

function startListener(blob: string, mode: 'fill' | 'hold' | 'deny', ...flags: string[]): Listener {
  const child = spawn(process.execPath, [LISTENER, blob, mode, ...flags], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  const waiters: (() => void)[] = [];
  child.stdout!.on('data', (d: Buffer) => {
    buf += d;
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
    waiters.splice(0).forEach((w) => w());
  });
  const line = async (key: string): Promise<Record<string, unknown>> => {
    for (;;) {
      const l = lines.find((x) => key in x);
      if (l) return l;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`listener exited before saying ${key}`);
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  return { child, lines, line };
}

interface ReadResult {
  code: number | null;
  error: string;
  bytes: Buffer;
}

/** One 4 KiB block of `file` read by another process (dd), so a read the kernel holds blocks it, not the test. */
function readBlock(file: string, block: number, direct = false): { done: Promise<ReadResult>; child: ChildProcess } {
  const child = spawn('dd', [`if=${file}`, `bs=${BLOCK}`, 'count=1', `skip=${block}`, 'status=none', ...(direct ? ['iflag=direct'] : [])]);
  const out: Buffer[] = [];
  let error = '';
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => (error += c));
  return { child, done: new Promise((resolve) => child.on('exit', (code) => resolve({ code, error: error.trim(), bytes: Buffer.concat(out) }))) };
}

/** Whether `p` is still unsettled after `ms` (only ever asserted true: a slow machine cannot make it false). */
async function stillWaiting(p: Promise<unknown>, ms = 1000): Promise<boolean> {
  return Promise.race([p.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), ms))]);
}

const zeros = Buffer.alloc(BLOCK);

describe('fanotify pre-content events on a file-backed EROFS blob', { skip: skipReason() }, () => {
  let work: string;
  const cleanups: (() => Promise<void> | void)[] = [];

  before(async () => {
    work = await mkdtemp(join(WORK_PARENT, 'pre-content-test-'));
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
    await rm(work, { recursive: true, force: true });
  });

  /** A sparse blob and an image whose one file `f` is the blob's 8 MiB, in 1 MiB chunks; not mounted yet. */
  async function layer(name: string): Promise<{ blob: string; image: string; mnt: string; file: string; mount(): void }> {
    const dir = join(work, name);
    await mkdir(join(dir, 'mnt'), { recursive: true });
    const blob = join(dir, 'blob');
    const image = join(dir, 'image.erofs');
    await writeFile(blob, '');
    await truncate(blob, SIZE);
    const built = buildErofs([{ path: 'f', type: 'reg', mode: 0o644, mtime: 1, extents: [{ device: 0, offset: 0, length: SIZE }] }],
      { devices: [{ tag: 'blob', size: SIZE }], chunkSize: 1 << 20 });
    await writeFile(image, built.image);
    const mnt = join(dir, 'mnt');
    return {
      blob, image, mnt, file: join(mnt, 'f'),
      mount: () => {
        mountErofs(image, mnt, [blob]);
        cleanups.push(() => unmount(mnt));
      },
    };
  }

  function listener(blob: string, mode: 'fill' | 'hold' | 'deny', ...flags: string[]): Listener {
    const l = startListener(blob, mode, ...flags);
    cleanups.push(() => void (l.child.exitCode === null && l.child.signalCode === null && l.child.kill('SIGKILL')));
    return l;
  }

  function killLater(pid: number): void {
    cleanups.push(() => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    });
  }

  it('a read through the mount raises the event on the blob, in the reader, with the range; filled and allowed, it reads the bytes', async () => {
    const l = await layer('fill');
    const li = listener(l.blob, 'fill');
    await li.line('ready');
    l.mount();
    const r = readBlock(l.file, 300);
    const got = await r.done;
    assert.equal(got.code, 0, got.error);
    assert.deepEqual(got.bytes, pattern(300 * BLOCK, BLOCK));
    const events = li.lines.filter((x) => 'event' in x).map((x) => x.event as { pid: number; offset: number; count: number });
    assert.ok(events.length >= 1);
    assert.equal(events[0]!.pid, r.child.pid, 'the event names the reader, not a kernel thread');
    assert.equal(events[0]!.offset, 300 * BLOCK);
    assert.ok(events[0]!.count >= BLOCK && events[0]!.count % BLOCK === 0, `range of ${events[0]!.count} bytes`);
  });

  it('a blob the mount opened before it was marked raises no event, even with the mark added later: its hole reads as zeros', async () => {
    const l = await layer('mount-first');
    l.mount();
    const li = listener(l.blob, 'fill');
    await li.line('ready');
    const got = await readBlock(l.file, 300).done;
    assert.equal(got.code, 0);
    assert.deepEqual(got.bytes, zeros);
    assert.equal(li.lines.filter((x) => 'event' in x).length, 0);
  });

  it('a denial gives the reader EIO, and the next read asks again; O_DIRECT is refused at open', async () => {
    const l = await layer('deny');
    const li = listener(l.blob, 'deny');
    await li.line('ready');
    l.mount();
    for (let i = 0; i < 2; i++) {
      const got = await readBlock(l.file, 300).done;
      assert.notEqual(got.code, 0);
      assert.match(got.error, /Input\/output error/);
      assert.equal(got.bytes.length, 0, 'no short read');
    }
    assert.ok(li.lines.filter((x) => 'event' in x).length >= 2);
    const direct = await readBlock(l.file, 300, true).done;
    assert.match(direct.error, /Invalid argument/, 'file-backed EROFS has no direct I/O here');
  });

  it('a fill that ends after the group is closed writes its answer nowhere: the descriptor number may be another file\'s', async () => {
    const dir = join(work, 'late-answer');
    await mkdir(dir);
    const file = join(dir, 'f');
    await writeFile(file, pattern(0, BLOCK));
    const group = PreContentGroup.open();
    let release!: () => void;
    const filled = new Promise<void>((resolve) => (release = resolve));
    let event!: () => void;
    const evented = new Promise<void>((resolve) => (event = resolve));
    group.markChildren(dir);
    group.listen(async () => {
      event();
      await filled;
    });
    const reader = readBlock(file, 0);
    const opened: { fd: number; path: string }[] = [];
    try {
      await evented;
      const number = group.fd;
      await group.close(); // the kernel lets the read go
      assert.deepEqual((await reader.done).bytes, pattern(0, BLOCK));
      // Files opened until one gets the group's old number (the lowest free one comes first).
      for (let i = 0; i < 64 && !opened.some((o) => o.fd === number); i++) {
        const path = join(work, `late-answer-other-${i}`);
        opened.push({ fd: openSync(path, 'w+'), path });
      }
      const reused = opened.find((o) => o.fd === number);
      assert.ok(reused, `descriptor ${number} given to a new file`);
      release();
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await stat(reused.path)).size, 0, `nothing written to descriptor ${number}, another file's now`);
    } finally {
      release();
      for (const o of opened) closeSync(o.fd);
    }
  });

  it('kill -9 of the only holder: the read it held and every later read return the hole\'s zeros, until a new group marks the blob and the mount is made again', async () => {
    const l = await layer('sole-holder');
    const li = listener(l.blob, 'hold');
    await li.line('ready');
    l.mount();
    const held = readBlock(l.file, 300);
    await li.line('event');
    assert.ok(await stillWaiting(held.done));
    li.child.kill('SIGKILL');
    const got = await held.done;
    assert.equal(got.code, 0);
    assert.deepEqual(got.bytes, zeros, 'the group\'s release allowed it');
    const later = await readBlock(l.file, 600).done;
    assert.deepEqual(later.bytes, zeros, 'the marks went with the group');

    // A new group marking the blob again is asked for blocks not read meanwhile; the zeros read
    // meanwhile stay in the mount's page cache until it is mounted again.
    const again = listener(l.blob, 'fill');
    await again.line('ready');
    assert.deepEqual((await readBlock(l.file, 900).done).bytes, pattern(900 * BLOCK, BLOCK));
    assert.deepEqual((await readBlock(l.file, 300).done).bytes, zeros);
    await unmount(l.mnt);
    mountErofs(l.image, l.mnt, [l.blob]);
    assert.deepEqual((await readBlock(l.file, 300).done).bytes, pattern(300 * BLOCK, BLOCK));
  });

  it('kill -9 of the listener while a keeper holds the group: reads wait; a successor takes the group and they get the bytes', async () => {
    const l = await layer('keeper');
    const li = listener(l.blob, 'hold', '--keeper');
    const ready = await li.line('ready');
    const keeper = ready.keeper as number;
    killLater(keeper);
    l.mount();
    const held = readBlock(l.file, 300);
    await li.line('event');
    li.child.kill('SIGKILL');
    const queued = readBlock(l.file, 600); // after the death: queued, nobody reads the group
    assert.ok(await stillWaiting(held.done), 'the event the dead listener read stays pending');
    assert.ok(await stillWaiting(queued.done, 10), 'a later read waits in the queue');

    const successor = listener(l.blob, 'fill', '--take', `${keeper}:${ready.keeperFd as number}`);
    const stranded = await successor.line('stranded');
    assert.equal(stranded.stranded, 1, 'the dead listener\'s one pending event, denied by descriptor number');
    const [a, b] = await Promise.all([held.done, queued.done]);
    // The denied read is mostly retried by the kernel's read path, which raises a new event that
    // is filled; on a loaded machine it sometimes fails with EIO instead. Never the hole's zeros.
    if (a.code === 0) assert.deepEqual(a.bytes, pattern(300 * BLOCK, BLOCK));
    else {
      assert.match(a.error, /Input\/output error/);
      assert.equal(a.bytes.length, 0, 'no short read');
    }
    assert.deepEqual(b.bytes, pattern(600 * BLOCK, BLOCK), b.error);
    const later = await readBlock(l.file, 900).done;
    assert.deepEqual(later.bytes, pattern(900 * BLOCK, BLOCK));

    // The successor killed too: the keeper still holds the group, so a read waits, and only
    // when the keeper goes as well does the release let it read the hole.
    successor.child.kill('SIGKILL');
    const last = readBlock(l.file, 1200);
    assert.ok(await stillWaiting(last.done));
    process.kill(keeper, 'SIGKILL');
    assert.deepEqual((await last.done).bytes, zeros);
  });
});
