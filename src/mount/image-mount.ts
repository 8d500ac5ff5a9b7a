// Mounts an image lazily: every eStargz layer as a FUSE layer filesystem under
// <root>/mounts/<id>/layers/<n>, stacked with overlayfs at the target directory (read-only, or
// writable over an upper directory). Unmounting undoes all of it and writes the access traces.

import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { MalformedLayerError, MountError } from '../errors.js';
import { RemoteLayer } from '../fetch/remote-layer.js';
import { layerCompression, type Platform } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';
import { LayerMount, type LayerMountContext } from './layer-mount.js';
import { mountsDir, removeRecord, writeRecord, type MountRecord } from './mount-records.js';
import { isMountpoint, mountOverlay, unmount } from '../system-mounts.js';

export interface ImageMountOptions extends LayerMountContext {
  root: string;
  source: ImageSource;
  platform: Platform;
  dir: string;
  /** Writable mount: changes go here (a work directory is made beside it). */
  upper?: string;
  id?: string;
}

export class ImageMount {
  readonly layers: LayerMount[] = [];
  private overlayMounted = false;

  private constructor(readonly record: MountRecord, private readonly base: string, private readonly opts: ImageMountOptions) {}

  static async mount(opts: ImageMountOptions): Promise<ImageMount> {
    const dir = resolve(opts.dir);
    const image = await opts.source.resolve(opts.platform);
    for (const [i, d] of image.manifest.layers.entries()) {
      if (layerCompression(d.mediaType, `layer ${i} of ${image.name}`) !== 'gzip') {
        throw new MalformedLayerError(d.digest, `layer ${i} of ${image.name} is not eStargz (${d.mediaType}): it cannot be mounted lazily; convert the image first (dedupctl convert)`);
      }
    }
    const remotes = await Promise.all(image.manifest.layers.map((d) => RemoteLayer.open(opts.source, d)));
    if (await isMountpoint(dir)) throw new MountError(`${dir} is a mount point already`);
    await mkdir(dir, { recursive: true });
    const id = opts.id ?? randomBytes(6).toString('hex');
    const base = join(mountsDir(opts.root), id);
    const record: MountRecord = {
      id, pid: process.pid, dir, image: image.name, manifestDigest: image.manifestDigest, upper: opts.upper ? resolve(opts.upper) : undefined,
      layers: remotes.map((r, i) => ({ digest: r.desc.digest, mountpoint: join(base, 'layers', String(i)), compressedSize: r.desc.size })),
      startedAt: new Date().toISOString(),
    };
    const m = new ImageMount(record, base, opts);
    try {
      for (const [i, remote] of remotes.entries()) {
        const mountpoint = record.layers[i]!.mountpoint;
        await mkdir(mountpoint, { recursive: true });
        m.layers.push(await LayerMount.mount(remote, mountpoint, image, opts));
      }
      opts.store.addImage(image.name, image.manifestDigest, remotes.map((r) => r.desc.digest));
      await m.mountOverlay();
      await writeRecord(opts.root, record);
      return m;
    } catch (err) {
      await m.unmount().catch(() => undefined);
      throw err;
    }
  }

  private async mountOverlay(): Promise<void> {
    // overlayfs lists the top layer first; one layer alone needs a second (empty) lower.
    const lowers = this.layers.map((l) => l.mountpoint).reverse();
    if (lowers.length === 1 && !this.record.upper) {
      const empty = join(this.base, 'empty');
      await mkdir(empty, { recursive: true });
      lowers.push(empty);
    }
    let upper: { upper: string; work: string } | undefined;
    if (this.record.upper) {
      const work = join(dirname(this.record.upper), `.${basename(this.record.upper)}.work`);
      await mkdir(this.record.upper, { recursive: true });
      await mkdir(work, { recursive: true });
      upper = { upper: this.record.upper, work };
    }
    await mountOverlay(this.record.dir, lowers, upper);
    this.overlayMounted = true;
  }

  /** Unmounts the overlay and every layer, writes the traces, removes the state. */
  async unmount(): Promise<string[]> {
    if (this.overlayMounted) {
      await unmount(this.record.dir);
      this.overlayMounted = false;
    }
    const traces: string[] = [];
    for (const l of [...this.layers].reverse()) {
      const t = await l.unmount();
      if (t) traces.push(t);
    }
    this.layers.length = 0;
    await rm(this.base, { recursive: true, force: true });
    await removeRecord(this.opts.root, this.record.id);
    return traces;
  }
}

