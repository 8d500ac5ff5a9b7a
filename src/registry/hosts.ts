// containerd's registry host configuration: `<dir>/<host>/hosts.toml` (the certs.d convention).
// We use it to learn which endpoint serves a host and whether it speaks plain HTTP.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { isLoopback } from '../config/config.js';
import { InvalidConfigError } from '../errors.js';

export interface RegistryEndpoint {
  /** Origin, e.g. "https://registry-1.docker.io" or "http://127.0.0.1:5000". */
  origin: string;
  /** Path prefix before /v2 (hosts.toml lets a mirror live under a path). */
  pathPrefix: string;
  capabilities: Set<'pull' | 'resolve' | 'push'>;
  /**
   * A guess to drop once it fails to connect (a loopback registry tried over https first): the
   * next endpoint, the same host over plain HTTP, is then used for good.
   */
  guess?: boolean;
}

const ALL = new Set<'pull' | 'resolve' | 'push'>(['pull', 'resolve', 'push']);

function endpoint(url: string, caps: Set<'pull' | 'resolve' | 'push'>, file: string): RegistryEndpoint {
  let u: URL;
  try {
    u = new URL(url.includes('://') ? url : `https://${url}`);
  } catch {
    throw new InvalidConfigError(`${file}: "${url}" is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidConfigError(`${file}: "${url}" is not http or https`);
  const prefix = u.pathname.replace(/\/+$/, '').replace(/\/v2$/, '');
  return { origin: u.origin, pathPrefix: prefix, capabilities: caps };
}

/** The host name of "HOST[:PORT]" or "[V6]:PORT". */
function hostName(host: string): string {
  return host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d+$/, '');
}

/**
 * The endpoints for `host`, in the order to try them: hosts.toml's [host."…"] entries, then its
 * `server` (or the host itself). Without a hosts.toml: the host itself, over https unless
 * plainHttp says otherwise; a loopback host (localhost, 127.0.0.0/8, ::1) as containerd and
 * stargz-snapshotter treat it: https, and plain HTTP when https does not connect.
 */
export async function resolveEndpoints(host: string, apiHost: string, opts: { hostsDir?: string; plainHttp: boolean }): Promise<RegistryEndpoint[]> {
  const plain = endpoint(`http://${apiHost}`, ALL, 'registry');
  const fallback = opts.plainHttp ? [plain]
    : isLoopback(hostName(apiHost)) ? [{ ...endpoint(`https://${apiHost}`, ALL, 'registry'), guess: true }, plain]
    : [endpoint(`https://${apiHost}`, ALL, 'registry')];
  if (!opts.hostsDir) return fallback;
  const file = join(opts.hostsDir, host.replace(':', '_'), 'hosts.toml');
  const alt = join(opts.hostsDir, host, 'hosts.toml');
  let text: string | undefined;
  for (const f of [alt, file]) {
    try {
      text = await readFile(f, 'utf8');
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  if (text === undefined) return fallback;
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    throw new InvalidConfigError(`${alt}: ${(err as Error).message}`);
  }
  const out: RegistryEndpoint[] = [];
  const hosts = (doc.host ?? {}) as Record<string, { capabilities?: string[] }>;
  for (const [url, h] of Object.entries(hosts)) {
    const caps = new Set((h.capabilities ?? ['pull', 'resolve']).filter((c): c is 'pull' | 'resolve' | 'push' => ALL.has(c as 'pull')));
    out.push(endpoint(url, caps, alt));
  }
  if (typeof doc.server === 'string') out.push(endpoint(doc.server, ALL, alt));
  else out.push(...fallback);
  return out;
}
