// How a registry request is sent: to the hosts hosts.toml names, in order, the way containerd's
// resolver tries them (mirrors passed over per blob for a while), over undici with keep-alive
// connections, with auth and retries on connection faults, 429 and 5xx; and the typed error for
// an answer that is not the one wanted.

import type { Readable } from 'node:stream';
import { Agent, interceptors, type Dispatcher } from 'undici';
import { isDedupError, NotFoundError, RegistryAuthError, RegistryError } from '../errors.js';
import type { CredentialLookup } from './auth.js';
import { Authorizer } from './authorizer.js';
import { HostSkips, type HostSkip, type HostTransferStats, type SkipReason } from './host-skips.js';
import { resolveEndpoints, type RegistryEndpoint } from './hosts.js';
import { apiHost, type ImageReference } from './reference.js';
import { DEFAULT_RETRY, retryableAnswer, withRetries, type RetryPolicy } from './retry.js';

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
  /** The registry host of references that name none (config `registry`); docker.io when not given. */
  defaultRegistry?: string;
}

export const DEFAULT_MIRROR_RETRY_MS = 30_000;
/** Retries a mirror gets before the next host is asked: containerd gives none; one covers a keep-alive connection the mirror dropped. */
const MIRROR_RETRIES = 1;

/** A request body that can be sent again on a retry. */
export type ReplayableBody = Buffer | (() => Readable);

export interface RequestSpec {
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
export function servesRange(spec: RequestSpec, res: Dispatcher.ResponseData): boolean {
  return res.statusCode === 206 || (res.statusCode === 200 && spec.wholeIs !== undefined && Number(res.headers['content-length']) === spec.wholeIs);
}

/** An answer, the host that gave it and its counters. */
export type Answer = Dispatcher.ResponseData & { hostName: string; host: HostTransferStats };

export interface TransferStats {
  requests: number;
  retries: number;
  /** Body bytes received for blob and manifest GETs. */
  bytesReceived: number;
  /** The same per endpoint, with the requests each passed on to the next host. */
  hosts: Record<string, HostTransferStats>;
}

export class RegistryTransport {
  private readonly dispatcher: Dispatcher;
  private readonly agent: Agent;
  private readonly auth: Authorizer;
  private readonly endpoints = new Map<string, Promise<RegistryEndpoint[]>>();
  readonly retry: RetryPolicy;
  readonly stats: TransferStats = { requests: 0, retries: 0, bytesReceived: 0, hosts: {} };
  private readonly skips: HostSkips;
  private readonly userAgent: string;

  constructor(private readonly opts: RegistryClientOptions = {}) {
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
    this.skips = new HostSkips(opts.mirrorRetryMs ?? DEFAULT_MIRROR_RETRY_MS, this.stats.hosts);
    this.agent = new Agent({ connections: opts.connections ?? 8, keepAliveTimeout: 30_000, pipelining: 1 });
    this.dispatcher = this.agent.compose(interceptors.redirect({ maxRedirections: 5 }));
    this.userAgent = opts.userAgent ?? 'dedup-snapshotter/0.1';
    this.auth = new Authorizer(this.dispatcher, this.retry, this.userAgent, opts.credentials);
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  endpointsFor(host: string): Promise<RegistryEndpoint[]> {
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
  async send(ref: ImageReference, spec: RequestSpec): Promise<Answer> {
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
  received(res: Answer, bytes: number): void {
    this.stats.bytesReceived += bytes;
    res.host.bytesReceived += bytes;
  }

  /** A retry of a request, or of a body cut off (counted in the stats). */
  retried = (): void => {
    this.stats.retries++;
  };

  private sendTo(ep: RegistryEndpoint, spec: RequestSpec, host: HostTransferStats, retries: number): Promise<Dispatcher.ResponseData> {
    const url = /^https?:\/\//.test(spec.path) ? spec.path : `${ep.origin}${ep.apiRoot}/${spec.path}`;
    const target = new URL(url);
    const once = async (): Promise<Dispatcher.ResponseData> => {
      const headers: Record<string, string> = { 'user-agent': this.userAgent, ...spec.headers };
      const auth = await this.auth.header(ep.authHost, spec.scope);
      if (auth) headers.authorization = auth;
      this.stats.requests++;
      host.requests++;
      const body = spec.body === undefined ? undefined : Buffer.isBuffer(spec.body) ? spec.body : spec.body();
      return this.dispatcher.request({
        origin: target.origin, path: target.pathname + target.search,
        method: spec.method, headers, body, headersTimeout: 60_000, bodyTimeout: 120_000,
      });
    };
    let challenged = false;
    return withRetries(this.retry, {
      retries, again: retryableAnswer, onRetry: this.retried,
      // Ours (an auth failure) and faults of no I/O (a bad realm URL, a token answer not JSON) go
      // as they are: only what the connection did makes the host unreachable.
      giveUp: (err, attempts) => isDedupError(err) || (err instanceof Error && (err as { code?: unknown }).code === undefined) ? err
        : new RegistryError(`${spec.method} ${url}: ${(err as Error).message}${attempts > 1 ? ` (after ${attempts} attempts)` : ''}`, undefined, { cause: err }),
    }, async () => {
      const res = await once();
      // Answering a challenge is part of the try, not a retry; a second 401 is the answer.
      if (res.statusCode !== 401 || challenged) return res;
      await res.body.dump();
      await this.auth.answer(ep.authHost, res.headers['www-authenticate'], spec.scope, url);
      challenged = true;
      return once();
    });
  }

  /** The typed error for an answer that was not the one wanted: `what` names what was asked for. */
  async fail(res: Dispatcher.ResponseData, what: string): Promise<never> {
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
}
