// Results of slow lookups (a registry round trip or several) by key, shared while in flight and
// kept for a bounded time once fulfilled, a bounded number of them (lru-cache). A rejected
// promise is dropped at once, so the next asker tries again.

import { LRUCache } from 'lru-cache';

export class PromiseCache<T extends object> {
  private readonly entries: LRUCache<string, Promise<T>>;

  constructor(opts: { max: number; ttlMs: number }) {
    // Expired entries go on their own (unref'd timers): a lookup nobody came back for holds nothing.
    this.entries = new LRUCache({ max: opts.max, ttl: opts.ttlMs, ttlAutopurge: true });
  }

  /** The promise cached for `key`, else `make()`'s, cached for `ttlMs` (default: the cache's); `made` when this call made it. */
  get(key: string, make: () => Promise<T>, ttlMs?: number): { promise: Promise<T>; made: boolean } {
    const cached = this.entries.get(key);
    if (cached) return { promise: cached, made: false };
    const promise = make();
    this.entries.set(key, promise, ttlMs === undefined ? undefined : { ttl: ttlMs });
    promise.catch(() => this.forget(key, promise));
    return { promise, made: true };
  }

  /** Removes and returns what is cached for `key`. */
  take(key: string): Promise<T> | undefined {
    const cached = this.entries.get(key);
    if (cached) this.entries.delete(key);
    return cached;
  }

  /** Drops `key` if it still holds `promise` (a newer entry stays). */
  forget(key: string, promise: Promise<T>): void {
    if (this.entries.peek(key) === promise) this.entries.delete(key);
  }
}
