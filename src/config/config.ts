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
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

const absolutePath = z.string().min(1).refine((s) => s.startsWith('/'), 'must be an absolute path');

export const configSchema = z.object({
  root: absolutePath.default(DEFAULT_ROOT),
  enable_erofs: z.boolean().default(true),
  enable_fscache: z.boolean().default(true),
  enable_lazy: z.boolean().default(true),
  enable_mem_dedup: z.boolean().default(true),
  /** Default registry host for references without one; "" keeps docker.io. */
  registry: z.string().default(''),
  /** containerd certs.d directory (hosts.toml per registry host). */
  registry_hosts_dir: absolutePath.default('/etc/containerd/certs.d'),
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
  }).strict().default({}),
  ksm: z.object({
    enabled: z.boolean().default(true),
    scan_interval: z.number().int().min(1).max(60_000).default(100),
    pages_to_scan: z.number().int().min(1).max(1_000_000).default(100),
    merge_across_nodes: z.boolean().default(false),
  }).strict().default({}),
  dedupd: z.object({
    enabled: z.boolean().default(true),
    workers: z.number().int().min(1).max(64).default(4),
    registry: z.string().default('https://registry-1.docker.io'),
    fscache_domain: z.string().min(1).default('dedup-snapshotter'),
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

/**
 * Loads the config file. A missing file at the default path means defaults; a missing file that
 * was named explicitly is an error.
 */
export async function loadConfig(path: string | undefined, overrides: { root?: string } = {}): Promise<Config> {
  const file = path ?? DEFAULT_CONFIG_PATH;
  let doc: Record<string, unknown> = {};
  try {
    const text = await readFile(file, 'utf8');
    try {
      doc = JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      throw new InvalidConfigError(`${file}: not valid JSON (${(err as Error).message})`);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || path !== undefined) {
      if (err instanceof InvalidConfigError) throw err;
      throw new InvalidConfigError(`${file}: cannot read (${(err as Error).message})`);
    }
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new InvalidConfigError(`${file}: not a JSON object`);
  if (overrides.root !== undefined) doc = { ...doc, root: overrides.root };
  return parseConfig(doc, file);
}
