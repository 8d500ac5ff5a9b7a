// The OCI distribution client: manifests, blobs (whole, resumable, and by Range), uploads
// (monolithic, chunked, cross-repository mount) and manifest pushes. How each request is sent
// (hosts.toml's hosts in order, auth, retries) is the transport's (transport.ts).

import { createHash } from 'node:crypto';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { hashDigest, sha256Digest } from '../digest.js';
import { DigestMismatchError, isDedupError, RegistryError } from '../errors.js';
import { uploadBlob, type UploadOptions } from './blob-upload.js';
import type { ImageReference } from './reference.js';
import { withRetries } from './retry.js';
import { RegistryTransport, servesRange, type RegistryClientOptions, type ReplayableBody, type RequestSpec, type TransferStats } from './transport.js';

/** The error for a body that broke off for good: ours pass as they are (their retries were made). */
const broken = (what: string) => (err: unknown): unknown =>
  isDedupError(err) ? err : new RegistryError(`${what}: ${(err as Error).message}`, undefined, { cause: err });

/** Resolves once `out` wants more, or is gone. */
function drained(out: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      out.off('drain', done).off('close', done);
      resolve();
    };
    out.on('drain', done).on('close', done);
  });
}

export class RegistryClient {
  private readonly transport: RegistryTransport;
  /** The registry host of references that name none. */
  readonly defaultRegistry: string;

  constructor(opts: RegistryClientOptions = {}) {
    this.transport = new RegistryTransport(opts);
    this.defaultRegistry = opts.defaultRegistry || 'docker.io';
  }

  get stats(): TransferStats {
    return this.transport.stats;
  }

  close(): Promise<void> {
    return this.transport.close();
  }

  private static pull(ref: ImageReference): string {
    return `repository:${ref.repository}:pull`;
  }

