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
