// The one config module: the schema of /etc/dedup-snapshotter/config.json (the seed's keys) with
// defaults and ranges. Everything else receives a validated Config and never reads files or the
// environment for settings on its own.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { InvalidConfigError } from '../errors.js';

export const DEFAULT_CONFIG_PATH = '/etc/dedup-snapshotter/config.json';
export const DEFAULT_ROOT = '/var/lib/containerd/io.containerd.snapshotter.v1.dedup';
export const DEFAULT_SOCKET = '/run/containerd/dedup-snapshotter.sock';
/** `dedupd --serve`'s job socket. */
export const DEFAULT_DEDUPD_SOCKET = '/run/dedup-snapshotter/dedupd.sock';
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

/** "HOST:PORT" or "[V6]:PORT", as `--api-addr` takes it. */
export function parseHostPort(addr: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(addr);
  if (!m || Number(m[3]) > 65535) return undefined;
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** A registry host as references write it: a name or IPv4 address, or [IPv6], and a port. */
const REGISTRY_HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$/;
const SEED_DEDUPD_REGISTRY = 'https://registry-1.docker.io';
const SEED_FSCACHE_DOMAIN = 'dedup-snapshotter';

const absolutePath = z.string().min(1).refine((s) => s.startsWith('/'), 'must be an absolute path');

export const configSchema = z.object({
  root: absolutePath.default(DEFAULT_ROOT),
  enable_erofs: z.boolean().default(true),
  enable_fscache: z.boolean().default(true),
  /**
   * How lazily pulled layers are served: `fuse`, `erofs` (the kernel, filled on demand through
   * fanotify pre-content events) or `auto` (erofs where the kernel and the state root allow it).
   */
  mount_mode: z.enum(['auto', 'erofs', 'fuse']).default('fuse'),
  enable_lazy: z.boolean().default(true),
  enable_mem_dedup: z.boolean().default(true),
  /** Default registry host for references without one (as `dedupctl` and `dedupd` take them); "" keeps docker.io. */
  registry: z.string().refine((h) => h === '' || REGISTRY_HOST.test(h), 'must be a registry host, HOST[:PORT] (or "" for docker.io)').default(''),
  /** containerd certs.d directory (hosts.toml per registry host). */
  registry_hosts_dir: absolutePath.default('/etc/containerd/certs.d'),
  /**
   * A mirror that answered a Range request for a blob with the whole blob (a pull-through cache
   * still filling) or failed is passed over for that blob's ranges this long, then tried again.
   */
  registry_mirror_retry_seconds: z.number().int().min(0).max(86_400).default(30),
  chunk_size: z.number().int().min(MIN_CHUNK_SIZE).max(MAX_CHUNK_SIZE)
    .refine((n) => (n & (n - 1)) === 0, 'must be a power of two').default(4 * 1024 * 1024),
  log_level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info'),
  prefetch: z.object({
    enabled: z.boolean().default(true),
    workers: z.number().int().min(1).max(64).default(4),
    queue_size: z.number().int().min(1).max(1_000_000).default(1000),
    /** Defaults to <root>/traces. */
    trace_dir: absolutePath.optional(),
    /** After the start-up set, fetch the rest of every lazily mounted layer at low priority. */
    background: z.boolean().default(false),
    /**
     * A layer with neither a trace nor a landmark and at most this many (compressed) bytes is
     * fetched whole at low priority once mounted: read file by file, an interpreter's library
     * layer costs a round trip per file. 0 turns it off.
     */
    small_layer_bytes: z.number().int().min(0).max(1024 ** 4).default(64 * 1024 * 1024),
    /**
     * A layer with neither a trace nor a landmark and at most this many (compressed) bytes is
     * fetched whole at mount and all of it inflated, verified and stored: a layer this small (a
     * base's shell and libc, a configuration layer) is likely read at start, and one request for
     * all of it, made while the pull goes on, costs less than the first read's round trip. 0: off.
     */
    whole_layer_bytes: z.number().int().min(0).max(1024 ** 3).default(4 * 1024 * 1024),
  }).strict().default({}),
  gzip_index: z.object({
    /** Uncompressed bytes between an index's checkpoints: a read inflates at most about this much before its chunk. */
    spacing: z.number().int().min(MIN_CHUNK_SIZE).max(1024 ** 3).default(4 * 1024 * 1024),
  }).strict().default({}),
  ksm: z.object({
    enabled: z.boolean().default(true),
    scan_interval: z.number().int().min(1).max(60_000).default(100),
    pages_to_scan: z.number().int().min(1).max(1_000_000).default(100),
    merge_across_nodes: z.boolean().default(false),
  }).strict().default({}),
  dedupd: z.object({
    /** false: dedupd refuses to run (one-shot and --serve). */
    enabled: z.boolean().default(true),
    workers: z.number().int().min(1).max(64).default(4),
    // The seed's two keys below have no meaning here; their seed values are accepted so that the
    // seed's config loads, anything else is refused rather than silently ignored.
    registry: z.literal(SEED_DEDUPD_REGISTRY, { errorMap: () => ({
      message: `dedupd pulls from the registry each reference names (and "registry" for references without one): only the seed's "${SEED_DEDUPD_REGISTRY}" is accepted`,
    }) }).default(SEED_DEDUPD_REGISTRY),
    fscache_domain: z.literal(SEED_FSCACHE_DOMAIN, { errorMap: () => ({
      message: `fscache is not used (see enable_fscache): only the seed's "${SEED_FSCACHE_DOMAIN}" is accepted`,
    }) }).default(SEED_FSCACHE_DOMAIN),
  }).strict().default({}),
  api: z.object({
    enabled: z.boolean().default(true),
    /** The seed's port 8080, on loopback unless configured otherwise (and then with a token). */
    addr: z.string().refine((a) => parseHostPort(a) !== undefined, 'must be HOST:PORT').default('127.0.0.1:8080'),
    /** Bearer token every request but /healthz must carry; required off loopback. */
    token: z.string().default(''),
    max_body_bytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(1024 * 1024),
  }).strict().refine((a) => a.token !== '' || isLoopback(parseHostPort(a.addr)?.host ?? 'localhost'),
    { message: 'a non-loopback address needs api.token', path: ['addr'] }).default({}),
  /** Shared read-only layer stores (docs/shared-store.md), in order of preference; the daemon never writes there. */
  shared_stores: z.array(absolutePath).max(64).refine((a) => new Set(a).size === a.length, 'must not name a directory twice').default([]),
  /** How often the shared stores are scanned, besides inotify (which sees only this host's writes). */
  shared_stores_refresh_seconds: z.number().int().min(1).max(3600).default(5),
  /** The layer server (dedup-fused). */
  fused: z.object({
    /**
     * With no mount to serve and no client (the snapshotter checks on it every few seconds)
     * for this long, it exits; a snapshotter starts one again when it needs it. 0: never.
     */
    idle_exit_seconds: z.number().int().min(0).max(86_400)
      .refine((n) => n === 0 || n >= 10, 'must be 0 (never) or at least 10 (the snapshotter checks on it every 5 s)').default(60),
  }).strict().default({}),
  audit: z.object({
    /** Entries older than this are removed by the daemon. */
    retention_days: z.number().int().min(1).max(36_500).default(30),
  }).strict().default({}),
}).strict();

export type Config = z.infer<typeof configSchema> & { prefetch: { trace_dir: string } };

/** Validates a parsed config document; unknown keys and bad values name their path. */
export function parseConfig(doc: unknown, source: string): Config {
  const r = configSchema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const key = issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys[0]].join('.') : issue.path.join('.');
    const msg = issue.code === 'unrecognized_keys' ? 'unknown key' : issue.message;
    throw new InvalidConfigError(`${source}: ${key || '(root)'}: ${msg}`);
  }
  const c = r.data;
  return { ...c, prefetch: { ...c.prefetch, trace_dir: c.prefetch.trace_dir ?? join(c.root, 'traces') } };
}

