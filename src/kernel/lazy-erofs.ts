// A lazily pulled layer served by the kernel from its first read: an EROFS image of its TOC (no
// data needed) whose chunk indexes point at the store's packs for the chunks the store has and,
// for each chunk it lacks, at a device file of its own, empty until the chunk is fetched. A
// fanotify pre-content mark on the directory of those files (docs/kernel.md, "Lazy layers on
// EROFS") holds each read of an empty one until the chunk is fetched, verified and written
// (through the same LazyLayer the FUSE path uses), then lets it go; a fetch that fails answers
// EIO. A chunk file is never a hole: unfilled, it is empty, and EROFS fails a read past the end of
// a device with EIO. So when no process listens (the layer server killed, before a new one marks
// the directory again), a read of an unfetched chunk fails with EIO instead of seeing zeros, and a
// chunk file cut short by a crash holds a prefix of the right bytes. Lookups, stat, listings and
// reads of data already there never leave the kernel.
//
// The layout is `<mountpoint>.lazy/`: `image.erofs`, `layer` (the layer's digest) and
// `chunks/<hex of chunk digest>`. Everything the listener needs is the TOC and those names, so a
// later process (a successor on upgrade, or a layer server started after one was killed) serves
// the mount as it is: it marks the directory again; running containers keep their mount. A mount
// that has left its mountpoint (detach) moves its directory aside, for a new mount there, and is
// served until its superblock is gone from /sys/fs (`sysfs` names it): its last user has left.

