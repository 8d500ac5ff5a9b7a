// The daemon's config while it runs: partial updates (JSON merge patch, RFC 7396) validated as a
// whole, persisted atomically to the config file, and announced to whoever applies them live.
// Keys read only at start-up are reported as needing a restart instead.

import { EventEmitter } from 'node:events';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { InvalidConfigError } from '../errors.js';
import { configOf, flattenConfig, readConfigDocument, type Config, type ConfigDocument, type ConfigOverrides } from './config.js';

/** Keys (or key prefixes) the daemon reads only when it starts. */
const RESTART_KEYS = ['root', 'enable_erofs', 'enable_fscache', 'mount_mode', 'enable_lazy', 'registry', 'registry_hosts_dir', 'registry_mirror_retry_seconds', 'prefetch.trace_dir',
  'api.enabled', 'api.addr', 'shared_stores', 'shared_stores_refresh_seconds'];

export interface ConfigChange {
  config: Config;
  /** Leaf keys whose effective value changed. */
  changed: string[];
  applied: string[];
  restartRequired: string[];
}

/** RFC 7396: objects merge key by key, null removes a key (back to its default), anything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

export function needsRestart(key: string): boolean {
  return RESTART_KEYS.some((k) => key === k || key.startsWith(`${k}.`));
}

export class LiveConfig extends EventEmitter<{ change: [ConfigChange] }> {
  private constructor(private document: ConfigDocument, private current: Config, private readonly overrides: ConfigOverrides) {
    super();
  }

  static async load(path: string | undefined, overrides: ConfigOverrides = {}): Promise<LiveConfig> {
    const document = await readConfigDocument(path);
    return new LiveConfig(document, configOf(document, overrides), overrides);
  }

  get file(): string {
    return this.document.file;
  }

  get(): Config {
    return this.current;
  }

  /** Validates and persists `patch`; nothing changes (file or memory) if it is refused. */
  async update(patch: unknown): Promise<ConfigChange> {
    if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) throw new InvalidConfigError('config update: must be a JSON object');
    const doc = mergePatch(this.document.doc, patch) as Record<string, unknown>;
    // The file must stand on its own (a later start may lack today's flags), and with them.
    configOf({ file: 'config update', doc });
    const next = configOf({ file: 'config update', doc }, this.overrides);
    const before = flattenConfig(this.current);
    // Leaves are compared by value: a list (shared_stores) is a new array in every parse.
    const changed = [...flattenConfig(next)].filter(([k, v]) => JSON.stringify(before.get(k)) !== JSON.stringify(v)).map(([k]) => k);
    await mkdir(dirname(this.document.file), { recursive: true });
    await writeFileAtomic(this.document.file, Buffer.from(JSON.stringify(doc, null, 2) + '\n'));
    this.document = { file: this.document.file, doc };
    this.current = next;
    const change = { config: next, changed, applied: changed.filter((k) => !needsRestart(k)), restartRequired: changed.filter(needsRestart) };
    if (changed.length) this.emit('change', change);
    return change;
  }
}
