// What the builders of a layer's EROFS image share: the chunks its files point at, gathered file
// by file into extents of the packs they lie in (one device per pack, in the order first met),
// then the image built over those packs at their current sizes; and running their reads a few at a time.

import { buildErofs, type ErofsBuildOptions } from '../erofs/build.js';
import type { ErofsEntry, ErofsExtent } from '../erofs/tree.js';
import type { PackLocation } from '../store/pack-files.js';

export interface LayerImage {
  image: Buffer;
  /** The packs the image's chunk indexes point into, in device-table order (mount them in this order). */
  devices: string[];
  /** Every chunk the layer's files use, in file order, with the place the image points at (the store's references). */
  chunks: { digest: string; size: number; at: PackLocation }[];
  files: number;
  bytes: number;
}

/** The chunks an image points at, and the packs they are in. */
export class ImageChunks {
  private readonly devices = new Map<string, number>();
  readonly chunks: LayerImage['chunks'] = [];

  /** The extent of a chunk of `size` bytes stored at `at`. */
  extent(digest: string, size: number, at: PackLocation): ErofsExtent {
    let device = this.devices.get(at.pack);
    if (device === undefined) this.devices.set(at.pack, (device = this.devices.size));
    this.chunks.push({ digest, size, at });
    return { device, offset: at.offset, length: size };
  }

  /**
   * Builds the image of `entries`, whose extents came from here; `packSize` is a pack's size now
   * (the device table records it). `build` makes the image (in this thread by default; a codec
   * worker's CodecPool.buildErofs).
   */
  async build(entries: ErofsEntry[], chunkSize: number, packSize: (pack: string) => Promise<number>,
    build: (entries: ErofsEntry[], options: ErofsBuildOptions) => Promise<Buffer> = async (e, o) => buildErofs(e, o).image): Promise<Pick<LayerImage, 'image' | 'devices' | 'chunks'>> {
    const order = [...this.devices.keys()];
    const sizes = await Promise.all(order.map(packSize));
    const image = await build(entries, { chunkSize, devices: order.map((tag, i) => ({ tag, size: sizes[i]! })) });
    return { image, devices: order, chunks: this.chunks };
  }
}

/**
 * Runs `fn` on every item, `limit` at a time. After a failure no further item starts, and the
 * first error is thrown once those running have ended (nothing is left writing to the store).
 */
export async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const runner = async (): Promise<void> => {
    while (!failed && next < items.length) {
      try {
        await fn(items[next++]!);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.min(limit, items.length) }, runner));
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;
}
