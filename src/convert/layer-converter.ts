// Turns one layer's tar stream into an eStargz blob on disk: every regular file's data starts a
// new gzip member at each chunk boundary, so a reader can fetch and inflate any chunk on its own;
// the TOC (JSON in a tar entry in its own member) and the footer end the blob. Members are
// compressed in parallel by the codec pool and written in order.

import { createHash, type Hash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { CodecPool } from '../codec/codec-pool.js';
import { MalformedLayerError } from '../errors.js';
import { chunkFile } from '../estargz/file-chunks.js';
import { encodeFooter } from '../estargz/footer.js';
import { encodeTarHeader, TAR_END, tarPadding, type TarHeader } from '../estargz/tar.js';
import { readTar, TarFormatError, type TarEntry } from '../estargz/tar-reader.js';
import { hashDigest, sha256Digest } from '../digest.js';
import {
  cleanEntryName, encodeToc, LANDMARK_CONTENTS, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME, tocEntryOfTar, type TocEntryJson,
} from '../estargz/toc.js';

export interface LayerConvertOptions {
  chunkSize: number;
  compressionLevel: number;
  pool: CodecPool;
  /** Files (paths in the layer) to put first, before the prefetch landmark. */
  prefetch?: Set<string>;
}

export interface ConvertedLayer {
  path: string;
  digest: string;
  size: number;
  diffId: string;
  tocDigest: string;
  uncompressedSize: number;
  entries: number;
}

/** Collects the uncompressed bytes of the current gzip member; compresses and writes members in order. */
class MemberWriter {
  private parts: Buffer[] = [];
  private partsLength = 0;
  private readonly pending: Promise<Buffer>[] = [];
  /** Compressed offset of each member, filled in as members are written. */
  readonly offsets: number[] = [];
  private members = 0;
  private written = 0;
  readonly diffHash: Hash = createHash('sha256');
  readonly blobHash: Hash = createHash('sha256');
  uncompressed = 0;

  constructor(private readonly out: FileHandle, private readonly pool: CodecPool, private readonly level: number) {}

  append(buf: Buffer): void {
    if (buf.length === 0) return;
    this.parts.push(buf);
    this.partsLength += buf.length;
    this.diffHash.update(buf);
    this.uncompressed += buf.length;
  }

  /** Ends the current member (if it has bytes); returns the index the next member will have. */
  async cut(): Promise<number> {
    if (this.partsLength > 0) {
      const data = Buffer.concat(this.parts, this.partsLength);
      this.parts = [];
      this.partsLength = 0;
      const compressed = this.pool.gzip(data, this.level);
      // If the conversion fails before this member is written, nobody awaits it: keep its
      // rejection (e.g. the pool shutting down) from becoming an unhandled one.
      compressed.catch(() => undefined);
      this.pending.push(compressed);
      this.members++;
      // Bounded read-ahead: keep every worker busy, but no more members than that in memory.
      while (this.pending.length > this.pool.threads * 2) await this.writeOldest();
    }
    return this.members;
  }

  private async writeOldest(): Promise<void> {
    const compressed = await this.pending.shift()!;
    this.offsets.push(this.written);
    await this.write(compressed);
  }

  async write(buf: Buffer): Promise<void> {
    this.blobHash.update(buf);
    let off = 0;
    while (off < buf.length) off += (await this.out.write(buf, off, buf.length - off, this.written + off)).bytesWritten;
    this.written += buf.length;
  }

  /** Writes every pending member; returns the offset after them. */
  async drain(): Promise<number> {
    await this.cut();
    while (this.pending.length > 0) await this.writeOldest();
    return this.written;
  }
}

/** Converts entries into eStargz; shared by the one-pass and the prefetch-ordered conversion. */
class EstargzBuilder {
  readonly toc: TocEntryJson[] = [];
  /** TOC entries whose offset is the compressed offset of member `index`. */
  private readonly offsetFixups: { entry: TocEntryJson; member: number }[] = [];

  constructor(readonly members: MemberWriter, private readonly opts: LayerConvertOptions, private readonly layer: string) {}

  async addEntry(entry: TarEntry): Promise<void> {
    const h = entry.header;
    let e: TocEntryJson;
    try {
      e = tocEntryOfTar(h);
    } catch (err) {
      throw new MalformedLayerError(this.layer, (err as Error).message.replace(/^malformed eStargz /, ''));
    }
    this.members.append(encodeTarHeader({ ...h, name: e.name === '.' ? './' : e.name, linkname: h.type === 'link' ? e.linkName : h.linkname }));
    this.toc.push(e);
    if (h.type !== 'file' || h.size === 0) return;

    let member = 0; // the gzip member the chunk being read starts
    await chunkFile(entry, e, this.opts.chunkSize, (chunk) => this.toc.push(chunk), {
      begin: async () => void (member = await this.members.cut()),
      piece: (bytes) => this.members.append(bytes),
      read: (chunk) => this.offsetFixups.push({ entry: chunk, member }),
    });
    this.members.append(Buffer.alloc(tarPadding(h.size)));
  }

  /** A landmark is a one-byte file; it gets its own member like any file data. */
  async addLandmark(name: string): Promise<void> {
    const h: TarHeader = { name, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: 0 };
    this.members.append(encodeTarHeader(h));
    const member = await this.members.cut();
    const data = Buffer.from([LANDMARK_CONTENTS]);
    this.members.append(data);
    this.members.append(Buffer.alloc(tarPadding(1)));
    const e: TocEntryJson = { name, type: 'reg', size: 1, digest: sha256Digest(data), chunkDigest: sha256Digest(data) };
    this.toc.push(e);
    this.offsetFixups.push({ entry: e, member });
  }

  /** Ends the layer: TOC member, footer. Returns the TOC digest. */
  async finish(): Promise<string> {
    const tocOffset = await this.members.drain();
    for (const { entry, member } of this.offsetFixups) entry.offset = this.members.offsets[member]!;
    const json = encodeToc({ version: 1, entries: this.toc });
    const tocTar = Buffer.concat([
      encodeTarHeader({ name: TOC_TAR_NAME, type: 'file', mode: 0o644, uid: 0, gid: 0, size: json.length, mtime: 0 }),
      json, Buffer.alloc(tarPadding(json.length)), TAR_END,
    ]);
    this.members.diffHash.update(tocTar);
    this.members.uncompressed += tocTar.length;
    await this.members.write(await this.opts.pool.gzip(tocTar, this.opts.compressionLevel));
    await this.members.write(encodeFooter(tocOffset));
    return sha256Digest(json);
  }
}

/**
 * Converts a tar stream (already decompressed) into an eStargz blob at `outPath`. With a
 * prefetch set, `openTar` is called three times (the input must be re-readable, e.g. a spool
 * file): once to find what the listed files need, then for the listed files, then the rest.
 */
export async function convertLayer(openTar: () => AsyncIterable<Uint8Array>, outPath: string, layer: string, opts: LayerConvertOptions): Promise<ConvertedLayer> {
  const out = await open(outPath, 'w');
  try {
    const members = new MemberWriter(out, opts.pool, opts.compressionLevel);
    const builder = new EstargzBuilder(members, opts, layer);
    try {
      if (!opts.prefetch || opts.prefetch.size === 0) {
        await builder.addLandmark(NO_PREFETCH_LANDMARK);
        for await (const entry of readTar(openTar())) await builder.addEntry(entry);
      } else {
        const first = await prefetchSet(openTar, opts.prefetch);
        for await (const entry of readTar(openTar())) if (first.has(cleanEntryName(entry.header.name, layer))) await builder.addEntry(entry);
        await builder.addLandmark(PREFETCH_LANDMARK);
        for await (const entry of readTar(openTar())) if (!first.has(cleanEntryName(entry.header.name, layer))) await builder.addEntry(entry);
      }
    } catch (err) {
      if (err instanceof TarFormatError) throw new MalformedLayerError(layer, err.message);
      if ((err as NodeJS.ErrnoException).code?.startsWith('Z_')) throw new MalformedLayerError(layer, `decompression failed (${(err as Error).message})`, { cause: err });
      throw err;
    }
    const tocDigest = await builder.finish();
    await out.sync();
    const size = (await out.stat()).size;
    return {
      path: outPath, digest: hashDigest(members.blobHash), size, diffId: hashDigest(members.diffHash),
      tocDigest, uncompressedSize: members.uncompressed, entries: builder.toc.length,
    };
  } finally {
    await out.close();
  }
}

/** The listed files that exist, plus their parent directories and hard link targets. */
async function prefetchSet(openTar: () => AsyncIterable<Uint8Array>, listed: Set<string>): Promise<Set<string>> {
  const wanted = new Set([...listed].map((p) => cleanEntryName(p, 'prefetch list')));
  const out = new Set<string>();
  for await (const entry of readTar(openTar())) {
    const name = cleanEntryName(entry.header.name, 'prefetch scan');
    if (!wanted.has(name) || entry.header.type === 'directory') continue;
    out.add(name);
    if (entry.header.type === 'link') out.add(cleanEntryName(entry.header.linkname ?? '', 'prefetch scan'));
  }
  for (const p of [...out]) for (let d = p; d.includes('/');) out.add((d = d.slice(0, d.lastIndexOf('/'))));
  return out;
}
