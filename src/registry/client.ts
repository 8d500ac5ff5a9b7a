// The OCI distribution client: manifests, blobs (whole, resumable, and by Range), uploads
// (monolithic, chunked, cross-repository mount) and manifest pushes, over undici with keep-alive
// connections, bearer/basic auth, retries on connection faults, 429 and 5xx, and mirrors tried
// before the registry itself the way containerd tries hosts.toml's hosts.

import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, interceptors, type Dispatcher } from 'undici';
import { DigestMismatchError, NotFoundError, RegistryAuthError, RegistryError } from '../errors.js';
import { basicAuth, parseChallenge, TokenCache, type CredentialLookup } from './auth.js';
import { HostSkips, type HostSkip, type HostTransferStats, type SkipReason } from './host-skips.js';
import { resolveEndpoints, type RegistryEndpoint } from './hosts.js';
import { apiHost, type ImageReference } from './reference.js';
import { DEFAULT_RETRY, isRetryableError, isRetryableStatus, retryDelay, type RetryPolicy } from './retry.js';

export interface RegistryClientOptions {
  /** Talk plain HTTP to registries that hosts.toml does not describe. */
  plainHttp?: boolean;
  /** containerd-style certs.d directory with <host>/hosts.toml files. */
  hostsDir?: string;
  credentials?: CredentialLookup;
  retry?: Partial<RetryPolicy>;
  /** Connections kept per origin. */
  connections?: number;
  userAgent?: string;
  /**
   * How long a mirror that ignored a Range request (answered the whole blob) or failed for a blob
   * is passed over for ranges of it, and a mirror that did not connect for everything.
   */
  mirrorRetryMs?: number;
  /** Told each time a host is passed over, for the log. */
  onHostSkipped?: (skip: HostSkip) => void;
}

export const DEFAULT_MIRROR_RETRY_MS = 30_000;
/** Retries a mirror gets before the next host is asked: containerd gives none; one covers a keep-alive connection the mirror dropped. */
const MIRROR_RETRIES = 1;

/** A request body that can be sent again on a retry. */
export type ReplayableBody = Buffer | (() => Readable);

interface RequestSpec {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH';
  /** Path after the endpoint's /v2 prefix, or an absolute URL (upload locations). */
  path: string;
  headers?: Record<string, string>;
  body?: ReplayableBody;
  /** Token scope for this request, e.g. "repository:foo/bar:pull". */
  scope: string;
  capability: 'pull' | 'resolve' | 'push';
  /** A Range GET of this blob: from a host that can pass it on, only a 206 will do (or see wholeIs). */
  rangeOf?: string;
  /**
   * The range asked for is [0, wholeIs): a 200 with the whole blob of that length (a pull-through
   * cache streaming while it fills) carries exactly those bytes, and serves it too.
   */
  wholeIs?: number;
}

/** Whether `res` carries the bytes a Range request asked for. */
function servesRange(spec: RequestSpec, res: Dispatcher.ResponseData): boolean {
  return res.statusCode === 206 || (res.statusCode === 200 && spec.wholeIs !== undefined && Number(res.headers['content-length']) === spec.wholeIs);
}

/** An answer, the host that gave it and its counters. */
type Answer = Dispatcher.ResponseData & { hostName: string; host: HostTransferStats };

export interface TransferStats {
  requests: number;
  retries: number;
  /** Body bytes received for blob and manifest GETs. */
  bytesReceived: number;
  /** The same per endpoint, with the requests each passed on to the next host. */
  hosts: Record<string, HostTransferStats>;
}

export const DEFAULT_UPLOAD_CHUNK = 16 * 1024 * 1024;

export class RegistryClient {
  private readonly dispatcher: Dispatcher;
  private readonly agent: Agent;
  private readonly tokens = new TokenCache();
  /** Hosts that asked for Basic auth: send it up front next time. */
  private readonly basicHosts = new Set<string>();
  /** Token requests under way by host and scope: requests sent in parallel share one. */
  private readonly authorizing = new Map<string, Promise<void>>();
  private readonly endpoints = new Map<string, Promise<RegistryEndpoint[]>>();
  private readonly retry: RetryPolicy;
  readonly stats: TransferStats = { requests: 0, retries: 0, bytesReceived: 0, hosts: {} };
  private readonly skips: HostSkips;

