// Layers mounted from a shared store whose store no longer has them (unpublished, or no longer
// verifying): a snapshot nothing builds on (no child: no container, no view, no layer above) is
// removed at once, top layers first; one that is used stays mounted (the kernel keeps the files it
// opened) and is said to be held until its last user goes. A store that cannot be read at all (a
// share unmounted, a network error) removes nothing: it may come back, and its mounts still serve.

import { FailedPreconditionError } from '../errors.js';
import { snapshotName } from '../snapshot/labels.js';
import { type Snapshotter } from '../snapshot/snapshotter.js';
import type { SharedStoreMetrics } from './metrics.js';

interface Log {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
}

export class SharedLayerRelease {
  /** Snapshots held (logged once). */
  private readonly held = new Set<string>();

  constructor(private readonly snapshots: Snapshotter, private readonly stores: { find(chainId: string): unknown; unreadable(dir: string): boolean },
    private readonly log: Log, private readonly metrics?: SharedStoreMetrics) {}

  /** Removes what can go, holds the rest; once per refresh. */
  async run(): Promise<void> {
    for (let removed = true; removed;) {
      removed = false;
      const parents = new Set(this.snapshots.list([]).map((s) => s.parent).filter(Boolean));
      const gone = this.snapshots.metadata.all().filter((s) => s.kernel?.shared && !this.stores.unreadable(s.kernel.shared) && this.stores.find(snapshotName(s.key)) === undefined);
      for (const s of gone) {
        if (parents.has(s.key)) {
          if (!this.held.has(s.key)) this.log.info({ snapshot: s.key, store: s.kernel!.shared }, 'shared layer removed from its store: kept mounted while snapshots use it');
          this.held.add(s.key);
          continue;
        }
        try {
          await this.snapshots.remove(s.key);
        } catch (err) {
          if (err instanceof FailedPreconditionError) continue; // a child made meanwhile: next time
          throw err;
        }
        removed = true;
        this.held.delete(s.key);
        this.log.info({ snapshot: s.key, store: s.kernel!.shared }, 'shared layer dropped: removed from its store and no longer used');
      }
    }
    const shared = new Set(this.snapshots.metadata.all().filter((s) => s.kernel?.shared).map((s) => s.key));
    for (const key of this.held) if (!shared.has(key) || this.stores.find(snapshotName(key)) !== undefined) this.held.delete(key);
    this.metrics?.layersHeld(this.held.size);
  }
}
