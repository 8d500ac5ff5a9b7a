// The shared stores' Prometheus metrics, registered into the daemon's registry: whether each store
// reads, the images it serves, images not served by reason, refreshes, layers mounted from a
// shared store, and layers removed from their store that snapshots still hold.

import { Counter, Gauge, type Registry } from 'prom-client';
import type { SharedStoreRejection } from '../errors.js';

const REASONS: SharedStoreRejection[] = ['record', 'incomplete', 'image_digest', 'chunk_digest', 'unreadable'];

export class SharedStoreMetrics {
  private readonly up: Gauge<'store'>;
  private readonly images: Gauge<'store'>;
  private readonly rejected: Counter<'reason'>;
  private readonly refreshes: Counter<'trigger'>;
  private readonly mounted: Counter;
  private readonly held: Gauge;

  constructor(registry: Registry) {
    const registers = [registry];
    this.up = new Gauge({ name: 'dedup_shared_store_up', help: 'Whether a shared store could be read at its last refresh (1) or not (0)', labelNames: ['store'], registers });
    this.images = new Gauge({ name: 'dedup_shared_store_images', help: 'Images a shared store serves (complete and verified)', labelNames: ['store'], registers });
    this.rejected = new Counter({ name: 'dedup_shared_store_rejected_total', help: 'Shared store images not served, by reason', labelNames: ['reason'], registers });
    for (const reason of REASONS) this.rejected.inc({ reason }, 0);
    this.refreshes = new Counter({ name: 'dedup_shared_store_refreshes_total', help: 'Refreshes of the shared stores, by what started them (start, inotify, scan)', labelNames: ['trigger'], registers });
    this.mounted = new Counter({ name: 'dedup_shared_layers_mounted_total', help: 'Layers a pull found in a shared store and mounted from there', registers });
    this.mounted.inc(0);
    this.held = new Gauge({ name: 'dedup_shared_layers_held', help: 'Layers removed from their shared store that snapshots still use', registers });
    this.held.set(0);
  }

  storeRead(store: string, up: boolean, images: number): void {
    this.up.set({ store }, up ? 1 : 0);
    this.images.set({ store }, images);
  }

  imageRejected(reason: SharedStoreRejection): void {
    this.rejected.inc({ reason });
  }

  refreshed(trigger: string): void {
    this.refreshes.inc({ trigger });
  }

  layerMounted(): void {
    this.mounted.inc();
  }

  layersHeld(n: number): void {
    this.held.set(n);
  }
}
