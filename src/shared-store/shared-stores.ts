// The daemon's view of its shared stores (config shared_stores; read only, never written): which
// layers, by chain id, a Prepare can mount from one of them. A refresh reads every store's image
// records; an image is added once its record and every layer it names read and verify (the EROFS
// image's digest, every chunk's digest in its pack), and dropped when its record goes, its store
// stops reading, or its files change and no longer verify. Refreshes run at start, whenever inotify
// reports a change in a store's images/ (where the filesystem reports them: not for other hosts'
// writes on NFS), and every period in any case. Nothing here throws at the daemon: a bad image or
// store is a log line and a metric.

import { watch, type FSWatcher } from 'node:fs';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isDedupError, SharedStoreError } from '../errors.js';
import { readPieces } from '../store/pack-files.js';
import { imageRecordSchema, layerRecordSchema, readRecord, StoreLayout, type ImageRecord } from './layout.js';
import type { SharedStoreMetrics } from './metrics.js';
import { sha256Digest } from '../digest.js';

/** A layer a Prepare can mount from a shared store. */
export interface SharedLayer {
  store: string;
  chainId: string;
  diffId: string;
  /** The EROFS image, and the packs its device table names, in order. */
  image: string;
  devices: string[];
  usage: { size: number; inodes: number };
}

interface Log {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
}

export interface SharedStoresOptions {
  dirs: string[];
  periodMs: number;
  log: Log;
  metrics?: SharedStoreMetrics;
  /** After each refresh (the daemon releases snapshots of layers no store has any more). */
  refreshed?: () => Promise<void>;
}

interface Served {
  /** What the image's files looked like when verified: a change means verifying again. */
  fingerprint: string;
  ref: string;
  layers: SharedLayer[];
}

interface StoreState {
  layout: StoreLayout;
  /** undefined before the first refresh. */
  up?: boolean;
  /** By image record file. */
  served: Map<string, Served>;
  /** Image record files not served, with the fingerprint they had (logged once per change). */
  rejected: Map<string, string>;
  watcher?: FSWatcher;
  /** What the watcher watches: images/, or the store's directory until images/ exists. */
  watched?: string;
}

/** Files' identity and version, cheap to take every period: inode, size, modification time. */
async function fingerprintOf(paths: string[]): Promise<string> {
  const parts = await Promise.all(paths.map(async (p) => {
    const st = await stat(p).catch(() => undefined);
    return st ? `${st.ino}:${st.size}:${st.mtimeMs}` : '-';
  }));
  return parts.join('|');
}

/** Reads and checks one layer: its record, its image's size and digest, and every chunk in its packs. */
async function verifyLayer(layout: StoreLayout, diffId: string): Promise<Omit<SharedLayer, 'chainId'>> {
  const recordPath = layout.layerRecord(diffId);
  if (!(await stat(recordPath).catch(() => undefined))) throw new SharedStoreError('incomplete', `layer ${diffId} is not in the store (${recordPath} missing)`);
  const rec = await readRecord(layerRecordSchema, recordPath).catch((err: Error) => {
    throw new SharedStoreError('record', err.message);
  });
  if (rec.diffId !== diffId) throw new SharedStoreError('record', `${recordPath} is the record of layer ${rec.diffId}`);
  const imagePath = layout.layerImage(diffId);
  const image = await readFile(imagePath).catch((err: NodeJS.ErrnoException) => {
    throw new SharedStoreError(err.code === 'ENOENT' ? 'incomplete' : 'unreadable', `EROFS image ${imagePath}: ${err.message}`);
  });
  if (image.length !== rec.image.size) throw new SharedStoreError('image_digest', `EROFS image ${imagePath} has ${image.length} bytes, its record says ${rec.image.size}`);
  const got = sha256Digest(image);
  if (got !== rec.image.digest) throw new SharedStoreError('image_digest', `EROFS image ${imagePath} has digest ${got}, its record says ${rec.image.digest}`);
  const devices = new Set(rec.devices);
  for (const pack of rec.devices) {
    const fh = await open(layout.pack(pack)).catch((err: NodeJS.ErrnoException) => {
      throw new SharedStoreError(err.code === 'ENOENT' ? 'incomplete' : 'unreadable', `pack ${layout.pack(pack)} of layer ${diffId}: ${err.message}`);
    });
    try {
      for (const c of rec.chunks.filter((x) => x.pack === pack).sort((a, b) => a.offset - b.offset)) {
        const data = await readPieces(fh, c.offset, c.size);
        if (data.length !== c.size) throw new SharedStoreError('chunk_digest', `pack ${layout.pack(pack)} is truncated: chunk ${c.digest} at ${c.offset} has ${data.length} of ${c.size} bytes`);
        const d = sha256Digest(data);
        if (d !== c.digest) throw new SharedStoreError('chunk_digest', `chunk ${c.digest} at ${c.offset} of pack ${layout.pack(pack)} has digest ${d}`);
      }
    } finally {
      await fh.close();
    }
  }
  const stray = rec.chunks.find((c) => !devices.has(c.pack));
  if (stray) throw new SharedStoreError('record', `${recordPath}: chunk ${stray.digest} is in pack ${stray.pack}, which the image has no device for`);
  return { store: layout.dir, diffId, image: imagePath, devices: rec.devices.map((p) => layout.pack(p)), usage: rec.usage };
}

