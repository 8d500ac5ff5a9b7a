// Registry authentication: WWW-Authenticate challenges, credentials (flags and the docker CLI's
// config.json), and bearer tokens cached per host and scope until they expire.

import { readFile } from 'node:fs/promises';
import { RegistryAuthError } from '../errors.js';

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header: `Bearer realm="…",service="…",scope="…"` (RFC 7235). */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z][\w-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*(?:,|$)/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2]!)) !== null) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
  }
  return { scheme: m[1]!.toLowerCase(), params };
}

export interface Credentials {
  username: string;
  password: string;
}

/** Where credentials come from: an explicit one for every host, or per host. */
export type CredentialLookup = (host: string) => Credentials | undefined;

/** Reads `auths` of a docker CLI config.json (`auth` base64 or username/password; no helpers). */
export async function loadDockerConfig(path: string): Promise<Map<string, Credentials>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw err;
  }
  let doc: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new RegistryAuthError(`${path} is not valid JSON (${(err as Error).message})`);
  }
  const out = new Map<string, Credentials>();
  for (const [key, entry] of Object.entries(doc.auths ?? {})) {
    const host = key.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
    let creds: Credentials | undefined;
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i > 0) creds = { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
    } else if (entry.username !== undefined && entry.password !== undefined) {
      creds = { username: entry.username, password: entry.password };
    }
    if (creds) out.set(host === 'index.docker.io' ? 'docker.io' : host, creds);
  }
  return out;
}

export function basicAuth(c: Credentials): string {
  return 'Basic ' + Buffer.from(`${c.username}:${c.password}`).toString('base64');
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

/** Bearer tokens per host and scope; a token is dropped a little before it expires. */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();

  get(host: string, scope: string, now = Date.now()): string | undefined {
    const t = this.tokens.get(`${host} ${scope}`);
    if (!t || t.expiresAt <= now) return undefined;
    return t.token;
  }

  set(host: string, scope: string, token: string, expiresInSeconds: number | undefined, now = Date.now()): void {
    // The distribution spec says 60 s when the server does not say; keep 10 s of margin.
    const ttl = Math.max(1, (expiresInSeconds ?? 60) - 10);
    this.tokens.set(`${host} ${scope}`, { token, expiresAt: now + ttl * 1000 });
  }
}