  constructor(private readonly opts: RegistryClientOptions = {}) {
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.skips = new HostSkips(opts.mirrorRetryMs ?? DEFAULT_MIRROR_RETRY_MS, this.stats.hosts);
    this.agent = new Agent({ connections: opts.connections ?? 8, keepAliveTimeout: 30_000, pipelining: 1 });
    this.dispatcher = this.agent.compose(interceptors.redirect({ maxRedirections: 5 }));
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  private endpointsFor(host: string): Promise<RegistryEndpoint[]> {
    let e = this.endpoints.get(host);
    if (!e) {
      e = resolveEndpoints(host, apiHost(host), { hostsDir: this.opts.hostsDir, plainHttp: this.opts.plainHttp ?? false });
      this.endpoints.set(host, e);
    }
    return e;
  }

  /** A loopback registry that does not speak https: plain HTTP from now on (containerd's rule). */
  private dropGuess(host: string, guess: RegistryEndpoint): void {
    const known = this.endpoints.get(host);
    if (known) this.endpoints.set(host, known.then((eps) => eps.filter((e) => e !== guess)));
  }

  /**
   * Sends a request with auth and retries; the caller consumes or dumps the body. Pulls and
   * resolves go through the hosts in order as containerd's resolver does: a mirror that fails,
   * does not connect or answers 4xx/5xx (or, for a Range request, the whole blob) passes the
   * request on to the next host; the last host's answer is final. Pushes, and the https guess of a
   * loopback registry, move on only when the host does not connect.
   */
  private async send(ref: ImageReference, spec: RequestSpec): Promise<Answer> {
    const endpoints = (await this.endpointsFor(ref.host)).filter((e) => e.capabilities.has(spec.capability));
    if (endpoints.length === 0) throw new RegistryError(`no endpoint of ${ref.host} may ${spec.capability}`);
    let lastError: unknown;
    for (const [i, ep] of endpoints.entries()) {
      const mirror = spec.capability !== 'push' && !ep.guess && i < endpoints.length - 1;
      if (mirror && this.skips.skipped(ep.name, spec.rangeOf)) continue;
      const host = this.skips.stats(ep.name);
      let res: Dispatcher.ResponseData;
      try {
        res = await this.sendTo(ep, spec, host, mirror ? MIRROR_RETRIES : this.retry.retries);
      } catch (err) {
        lastError = err;
        const unreachable = err instanceof RegistryError && err.status === undefined;
        if (mirror && err instanceof Error) {
          this.passOver(ep, spec.rangeOf, unreachable ? 'unreachable' : 'status', err.message);
          continue;
        }
        if (!unreachable) throw err;
        if (ep.guess) this.dropGuess(ref.host, ep);
        continue;
      }
      const reason: SkipReason | undefined = !mirror ? undefined
        : spec.rangeOf !== undefined && res.statusCode === 200 && !servesRange(spec, res) ? 'ignored_range'
        : res.statusCode >= 400 ? 'status' : undefined;
      if (reason) {
        await res.body.dump();
        this.passOver(ep, spec.rangeOf, reason, `${spec.method} ${spec.path}: HTTP ${res.statusCode}`);
        continue;
      }
      return Object.assign(res, { hostName: ep.name, host });
    }
    throw lastError;
  }

  private passOver(ep: RegistryEndpoint, blob: string | undefined, reason: SkipReason, detail: string): void {
    this.opts.onHostSkipped?.(this.skips.skip(ep.name, blob, reason, detail));
  }

  /** Counts body bytes received from the host that gave `res`. */
  private received(res: Answer, bytes: number): void {
    this.stats.bytesReceived += bytes;
    res.host.bytesReceived += bytes;
  }

  private async sendTo(ep: RegistryEndpoint, spec: RequestSpec, host: HostTransferStats, retries: number): Promise<Dispatcher.ResponseData> {
    const url = /^https?:\/\//.test(spec.path) ? spec.path : `${ep.origin}${ep.apiRoot}/${spec.path}`;
    const target = new URL(url);
    let authorized = false;
    for (let attempt = 0; ; attempt++) {
      // A token on its way for this scope: wait for it rather than meet the challenge too.
      await this.authorizing.get(`${ep.authHost} ${spec.scope}`)?.catch(() => undefined);
      const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'dedup-snapshotter/0.1', ...spec.headers };
      const auth = this.authorizationFor(ep.authHost, spec.scope);
      if (auth) headers.authorization = auth;
      let res: Dispatcher.ResponseData;
      try {
        this.stats.requests++;
        host.requests++;
        const body = spec.body === undefined ? undefined : Buffer.isBuffer(spec.body) ? spec.body : spec.body();
        res = await this.dispatcher.request({
          origin: target.origin, path: target.pathname + target.search,
          method: spec.method, headers, body, headersTimeout: 60_000, bodyTimeout: 120_000,
        });
      } catch (err) {
        if (!isRetryableError(err) || attempt >= retries) {
          throw new RegistryError(`${spec.method} ${url}: ${(err as Error).message}${attempt > 0 ? ` (after ${attempt + 1} attempts)` : ''}`, undefined, { cause: err });
        }
        this.stats.retries++;
        await sleep(retryDelay(this.retry, attempt + 1));
        continue;
      }
      if (res.statusCode === 401 && !authorized) {
        await res.body.dump();
        const challenge = res.headers['www-authenticate'];
        await this.authorizeShared(ep.authHost, Array.isArray(challenge) ? challenge[0] : challenge, spec.scope, url);
        authorized = true;
        attempt--; // answering a challenge is not a retry
        continue;
      }
      if (isRetryableStatus(res.statusCode) && attempt < retries) {
        await res.body.dump();
        this.stats.retries++;
        await sleep(retryDelay(this.retry, attempt + 1, res.headers['retry-after']));
        continue;
      }
      return res;
    }
  }