export class SharedStores {
  private readonly stores: StoreState[];
  private byChain = new Map<string, SharedLayer>();
  /** Layer directories verified, with the fingerprint they had then (shared by the images that use them). */
  private readonly verified = new Map<string, { fingerprint: string; layer: Omit<SharedLayer, 'chainId'> }>();
  private running: Promise<void> | undefined;
  private pending: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly opts: SharedStoresOptions) {
    this.stores = opts.dirs.map((d) => ({ layout: new StoreLayout(d), served: new Map(), rejected: new Map() }));
  }

  /** The first refresh, then the watchers and the periodic scan. */
  async start(): Promise<void> {
    await this.refresh('start');
    this.timer = setInterval(() => this.trigger('scan'), this.opts.periodMs).unref();
  }

  /** Whether `dir` is one of the stores and could not be read at the last refresh (a share gone, for now). */
  unreadable(dir: string): boolean {
    return this.stores.some((s) => s.layout.dir === dir && s.up === false);
  }

  /** The layer with this chain id in the first store that serves it. */
  find(chainId: string): SharedLayer | undefined {
    return this.byChain.get(chainId);
  }

  /** Asks for a refresh; one that arrives while one runs makes one more run after it. */
  trigger(why: string): void {
    if (this.closed) return;
    if (this.running) {
      this.pending = why;
      return;
    }
    void this.refresh(why);
  }

  /** Refreshes every store now (waits for one already running, then runs again). */
  async refresh(why: string): Promise<void> {
    while (this.running) await this.running;
    this.running = this.refreshAll(why).finally(() => (this.running = undefined));
    await this.running;
    const next = this.pending;
    this.pending = undefined;
    if (next && !this.closed) this.trigger(next);
  }

  private async refreshAll(why: string): Promise<void> {
    this.opts.metrics?.refreshed(why);
    for (const s of this.stores) {
      try {
        await this.refreshStore(s);
      } catch (err) {
        this.opts.log.warn({ store: s.layout.dir, err: (err as Error).message }, 'shared store refresh failed');
      }
    }
    const byChain = new Map<string, SharedLayer>();
    for (const s of this.stores) for (const img of s.served.values()) for (const l of img.layers) if (!byChain.has(l.chainId)) byChain.set(l.chainId, l);
    this.byChain = byChain;
    await this.opts.refreshed?.().catch((err: Error) => this.opts.log.warn({ err: err.message }, 'releasing layers removed from the shared stores failed'));
  }

  private async refreshStore(s: StoreState): Promise<void> {
    const dir = s.layout.dir;
    let names: string[];
    try {
      names = (await readdir(s.layout.images)).filter((n) => n.endsWith('.json'));
    } catch (err) {
      if (s.up !== false) {
        this.opts.log.warn({ store: dir, err: (err as Error).message, images: s.served.size }, 'shared store unreadable: its images are not served to new pulls (layers mounted from it stay)');
      }
      s.up = false;
      for (const img of s.served.values()) this.opts.log.info({ store: dir, image: img.ref }, 'shared image dropped: its store is unreadable');
      s.served.clear();
      s.rejected.clear();
      this.watch(s, dir); // a publisher's first mkdir of images/ shows there
      this.opts.metrics?.storeRead(dir, false, 0);
      return;
    }
    if (s.up === false) this.opts.log.info({ store: dir }, 'shared store readable again');
    s.up = true;
    this.watch(s, s.layout.images);
    const seen = new Set<string>();
    for (const name of names) {
      const file = join(s.layout.images, name);
      seen.add(file);
      await this.refreshImage(s, file);
    }
    for (const [file, img] of s.served) {
      if (seen.has(file)) continue;
      s.served.delete(file);
      this.opts.log.info({ store: dir, image: img.ref }, 'shared image removed from its store');
    }
    for (const file of s.rejected.keys()) if (!seen.has(file)) s.rejected.delete(file);
    this.opts.metrics?.storeRead(dir, true, s.served.size);
  }

  private async refreshImage(s: StoreState, file: string): Promise<void> {
    const dir = s.layout.dir;
    let rec: ImageRecord | undefined;
    let fingerprint = await fingerprintOf([file]);
    try {
      rec = await readRecord(imageRecordSchema, file).catch((err: Error) => {
        throw new SharedStoreError('record', err.message);
      });
      const layerFiles = rec.layers.flatMap((l) => [s.layout.layerRecord(l.diffId), s.layout.layerImage(l.diffId)]);
      fingerprint += '|' + await fingerprintOf(layerFiles);
      if (s.served.get(file)?.fingerprint === fingerprint || s.rejected.get(file) === fingerprint) return;
      const started = performance.now();
      const layers: SharedLayer[] = [];
      for (const l of rec.layers) {
        const layerDir = s.layout.layer(l.diffId);
        const layerPrint = await fingerprintOf([s.layout.layerRecord(l.diffId), s.layout.layerImage(l.diffId), ...await this.packFiles(s, l.diffId)]);
        let v = this.verified.get(layerDir);
        if (v?.fingerprint !== layerPrint) {
          v = { fingerprint: layerPrint, layer: await verifyLayer(s.layout, l.diffId) };
          this.verified.set(layerDir, v);
        }
        layers.push({ ...v.layer, chainId: l.chainId });
      }
      const had = s.served.has(file);
      s.served.set(file, { fingerprint, ref: rec.ref, layers });
      s.rejected.delete(file);
      this.opts.log.info({ store: dir, image: rec.ref, layers: layers.length, ms: Math.round(performance.now() - started), replaced: had }, 'shared image added');
    } catch (err) {
      if (!isDedupError(err) && !(err as NodeJS.ErrnoException).code) throw err; // a bug, not the store's state
      const e = err instanceof SharedStoreError ? err : new SharedStoreError('unreadable', (err as Error).message, { cause: err });
      if (s.rejected.get(file) === fingerprint) return;
      const was = s.served.get(file);
      s.served.delete(file);
      s.rejected.set(file, fingerprint);
      for (const l of rec?.layers ?? []) this.verified.delete(s.layout.layer(l.diffId));
      this.opts.log.warn({ store: dir, image: rec?.ref ?? file, reason: e.reason, err: e.message, wasServed: was !== undefined }, 'shared image not served');
      this.opts.metrics?.imageRejected(e.reason);
    }
  }

  /** The pack files a layer's record names (for its fingerprint); none when the record does not read. */
  private async packFiles(s: StoreState, diffId: string): Promise<string[]> {
    const rec = await readRecord(layerRecordSchema, s.layout.layerRecord(diffId)).catch(() => undefined);
    return (rec?.devices ?? []).map((p) => s.layout.pack(p));
  }

  /** inotify on `path` (images/, or the store until it has one) where the filesystem gives it; the periodic scan covers the rest. */
  private watch(s: StoreState, path: string): void {
    if ((s.watcher && s.watched === path) || this.closed) return;
    const unwatch = (): void => {
      s.watcher?.close();
      s.watcher = undefined;
      s.watched = undefined;
    };
    unwatch();
    try {
      s.watcher = watch(path, { persistent: false }, () => this.trigger('inotify'));
      s.watched = path;
      s.watcher.on('error', unwatch);
    } catch {
      unwatch(); // not there (yet), or no inotify here
    }
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const s of this.stores) s.watcher?.close();
  }
}
