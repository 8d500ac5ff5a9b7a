// Hot chunks in memory, bounded in bytes (lru-cache). Shared by every layer a process serves:
// chunks are content-addressed, so one cached chunk serves every layer that contains it.

import { LRUCache } from 'lru-cache';

export class ChunkCache {
  private readonly lru: LRUCache<string, Buffer>;
  hits = 0;
  misses = 0;

  constructor(maxBytes: number) {
    this.lru = new LRUCache<string, Buffer>({ maxSize: Math.max(1, maxBytes), sizeCalculation: (b) => Math.max(1, b.length) });
  }

  get(digest: string): Buffer | undefined {
    const b = this.lru.get(digest);
    if (b) this.hits++;
    else this.misses++;
    return b;
  }

  set(digest: string, data: Buffer): void {
    this.lru.set(digest, data);
  }

  get bytes(): number {
    return this.lru.calculatedSize ?? 0;
  }
}
