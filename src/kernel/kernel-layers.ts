// Kernel mode for committed layers: a layer containerd unpacked into one of our snapshots is cut
// into chunks in the store, built into an EROFS image (<root>/images/<id>.erofs) and mounted by
// the kernel (file-backed EROFS over the store's packs) where the unpacked copy was. Its reads
// never leave the kernel, and its chunks are kept once across every image on the node. A lazily
// pulled eStargz layer gets its image the same way once all its chunks are stored (buildLazy).
//
// Each layer is recorded in the store as layer "snapshot:<id>" of image "snapshot:<id>", whose
// chunk places are the ones its image points at (gc keeps them while it is recorded); removing
// the snapshot forgets the image, and the next gc frees what nothing else uses.

import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import type { CodecPool } from '../codec/codec-pool.js';
import { UnsupportedError } from '../errors.js';
import { mountErofs, unmount } from '../system-mounts.js';
import type { Toc } from '../estargz/toc.js';
import type { ChunkStore } from '../store/chunk-store.js';
import { buildDirectoryLayer } from './directory-layer.js';
import type { LayerImage } from './layer-image.js';
import { buildTocLayer, type TocLayerImage } from './toc-layer.js';

const FEATURES = '/sys/fs/erofs/features';
const NEEDED = ['chunked_file', 'device_table'];

/** What is needed to mount a kernel layer again (after a reboot): its image and, in order, its packs. */
export interface KernelLayer {
  image: string;
  devices: string[];
  /** A shared store's layer (src/shared-store/): its devices are paths there, not packs of ours. */
  shared?: string;
}

/** The files a kernel layer's devices are, in order: our packs (`packPath`), or a shared store's paths. */
export function devicePaths(layer: KernelLayer, packPath: (pack: string) => string): string[] {
  return layer.shared ? layer.devices : layer.devices.map(packPath);
}

/** Why this kernel cannot serve kernel layers, or undefined when it can. */
export function kernelModeUnsupported(): string | undefined {
  if (!readFileSync('/proc/filesystems', 'utf8').split('\n').some((l) => l.trim() === 'erofs')) return 'the kernel has no EROFS (not in /proc/filesystems)';
  const missing = NEEDED.filter((f) => !existsSync(join(FEATURES, f)));
  return missing.length ? `the kernel's EROFS lacks ${missing.join(', ')} (${FEATURES})` : undefined;
}

export class KernelLayers {
  private constructor(private readonly root: string, private readonly store: ChunkStore, private readonly chunkSize: number, private readonly pool: CodecPool) {}

  /**
   * Refused (UnsupportedError, naming what is missing) where the kernel cannot mount such images.
   * `pool` reads and hashes the files of the layers it builds, and verifies the lazily fetched
   * chunks an image of a lazy layer is to point at.
   */
  static open(root: string, store: ChunkStore, chunkSize: number, pool: CodecPool): KernelLayers {
    const why = kernelModeUnsupported();
    if (why) throw new UnsupportedError(`kernel mode (enable_erofs): ${why}`);
    return new KernelLayers(root, store, chunkSize, pool);
  }

  private get dir(): string {
    return join(this.root, 'images');
  }

  private static ref(id: number): string {
    return `snapshot:${id}`;
  }

  /**
   * Builds snapshot `id`'s layer, unpacked at `unpacked`, into the store and an image file; the
   * image is published (fsync, rename) only once the chunks it points at are on disk and
   * recorded. A failure leaves no image.
   */
  async build(id: number, unpacked: string): Promise<KernelLayer & { files: number; bytes: number; chunks: number; usage: { size: number; inodes: number } }> {
    const layer = await buildDirectoryLayer(unpacked, this.chunkSize, {
      storeChunk: (digest, data) => this.store.placeForImage(digest, data),
      packSize: (pack) => this.packSize(pack),
      flush: () => this.store.syncPacks(),
    }, this.pool);
    return { ...await this.publish(id, layer), usage: layer.usage };
  }

  /**
   * Builds the image of remote snapshot `id`'s lazily pulled layer, every chunk of which is
   * stored: its TOC's tree over the chunks where the lazy path put them (each verified now).
   * Published as build() does; refused (NotFoundError) while a chunk is missing.
   */
  async buildLazy(id: number, toc: Toc): Promise<KernelLayer & { files: number; bytes: number; chunks: number; recut: TocLayerImage['recut'] }> {
    const layer = await buildTocLayer(toc, this.chunkSize, {
      placeStored: (digest, size) => this.store.placeStored(digest, size, this.pool),
      placeStoredMany: (chunks) => this.store.placeStoredMany(chunks, this.pool),
      storeChunk: (digest, data) => this.store.placeForImage(digest, data),
      packSize: (pack) => this.packSize(pack),
    }, this.pool);
    return { ...await this.publish(id, layer), recut: layer.recut };
  }

  /** Whether every chunk of the lazily pulled layer `digest` is in the store (as far as the index says). */
  complete(digest: string): boolean {
    const p = this.store.layerProgress(digest);
    return p.chunks > 0 && p.present === p.chunks;
  }

  /** The TOC digest the lazy mount of layer `digest` recorded (the TOC it serves). */
  tocDigest(digest: string): string | undefined {
    return this.store.layerTocDigest(digest);
  }

  private async packSize(pack: string): Promise<number> {
    return (await stat(this.store.packPath(pack))).size;
  }

  /** Syncs what the image points at, records the layer and its places in the store, then writes the image (fsync, rename). */
  private async publish(id: number, layer: LayerImage): Promise<KernelLayer & { files: number; bytes: number; chunks: number }> {
    await this.store.syncPacks();
    const ref = KernelLayers.ref(id);
    const image = join(this.dir, `${id}.erofs`);
    try {
      await this.store.addLayer({ digest: ref, tocDigest: '', compressedSize: 0, uncompressedSize: layer.bytes, chunks: layer.chunks });
      this.store.addImage(ref, ref, [ref]);
      await mkdir(this.dir, { recursive: true });
      await writeFileAtomic(image, layer.image);
    } catch (err) {
      await this.discard(id);
      throw err;
    }
    return { image, devices: layer.devices, files: layer.files, bytes: layer.bytes, chunks: layer.chunks.length };
  }

  /**
   * Mounts the layer's image at `dir` (a snapshot's fs, or a remote snapshot's erofs), in place of
   * whatever is left there (an unpacked copy, or a mount a crash left before it was recorded).
   */
  async mountAt(layer: KernelLayer, dir: string): Promise<void> {
    await unmount(dir);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir);
    mountErofs(layer.image, dir, devicePaths(layer, (p) => this.store.packPath(p)), { diskReadahead: true });
  }

  /** Forgets snapshot `id`'s layer: its image file and its record (gc frees the chunks nothing else uses). */
  async discard(id: number): Promise<void> {
    await rm(join(this.dir, `${id}.erofs`), { force: true });
    try {
      this.store.removeImage(KernelLayers.ref(id));
    } catch {
      /* never recorded: the build failed before */
    }
  }

  /** Ids with an image file (to find the ones a crash left behind). */
  async ids(): Promise<number[]> {
    return (await readdir(this.dir).catch(() => [] as string[])).map((n) => /^(\d+)\.erofs$/.exec(n)?.[1]).filter((x): x is string => !!x).map(Number);
  }
}
