// Opens an eStargz layer where it lies (registry or OCI layout) without downloading it: reads the
// blob's tail for the footer (and, when it fits, the TOC in the same request; else the rest of the
// TOC, not the tail again), checks the TOC digest against the layer's annotation, and lists the
// layer's chunks. The tail's bytes before the TOC are kept: no byte is fetched twice. A registry
// layer's TOC can also be read knowing only the blob's digest (its size comes with its tail), to
// be checked against the layer's descriptor once that is known.

import { indexable, layerIndex, type IndexLookup } from '../convert/gzip-indexer.js';
import { MalformedEstargzError, TocDigestMismatchError } from '../errors.js';
import { FOOTER_SIZE, parseFooter } from '../estargz/footer.js';
import { readToc } from '../estargz/layer.js';
import { TOC_DIGEST_ANNOTATION, type Toc, type TocChunk } from '../estargz/toc.js';
import type { Descriptor } from '../image/oci.js';
import type { RegistryImage } from '../image/registry-image.js';
import type { ImageSource } from '../image/source.js';
import type { RegistryClient } from '../registry/client.js';
import { everyChunk } from './layer-chunks.js';

/** How much of a blob's end to read first: most TOCs fit, saving a round trip. */
const TAIL_READ = 64 * 1024;

export interface LayerChunk extends TocChunk {
  /** The chunk's sha256: its key in the chunk store. */
  digest: string;
  /** The file it belongs to (for messages and traces). */
  path: string;
}

/** Bytes [start, start + bytes.length) of a blob, in memory. */
export interface BlobBytes {
  start: number;
  bytes: Buffer;
}

/** A layer's TOC as read from its blob, not yet checked against a descriptor. */
export interface LayerToc {
  toc: Toc;
  tocDigest: string;
  blobSize: number;
  /** The blob's bytes from where the tail read began to the TOC (RemoteLayer.tail). */
  tail: BlobBytes;
}

export class RemoteLayer {
  /**
   * @param tail the blob's bytes from where the tail read began to the TOC: the last chunks'
   *   members when the TOC is small (else none), so a reader of them sends no request.
   */
  private constructor(readonly source: ImageSource, readonly desc: Descriptor, readonly toc: Toc, readonly tocDigest: string, readonly tail: BlobBytes) {}

  static async open(source: ImageSource, desc: Descriptor): Promise<RemoteLayer> {
    if (desc.size < FOOTER_SIZE) throw new MalformedEstargzError(`layer ${desc.digest}`, `blob is only ${desc.size} bytes`);
    const tail = await source.readBlobRange(desc, Math.max(0, desc.size - TAIL_READ), desc.size);
    return RemoteLayer.of(source, desc, await tocFromTail(desc.digest, desc.size, tail, (start, end) => source.readBlobRange(desc, start, end)));
  }

  /** The footer and TOC of a registry blob known by its digest alone: one suffix Range request when the TOC fits in it. */
  static async readToc(image: RegistryImage, digest: string): Promise<LayerToc> {
    const { bytes, size } = await image.readBlobTail(digest, TAIL_READ);
    return tocFromTail(digest, size, bytes, (start, end) => image.readBlobRange({ mediaType: '', digest, size }, start, end));
  }

  /** The layer `desc` describes, with a TOC read from its blob: the blob's size must match, and the TOC digest the annotation's. */
  static of(source: ImageSource, desc: Descriptor, read: LayerToc): RemoteLayer {
    if (read.blobSize !== desc.size) throw new MalformedEstargzError(`layer ${desc.digest}`, `blob is ${read.blobSize} bytes, its descriptor says ${desc.size}`);
    const expected = desc.annotations?.[TOC_DIGEST_ANNOTATION];
    if (expected && expected !== read.tocDigest) throw new TocDigestMismatchError(desc.digest, expected, read.tocDigest);
    return new RemoteLayer(source, desc, read.toc, read.tocDigest, read.tail);
  }

  /**
   * An unmodified gzip layer served through its gzip index (decoded against `desc`: same digest
   * and size): its chunks are spans between checkpoints; there is no tail and no TOC in the blob.
   * `indexDigest` is the index blob's digest, recorded as the layer's TOC digest.
   */
  static ofIndex(source: ImageSource, desc: Descriptor, toc: Toc, indexDigest: string): RemoteLayer {
    return new RemoteLayer(source, desc, toc, indexDigest, { start: desc.size, bytes: Buffer.alloc(0) });
  }

  /**
   * The layer as a lazy mount serves it: an unmodified gzip layer through its gzip index when it
   * has one (`root`'s indexes/, else the artifact beside the image `manifestDigest` names),
   * otherwise as eStargz, opened by `estargz` (by default: its footer and TOC read now).
   * `lookup` finds the image's index artifact and its blobs (a caller mounting several layers shares them).
   */
  static async forMount(client: RegistryClient, image: RegistryImage, root: string, manifestDigest: string, desc: Descriptor,
    estargz: () => Promise<RemoteLayer> = () => RemoteLayer.open(image, desc), lookup?: IndexLookup): Promise<RemoteLayer> {
    if (indexable(desc)) {
      const index = await layerIndex(client, image, root, manifestDigest, desc, lookup);
      if (index) return RemoteLayer.ofIndex(image, desc, index.toc, index.digest);
    }
    return estargz();
  }

  /** Every chunk of every regular file, in blob order; hard links are listed once. */
  chunks(): LayerChunk[] {
    return everyChunk(this.toc).map(({ file, index }) => {
      const c = file.chunks[index]!;
      if (!c.chunkDigest) {
        throw new MalformedEstargzError(`layer ${this.desc.digest}`, `chunk of "${file.path}" has no chunkDigest (legacy stargz): it cannot be verified`);
      }
      return { ...c, digest: c.chunkDigest, path: file.path };
    });
  }
}

/**
 * Parses the footer in `tail` (the blob's last bytes) and the TOC it points at, reading only what
 * of the TOC the tail lacks; keeps the tail's bytes before the TOC.
 */
async function tocFromTail(digest: string, size: number, tail: Buffer, readRange: (start: number, end: number) => Promise<Buffer>): Promise<LayerToc> {
  const where = `layer ${digest}`;
  if (size < FOOTER_SIZE) throw new MalformedEstargzError(where, `blob is only ${size} bytes`);
  const tailStart = size - tail.length;
  const footer = parseFooter(tail, size);
  const tocEnd = size - footer.size;
  const tocMember = footer.tocOffset >= tailStart
    ? tail.subarray(footer.tocOffset - tailStart, tocEnd - tailStart)
    : Buffer.concat([await readRange(footer.tocOffset, tailStart), tail.subarray(0, tocEnd - tailStart)]);
  let parsed;
  try {
    parsed = readToc(tocMember, footer.tocOffset);
  } catch (err) {
    if (err instanceof MalformedEstargzError) throw new MalformedEstargzError(where, err.message.replace(/^malformed eStargz /, ''));
    throw err;
  }
  const before = Math.min(footer.tocOffset, tailStart);
  return { toc: parsed.toc, tocDigest: parsed.digest, blobSize: size, tail: { start: before, bytes: tail.subarray(0, footer.tocOffset - before) } };
}
