// The pools' Prometheus metrics, registered into the daemon's registry: sandboxes per pool and
// state, hand-out latency, how long after the shim reaped a failed tree the recovery handler ran
// (detection), and recoveries by outcome.

import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { RecoveryManager } from './recovery.js';
import { reapedAt } from './sandbox.js';
import type { WarmupPool } from './warmup-pool.js';

const MS_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export class PoolMetrics {
  private readonly pools = new Set<WarmupPool>();
  private readonly acquire: Histogram<'pool'>;
  private readonly detection: Histogram;
  private readonly recoveries: Counter<'outcome'>;

  constructor(registry: Registry) {
    const registers = [registry];
    const pools = this.pools;
    new Gauge({
      name: 'dedup_pool_sandboxes', help: 'Sandboxes per pool and state (frozen in the pool, active handed out, failed)', labelNames: ['pool', 'state'], registers,
      collect() {
        this.reset();
        for (const p of pools) {
          this.set({ pool: p.name, state: 'frozen' }, p.size());
          this.set({ pool: p.name, state: 'active' }, p.activeCount());
          this.set({ pool: p.name, state: 'failed' }, p.failedCount());
        }
      },
    });
    this.acquire = new Histogram({ name: 'dedup_pool_acquire_seconds', help: 'Acquire: from the call to a thawed sandbox', labelNames: ['pool'], buckets: MS_BUCKETS, registers });
    this.detection = new Histogram({ name: 'dedup_pool_detection_seconds', help: 'From the shim reaping a failed sandbox tree to the recovery handler', buckets: MS_BUCKETS, registers });
    this.recoveries = new Counter({ name: 'dedup_pool_recoveries_total', help: 'Recoveries of failed sandboxes, by outcome', labelNames: ['outcome'], registers });
    for (const o of ['recovered', 'failed']) this.recoveries.inc({ outcome: o }, 0);
  }

  follow(pool: WarmupPool): void {
    this.pools.add(pool);
    pool.on('acquired', (_sb, ms) => this.acquire.observe({ pool: pool.name }, ms / 1000));
    pool.once('closed', () => this.pools.delete(pool));
  }

  followRecovery(recovery: RecoveryManager): void {
    recovery.on('detected', (sb) => {
      const now = Date.now();
      void reapedAt(sb).then((at) => at !== undefined && this.detection.observe(Math.max(0, now - at) / 1000));
    });
    recovery.on('recovered', () => this.recoveries.inc({ outcome: 'recovered' }));
    recovery.on('failed', () => this.recoveries.inc({ outcome: 'failed' }));
  }
}
