// One cgroup v2 directory: create, limits, freeze and thaw, kill, remove, and its cgroup.events
// (populated, frozen) followed through inotify (fs.watch) rather than polled: the kernel notifies
// a change of that file, so an exit or a finished freeze is seen as soon as it happens.
// cgroup.events is read synchronously (an in-kernel file that answers in microseconds). A thaw
// is written synchronously too: it is the hand-out itself, and a trip through libuv's thread
// pool (shared with every other file operation of the daemon) costs more than it does. A freeze
// (a release, a sandbox going into the pool) goes through the thread pool: a write to
// cgroup.freeze takes the kernel's global cgroup mutex, which other cgroup users hold for
// milliseconds at times, and on the event loop it would hold up the hand-outs waiting behind it.

import { readFileSync, watch, writeFileSync, type FSWatcher } from 'node:fs';
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { cgroup2Root, parseEvents, type CgroupEvents } from '../cgroup2.js';
import { SandboxError, UnsupportedError } from '../errors.js';


/** The controllers a cgroup's children can use: those its parent lists in cgroup.controllers. */
export async function availableControllers(dir: string): Promise<Set<string>> {
  const text = await readFile(join(dir, 'cgroup.controllers'), 'utf8').catch(() => '');
  return new Set(text.split(/\s+/).filter(Boolean));
}

/**
 * Enables `controllers` on the way from the hierarchy's root down to `path`'s parent, so `path`
 * can use them; UnsupportedError (`where` first) naming the first one this host's cgroup v2
 * hierarchy does not have. A controller bound to a cgroup v1 hierarchy (a hybrid layout such as
 * this machine's) cannot be had in v2 while that hierarchy is mounted.
 */
export async function enableControllers(path: string, controllers: string[], where: string, root = cgroup2Root()): Promise<void> {
  if (controllers.length === 0) return;
  const available = await availableControllers(root);
  const missing = controllers.find((c) => !available.has(c));
  if (missing) {
    throw new UnsupportedError(`${where}: limits on "${missing}" are not supported on this host: cgroup v2 at ${root} has no ${missing} controller (it has: ${[...available].join(', ') || 'none'}; the others are bound to cgroup v1)`);
  }
  const parts = relative(root, path).split('/').filter(Boolean);
  for (let i = 0; i < parts.length; i++) {
    const dir = join(root, ...parts.slice(0, i));
    await writeFile(join(dir, 'cgroup.subtree_control'), controllers.map((c) => `+${c}`).join(' ')).catch((err: Error) => {
      throw new SandboxError(`cannot enable ${controllers.join(', ')} in ${dir}: ${err.message}`);
    });
  }
}

export class Cgroup {
  private watcher: FSWatcher | undefined;
  private waiters: { until: (e: CgroupEvents) => boolean; resolve: (e: CgroupEvents) => void }[] = [];

  private constructor(readonly path: string) {}

  /** Creates the directory (a leftover of the same name is reused) and writes `limits` (file → value). */
  static async create(path: string, limits: Record<string, string> = {}): Promise<Cgroup> {
    await mkdir(path, { recursive: true }).catch((err: Error) => {
      throw new SandboxError(`cannot create cgroup ${path}: ${err.message}`);
    });
    const cg = new Cgroup(path);
    for (const [file, value] of Object.entries(limits)) {
      await writeFile(join(path, file), value).catch(async (err: Error) => {
        await cg.remove().catch(() => undefined);
        throw new SandboxError(`cannot set ${file}=${value} on cgroup ${path}: ${err.message}`);
      });
    }
    return cg;
  }

  /** An existing cgroup (one a restarted daemon finds again). */
  static open(path: string): Cgroup {
    return new Cgroup(path);
  }

  async events(): Promise<CgroupEvents> {
    return this.eventsNow();
  }

  private eventsNow(): CgroupEvents {
    return parseEvents(readFileSync(join(this.path, 'cgroup.events'), 'utf8'));
  }