  /**
   * GET a manifest by tag or digest; verifies the bytes when asked by digest. A tag needs a host
   * that may resolve; a digest names its content, so (as in containerd) any host that may pull.
   */
  async getManifest(ref: ImageReference, reference: string, accept: string[]): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    const what = `manifest ${ref.host}/${ref.repository}:${reference}`;
    const byDigest = reference.startsWith('sha256:');
    const res = await this.transport.send(ref, {
      method: 'GET', path: `${ref.repository}/manifests/${reference}`, headers: { accept: accept.join(', ') },
      scope: RegistryClient.pull(ref), capability: byDigest ? 'pull' : 'resolve',
    });
    if (res.statusCode !== 200) return this.transport.fail(res, what);
    const bytes = Buffer.from(await res.body.arrayBuffer());
    this.transport.received(res, bytes.length);
    const digest = sha256Digest(bytes);
    if (byDigest && digest !== reference) throw new DigestMismatchError(what, reference, digest);
    const ct = res.headers['content-type'];
    let mediaType = (Array.isArray(ct) ? ct[0] : ct)?.split(';')[0]?.trim() ?? '';
    if (!mediaType || mediaType === 'application/json' || mediaType === 'text/plain') {
      try {
        mediaType = (JSON.parse(bytes.toString('utf8')) as { mediaType?: string }).mediaType ?? mediaType;
      } catch {
        /* left to the caller's parser to report */
      }
    }
    return { bytes, mediaType, digest };
  }

  /** Size of a blob, or undefined when the repository does not have it. */
  async headBlob(ref: ImageReference, digest: string, capability: 'pull' | 'push' = 'pull'): Promise<number | undefined> {
    const res = await this.transport.send(ref, {
      method: 'HEAD', path: `${ref.repository}/blobs/${digest}`,
      scope: capability === 'push' ? `repository:${ref.repository}:pull,push` : RegistryClient.pull(ref), capability,
    });
    if (res.statusCode !== 200 && res.statusCode !== 404) return this.transport.fail(res, `blob ${digest} in ${ref.repository}`);
    await res.body.dump();
    if (res.statusCode === 404) return undefined;
    const len = Number(res.headers['content-length']);
    return Number.isFinite(len) ? len : 0;
  }

  /** A whole blob in memory (small blobs: configs), verified against its digest. */
  async getBlob(ref: ImageReference, digest: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const piece of this.blobStream(ref, digest)) parts.push(piece);
    return Buffer.concat(parts);
  }

  /**
   * A blob as a stream that resumes with a Range request where a connection broke, and fails at
   * the end if the bytes do not match the digest (so a consumer must not commit before the end).
   * With `range`, only bytes [start, end) of it, in one Range request (resumed the same way),
   * which cannot be checked against the blob's digest: the consumer verifies what it uses.
   */
  blobStream(ref: ImageReference, digest: string, range?: { start: number; end: number }): Readable {
    const out = new PassThrough();
    this.copyBlob(ref, digest, range, out).then(() => out.end(), (err: unknown) => out.destroy(err as Error));
    return out;
  }

  /** Writes the blob (or its range) to `out` as it comes, until `out` is destroyed by its reader. */
  private async copyBlob(ref: ImageReference, digest: string, range: { start: number; end: number } | undefined, out: Writable): Promise<void> {
    const hash = range ? undefined : createHash('sha256');
    const start = range?.start ?? 0;
    let received = 0;
    const what = `blob ${digest} of ${ref.host}/${ref.repository}`;
    await withRetries(this.transport.retry, { onRetry: this.transport.retried, giveUp: broken(what) }, async () => {
      const ranged = range !== undefined || received > 0;
      const spec: RequestSpec = {
        method: 'GET', path: `${ref.repository}/blobs/${digest}`,
        headers: ranged ? { range: `bytes=${start + received}-${range ? range.end - 1 : ''}` } : {}, scope: RegistryClient.pull(ref), capability: 'pull',
        rangeOf: ranged ? digest : undefined, wholeIs: range?.start === 0 && received === 0 ? range.end : undefined,
      };
      const res = await this.transport.send(ref, spec);
      if (ranged ? !servesRange(spec, res) : res.statusCode !== 200) {
        if (ranged && res.statusCode === 200) {
          await res.body.dump();
          throw new RegistryError(`${what}: ${res.hostName} ignored Range from byte ${start + received}`, 200);
        }
        return this.transport.fail(res, what);
      }
      for await (const piece of res.body) {
        if (out.destroyed) return; // the reader went away: leaving the loop lets the body go
        const buf = piece as Buffer;
        hash?.update(buf);
        received += buf.length;
        this.transport.received(res, buf.length);
        if (!out.write(buf)) await drained(out);
      }
    });
    if (out.destroyed) return;
    if (range && received !== range.end - range.start) throw new RegistryError(`${what}: got ${received} of bytes ${range.start}-${range.end - 1}`, 206);
    const actual = hash && hashDigest(hash);
    if (actual && actual !== digest) throw new DigestMismatchError(what, digest, actual);
  }

  /** Bytes [start, end) of a blob with one Range request (retried whole on a broken body). */
  async getBlobRange(ref: ImageReference, digest: string, start: number, end: number): Promise<Buffer> {
    const what = `bytes ${start}-${end - 1} of blob ${digest} in ${ref.host}/${ref.repository}`;
    const { bytes } = await this.blobRange(ref, digest, `bytes=${start}-${end - 1}`, what);
    if (bytes.length !== end - start) throw new RegistryError(`${what}: got ${bytes.length} bytes`, 206);
    return bytes;
  }

  /**
   * The last `length` bytes of a blob (all of it when it is shorter) and the blob's size, from the
   * answer's Content-Range: one suffix Range request, for when the size is not known yet.
   */
  async getBlobTail(ref: ImageReference, digest: string, length: number): Promise<{ bytes: Buffer; size: number }> {
    const what = `last ${length} bytes of blob ${digest} in ${ref.host}/${ref.repository}`;
    const { bytes, contentRange } = await this.blobRange(ref, digest, `bytes=-${length}`, what);
    const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(contentRange ?? '');
    const [first, last, size] = m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [];
    if (size === undefined || last! + 1 !== size || last! - first! + 1 !== bytes.length) {
      throw new RegistryError(`${what}: Content-Range "${contentRange ?? ''}" does not give the blob's end and size for ${bytes.length} bytes`, 206);
    }
    return { bytes, size };
  }

  /** One Range GET of a blob, retried whole on a broken body: the bytes and the Content-Range answered. */
  private blobRange(ref: ImageReference, digest: string, range: string, what: string): Promise<{ bytes: Buffer; contentRange: string | undefined }> {
    return withRetries(this.transport.retry, { onRetry: this.transport.retried, giveUp: broken(what) }, async () => {
      const res = await this.transport.send(ref, {
        method: 'GET', path: `${ref.repository}/blobs/${digest}`, headers: { range },
        scope: RegistryClient.pull(ref), capability: 'pull', rangeOf: digest,
      });
      if (res.statusCode !== 206) {
        if (res.statusCode === 200) {
          await res.body.dump();
          throw new RegistryError(`${what}: ${res.hostName} does not support Range requests`, 200);
        }
        return this.transport.fail(res, what);
      }
      const bytes = Buffer.from(await res.body.arrayBuffer());
      this.transport.received(res, bytes.length);
      const cr = res.headers['content-range'];
      return { bytes, contentRange: Array.isArray(cr) ? cr[0] : cr };
    });
  }

  /**
   * Uploads a blob unless the repository has it: cross-repo mount when `mountFrom` names a
   * repository of the same registry that has it, else a monolithic PUT for small blobs and
   * chunked PATCHes for large ones. A failed upload session is restarted from the beginning.
   */
  async pushBlob(ref: ImageReference, digest: string, size: number, open: (start: number, end: number) => ReplayableBody,
    opts: UploadOptions = {}): Promise<'exists' | 'mounted' | 'uploaded'> {
    if ((await this.headBlob(ref, digest, 'push')) !== undefined) return 'exists';
    // A broken upload session cannot be resumed reliably: start a new one.
    return withRetries(this.transport.retry, { retries: 2, retryable: (err) => err instanceof RegistryError }, () => uploadBlob(this.transport, ref, digest, size, open, opts));
  }

  /**
   * The OCI index of the manifests that name `digest` as their subject (the referrers API),
   * filtered by artifact type; undefined where the registry does not offer the API (404), so
   * that the caller falls back to the tag schema.
   */
  async getReferrers(ref: ImageReference, digest: string, artifactType: string): Promise<Buffer | undefined> {
    const res = await this.transport.send(ref, {
      method: 'GET', path: `${ref.repository}/referrers/${digest}?artifactType=${encodeURIComponent(artifactType)}`,
      headers: { accept: 'application/vnd.oci.image.index.v1+json' }, scope: RegistryClient.pull(ref), capability: 'pull',
    });
    if (res.statusCode === 404) {
      await res.body.dump();
      return undefined;
    }
    if (res.statusCode !== 200) return this.transport.fail(res, `referrers of ${digest} in ${ref.repository}`);
    const bytes = Buffer.from(await res.body.arrayBuffer());
    this.transport.received(res, bytes.length);
    return bytes;
  }

  async putManifest(ref: ImageReference, reference: string, bytes: Buffer, mediaType: string): Promise<string> {
    const res = await this.transport.send(ref, {
      method: 'PUT', path: `${ref.repository}/manifests/${reference}`, body: bytes,
      headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
      scope: `repository:${ref.repository}:pull,push`, capability: 'push',
    });
    if (res.statusCode !== 201 && res.statusCode !== 200) return this.transport.fail(res, `push of manifest ${ref.repository}:${reference}`);
    await res.body.dump();
    return sha256Digest(bytes);
  }
}
