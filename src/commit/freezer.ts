// The cgroup v2 freezer of a task's cgroup: writing 1 to cgroup.freeze stops every process in it
// at its next return to user space, and cgroup.events says "frozen 1" once all of them are
// stopped; only then is the writable layer a state no process is changing. Synchronous on
// purpose: the time between freeze and thaw is the container's pause, and an event-loop turn
// (a timer, another request) must not land inside it.
//
// Every process must itself run to stop (the kernel traps it on its way back to user space), so
// on a busy node freezing waits for the container's threads to be scheduled. They are given the
// highest priority (nice -20) just before the freeze, and their own priorities back while still
// frozen, before the thaw: no thread of the container ever runs boosted.

import { readFileSync, writeFileSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { join } from 'node:path';
import { cgroup2Root, parseEvents } from '../cgroup2.js';
import { FreezeError, UnsupportedError } from '../errors.js';

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** The nice value a thread had before the boost. */
type Priorities = Map<number, number>;

function threadsOf(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.threads'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return []; // threaded cgroups only list threads in cgroup.threads; without it, no boost
  }
}

/** The thread's process (Tgid) and parent process (PPid), from /proc. */
function family(tid: number): { tgid: number; ppid: number } | undefined {
  try {
    const status = readFileSync(`/proc/${tid}/status`, 'utf8');
    return { tgid: Number(/^Tgid:\s+(\d+)/m.exec(status)?.[1]), ppid: Number(/^PPid:\s+(\d+)/m.exec(status)?.[1]) };
  } catch {
    return undefined;
  }
}

export class CgroupFreezer {
  private boosted: Priorities | undefined;

  private constructor(readonly dir: string) {}

  /** The freezer of the cgroup v2 group `pid` runs in. */
  static forPid(pid: number): CgroupFreezer {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    } catch (err) {
      throw new FreezeError(`task ${pid}`, `its cgroup cannot be read (${(err as Error).message})`);
    }
    const path = text.split('\n').find((l) => l.startsWith('0::'))?.slice(3);
    if (!path || path === '/') throw new UnsupportedError(`task ${pid} has no cgroup v2 group of its own to freeze (cgroup: ${path ?? 'none'})`);
    return new CgroupFreezer(join(cgroup2Root(), path));
  }

  private frozen(): boolean {
    return parseEvents(readFileSync(join(this.dir, 'cgroup.events'), 'utf8')).frozen;
  }

  /** True when somebody else froze it (we then neither freeze nor thaw it). */
  isFrozen(): boolean {
    return readFileSync(join(this.dir, 'cgroup.freeze'), 'utf8').trim() === '1';
  }

  /**
   * Freezes and waits until every process is stopped. A process in an uninterruptible wait
   * (I/O) delays that; after `timeoutMs` the group is thawed again and FreezeError thrown.
   */
  freeze(timeoutMs: number): void {
    const deadline = performance.now() + timeoutMs;
    this.boost();
    try {
      this.write('1');
    } catch (err) {
      this.unboost();
      throw err;
    }
    for (let spins = 0; !this.frozen(); spins++) {
      if (performance.now() > deadline) {
        this.thaw();
        throw new FreezeError(this.dir, `not frozen after ${timeoutMs} ms (a process stuck in an uninterruptible wait?); thawed again`);
      }
      // Spin first (freezing usually takes microseconds), then sleep in 50 µs steps.
      if (spins > 100) Atomics.wait(sleeper, 0, 0, 0.05);
    }
  }

  thaw(): void {
    this.unboost();
    this.write('0');
  }

  private boost(): void {
    const before: Priorities = new Map();
    for (const tid of threadsOf(this.dir)) {
      try {
        const nice = getPriority(tid);
        setPriority(tid, -20);
        before.set(tid, nice);
      } catch {
        // exited meanwhile, or not ours to change: it freezes at its own priority
      }
    }
    this.boosted = before;
  }

  /**
   * Gives every thread its own priority back. A thread born between the boost and the freeze
   * inherited the boost from its creator: it gets what its process, or its parent, had.
   */
  private unboost(): void {
    const before = this.boosted;
    if (!before) return;
    this.boosted = undefined;
    for (const tid of new Set([...before.keys(), ...threadsOf(this.dir)])) {
      let nice = before.get(tid);
      if (nice === undefined) {
        const f = family(tid);
        nice = (f && (before.get(f.tgid) ?? before.get(f.ppid))) ?? 0;
      }
      try {
        setPriority(tid, nice);
      } catch {
        // gone
      }
    }
  }

  private write(value: '0' | '1'): void {
    try {
      writeFileSync(join(this.dir, 'cgroup.freeze'), value);
    } catch (err) {
      throw new FreezeError(this.dir, `cannot write ${value} to cgroup.freeze (${(err as Error).message})`);
    }
  }
}