  async pids(): Promise<number[]> {
    const text = await readFile(join(this.path, 'cgroup.procs'), 'utf8').catch(() => '');
    return text.split('\n').filter(Boolean).map(Number);
  }

  /** Resolves with the events once `until` holds for them (checked now, then on each change). */
  async waitFor(until: (e: CgroupEvents) => boolean, timeoutMs: number | undefined, what: string): Promise<CgroupEvents> {
    this.ensureWatching();
    let waiter!: (typeof this.waiters)[number];
    const done = new Promise<CgroupEvents>((resolve) => this.waiters.push(waiter = { until, resolve }));
    let now: CgroupEvents;
    try {
      now = this.eventsNow();
    } catch {
      now = { populated: false, frozen: false };
    }
    if (until(now)) this.settle(now);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      if (timeoutMs !== undefined) timer = setTimeout(() => reject(new SandboxError(`cgroup ${this.path}: not ${what} within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([done, timeout]);
    } finally {
      clearTimeout(timer);
      this.waiters = this.waiters.filter((w) => w !== waiter);
      if (this.waiters.length === 0) this.stopWatching();
    }
  }

  /** Resolves when no process is left in the cgroup (the tree exited or was killed). */
  whenEmpty(): Promise<CgroupEvents> {
    return this.waitFor((e) => !e.populated, undefined, 'empty');
  }

  /** Resolves once every process is frozen (a freeze waits for each to reach the kernel's trap). */
  async freeze(timeoutMs = 5000): Promise<void> {
    await this.write('cgroup.freeze', '1');
    await this.waitFor((e) => e.frozen || !e.populated, timeoutMs, 'frozen');
  }

  /**
   * Thaws it. Nothing is waited for after the write: the kernel clears `frozen` within it (a
   * thawed cgroup is no longer frozen; its processes are woken and run when scheduled).
   */
  thaw(): void {
    const file = join(this.path, 'cgroup.freeze');
    try {
      writeFileSync(file, '0');
    } catch (err) {
      throw new SandboxError(`cannot write 0 to ${file}: ${(err as Error).message}`);
    }
  }

  /** SIGKILL to every process in it, frozen ones included (cgroup.kill), and waits until it is empty. */
  async kill(timeoutMs = 10_000): Promise<void> {
    if (!(await this.events().catch(() => undefined))?.populated) return;
    await this.write('cgroup.kill', '1');
    await this.waitFor((e) => !e.populated, timeoutMs, 'empty after cgroup.kill');
  }

  /** Kills what is left and removes the directory; a cgroup already gone is fine. */
  async remove(): Promise<void> {
    const exists = await this.events().then(() => true, () => false);
    if (exists) {
      await this.kill();
      await rmdir(this.path).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw new SandboxError(`cannot remove cgroup ${this.path}: ${err.message}`);
      });
    }
    this.stopWatching();
  }

  private async write(file: string, value: string): Promise<void> {
    try {
      await writeFile(join(this.path, file), value);
    } catch (err) {
      throw new SandboxError(`cannot write ${value} to ${join(this.path, file)}: ${(err as Error).message}`);
    }
  }

  private ensureWatching(): void {
    if (this.watcher) return;
    this.watcher = watch(join(this.path, 'cgroup.events'), { persistent: false }, () => {
      let e: CgroupEvents;
      try {
        e = this.eventsNow();
      } catch {
        e = { populated: false, frozen: false }; // the cgroup is gone
      }
      this.settle(e);
    });
    this.watcher.on('error', () => this.settle({ populated: false, frozen: false }));
  }

  private settle(e: CgroupEvents): void {
    const ready = this.waiters.filter((w) => w.until(e));
    this.waiters = this.waiters.filter((w) => !w.until(e));
    for (const w of ready) w.resolve(e);
    if (this.waiters.length === 0) this.stopWatching();
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }
}
