// One sandbox: a process tree started by the sandbox shim (native/sandbox_shim.c) in its own PID,
// mount, UTS and IPC namespaces on a mounted root filesystem, in its own cgroup. The shim is the
// tree's parent and stays in the cgroup with it, so "the cgroup became empty" (cgroup.events,
// through inotify) means the tree's root has exited and the shim has written its status file.

import { execFile, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidConfigError, SandboxError } from '../errors.js';
import type { Cgroup } from './cgroup.js';
import type { CheckpointInfo } from './checkpoints.js';
import { KDAT_DIR, type Criu } from './criu.js';
import { assertTransition, seccompArg, type PooledState, type SandboxTemplate } from './pool-config.js';

export const SHIM = fileURLToPath(new URL('../../../native/build/Release/dedup-sandbox-shim', import.meta.url));

/**
 * Checks that libseccomp here knows every system call the template's filter names (the shim
 * builds the filter without installing it); InvalidConfigError naming the first it does not.
 */
export function checkSeccomp(template: SandboxTemplate, where: string): Promise<void> {
  if (!template.seccomp) return Promise.resolve();
  return new Promise((resolve, reject) => execFile(SHIM, ['-s', seccompArg(template.seccomp!), 'check'], (err, stdout) => {
    if (!err) return resolve();
    const why = stdout.trim().replace(/^error (seccomp: )?/, '');
    reject(why ? new InvalidConfigError(`${where}: template.seccomp.deny: ${why}`) : new SandboxError(`cannot run ${SHIM}: ${err.message}; run scripts/setup.sh to build it`));
  }));
}

/** How the tree's root ended: an exit code or a signal; both null when the shim itself was killed. */
export interface ExitStatus {
  code: number | null;
  signal: number | null;
}

/** When the shim reaped the tree's root (its status file's mtime, ms since the epoch). */
export async function reapedAt(sb: Sandbox): Promise<number | undefined> {
  return stat(join(sb.dir, 'status')).then((s) => s.mtimeMs, () => undefined);
}

export function parseStatus(text: string | undefined): ExitStatus {
  const m = /^(exited|signaled) (\d+)$/m.exec(text ?? '');
  if (!m) return { code: null, signal: null };
  return m[1] === 'exited' ? { code: Number(m[2]), signal: null } : { code: null, signal: Number(m[2]) };
}

/** Exit code 0 is a sandbox that finished its work; anything else is a failure. */
export function isCleanExit(s: ExitStatus): boolean {
  return s.code === 0;
}

export type Launch = { run: SandboxTemplate; hostname: string } | { restore: CheckpointInfo; criu: Criu };

export interface SandboxRecord {
  id: string;
  pool: string;
  pid: number;
  state: PooledState;
  created: number;
  activated?: number;
  /** The checkpoint the running tree was restored from. */
  from?: string;
  mount?: { type: string; source: string; options: string[] };
}

export class Sandbox {
  state: PooledState = 'starting';
  pid = 0;
  activatedAt: Date | undefined;
  /** The checkpoint the running tree was restored from (a base or one of its own). */
  from: string | undefined;
  /** The current tree's end; replaced by every launch. */
  exited: Promise<ExitStatus> = Promise.resolve({ code: null, signal: null });
  /** How its snapshot is mounted at rootfs, and the snapshot's writable layer (its upperdir). */
  mount: { type: string; source: string; options: string[] } | undefined;
  get upper(): string | undefined {
    return this.mount?.options.find((o) => o.startsWith('upperdir='))?.slice('upperdir='.length);
  }

  /** The current shim, and when this process has reaped it (it is our child). */
  shimPid = 0;
  shimReaped: Promise<void> = Promise.resolve();
  private launches = 0;
  private recordWritten: Promise<void> = Promise.resolve();

  constructor(readonly id: string, readonly pool: string, readonly dir: string, readonly cgroup: Cgroup, private readonly memoryMerge: boolean,
    readonly createdAt = new Date()) {}

  get rootfs(): string {
    return join(this.dir, 'rootfs');
  }

  private get statusFile(): string {
    return join(this.dir, 'status');
  }

  setState(to: PooledState): void {
    assertTransition(this.id, this.state, to);
    this.state = to;
  }

  /** Starts the tree (cold, or restored from a checkpoint) and resolves once its root runs. */
  async launch(how: Launch): Promise<void> {
    await rm(this.statusFile, { force: true });
    // A fresh root filesystem has no mountpoints for what the tree had mounted there.
    await mkdir(join(this.rootfs, 'proc'), { recursive: true });
    await mkdir(join(this.rootfs, 'dev'), { recursive: true });
    const flags = this.memoryMerge ? ['-m'] : [];
    let args: string[];
    let env: NodeJS.ProcessEnv;
    if ('run' in how) {
      const ns = how.run.namespaces;
      flags.push(...(ns.uts ? ['-u'] : []), ...(ns.ipc ? ['-i'] : []), ...(ns.network ? ['-n'] : []));
      if (how.run.seccomp) flags.push('-s', seccompArg(how.run.seccomp));
      args = [...flags, this.cgroup.path, this.statusFile, 'run', this.rootfs, how.hostname, ...how.run.command];
      env = how.run.env;
      this.from = undefined;
    } else {
      const pidfile = join(this.dir, 'restored.pid');
      await rm(pidfile, { force: true });
      args = [...flags, '-k', KDAT_DIR, this.cgroup.path, this.statusFile, 'restore', pidfile, ...how.criu.restoreArgv(how.restore.dir, this.rootfs, pidfile, this.dir)];
      env = process.env;
      this.from = how.restore.id;
    }
    this.pid = await this.spawnShim(args, env);
    this.follow();
  }