  private authorizationFor(host: string, scope: string): string | undefined {
    const token = this.tokens.get(host, scope);
    if (token) return `Bearer ${token}`;
    const creds = this.opts.credentials?.(host);
    if (creds && this.basicHosts.has(host)) return basicAuth(creds);
    return undefined;
  }

  /** Answers a challenge, or joins the answer already under way for this host and scope. */
  private authorizeShared(host: string, header: string | undefined, scope: string, url: string): Promise<void> {
    const key = `${host} ${scope}`;
    let pending = this.authorizing.get(key);
    if (!pending) {
      pending = this.authorize(host, header, scope, url).finally(() => this.authorizing.delete(key));
      this.authorizing.set(key, pending);
    }
    return pending;
  }

  private async authorize(host: string, header: string | undefined, scope: string, url: string): Promise<void> {
    const challenge = header ? parseChallenge(header) : undefined;
    const creds = this.opts.credentials?.(host);
    if (challenge?.scheme === 'basic') {
      if (!creds) throw new RegistryAuthError(`${host} wants a username and password for ${url} (none configured)`);
      this.basicHosts.add(host);
      return;
    }
    if (challenge?.scheme !== 'bearer' || !challenge.params.realm) {
      throw new RegistryAuthError(`${host} refused ${url} with 401 and no usable WWW-Authenticate challenge`);
    }
    const realm = new URL(challenge.params.realm);
    if (challenge.params.service) realm.searchParams.set('service', challenge.params.service);
    for (const s of scope.split(' ')) realm.searchParams.append('scope', s);
    const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'dedup-snapshotter/0.1' };
    if (creds) headers.authorization = basicAuth(creds);
    let res: Dispatcher.ResponseData | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        res = await this.dispatcher.request({ origin: realm.origin, path: realm.pathname + realm.search, method: 'GET', headers });
      } catch (err) {
        if (!isRetryableError(err) || attempt >= this.retry.retries) throw new RegistryAuthError(`token server ${realm.origin}: ${(err as Error).message}`);
        await sleep(retryDelay(this.retry, attempt + 1));
        continue;
      }
      if (isRetryableStatus(res.statusCode) && attempt < this.retry.retries) {
        await res.body.dump();
        await sleep(retryDelay(this.retry, attempt + 1, res.headers['retry-after']));
        continue;
      }
      break;
    }
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new RegistryAuthError(`token server ${realm.origin} refused scope "${scope}" with HTTP ${res.statusCode}${creds ? '' : ' (no credentials configured)'}`);
    }
    const doc = (await res.body.json()) as { token?: string; access_token?: string; expires_in?: number };
    const token = doc.token ?? doc.access_token;
    if (!token) throw new RegistryAuthError(`token server ${realm.origin} answered without a token`);
    this.tokens.set(host, scope, token, doc.expires_in);
  }

  private async fail(res: Dispatcher.ResponseData, what: string): Promise<never> {
    let detail = '';
    try {
      const text = (await res.body.text()).slice(0, 500);
      const doc = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
      detail = doc.errors?.map((e) => `${e.code}: ${e.message}`).join('; ') ?? text;
    } catch {
      /* body was not JSON: the status says enough */
    }
    if (res.statusCode === 404) throw new NotFoundError(what, detail);
    if (res.statusCode === 401 || res.statusCode === 403) throw new RegistryAuthError(`${what}: HTTP ${res.statusCode}${detail ? ` (${detail})` : ''}`);
    throw new RegistryError(`${what}: HTTP ${res.statusCode}${detail ? ` (${detail})` : ''}`, res.statusCode);
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
    const res = await this.send(ref, {
      method: 'GET', path: `${ref.repository}/manifests/${reference}`, headers: { accept: accept.join(', ') },
      scope: RegistryClient.pull(ref), capability: byDigest ? 'pull' : 'resolve',
    });
    if (res.statusCode !== 200) return this.fail(res, what);
    const bytes = Buffer.from(await res.body.arrayBuffer());
    this.received(res, bytes.length);
    const digest = 'sha256:' + createHash('sha256').update(bytes).digest('hex');
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
    const res = await this.send(ref, {
      method: 'HEAD', path: `${ref.repository}/blobs/${digest}`,
      scope: capability === 'push' ? `repository:${ref.repository}:pull,push` : RegistryClient.pull(ref), capability,
    });
    await res.body.dump();
    if (res.statusCode === 404) return undefined;
    if (res.statusCode !== 200) return this.fail(res, `blob ${digest} in ${ref.repository}`);
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
    return Readable.from(this.blobPieces(ref, digest, range), { objectMode: false });
  }

  private async *blobPieces(ref: ImageReference, digest: string, range: { start: number; end: number } | undefined): AsyncGenerator<Buffer> {
    const hash = range ? undefined : createHash('sha256');
    const start = range?.start ?? 0;
    let received = 0;
    const what = `blob ${digest} of ${ref.host}/${ref.repository}`;
    for (let attempt = 0; ; attempt++) {
      const ranged = range !== undefined || received > 0;
      const spec: RequestSpec = {
        method: 'GET', path: `${ref.repository}/blobs/${digest}`,
        headers: ranged ? { range: `bytes=${start + received}-${range ? range.end - 1 : ''}` } : {}, scope: RegistryClient.pull(ref), capability: 'pull',
        rangeOf: ranged ? digest : undefined, wholeIs: range?.start === 0 && received === 0 ? range.end : undefined,
      };
      const res = await this.send(ref, spec);
      if (ranged ? !servesRange(spec, res) : res.statusCode !== 200) {
        if (ranged && res.statusCode === 200) {
          await res.body.dump();
          throw new RegistryError(`${what}: ${res.hostName} ignored Range from byte ${start + received}`, 200);
        }
        await this.fail(res, what);
        return;
      }
      try {
        for await (const piece of res.body) {
          const buf = piece as Buffer;
          hash?.update(buf);
          received += buf.length;
          this.received(res, buf.length);
          yield buf;
        }
        break;
      } catch (err) {
        if (!isRetryableError(err) || attempt >= this.retry.retries) throw new RegistryError(`${what}: ${(err as Error).message}`, undefined, { cause: err });
        this.stats.retries++;
        await sleep(retryDelay(this.retry, attempt + 1));
      }
    }
    if (range && received !== range.end - range.start) throw new RegistryError(`${what}: got ${received} of bytes ${range.start}-${range.end - 1}`, 206);
    const actual = hash && 'sha256:' + hash.digest('hex');
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
  private async blobRange(ref: ImageReference, digest: string, range: string, what: string): Promise<{ bytes: Buffer; contentRange: string | undefined }> {
    for (let attempt = 0; ; attempt++) {
      const res = await this.send(ref, {
        method: 'GET', path: `${ref.repository}/blobs/${digest}`, headers: { range },
        scope: RegistryClient.pull(ref), capability: 'pull', rangeOf: digest,
      });
      if (res.statusCode !== 206) {
        if (res.statusCode === 200) {
          await res.body.dump();
          throw new RegistryError(`${what}: ${res.hostName} does not support Range requests`, 200);
        }
        return this.fail(res, what);
      }
      try {
        const bytes = Buffer.from(await res.body.arrayBuffer());
        this.received(res, bytes.length);
        const cr = res.headers['content-range'];
        return { bytes, contentRange: Array.isArray(cr) ? cr[0] : cr };
      } catch (err) {
        if (!isRetryableError(err) || attempt >= this.retry.retries) throw new RegistryError(`${what}: ${(err as Error).message}`, undefined, { cause: err });
        this.stats.retries++;
        await sleep(retryDelay(this.retry, attempt + 1));
      }
    }
  }

  /**
   * Uploads a blob unless the repository has it: cross-repo mount when `mountFrom` names a
   * repository of the same registry that has it, else a monolithic PUT for small blobs and
   * chunked PATCHes for large ones. A failed upload session is restarted from the beginning.
   */
  async pushBlob(ref: ImageReference, digest: string, size: number, open: (start: number, end: number) => ReplayableBody,
    opts: { mountFrom?: string; chunkSize?: number } = {}): Promise<'exists' | 'mounted' | 'uploaded'> {
    if ((await this.headBlob(ref, digest, 'push')) !== undefined) return 'exists';
    for (let session = 1; ; session++) {
      try {
        return await this.uploadBlob(ref, digest, size, open, opts);
      } catch (err) {
        // A broken upload session cannot be resumed reliably: start a new one.
        if (!(err instanceof RegistryError) || session >= 3) throw err;
      }
    }
  }

  private async uploadBlob(ref: ImageReference, digest: string, size: number, open: (start: number, end: number) => ReplayableBody,
    opts: { mountFrom?: string; chunkSize?: number }): Promise<'mounted' | 'uploaded'> {
    const scope = `repository:${ref.repository}:pull,push` + (opts.mountFrom ? ` repository:${opts.mountFrom}:pull` : '');
    const what = `upload of blob ${digest} to ${ref.host}/${ref.repository}`;
    const query = opts.mountFrom ? `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(opts.mountFrom)}` : '';
    const start = await this.send(ref, { method: 'POST', path: `${ref.repository}/blobs/uploads/${query}`, headers: { 'content-length': '0' }, scope, capability: 'push' });
    await start.body.dump();
    if (start.statusCode === 201 && opts.mountFrom) return 'mounted';
    if (start.statusCode !== 202) return this.fail(start, what);
    let location = await this.location(start, ref);
    const chunkSize = opts.chunkSize ?? DEFAULT_UPLOAD_CHUNK;
    if (size > chunkSize) {
      for (let off = 0; off < size; off += chunkSize) {
        const end = Math.min(size, off + chunkSize);
        const res = await this.send(ref, {
          method: 'PATCH', path: location, body: open(off, end), scope, capability: 'push',
          headers: { 'content-type': 'application/octet-stream', 'content-range': `${off}-${end - 1}`, 'content-length': String(end - off) },
        });
        await res.body.dump();
        if (res.statusCode !== 202) return this.fail(res, `${what} (chunk at ${off})`);
        location = await this.location(res, ref);
      }
      const done = await this.send(ref, {
        method: 'PUT', path: withQuery(location, 'digest', digest), headers: { 'content-length': '0' }, scope, capability: 'push',
      });
      await done.body.dump();
      if (done.statusCode !== 201) return this.fail(done, what);
      return 'uploaded';
    }
    const res = await this.send(ref, {
      method: 'PUT', path: withQuery(location, 'digest', digest), body: open(0, size), scope, capability: 'push',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    });
    await res.body.dump();
    if (res.statusCode !== 201) return this.fail(res, what);
    return 'uploaded';
  }

  /** The upload URL a registry answered with; a relative one is relative to the push endpoint. */
  private async location(res: Dispatcher.ResponseData, ref: ImageReference): Promise<string> {
    const loc = res.headers.location;
    const l = Array.isArray(loc) ? loc[0] : loc;
    if (!l) throw new RegistryError(`upload to ${ref.host}/${ref.repository}: registry gave no Location`, res.statusCode);
    const ep = (await this.endpointsFor(ref.host)).find((e) => e.capabilities.has('push'));
    return new URL(l, ep?.origin ?? `https://${apiHost(ref.host)}`).toString();
  }

  /**
   * The OCI index of the manifests that name `digest` as their subject (the referrers API),
   * filtered by artifact type; undefined where the registry does not offer the API (404), so
   * that the caller falls back to the tag schema.
   */
  async getReferrers(ref: ImageReference, digest: string, artifactType: string): Promise<Buffer | undefined> {
    const res = await this.send(ref, {
      method: 'GET', path: `${ref.repository}/referrers/${digest}?artifactType=${encodeURIComponent(artifactType)}`,
      headers: { accept: 'application/vnd.oci.image.index.v1+json' }, scope: RegistryClient.pull(ref), capability: 'pull',
    });
    if (res.statusCode === 404) {
      await res.body.dump();
      return undefined;
    }
    if (res.statusCode !== 200) return this.fail(res, `referrers of ${digest} in ${ref.repository}`);
    const bytes = Buffer.from(await res.body.arrayBuffer());
    this.received(res, bytes.length);
    return bytes;
  }

  async putManifest(ref: ImageReference, reference: string, bytes: Buffer, mediaType: string): Promise<string> {
    const res = await this.send(ref, {
      method: 'PUT', path: `${ref.repository}/manifests/${reference}`, body: bytes,
      headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
      scope: `repository:${ref.repository}:pull,push`, capability: 'push',
    });
    await res.body.dump();
    if (res.statusCode !== 201 && res.statusCode !== 200) return this.fail(res, `push of manifest ${ref.repository}:${reference}`);
    return 'sha256:' + createHash('sha256').update(bytes).digest('hex');
  }
}

function withQuery(url: string, key: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(key, value);
  return u.toString();
}
