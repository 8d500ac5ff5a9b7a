// dedupctl pool create|acquire|release|checkpoint|ls|rm: the daemon's sandbox pools, through its
// admin API (the address and token from the config, or --api).

import { Command } from 'commander';
import { loadConfig } from '../config/config.js';
import { fromWire, UnavailableError, type WireError } from '../errors.js';
import { parseIntFlag, printJson } from '../startup/common.js';

interface ApiFlags {
  config?: string;
  api?: string;
  json?: boolean;
}

async function call<T>(flags: ApiFlags, method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const config = await loadConfig(flags.config);
  const addr = flags.api ?? config.api.addr;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (config.api.token) headers.authorization = `Bearer ${config.api.token}`;
  let res: Response;
  try {
    res = await fetch(`http://${addr}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new UnavailableError(`admin API: no answer from ${addr} (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}); is dedup-snapshotter running, with api.addr ${addr}?`);
  }
  const reply = (await res.json().catch(() => ({}))) as { error?: Partial<WireError> };
  if (!res.ok) throw fromWire('admin API', reply.error, res.status);
  return reply as T;
}

function withApiFlags(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'config file (api.addr, api.token)')
    .option('--api <host:port>', 'the daemon\'s admin API (default: api.addr from the config)')
    .option('--json', 'machine-readable output');
}

interface Summary {
  name: string;
  image: string;
  frozen: number;
  active: number;
  failed: number;
  base: string | null;
}

export function poolCommand(): Command {
  const pool = new Command('pool').description('pools of frozen sandboxes in dedup-snapshotter (docs/sandbox.md)');
  pool.addCommand(withApiFlags(new Command('create'))
    .description('create a pool of sandboxes running CMD on IMAGE (pulled with the dedup snapshotter)')
    .argument('<name>')
    .argument('<cmd...>', 'the sandbox\'s command, after --')
    .requiredOption('--image <ref>', 'the image whose root filesystem the sandboxes get')
    .option('--min <n>', 'keep at least this many frozen', parseIntFlag('--min', 0, 1000))
    .option('--max <n>', 'keep at most this many frozen', parseIntFlag('--max', 1, 1000))
    .option('--initial <n>', 'start with this many (default: --min)', parseIntFlag('--initial', 0, 1000))
    .option('--ready <file>', 'a sandbox is ready (and frozen) once this file exists in it')
    .option('--from-checkpoint', 'checkpoint one warmed-up sandbox and restore every sandbox from it (CRIU)')
    .option('--deny-syscalls <names>', 'a seccomp filter: these system calls (comma-separated) fail with EPERM in the sandboxes')
    .action(async (name: string, cmd: string[], flags: ApiFlags & { image: string; min?: number; max?: number; initial?: number; ready?: string; fromCheckpoint?: boolean; denySyscalls?: string }) => {
      const body = {
        name, min_size: flags.min, max_size: flags.max, initial_size: flags.initial, from_checkpoint: flags.fromCheckpoint ?? false,
        template: {
          image: flags.image, command: cmd, ...(flags.ready ? { ready: { file: flags.ready } } : {}),
          ...(flags.denySyscalls ? { seccomp: { deny: flags.denySyscalls.split(',').filter(Boolean) } } : {}),
        },
      };
      const s = await call<Summary>(flags, 'POST', '/pools', body);
      if (flags.json) return printJson(s);
      process.stdout.write(`pool ${s.name}: ${s.frozen} frozen${s.base ? `, base ${s.base}` : ''}\n`);
    }));
  pool.addCommand(withApiFlags(new Command('acquire'))
    .description('hand out a frozen sandbox, thawed: prints its id, pid and the hand-out time')
    .argument('<name>')
    .option('--timeout <ms>', 'wait at most this long for a ready sandbox', parseIntFlag('--timeout', 0, 600_000))
    .action(async (name: string, flags: ApiFlags & { timeout?: number }) => {
      const got = await call<{ id: string; pid: number; ms: number }>(flags, 'POST', '/pools/acquire', { name, timeout_ms: flags.timeout });
      if (flags.json) return printJson(got);
      process.stdout.write(`${got.id} pid ${got.pid} in ${got.ms.toFixed(2)} ms\n`);
    }));
  pool.addCommand(withApiFlags(new Command('release'))
    .description('give a sandbox back: frozen into the pool, or destroyed')
    .argument('<name>')
    .argument('<id>')
    .option('--destroy', 'destroy it instead of returning it')
    .action(async (name: string, id: string, flags: ApiFlags & { destroy?: boolean }) => {
      const r = await call<{ id: string; state: string }>(flags, 'POST', '/pools/release', { name, id, destroy: flags.destroy ?? false });
      if (flags.json) return printJson(r);
      process.stdout.write(`${r.id} ${r.state}\n`);
    }));
  pool.addCommand(withApiFlags(new Command('checkpoint'))
    .description('checkpoint an active sandbox (CRIU); it keeps running and is restored from it if it fails')
    .argument('<name>')
    .argument('<id>')
    .option('--as-base', 'make it the pool\'s base: frozen sandboxes of the old base are replaced by ones restored from it')
    .action(async (name: string, id: string, flags: ApiFlags & { asBase?: boolean }) => {
      const ck = await call<{ id: string; dir: string }>(flags, 'POST', '/pools/checkpoint', { name, id, as_base: flags.asBase ?? false });
      if (flags.json) return printJson(ck);
      process.stdout.write(`${ck.id} ${ck.dir}\n`);
    }));
  pool.addCommand(withApiFlags(new Command('ls'))
    .description('the pools: frozen, active and failed sandboxes of each')
    .action(async (flags: ApiFlags) => {
      const { pools } = await call<{ pools: Summary[] }>(flags, 'GET', '/pools');
      if (flags.json) return printJson(pools);
      process.stdout.write(`${'POOL'.padEnd(20)} ${'FROZEN'.padStart(6)} ${'ACTIVE'.padStart(6)} ${'FAILED'.padStart(6)}  IMAGE\n`);
      for (const p of pools) process.stdout.write(`${p.name.padEnd(20)} ${String(p.frozen).padStart(6)} ${String(p.active).padStart(6)} ${String(p.failed).padStart(6)}  ${p.image}\n`);
    }));
  pool.addCommand(withApiFlags(new Command('rm'))
    .description('remove a pool: every sandbox of it destroyed')
    .argument('<name>')
    .action(async (name: string, flags: ApiFlags) => {
      await call(flags, 'POST', '/pools/remove', { name });
      if (flags.json) return printJson({ removed: name });
      process.stdout.write(`pool ${name} removed\n`);
    }));
  return pool;
}