import { randomUUID } from 'node:crypto';
import { fstat, readlinkSync, write } from 'node:fs';
import { access, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { basename, join } from 'node:path';
import type { CodecPool } from '../codec/codec-pool.js';
import { BLOCK_SIZE } from '../erofs/format.js';
import { StoreError, UnsupportedError } from '../errors.js';
import type { Toc, TocChunk, TocNode } from '../estargz/toc.js';
import type { LazyLayer } from '../fetch/lazy-layer.js';
import type { RemoteLayer } from '../fetch/remote-layer.js';
import { mountErofs, mountTable, sysfsDir, unmount } from '../system-mounts.js';
import type { ChunkStore } from '../store/chunk-store.js';
import { kernelModeUnsupported } from './kernel-layers.js';
import { PreContentGroup, type PreContentRange } from './pre-content.js';
import { fileChunkSize, buildTocLayer } from './toc-layer.js';

const fstatAsync = promisify(fstat);
const writeAsync = promisify(write);

/** The EROFS device table's bound (src/erofs): a layer missing more chunks than this stays on FUSE. */
const MAX_DEVICES = 16000;
/** A chunk file's size once filled: the chunk padded to its last block (EROFS reads devices in blocks). */
const filledSize = (chunkSize: number): number => Math.ceil(chunkSize / BLOCK_SIZE) * BLOCK_SIZE;
/** Empty chunk files made per codec task. */
const EMPTY_FILES_BATCH = 200;
/** At most this many bytes wait to be written ahead (fillAhead) in a process. */
const AHEAD_MAX_BYTES = 64 * 1024 * 1024;
/** How often a detached mount looks whether its superblock is gone. */
const GONE_POLL_MS = 1000;

export interface LazyErofsStats {
  /** Reads the kernel held for a chunk file (the first read of each of its pages). */
  reads: number;
  bytesRead: number;
  readErrors: number;
  /** Chunk files written for a read that waited. */
  filled: number;
  /** Chunk files written ahead of their first read, with prefetched chunks (fillAhead). */
  filledAhead: number;
}

/** Why `toc`'s layer cannot be served this way (it is served by FUSE then), or undefined. */
export function lazyErofsRefusal(toc: Toc): string | undefined {
  for (const node of new Set(toc.nodes.values())) {
    if (node.type !== 'reg' || node.size === 0) continue;
    if (node.chunks.some((c) => !c.chunkDigest)) return `"${node.path}" has chunks without chunkDigest`;
    if (fileChunkSize(node.chunks.map((c) => c.chunkSize)) === undefined) return `"${node.path}" is cut into chunks EROFS cannot point at (not a power of two from 4 KiB)`;
  }
  return undefined;
}

/** Why lazy layers cannot be kernel-served under `root`, or undefined: a pre-content mark must be possible there. */
export async function lazyErofsUnsupported(root: string): Promise<string | undefined> {
  let group: PreContentGroup | undefined;
  try {
    group = PreContentGroup.open();
    await mkdir(root, { recursive: true });
    group.markChildren(root);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  } finally {
    await group?.close();
  }
}

/**
 * The mode lazy layers get under `root` for config `mountMode`, and why; `erofs` asked for where
 * it cannot be had is refused (UnsupportedError). `enableFscache` (EROFS over fscache, which this
 * kernel replaces by file-backed mounts and pre-content events) adds a note saying so.
 */
export async function resolveMountMode(mountMode: 'auto' | 'erofs' | 'fuse', enableFscache: boolean, root: string): Promise<{ mode: 'erofs' | 'fuse'; why: string; note?: string }> {
  const note = enableFscache ? 'enable_fscache: EROFS over fscache (/dev/cachefiles) is not used; lazy EROFS layers use file-backed mounts filled through fanotify pre-content events instead (mount_mode)' : undefined;
  if (mountMode === 'fuse') return { mode: 'fuse', why: 'mount_mode fuse', note };
  const why = kernelModeUnsupported() ?? await lazyErofsUnsupported(root);
  if (why && mountMode === 'erofs') throw new UnsupportedError(`mount_mode erofs: ${why}`);
  return why ? { mode: 'fuse', why: `mount_mode auto: ${why}`, note } : { mode: 'erofs', why: `mount_mode ${mountMode}: file-backed EROFS and pre-content marks under ${root}`, note };
}

/**
 * LayerMountContext.kernelFs for the config's mount mode (undefined: FUSE), the mode and why
 * logged: what every process that mounts lazy layers starts with.
 */
export async function kernelFsFor(config: { mount_mode: 'auto' | 'erofs' | 'fuse'; enable_fscache: boolean; root: string; chunk_size: number },
  log: { info(o: object, m: string): void; warn(o: object, m: string): void }, store: ChunkStore, pool: CodecPool, onReadError: (layer: string, path: string, err: unknown) => void):
  Promise<ReturnType<typeof kernelLayerFs> | undefined> {
  const mode = await resolveMountMode(config.mount_mode, config.enable_fscache, config.root);
  if (mode.note) log.info({}, mode.note);
  log.info({ mode: mode.mode, why: mode.why }, 'lazy layers mount mode');
  return mode.mode === 'erofs' ? kernelLayerFs(store, pool, config.chunk_size, {
    readError: onReadError,
    detachError: (layer, dir, err) => log.warn({ layer, dir, err: (err as Error).message }, 'cannot let go of a detached lazy EROFS mount; it is served on'),
  }) : undefined;
}

/**
 * Mount mode `erofs` for LayerMount (LayerMountContext.kernelFs): each layer served by the kernel
 * where it can be, else the reason (it is served by FUSE then).
 */
function kernelLayerFs(store: ChunkStore, pool: CodecPool, chunkSize: number, report: { readError(layer: string, path: string, err: unknown): void; detachError(layer: string, dir: string, err: unknown): void }):
  (remote: RemoteLayer, lazy: LazyLayer, mountpoint: string, detached?: { lazyDir?: string }) => Promise<{ fs: LazyErofsFs; adopted: boolean } | { refused: string }> {
  return async (remote, lazy, mountpoint, detached) => {
    const layer = remote.desc.digest;
    try {
      return await LazyErofsFs.mount(remote.toc, layer, lazy, store, pool, chunkSize, mountpoint, detached, {
        readError: (path, err) => report.readError(layer, path, err), detachError: (dir, err) => report.detachError(layer, dir, err),
      });
    } catch (err) {
      if (err instanceof UnsupportedError) return { refused: err.message }; // lazyErofsRefusal's, or the kernel's; nothing is left mounted
      throw err;
    }
  };
}

/** A chunk file queued to be written ahead of its first read. */
interface AheadWrite {
  padded: number;
  /** Its write is under way (its own event is let through). */
  started: boolean;
  /** A read came first, while it was queued: that read fills it. */
  cancelled: boolean;
  /** True once written; never rejects. */
  done: Promise<boolean>;
}

/** Where a lazy EROFS mount tells of a read it failed (EIO) and of a detach that did not finish. */
interface LazyErofsReport {
  readError(path: string, err: unknown): void;
  detachError(dir: string, err: unknown): void;
}

/** The process's one group: every lazy EROFS mount's chunk directory is marked in it (a user may have 128 groups). */
class Listener {
  private static group: PreContentGroup | undefined;
  private static readonly dirs = new Map<string, (name: string, range: PreContentRange) => Promise<void>>();

  static add(dir: string, fill: (name: string, range: PreContentRange) => Promise<void>): void {
    if (!Listener.group) {
      Listener.group = PreContentGroup.open();
      Listener.group.listen(async (range) => {
        // Not through libuv's threads: a write ahead holds one of them until this very answer.
        const path = readlinkSync(`/proc/self/fd/${range.fd}`);
        // A directory this process has let go of (a successor serves it): allowed, which is safe
        // as a chunk file is never a hole; the successor's group fills it, or the read fails.
        await Listener.dirs.get(join(path, '..'))?.(basename(path), range);
      });
    }
    Listener.dirs.set(dir, fill);
    Listener.group.markChildren(dir);
  }

  /**
   * Runs fillAhead's writes one at a time for the whole process: each holds one of libuv's four
   * threads until this process answers the event its write raises.
   */
  static writeAhead<T>(task: () => Promise<T>): Promise<T> {
    const run = Listener.aheadQueue.then(task);
    Listener.aheadQueue = run.catch(() => undefined);
    return run;
  }

  private static aheadQueue: Promise<unknown> = Promise.resolve();
  /** Bytes queued by fillAhead; beyond AHEAD_MAX_BYTES a prefetched chunk is left to its first read (the queue holds its bytes). */
  static aheadBytes = 0;

  /** `path`, a chunk file written whole, raises no more events here. */
  static ignore(path: string): void {
    Listener.group?.ignore(path);
  }

  /** The marked directory `from` becomes `to` by `move`: its events (named by the new path from then on) are served on. */
  static async move(from: string, to: string, move: () => Promise<void>): Promise<void> {
    const fill = Listener.dirs.get(from);
    if (fill) Listener.dirs.set(to, fill); // both names while the rename is under way
    try {
      await move();
    } catch (err) {
      Listener.dirs.delete(to);
      throw err;
    }
    Listener.dirs.delete(from);
  }

  static async remove(dir: string): Promise<void> {
    if (!Listener.dirs.delete(dir) || !Listener.group) return;
    Listener.group.unmarkChildren(dir);
    if (Listener.dirs.size) return;
    const g = Listener.group;
    Listener.group = undefined;
    await g.close();
  }
}

export class LazyErofsFs {
  readonly stats: LazyErofsStats = { reads: 0, bytesRead: 0, readErrors: 0, filled: 0, filledAhead: 0 };
  /** Fills under way, by chunk file name: readers of one chunk wait on one fetch. */
  private readonly filling = new Map<string, Promise<void>>();
  /** Chunk files queued to be written ahead of their first read (fillAhead), by name. */
  private readonly ahead = new Map<string, AheadWrite>();
  private readonly byName = new Map<string, { node: TocNode; chunk: TocChunk }>();
  private released = false;
  /** Set by detach(): the directory moved aside; then a look every GONE_POLL_MS for the superblock. */
  private detaching: Promise<void> | undefined;
  private goneTimer: NodeJS.Timeout | undefined;
  private end!: (code: number) => void;
  /**
   * Settles once unmounted by this process, or once a detached mount has nothing left to serve
   * (there is no connection for the kernel to end; a release leaves it to the successor).
   */
  readonly ended = new Promise<number>((resolve) => (this.end = resolve));

  /** `dir`: the image and chunk files: `<mountpoint>.lazy`, or where detach() moved them. */
  private constructor(readonly mountpoint: string, private currentDir: string, private readonly toc: Toc, private readonly lazy: LazyLayer,
    private readonly report?: LazyErofsReport) {
    for (const node of new Set(toc.nodes.values())) {
      if (node.type !== 'reg') continue;
      for (const chunk of node.chunks) if (chunk.chunkDigest) this.byName.set(chunk.chunkDigest.slice(7), { node, chunk });
    }
  }

  get dir(): string {
    return this.currentDir;
  }

  private get chunkDir(): string {
    return join(this.dir, 'chunks'); // moveAside() names it too
  }

  /**
   * Serves `toc`'s layer at `mountpoint`: the mount already there if it is this layer's (made by
   * an earlier process), else a new image over the store and empty chunk files, mounted once
   * the chunk directory is marked (a file the mount opens before it is marked never raises an
   * event). `detached`: the mount has left its mountpoint (it is still in use; a predecessor
   * detached it): its chunk files are served where they are (`lazyDir`, else `<mountpoint>.lazy`),
   * and the caller goes on with its detach. Refused (UnsupportedError) when the layer cannot be
   * served this way.
   */
  static async mount(toc: Toc, layerDigest: string, lazy: LazyLayer, store: ChunkStore, pool: CodecPool, chunkSize: number, mountpoint: string,
    detached: { lazyDir?: string } | undefined, report?: LazyErofsReport): Promise<{ fs: LazyErofsFs; adopted: boolean }> {
    const why = lazyErofsRefusal(toc);
    if (why) throw new UnsupportedError(`lazy EROFS layer ${layerDigest}: ${why}`);
    const fs = new LazyErofsFs(mountpoint, detached?.lazyDir ?? `${mountpoint}.lazy`, toc, lazy, report);
    const adopted = await fs.servesAlready(layerDigest, detached !== undefined);
    if (!adopted) {
      await unmount(mountpoint);
      await rm(fs.dir, { recursive: true, force: true });
      await mkdir(fs.chunkDir, { recursive: true });
      await mkdir(mountpoint, { recursive: true });
    }
    Listener.add(fs.chunkDir, (name, range) => fs.fill(name, range));
    if (adopted && !detached && !(await access(join(fs.dir, 'sysfs')).then(() => true, () => false))) await fs.recordSysfs(); // made by a version that did not
    if (!adopted) {
      try {
        await fs.build(layerDigest, store, pool, chunkSize);
      } catch (err) {
        await Listener.remove(fs.chunkDir);
        await rm(fs.dir, { recursive: true, force: true });
        throw err;
      }
    }
    return { fs, adopted };
  }

  /** Names the superblock under /sys/fs (file `sysfs`): a detached mount learns from it when its last user is gone. */
  private async recordSysfs(): Promise<void> {
    const sysfs = sysfsDir(this.mountpoint);
    if (sysfs) await writeFile(join(this.dir, 'sysfs'), sysfs);
  }

  private async servesAlready(layerDigest: string, detached: boolean): Promise<boolean> {
    const recorded = await readFile(join(this.dir, 'layer'), 'utf8').catch(() => undefined);
    if (detached && recorded !== layerDigest) throw new UnsupportedError(`detached lazy EROFS mount of ${layerDigest}: ${this.dir} is not its`);
    return recorded === layerDigest && (detached || (await mountTable()).some((m) => m.target === this.mountpoint && m.fstype === 'erofs'));
  }

  /**
   * The image: stored chunks where the store has them (verified now), every other chunk an empty
   * file of its own, all made at once on the codec pool while the image is built on another worker.
   */
  private async build(layerDigest: string, store: ChunkStore, pool: CodecPool, chunkSize: number): Promise<void> {
    const missing = store.missing([...this.byName.keys()].map((h) => `sha256:${h}`));
    if (missing.size > MAX_DEVICES) throw new UnsupportedError(`lazy EROFS layer ${layerDigest}: ${missing.size} chunks to fetch, over the ${MAX_DEVICES} devices an image may have`);
    const chunkFiles = new Map<string, number>(); // name -> filledSize
    const names = [...missing].map((d) => d.slice(7));
    // In batches: a worker making a thousand files (0.1–1.3 ms each on this machine's disk) would keep other mounts' chunks waiting.
    const made = Promise.all(Array.from({ length: Math.ceil(names.length / EMPTY_FILES_BATCH) },
      (_, i) => pool.emptyFiles(this.chunkDir, names.slice(i * EMPTY_FILES_BATCH, (i + 1) * EMPTY_FILES_BATCH))));
    for (const name of names) chunkFiles.set(name, filledSize(this.byName.get(name)!.chunk.chunkSize));
    const chunkFile = async (digest: string, size: number): Promise<{ at: { pack: string; offset: number }; data: Buffer }> => {
      const name = digest.slice(7);
      if (!chunkFiles.has(name)) { // stored, but it failed its check
        chunkFiles.set(name, filledSize(size));
        await writeFile(join(this.chunkDir, name), '');
      }
      return { at: { pack: name, offset: 0 }, data: Buffer.alloc(0) };
    };
    // Both settled before going on: a failed build's directory is removed, and nothing may be writing to it then.
    const [built, filesMade] = await Promise.allSettled([buildTocLayer(this.toc, chunkSize, {
      placeStored: async (digest, size) => (!missing.has(digest) && await store.placeStored(digest, size, pool)) || chunkFile(digest, size),
      placeStoredMany: (chunks) => store.placeStoredMany(chunks.filter((c) => !missing.has(c.digest)), pool),
      storeChunk: () => Promise.reject(new UnsupportedError('a lazy EROFS layer cuts no chunk again')),
      packSize: async (pack) => chunkFiles.get(pack) ?? (await stat(store.packPath(pack))).size,
    }, pool), made]);
    if (built.status === 'rejected') throw built.reason;
    if (filesMade.status === 'rejected') throw filesMade.reason;
    const layer = built.value;
    const image = join(this.dir, 'image.erofs');
    await writeFile(image, layer.image);
    mountErofs(image, this.mountpoint, layer.devices.map((d) => chunkFiles.has(d) ? join(this.chunkDir, d) : store.packPath(d)));
    await this.recordSysfs();
    await writeFile(join(this.dir, 'layer'), layerDigest);
  }

  /**
   * A chunk prefetched (fetched and verified) before its first read: written into its chunk file
   * now, so that no read of it waits for an event. The write, through a descriptor of our own,
   * raises an event to our own group, which fill() lets through; a reader that comes meanwhile
   * waits for the write. A chunk the image points at in a pack has no chunk file: nothing to do.
   * True once written; false when there was nothing to write (in a pack, filled by a read
   * already) or the write was given up (its first read then fills it as any other). Never rejects.
   */
  fillAhead(chunk: TocChunk, data: Buffer): Promise<boolean> {
    const name = chunk.chunkDigest?.slice(7);
    const padded = filledSize(chunk.chunkSize);
    if (!name || this.released || this.detaching || !this.byName.has(name) || this.ahead.has(name) || Listener.aheadBytes + padded > AHEAD_MAX_BYTES) return Promise.resolve(false);
    Listener.aheadBytes += padded;
    const w: AheadWrite = { padded, started: false, cancelled: false, done: Promise.resolve(false) };
    w.done = Listener.writeAhead(async () => {
      if (w.cancelled || this.released || this.detaching) return false; // a reader fills it; the directory is let go of or moving
      w.started = true;
      return this.writeAhead(name, data, padded);
    }).catch(() => false) // not written: its first read fills it as any other
      .finally(() => {
        Listener.aheadBytes -= padded;
        this.ahead.delete(name);
      });
    this.ahead.set(name, w);
    return w.done;
  }

  private async writeAhead(name: string, data: Buffer, padded: number): Promise<boolean> {
    const file = join(this.chunkDir, name);
    const fh = await open(file, 'r+').catch(() => undefined); // ENOENT: in a pack; no O_CREAT
    if (!fh) return false;
    try {
      if ((await fh.stat()).size >= padded) return false; // filled by a read already
      const out = Buffer.alloc(padded);
      data.copy(out);
      if ((await fh.write(out, 0, padded, 0)).bytesWritten !== padded) return false; // short (a full disk): left to its first read
      this.stats.filledAhead++;
    } finally {
      await fh.close();
    }
    Listener.ignore(file);
    return true;
  }

  /** A read of chunk file `name` waits: fetch the chunk (verified) and write it whole, padded to its last block. */
  private async fill(name: string, range: PreContentRange): Promise<void> {
    if (this.released) return; // as for a directory let go of (Listener)
    const w = this.ahead.get(name);
    if (w?.started && range.pid === process.pid && range.offset === 0 && range.count === w.padded) return; // the write ahead's own event
    if (w && !w.started) w.cancelled = true; // still queued: this read fills it now
    else if (w) {
      await w.done; // then, written or not, as any read: write() finds it full or fills it
      if (this.released) return;
    }
    const ref = this.byName.get(name);
    this.stats.reads++;
    if (range.count > 0) this.stats.bytesRead += range.count; // -1: no range; 0: the whole file
    if (!ref) throw new UnsupportedError(`chunk file ${name} of ${this.mountpoint}`);
    const padded = filledSize(ref.chunk.chunkSize);
    let f = this.filling.get(name);
    if (!f) {
      f = this.write(range.fd, ref, padded).finally(() => this.filling.delete(name));
      this.filling.set(name, f);
    }
    try {
      await f;
    } catch (err) {
      this.stats.readErrors++;
      this.report?.readError(`/${ref.node.path}`, err); // from the mount's root, as FUSE mode logs it
      throw err;
    }
  }

  private async write(fd: number, ref: { node: TocNode; chunk: TocChunk }, padded: number): Promise<void> {
    // By the event's descriptor, not by name: a detach may move the directory while the chunk comes.
    const file = `/proc/self/fd/${fd}`;
    if ((await fstatAsync(fd)).size < padded) { // else filled by an earlier event, or another process
      const data = await this.lazy.read(ref.node, ref.chunk.chunkOffset, ref.chunk.chunkSize);
      const out = Buffer.alloc(padded);
      data.copy(out);
      // Through the event's descriptor, which raises no events: a write through any other
      // descriptor of the file would wait for this very listener.
      const { bytesWritten: written } = await writeAsync(fd, out, 0, padded, 0);
      if (written !== padded) throw new StoreError(`chunk file ${ref.chunk.chunkDigest!.slice(7)} of ${this.mountpoint}: ${written} of ${padded} bytes written`);
      this.stats.filled++;
    }
    // Complete: the kernel reads it in 128 KiB requests, each an event otherwise (a 4 MiB
    // chunk, 32 round trips where one is needed).
    Listener.ignore(file);
  }

  /**
   * The mount has left its mountpoint (retired, or removed from outside) and may still be in use:
   * its directory moves aside, so that a new mount there gets a directory of its own, and it is
   * served until its superblock is gone from /sys/fs (the last overlay above it or open file in
   * it is gone); then the directory is unmarked and removed and `ended` settles. One whose
   * superblock was never named (before Linux 6.10) is served until the process stops. Settles
   * once the mountpoint's directory name is free for a new mount.
   */
  detach(): Promise<void> {
    this.detaching ??= this.moveAside().then(() => this.watchGone()).catch((err: unknown) => this.report?.detachError(this.dir, err));
    return this.detaching;
  }

  private async moveAside(): Promise<void> {
    const home = `${this.mountpoint}.lazy`;
    if (this.dir !== home) return; // moved by a predecessor
    const aside = `${home}-detached-${randomUUID().slice(0, 8)}`;
    await Listener.move(join(home, 'chunks'), join(aside, 'chunks'), () => rename(home, aside));
    this.currentDir = aside;
  }

  private async watchGone(): Promise<void> {
    const sysfs = await readFile(join(this.dir, 'sysfs'), 'utf8').catch(() => undefined);
    if (!sysfs || this.released) return;
    const there = (): Promise<boolean> => access(sysfs).then(() => true, () => false); // not a stat on the event loop every second
    if (!await there()) return this.gone(); // unused: the unmount ended it
    this.goneTimer = setInterval(() => void there().then(async (yes) => {
      if (yes || this.released) return;
      clearInterval(this.goneTimer);
      await this.gone();
    }).catch((err: unknown) => this.report?.detachError(this.dir, err)), GONE_POLL_MS).unref();
  }

  private async gone(): Promise<void> {
    await this.removeFiles();
    this.end(0);
  }

  private async removeFiles(): Promise<void> {
    await Listener.remove(this.chunkDir);
    await rm(this.dir, { recursive: true, force: true });
  }

  /** Stops serving once the fills under way are answered (a successor has marked the directory itself); the mount stays. */
  async release(): Promise<void> {
    this.released = true;
    clearInterval(this.goneTimer);
    await Promise.allSettled([...this.filling.values(), this.detaching]);
    await Listener.remove(this.chunkDir);
  }

  /** Unmounts and removes the chunk files (their chunks are in the store); a detached one has left its mountpoint (another mount may be there). */
  async unmount(): Promise<void> {
    this.released = true;
    clearInterval(this.goneTimer);
    if (!this.detaching) await unmount(this.mountpoint);
    await this.removeFiles();
    this.end(0);
  }
}
