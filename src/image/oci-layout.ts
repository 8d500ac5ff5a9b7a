// ImageSource and ImageTarget over an OCI image layout directory (oci:DIR[:TAG]): oci-layout,
// index.json whose entries carry org.opencontainers.image.ref.name, and blobs/sha256/<hex>.
// Writes are atomic: a blob or index.json appears whole or not at all.

import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import { writeFileAtomic } from '../atomic-file.js';
import { DigestMismatchError, InvalidArgumentError, NotFoundError } from '../errors.js';
import {
  configSchema, indexSchema, isIndexMediaType, manifestSchema, MediaType, parseJson, selectPlatform,
  type Descriptor, type ImageIndex, type Platform, type ResolvedImage,
} from './oci.js';
import type { BlobBody, ImageSource, ImageTarget } from './source.js';
import { hashDigest, sha256Digest } from '../digest.js';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

/** Splits "oci:DIR[:TAG]"; a colon after the last slash starts the tag. */
export function parseOciSpec(spec: string): { dir: string; tag: string | undefined } {
  const rest = spec.slice('oci:'.length);
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/') && colon > 0) return { dir: rest.slice(0, colon), tag: rest.slice(colon + 1) || undefined };
  if (!rest) throw new InvalidArgumentError(`"${spec}" names no directory (use oci:DIR[:TAG])`);
  return { dir: rest, tag: undefined };
}

export class OciLayout implements ImageSource, ImageTarget {
  readonly name: string;
  readonly location = undefined;
  readonly dir: string;
  readonly tag: string | undefined;

  constructor(spec: string) {
    const { dir, tag } = parseOciSpec(spec);
    this.dir = dir;
    this.tag = tag;
    this.name = spec;
  }

  blobPath(digest: string): string {
    const [alg, hex] = digest.split(':');
    return join(this.dir, 'blobs', alg!, hex!);
  }

  private async readIndex(): Promise<ImageIndex> {
    let bytes: Buffer;
    try {
      bytes = await readFile(join(this.dir, 'index.json'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`OCI layout ${this.dir} (no index.json)`);
      throw err;
    }
    return parseJson(indexSchema, bytes, `${this.dir}/index.json`);
  }

  private async readBlob(digest: string): Promise<Buffer> {
    let bytes: Buffer;
    try {
      bytes = await readFile(this.blobPath(digest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`blob ${digest} in ${this.dir}`);
      throw err;
    }
    const actual = sha256Digest(bytes);
    if (actual !== digest) throw new DigestMismatchError(`blob in ${this.dir}`, digest, actual);
    return bytes;
  }

  async resolve(platform: Platform): Promise<ResolvedImage> {
    const index = await this.readIndex();
    const matches = this.tag ? index.manifests.filter((m) => m.annotations?.[REF_NAME_ANNOTATION] === this.tag) : index.manifests;
    if (matches.length === 0) throw new NotFoundError(`image "${this.tag}" in ${this.dir}`);
    if (matches.length > 1 && !this.tag) throw new InvalidArgumentError(`${this.dir} holds ${matches.length} images: name one as oci:${this.dir}:TAG`);
    let desc: Descriptor = matches[0]!;
    if (isIndexMediaType(desc.mediaType)) {
      const nested = parseJson(indexSchema, await this.readBlob(desc.digest), `image index ${desc.digest} in ${this.dir}`);
      desc = selectPlatform(nested, platform, `image index ${desc.digest} in ${this.dir}`);
    }
    const manifestBytes = await this.readBlob(desc.digest);
    const manifest = parseJson(manifestSchema, manifestBytes, `manifest ${desc.digest} in ${this.dir}`);
    const configBytes = await this.readBlob(manifest.config.digest);
    return {
      name: this.name, manifestDigest: desc.digest, manifestBytes, manifestMediaType: manifest.mediaType ?? desc.mediaType,
      manifest, configBytes, config: parseJson(configSchema, configBytes, `config of ${this.name}`),
    };
  }

  blobStream(desc: Descriptor, range?: { start: number; end: number }): Readable {
    const path = this.blobPath(desc.digest);
    const hash = createHash('sha256');
    const dir = this.dir;
    const verify = range ? new PassThrough() : new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        cb(null, chunk);
      },
      flush(cb) {
        const actual = hashDigest(hash);
        cb(actual === desc.digest ? null : new DigestMismatchError(`blob in ${dir}`, desc.digest, actual));
      },
    });
    const src = createReadStream(path, range && { start: range.start, end: range.end - 1 });
    src.on('error', (err) => verify.destroy((err as NodeJS.ErrnoException).code === 'ENOENT' ? new NotFoundError(`blob ${desc.digest} in ${dir}`) : err));
    return src.pipe(verify);
  }

  async readBlobRange(desc: Descriptor, start: number, end: number): Promise<Buffer> {
    const fh = await open(this.blobPath(desc.digest), 'r').catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'ENOENT' ? new NotFoundError(`blob ${desc.digest} in ${this.dir}`) : err;
    });
    try {
      const buf = Buffer.alloc(end - start);
      const { bytesRead } = await fh.read(buf, 0, buf.length, start);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  }

  private async ensureLayout(): Promise<void> {
    await mkdir(join(this.dir, 'blobs', 'sha256'), { recursive: true });
    await stat(join(this.dir, 'oci-layout')).catch(() => writeFileAtomic(join(this.dir, 'oci-layout'), Buffer.from('{"imageLayoutVersion":"1.0.0"}')));
  }

  async putBlob(desc: Descriptor, body: BlobBody): Promise<'exists' | 'uploaded'> {
    await this.ensureLayout();
    const dest = this.blobPath(desc.digest);
    if (await stat(dest).then((s) => s.size === desc.size, () => false)) return 'exists';
    if ('bytes' in body) {
      const actual = sha256Digest(body.bytes);
      if (actual !== desc.digest) throw new DigestMismatchError(`blob for ${this.dir}`, desc.digest, actual);
      await writeFileAtomic(dest, body.bytes);
      return 'uploaded';
    }
    const tmp = `${dest}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      await copyFile(body.path, tmp);
      const fh = await open(tmp, 'r+');
      await fh.sync().finally(() => fh.close());
      await rename(tmp, dest);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return 'uploaded';
  }

  async putManifest(bytes: Buffer, mediaType: string): Promise<string> {
    await this.ensureLayout();
    const digest = sha256Digest(bytes);
    await this.putBlob({ mediaType, digest, size: bytes.length }, { bytes });
    let index: ImageIndex;
    try {
      index = await this.readIndex();
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      index = { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] };
    }
    const entry: Descriptor = { mediaType, digest, size: bytes.length, ...(this.tag ? { annotations: { [REF_NAME_ANNOTATION]: this.tag } } : {}) };
    index.manifests = index.manifests.filter((m) => (this.tag ? m.annotations?.[REF_NAME_ANNOTATION] !== this.tag : m.digest !== digest));
    index.manifests.push(entry);
    await writeFileAtomic(join(this.dir, 'index.json'), Buffer.from(JSON.stringify(index)));
    return digest;
  }
}
