// The Authorization header a registry request carries, and the answer to a 401 challenge: a bearer
// token from the challenge's realm (cached per host and scope; requests sent in parallel share one
// token request) or, where the host asked for it, Basic auth sent up front from then on.

import type { Dispatcher } from 'undici';
import { RegistryAuthError } from '../errors.js';
import { basicAuth, parseChallenge, TokenCache, type CredentialLookup } from './auth.js';
import { retryableAnswer, withRetries, type RetryPolicy } from './retry.js';

export class Authorizer {
  private readonly tokens = new TokenCache();
  /** Hosts that asked for Basic auth: send it up front next time. */
  private readonly basicHosts = new Set<string>();
  /** Token requests under way by host and scope. */
  private readonly authorizing = new Map<string, Promise<void>>();

  constructor(private readonly dispatcher: Dispatcher, private readonly retry: RetryPolicy, private readonly userAgent: string,
    private readonly credentials?: CredentialLookup) {}

  /** The header for a request to `host` in `scope`, once a token on its way for it has come (rather than meet the challenge too). */
  async header(host: string, scope: string): Promise<string | undefined> {
    await this.authorizing.get(`${host} ${scope}`)?.catch(() => undefined);
    const token = this.tokens.get(host, scope);
    if (token) return `Bearer ${token}`;
    const creds = this.credentials?.(host);
    if (creds && this.basicHosts.has(host)) return basicAuth(creds);
    return undefined;
  }

  /** Answers a challenge (`url` was refused with it), or joins the answer already under way for this host and scope. */
  answer(host: string, challenge: string | string[] | undefined, scope: string, url: string): Promise<void> {
    const key = `${host} ${scope}`;
    let pending = this.authorizing.get(key);
    if (!pending) {
      pending = this.authorize(host, Array.isArray(challenge) ? challenge[0] : challenge, scope, url).finally(() => this.authorizing.delete(key));
      this.authorizing.set(key, pending);
    }
    return pending;
  }

  private async authorize(host: string, header: string | undefined, scope: string, url: string): Promise<void> {
    const challenge = header ? parseChallenge(header) : undefined;
    const creds = this.credentials?.(host);
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
    const headers: Record<string, string> = { 'user-agent': this.userAgent };
    if (creds) headers.authorization = basicAuth(creds);
    const res = await withRetries(this.retry, { again: retryableAnswer, giveUp: (err) => new RegistryAuthError(`token server ${realm.origin}: ${(err as Error).message}`) },
      () => this.dispatcher.request({ origin: realm.origin, path: realm.pathname + realm.search, method: 'GET', headers }));
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new RegistryAuthError(`token server ${realm.origin} refused scope "${scope}" with HTTP ${res.statusCode}${creds ? '' : ' (no credentials configured)'}`);
    }
    const doc = (await res.body.json()) as { token?: string; access_token?: string; expires_in?: number };
    const token = doc.token ?? doc.access_token;
    if (!token) throw new RegistryAuthError(`token server ${realm.origin} answered without a token`);
    this.tokens.set(host, scope, token, doc.expires_in);
  }
}