  /** `exited` follows the tree now running in the cgroup. */
  private follow(): void {
    const launch = ++this.launches;
    this.exited = this.cgroup.whenEmpty().then(() => {
      if (launch !== this.launches) return { code: null, signal: null };
      try {
        return parseStatus(readFileSync(this.statusFile, 'utf8')); // a few bytes the shim just wrote
      } catch {
        return parseStatus(undefined);
      }
    });
  }

  /**
   * A sandbox a previous daemon started, from its sandbox.json: adopted when its tree's root is
   * still in its cgroup (its shim, no child of ours, goes on reaping it), otherwise undefined.
   */
  static async adopt(record: SandboxRecord, dir: string, cgroup: Cgroup, memoryMerge: boolean): Promise<Sandbox | undefined> {
    const sb = new Sandbox(record.id, record.pool, dir, cgroup, memoryMerge, new Date(record.created));
    sb.pid = record.pid;
    sb.from = record.from;
    sb.mount = record.mount;
    if (record.state !== 'frozen' && record.state !== 'active') return undefined;
    if (!(await cgroup.pids()).includes(record.pid) || !(await sb.alive())) return undefined;
    sb.state = record.state;
    sb.activatedAt = record.activated ? new Date(record.activated) : undefined;
    sb.follow();
    return sb;
  }

  /** The shim's first line: "pid N", or "error ..." and its exit. */
  private async spawnShim(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
    const log = openSync(join(this.dir, 'shim.log'), 'a');
    try {
      const child = spawn(SHIM, args, { stdio: ['ignore', 'pipe', log], detached: true, env });
      this.shimPid = child.pid ?? 0;
      this.shimReaped = new Promise((resolve) => {
        child.once('exit', () => resolve());
        child.once('error', () => resolve());
      });
      const line = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.once('error', (err) => reject(new SandboxError(`sandbox ${this.id}: cannot start ${SHIM}: ${err.message}; run scripts/setup.sh to build it`)));
        child.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')));
        });
        child.stdout!.once('close', () => resolve(out));
      });
      child.stdout!.destroy();
      child.unref();
      const m = /^pid (\d+)$/.exec(line);
      if (!m) {
        // criu's own errors say why a restore failed; the shim's log has the rest.
        const criuErrors = (await readFile(join(this.dir, 'restore.log'), 'utf8').catch(() => '')).split('\n')
          .filter((l) => /Error/.test(l) && !/RLIMIT_NOFILE/.test(l)).slice(0, 2);
        const tail = [...criuErrors, ...(await readFile(join(this.dir, 'shim.log'), 'utf8').catch(() => '')).trim().split('\n').slice(-3)]
          .filter(Boolean).join('; ');
        throw new SandboxError(`sandbox ${this.id}: ${line.replace(/^error /, '') || 'shim exited without starting it'}${tail ? ` (${tail})` : ''}`);
      }
      return Number(m[1]);
    } finally {
      closeSync(log);
    }
  }

  /** Waits until the template's ready file exists in the root filesystem (no file: ready now). */
  async waitReady(template: SandboxTemplate, abandoned: () => boolean): Promise<void> {
    if (!template.ready) return;
    const file = join(this.rootfs, template.ready.file);
    const deadline = Date.now() + template.ready.timeout_ms;
    let ended = false;
    void this.exited.then(() => (ended = true));
    while (!existsSync(file)) {
      if (ended) throw new SandboxError(`sandbox ${this.id} exited before ${template.ready.file} appeared`);
      if (abandoned()) throw new SandboxError(`sandbox ${this.id}: no longer wanted before ${template.ready.file} appeared`);
      if (Date.now() > deadline) throw new SandboxError(`sandbox ${this.id}: ${template.ready.file} did not appear within ${template.ready.timeout_ms} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Ends the tree: SIGKILL to its root (the kernel then kills the whole PID namespace), a thaw so
   * the shim can reap it and leave, and only if that does not empty the cgroup, cgroup.kill. The
   * order matters: a shim killed before the root leaves the root to PID 1, which here never reaps.
   */
  async kill(): Promise<void> {
    if (this.pid && (await this.cgroup.pids()).includes(this.pid)) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    if (!(await this.cgroup.events().catch(() => undefined))?.populated) return;
    try {
      this.cgroup.thaw();
    } catch {
      // gone meanwhile
    }
    await this.cgroup.waitFor((e) => !e.populated, 5000, 'empty').catch(() => this.cgroup.kill());
  }

  /** The tree's root is running (not gone, not a zombie waiting for the shim). */
  async alive(): Promise<boolean> {
    let stat = '';
    try {
      stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8'); // procfs, answered at once (see cgroup.ts)
    } catch {
      // gone
    }
    return stat !== '' && !/^\d+ \(.*\) [ZX] /s.test(stat);
  }

  record(): SandboxRecord {
    return {
      id: this.id, pool: this.pool, pid: this.pid, state: this.state, created: this.createdAt.getTime(),
      activated: this.activatedAt?.getTime(), from: this.from, mount: this.mount,
    };
  }

  /**
   * sandbox.json, replaced whole (a restarted daemon adopts the sandbox from it). Writes are
   * chained: a hand-out does not wait for its write, and two at once would share the .tmp file.
   */
  writeRecord(): Promise<void> {
    const write = async (): Promise<void> => {
      const file = join(this.dir, 'sandbox.json');
      await writeFile(`${file}.tmp`, JSON.stringify(this.record()));
      await rename(`${file}.tmp`, file);
    };
    return (this.recordWritten = this.recordWritten.then(write, write));
  }

  /** Resolves when no write of sandbox.json is under way (before its directory goes). */
  recordsWritten(): Promise<void> {
    return this.recordWritten.catch(() => undefined);
  }
}
