// A pool's frozen sandboxes, oldest first, and the Acquire calls waiting for one. A sandbox
// offered goes to the oldest waiter, else to the back of the queue; it leaves the queue
// synchronously, so two callers never get the same one.

import type { Sandbox } from './sandbox.js';

export class ReadyQueue {
  private readonly frozen: Sandbox[] = [];
  private readonly waiters: ((sb: Sandbox) => void)[] = [];

  get length(): number {
    return this.frozen.length;
  }

  /** Acquire calls waiting. */
  get waiting(): number {
    return this.waiters.length;
  }

  list(): readonly Sandbox[] {
    return this.frozen;
  }

  /** The oldest, taken out. */
  take(): Sandbox | undefined {
    return this.frozen.shift();
  }

  /** The newest, taken out (the pool holds more than max_size). */
  takeNewest(): Sandbox | undefined {
    return this.frozen.pop();
  }

  remove(sb: Sandbox): void {
    const i = this.frozen.indexOf(sb);
    if (i >= 0) this.frozen.splice(i, 1);
  }

  /** Queues one without handing it to a waiter (an adopted sandbox, before anyone waits). */
  push(sb: Sandbox): void {
    this.frozen.push(sb);
  }

  offer(sb: Sandbox): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(sb);
    else this.frozen.push(sb);
  }

  /**
   * The next sandbox offered; rejects with `timeout()` after `ms` (at once when `ms` is not
   * positive). `queued` runs once the call waits (the pool wakes its refill loop).
   */
  wait(ms: number, timeout: () => Error, queued: () => void): Promise<Sandbox> {
    if (ms <= 0) return Promise.reject(timeout());
    const next = new Promise<Sandbox>((resolve, reject) => {
      const waiter = (sb: Sandbox): void => {
        clearTimeout(timer);
        resolve(sb);
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(timeout());
      }, ms);
      this.waiters.push(waiter);
    });
    queued();
    return next;
  }
}
