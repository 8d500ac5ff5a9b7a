// Opens an eStargz layer where it lies (registry or OCI layout) without downloading it: reads the
// blob's tail for the footer (and, when it fits, the TOC in the same request; else the rest of the
// TOC, not the tail again), checks the TOC digest against the layer's annotation, and lists the
// layer's chunks. The tail's bytes before the TOC are kept: no byte is fetched twice.

import { MalformedEstargzError, TocDigestMismatchError } from '../errors.js';
import { FOOTER_SIZE, parseFooter } from '../estargz/footer.js';
import { readToc } from '../estargz/layer.js';
import { TOC_DIGEST_ANNOTATION, type Toc, type TocChunk, type TocNode } from '../estargz/toc.js';
import type { Descriptor } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';

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

export class RemoteLayer {
  /**
   * @param tail the blob's bytes from where the tail read began to the TOC: the last chunks'
   *   members when the TOC is small (else none), so a reader of them sends no request.
   */
  private constructor(readonly source: ImageSource, readonly desc: Descriptor, readonly toc: Toc, readonly tocDigest: string, readonly tail: BlobBytes) {}

  static async open(source: ImageSource, desc: Descriptor): Promise<RemoteLayer> {
    const where = `layer ${desc.digest}`;
    if (desc.size < FOOTER_SIZE) throw new MalformedEstargzError(where, `blob is only ${desc.size} bytes`);
    const tailStart = Math.max(0, desc.size - TAIL_READ);
    const tail = await source.readBlobRange(desc, tailStart, desc.size);
    const footer = parseFooter(tail, desc.size);
    const tocEnd = desc.size - footer.size;
    const tocMember = footer.tocOffset >= tailStart
      ? tail.subarray(footer.tocOffset - tailStart, tocEnd - tailStart)
      : Buffer.concat([await source.readBlobRange(desc, footer.tocOffset, tailStart), tail.subarray(0, tocEnd - tailStart)]);
    let parsed;
    try {
      parsed = readToc(tocMember, footer.tocOffset);
    } catch (err) {
      if (err instanceof MalformedEstargzError) throw new MalformedEstargzError(where, err.message.replace(/^malformed eStargz /, ''));
      throw err;
    }
    const expected = desc.annotations?.[TOC_DIGEST_ANNOTATION];
    if (expected && expected !== parsed.digest) throw new TocDigestMismatchError(desc.digest, expected, parsed.digest);
    const before = Math.min(footer.tocOffset, tailStart);
    return new RemoteLayer(source, desc, parsed.toc, parsed.digest, { start: before, bytes: tail.subarray(0, footer.tocOffset - before) });
  }

  /** Every chunk of every regular file, in blob order; hard links are listed once. */
  chunks(): LayerChunk[] {
    const out: LayerChunk[] = [];
    const seen = new Set<TocNode>();
    for (const node of this.toc.nodes.values()) {
      if (node.type !== 'reg' || seen.has(node)) continue;
      seen.add(node);
      for (const c of node.chunks) {
        if (!c.chunkDigest) {
          throw new MalformedEstargzError(`layer ${this.desc.digest}`, `chunk of "${node.path}" has no chunkDigest (legacy stargz): it cannot be verified`);
        }
        out.push({ ...c, digest: c.chunkDigest, path: node.path });
      }
    }
    return out.sort((a, b) => a.offset - b.offset);
  }
}
