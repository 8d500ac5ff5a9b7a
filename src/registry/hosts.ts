// containerd's registry host configuration: `<dir>/<host>/hosts.toml` (the certs.d convention).
// We use it to learn which endpoints serve a host, in which order (mirrors first, then the
// `server`), what each may do, and whether it speaks plain HTTP.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { isLoopback } from '../config/config.js';
import { InvalidConfigError } from '../errors.js';

export type Capability = 'pull' | 'resolve' | 'push';

export interface RegistryEndpoint {
  /** Origin, e.g. "https://registry-1.docker.io" or "http://127.0.0.1:5000". */
  origin: string;
  /** Path before the request's path: "/v2", or a mirror's "/prefix/v2", or with override_path the URL's path as written. */
  apiRoot: string;
  capabilities: Set<Capability>;
  /** What logs and metrics call it: host[:port] and the path when there is one. */
  name: string;
  /**
   * Whose credentials and tokens it takes: the image's registry for the registry itself (its
   * `server`), the mirror's own host for a mirror, so a mirror never sees the origin's.
   */
  authHost: string;
  /**
   * A guess to drop once it fails to connect (a loopback registry tried over https first): the
   * next endpoint, the same host over plain HTTP, is then used for good.
   */
  guess?: boolean;
}

const ALL = new Set<Capability>(['pull', 'resolve', 'push']);

function endpoint(url: string, caps: Set<Capability>, authHost: string | undefined, file: string, overridePath = false): RegistryEndpoint {
  let u: URL;
  try {
    u = new URL(url.includes('://') ? url : `https://${url}`);
  } catch {
    throw new InvalidConfigError(`${file}: "${url}" is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidConfigError(`${file}: "${url}" is not http or https`);
  const path = u.pathname.replace(/\/+$/, '');
  const apiRoot = overridePath ? path : `${path.replace(/\/v2$/, '')}/v2`;
  return { origin: u.origin, apiRoot, capabilities: caps, name: u.host + path, authHost: authHost ?? u.host };
}

function capabilities(list: unknown, file: string, what: string): Set<Capability> {
  if (list === undefined) return new Set(['pull', 'resolve']);
  if (!Array.isArray(list) || list.some((c) => !ALL.has(c as Capability))) {
    throw new InvalidConfigError(`${file}: capabilities of ${what} must be a list of "pull", "resolve", "push"`);
  }
  return new Set(list as Capability[]);
}

/** The host name of "HOST[:PORT]" or "[V6]:PORT". */
function hostName(host: string): string {
  return host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d+$/, '');
}

/**
 * The endpoints for `host`, in the order to try them: hosts.toml's [host."…"] entries (mirrors,
 * by default allowed to pull and resolve), then its `server` (or the host itself; with the
 * top-level `capabilities` when given, so `capabilities = []` there means mirrors only). Without a
 * hosts.toml: the host itself, over https unless plainHttp says otherwise; a loopback host
 * (localhost, 127.0.0.0/8, ::1) as containerd and stargz-snapshotter treat it: https, and plain
 * HTTP when https does not connect.
 */
export async function resolveEndpoints(host: string, apiHost: string, opts: { hostsDir?: string; plainHttp: boolean }): Promise<RegistryEndpoint[]> {
  const origin = (caps: Set<Capability>): RegistryEndpoint[] => {
    const plain = endpoint(`http://${apiHost}`, caps, host, 'registry');
    return opts.plainHttp ? [plain]
      : isLoopback(hostName(apiHost)) ? [{ ...endpoint(`https://${apiHost}`, caps, host, 'registry'), guess: true }, plain]
      : [endpoint(`https://${apiHost}`, caps, host, 'registry')];
  };
  if (!opts.hostsDir) return origin(ALL);
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
  if (text === undefined) return origin(ALL);
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    throw new InvalidConfigError(`${alt}: ${(err as Error).message}`);
  }
  const out: RegistryEndpoint[] = [];
  const hosts = (doc.host ?? {}) as Record<string, { capabilities?: unknown; override_path?: unknown }>;
  for (const [url, h] of Object.entries(hosts)) {
    out.push(endpoint(url, capabilities(h.capabilities, alt, `host "${url}"`), undefined, alt, h.override_path === true));
  }
  const serverCaps = doc.capabilities === undefined ? ALL : capabilities(doc.capabilities, alt, 'the server');
  if (typeof doc.server === 'string') out.push(endpoint(doc.server, serverCaps, host, alt, doc.override_path === true));
  else out.push(...origin(serverCaps));
  return out;
}
