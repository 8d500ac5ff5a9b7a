// Hot chunks in memory, bounded in bytes (lru-cache). Shared by every layer a process serves:
// chunks are content-addressed, so one cached chunk serves every layer that contains it.

import { LRUCache } from 'lru-cache';

export class ChunkCache {
  private readonly lru: LRUCache<string, Buffer>;

  constructor(maxBytes: number) {
    this.lru = new LRUCache<string, Buffer>({ maxSize: Math.max(1, maxBytes), sizeCalculation: (b) => Math.max(1, b.length) });
  }

  get(digest: string): Buffer | undefined {
    return this.lru.get(digest);
  }

  /** Whether the chunk is cached, without making it recently used. */
  has(digest: string): boolean {
    return this.lru.has(digest);
  }

  set(digest: string, data: Buffer): void {
    this.lru.set(digest, data);
  }
}