export interface PrefetchOptions { enabled: boolean; queueSize: number; background: boolean; smallLayerBytes: number; wholeLayerBytes: number }

/** What a layer mount is told to prefetch (LayerMountContext.prefetch), from the "prefetch" section. */
export function prefetchOptions(c: Config): PrefetchOptions {
  return { enabled: c.prefetch.enabled, queueSize: c.prefetch.queue_size, background: c.prefetch.background, smallLayerBytes: c.prefetch.small_layer_bytes,
    wholeLayerBytes: c.prefetch.whole_layer_bytes };
}

/** Checkpoint spacing and chunk size of `dedupctl index create`: its flags, else the config; each in the config's range. */
export function gzipIndexDefaults(c: Config, flags: { spacing?: number; chunkSize?: number }): { spacing: number; chunkSize: number } {
  const r = configSchema.shape.gzip_index.removeDefault().shape.spacing.safeParse(flags.spacing ?? c.gzip_index.spacing);
  if (!r.success) throw new InvalidConfigError(`--spacing ${flags.spacing}: ${r.error.issues[0]!.message}`);
  const k = configSchema.shape.chunk_size.safeParse(flags.chunkSize ?? c.chunk_size);
  if (!k.success) throw new InvalidConfigError(`--chunk-size ${flags.chunkSize}: ${k.error.issues[0]!.message}`);
  return { spacing: r.data, chunkSize: k.data };
}

/** The config file's own JSON object (not yet validated), and where it came from. */
export interface ConfigDocument {
  file: string;
  doc: Record<string, unknown>;
}

/**
 * Reads the config file. A missing file at the default path means an empty document (all
 * defaults); a missing file that was named explicitly is an error.
 */
export async function readConfigDocument(path: string | undefined): Promise<ConfigDocument> {
  const file = path ?? DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && path === undefined) return { file, doc: {} };
    throw new InvalidConfigError(`${file}: cannot read (${(err as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new InvalidConfigError(`${file}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new InvalidConfigError(`${file}: not a JSON object`);
  return { file, doc: doc as Record<string, unknown> };
}

/** What the command line sets over the file (--root, --api-addr); never written back to it. */
export interface ConfigOverrides {
  root?: string;
  apiAddr?: string;
}

/** Validates a document with the command line's overrides applied on top. */
export function configOf({ file, doc }: ConfigDocument, overrides: ConfigOverrides = {}): Config {
  let d = doc;
  if (overrides.root !== undefined) d = { ...d, root: overrides.root };
  if (overrides.apiAddr !== undefined) d = { ...d, api: { ...(d.api as object | undefined), addr: overrides.apiAddr } };
  return parseConfig(d, file);
}

export async function loadConfig(path: string | undefined, overrides: ConfigOverrides = {}): Promise<Config> {
  return configOf(await readConfigDocument(path), overrides);
}

/** Every leaf of a config as "a.b" → value, for diffs and `config show`. */
export function flattenConfig(value: unknown, prefix = ''): Map<string, unknown> {
  const out = new Map<string, unknown>();
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) for (const [kk, vv] of flattenConfig(v, prefix ? `${prefix}.${k}` : k)) out.set(kk, vv);
  } else {
    out.set(prefix, value);
  }
  return out;
}

/** The config as shown to anyone who asks (API, CLI): secrets replaced. */
export function redactConfig(c: Config): Config {
  return { ...c, api: { ...c.api, token: c.api.token ? '<redacted>' : '' } };
}
