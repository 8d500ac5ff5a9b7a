// What every binary starts with (the daemons in cmd/, dedupctl's commands in cli/): the common
// flags (--root, --config, --plain-http, --json, registry credentials), turning them into a
// validated Config and a RegistryClient, printing results as text or JSON, and the one place
// where errors become messages and exit codes.

import { homedir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import type { Logger } from 'pino';
import { AuditLog, cliActor } from '../audit/audit-log.js';
import { loadConfig, type Config } from '../config/config.js';
import { InvalidArgumentError, isDedupError } from '../errors.js';
import { loadDockerConfig, type Credentials } from '../registry/auth.js';
import { RegistryClient } from '../registry/client.js';

export interface CommonFlags {
  root?: string;
  config?: string;
  plainHttp?: boolean;
  json?: boolean;
  user?: string;
  hostsDir?: string;
}

/** Adds the flags every command takes. */
export function withCommonFlags(cmd: Command): Command {
  return cmd
    .option('--root <dir>', 'state root (default: "root" from the config)')
    .option('--config <file>', 'config file', undefined)
    .option('--plain-http', 'talk to registries over plain HTTP')
    .option('--json', 'machine-readable output')
    .addOption(new Option('-u, --user <user[:password]>', 'registry credentials (default: ~/.docker/config.json)'))
    .option('--hosts-dir <dir>', 'containerd-style certs.d directory with <host>/hosts.toml (default: from the config)');
}

export async function configFrom(flags: CommonFlags): Promise<Config> {
  return loadConfig(flags.config, { root: flags.root });
}

/** `log`: where a daemon says that a registry host was passed over (mirrors). */
export async function registryClientFrom(flags: CommonFlags, config: Config, log?: Logger): Promise<RegistryClient> {
  let explicit: Credentials | undefined;
  if (flags.user) {
    const i = flags.user.indexOf(':');
    if (i <= 0) throw new InvalidArgumentError('--user wants USER:PASSWORD');
    explicit = { username: flags.user.slice(0, i), password: flags.user.slice(i + 1) };
  }
  const dockerDir = process.env.DOCKER_CONFIG ?? join(homedir(), '.docker');
  const stored = explicit ? new Map<string, Credentials>() : await loadDockerConfig(join(dockerDir, 'config.json'));
  return new RegistryClient({
    plainHttp: flags.plainHttp ?? false,
    hostsDir: flags.hostsDir ?? config.registry_hosts_dir,
    credentials: (host) => explicit ?? stored.get(host),
    mirrorRetryMs: config.registry_mirror_retry_seconds * 1000,
    defaultRegistry: config.registry,
    onHostSkipped: log && ((skip) => {
      const fields = { host: skip.host, blob: skip.blob, reason: skip.reason, detail: skip.detail, retryAt: new Date(skip.until).toISOString() };
      // A pull-through cache that has not cached a blob yet is normal; a host that fails is not.
      if (skip.reason === 'ignored_range') log.info(fields, 'registry host skipped: next host serves these ranges');
      else log.warn(fields, 'registry host skipped: next host serves the request');
    }),
  });
}

/** Runs a command's change to the state root and records it, with its outcome, in audit.db. */
export async function audited<T>(config: Config, action: string, target: string, details: Record<string, unknown>, fn: () => Promise<T>): Promise<T> {
  const audit = AuditLog.open(config.root);
  try {
    return await audit.audited(cliActor(), action, target, details, fn);
  } finally {
    audit.close();
  }
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** Parses a positive integer flag with an optional K/M/G suffix (powers of 1024). */
export function parseSize(flag: string): (value: string) => number {
  return (value) => {
    const m = /^(\d+)([kmg]i?b?)?$/i.exec(value.trim());
    if (!m) throw new InvalidArgumentError(`${flag} "${value}" is not a size (e.g. 4194304 or 4M)`);
    const mult = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').charAt(0).toLowerCase() as 'k'] ?? 1;
    return Number(m[1]) * mult;
  };
}

export function parseIntFlag(flag: string, min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${flag} must be an integer from ${min} to ${max}, not "${value}"`);
    return n;
  };
}

/**
 * Runs a program and maps failures to exit codes: 1 for an error we name, 2 for a usage error,
 * 70 (EX_SOFTWARE) for anything unexpected, with the stack.
 */
export async function runCli(program: Command, argv = process.argv): Promise<void> {
  // Subcommands added with addCommand do not inherit this: set it on every command.
  // A reader that went away (`dedupctl … | head`) ends the output, as in any Unix tool.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
  for (const c of all(program)) c.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    const name = program.name();
    if (isDedupError(err)) {
      process.stderr.write(`${name}: ${err.message} [${err.code}]\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(`${name}: unexpected error: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 70;
    }
  }
}
