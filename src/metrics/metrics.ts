// Prometheus metrics (prom-client, one registry per process). The layer server (dedup-fused)
// counts events (fetches, chunk lookups, FUSE read errors) as they happen through the
// LazyLayerObserver and reads the chunk store, mounts and prefetch queue when scraped; the
// snapshotter daemon has KSM and its own process figures, and its /metrics appends the layer
// server's.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { LazyLayerObserver } from '../fetch/lazy-layer.js';
import { SKIP_REASONS, type HostTransferStats } from '../registry/host-skips.js';
import type { StoreStats } from '../store/chunk-store.js';
import type { KsmStatus } from '../ksm/ksm.js';

export interface LayerMetricsSources {
  /** The store's figures (a scan of the index, off the event loop). */
  store(): Promise<StoreStats>;
  /** Lazily mounted layers, and chunks queued for prefetch across them. */
  mounts(): { layers: number; prefetchQueued: number };
  /** The registry client's figures per host (mirrors and registries). */
  registryHosts(): Record<string, HostTransferStats>;
}

export interface DaemonMetricsSources {
  /** null where the kernel has no KSM. */
  ksm(): Promise<KsmStatus | null>;
  /** The layer server's exposition, appended to ours ('' when it does not answer). */
  layers(): Promise<string>;
  /** The reasons a layer may be pulled in full instead of lazily, shown from zero. */
  fullPullReasons: readonly string[];
  /** The outcomes of a container commit, shown from zero. */
  commitOutcomes?: readonly string[];
  /** The registry client's figures per host: manifests, configs, TOCs the daemon resolves. */
  registryHosts(): Record<string, HostTransferStats>;
}

/** One read shared by the gauges of one scrape (prom-client collects each gauge on its own). */
function oncePerScrape<T>(read: () => Promise<T>): () => Promise<T> {
  let pending: Promise<T> | undefined;
  return () => (pending ??= read().finally(() => setImmediate(() => (pending = undefined))));
}

/** Gauges that all pick their value from one read per scrape; `read` answering null leaves them unset. */
function gaugesFrom<T>(registers: Registry[], table: [string, string, (t: T) => number][], read: () => Promise<T | null>): void {
  const once = oncePerScrape(read);
  for (const [name, help, pick] of table) {
    new Gauge({
      name, help, registers,
      async collect() {
        const v = await once();
        if (v !== null) this.set(pick(v));
      },
    });
  }
}

/**
 * Requests, bytes and fallbacks per registry host, read from the client when scraped. `prefix`
 * keeps the layer server's apart from the daemon's (its /metrics shows both).
 */
function registryHostCounters(registers: Registry[], prefix: string, read: () => Record<string, HostTransferStats>): void {
  const table: [string, string, (h: HostTransferStats) => number][] = [
    ['requests_total', 'Requests sent to a registry host (mirror or registry), retries included', (h) => h.requests],
    ['bytes_total', 'Body bytes received from a registry host', (h) => h.bytesReceived],
  ];
  for (const [name, help, pick] of table) {
    new Counter({
      name: `${prefix}${name}`, help, labelNames: ['host'], registers,
      collect() {
        this.reset();
        for (const [host, h] of Object.entries(read())) this.inc({ host }, pick(h));
      },
    });
  }
  new Counter({
    name: `${prefix}fallbacks_total`, labelNames: ['host', 'reason'], registers,
    help: 'Requests a registry host did not serve that went on to the next host, by reason (ignored_range: answered a Range with the whole blob; status: 4xx/5xx or an error; unreachable)',
    collect() {
      this.reset();
      for (const [host, h] of Object.entries(read())) for (const reason of SKIP_REASONS) this.inc({ host, reason }, h.fallbacks[reason]);
    },
  });
}

export class LayerMetrics implements LazyLayerObserver {
  readonly registry = new Registry();
  private readonly fetches: Counter<'result'>;
  private readonly fetchedBytes: Counter;
  private readonly fetchedChunks: Counter<'reason'>;
  private readonly fetchSeconds: Histogram;
  private readonly chunkReads: Counter<'from'>;
  private readonly fuseErrors: Counter;
  private readonly mountsLost: Counter<'reason'>;

  constructor(sources: LayerMetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'dedup_fused_' });
    this.fetches = new Counter({ name: 'dedup_fetch_requests_total', help: 'Range requests to registries, by result', labelNames: ['result'], registers });
    this.fetchedBytes = new Counter({ name: 'dedup_fetch_bytes_total', help: 'Compressed bytes fetched from registries', registers });
    this.fetchedChunks = new Counter({ name: 'dedup_fetch_chunks_total', help: 'Chunks fetched, by whether a reader was waiting (demand) or not (ahead)',
      labelNames: ['reason'], registers });
    this.fetchSeconds = new Histogram({ name: 'dedup_fetch_duration_seconds', help: 'Duration of one Range request',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers });
    this.chunkReads = new Counter({ name: 'dedup_chunk_reads_total', help: 'Chunk lookups by where the chunk came from (memory: the hot-chunk cache or a layer held whole)',
      labelNames: ['from'], registers });
    this.fuseErrors = new Counter({ name: 'dedup_fuse_read_errors_total', help: 'FUSE reads answered with EIO', registers });
    this.mountsLost = new Counter({ name: 'dedup_mounts_lost_total', help: 'Lazy mounts removed from outside (umount behind the layer server\'s back), by how it noticed',
      labelNames: ['reason'], registers });
    for (const l of ['ok', 'error']) this.fetches.inc({ result: l }, 0);
    for (const l of ['demand', 'ahead']) this.fetchedChunks.inc({ reason: l }, 0);
    for (const l of ['memory', 'store', 'registry']) this.chunkReads.inc({ from: l }, 0);
    for (const l of ['connection_ended', 'not_mounted']) this.mountsLost.inc({ reason: l }, 0);

    const storeGauges: [string, string, (s: StoreStats) => number][] = [
      ['dedup_store_chunks', 'Chunks stored', (s) => s.chunks],
      ['dedup_store_chunks_missing', 'Chunks referenced by a layer but not fetched yet', (s) => s.chunksMissing],
      ['dedup_store_bytes', 'Bytes of stored chunks', (s) => s.storedBytes],
      ['dedup_store_logical_bytes', 'Bytes the stored chunks stand for, counted per layer reference', (s) => s.logicalBytes],
      ['dedup_store_dedup_ratio', 'Logical bytes / stored bytes', (s) => s.dedupRatio],
      ['dedup_store_images', 'Images recorded in the store', (s) => s.images],
      ['dedup_store_layers', 'Layers recorded in the store', (s) => s.layers],
    ];
    gaugesFrom(registers, storeGauges, () => sources.store());
    new Gauge({ name: 'dedup_mounts', help: 'Lazily mounted layers', registers, collect() { this.set(sources.mounts().layers); } });
    new Gauge({ name: 'dedup_prefetch_queue', help: 'Chunks queued for prefetch', registers, collect() { this.set(sources.mounts().prefetchQueued); } });
    registryHostCounters(registers, 'dedup_fused_registry_', sources.registryHosts);

  }

  chunkServed(from: 'memory' | 'store' | 'registry'): void {
    this.chunkReads.inc({ from });
  }

  fetched(bytes: number, demandChunks: number, aheadChunks: number, seconds: number): void {
    this.fetches.inc({ result: 'ok' });
    this.fetchedBytes.inc(bytes);
    this.fetchedChunks.inc({ reason: 'demand' }, demandChunks);
    this.fetchedChunks.inc({ reason: 'ahead' }, aheadChunks);
    this.fetchSeconds.observe(seconds);
  }

  fetchFailed(): void {
    this.fetches.inc({ result: 'error' });
  }

  fuseReadError(): void {
    this.fuseErrors.inc();
  }

  mountLost(reason: string): void {
    this.mountsLost.inc({ reason });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly fullPulls: Counter<'reason'>;
  private readonly commitPause: Histogram;
  private readonly commitBackground: Histogram;
  private readonly commitBytes: Counter;
  private readonly commits: Counter<'outcome'>;

  constructor(private readonly sources: DaemonMetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'dedup_' });
    this.fullPulls = new Counter({ name: 'dedup_full_pulls_total', help: 'Layers a lazy pull asked for that were left to containerd to download in full, by reason',
      labelNames: ['reason'], registers });
    for (const reason of sources.fullPullReasons) this.fullPulls.inc({ reason }, 0);
    this.commitPause = new Histogram({ name: 'dedup_commit_pause_seconds', help: 'How long a container commit kept the container frozen (freeze to thaw)',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1], registers });
    this.commitBackground = new Histogram({ name: 'dedup_commit_background_seconds', help: 'Building and pushing a committed layer, after the thaw',
      buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers });
    this.commitBytes = new Counter({ name: 'dedup_commit_layer_bytes_total', help: 'Bytes of committed eStargz layers', registers });
    this.commits = new Counter({ name: 'dedup_commits_total', help: 'Container commits, by outcome (the phase that failed)', labelNames: ['outcome'], registers });
    for (const outcome of sources.commitOutcomes ?? []) this.commits.inc({ outcome }, 0);
    const ksmGauges: [string, string, (k: KsmStatus) => number][] = [
      ['dedup_ksm_run', 'KSM scanner state (0 stopped, 1 running, 2 unmerging)', (k) => k.run],
      ['dedup_ksm_pages_shared', 'KSM pages shared', (k) => k.pages_shared],
      ['dedup_ksm_pages_sharing', 'KSM pages sharing (deduplicated)', (k) => k.pages_sharing],
      ['dedup_ksm_pages_unshared', 'KSM pages unique but checked', (k) => k.pages_unshared],
      ['dedup_ksm_pages_volatile', 'KSM pages changing too fast', (k) => k.pages_volatile],
      ['dedup_ksm_full_scans', 'KSM full scans', (k) => k.full_scans],
      ['dedup_ksm_memory_saved_bytes', 'Memory KSM saves (pages_sharing x page size)', (k) => k.memory_saved_bytes],
    ];
    gaugesFrom(registers, ksmGauges, sources.ksm);
    registryHostCounters(registers, 'dedup_registry_', sources.registryHosts);
  }

  fullPull(reason: string): void {
    this.fullPulls.inc({ reason });
  }

  commitPaused(seconds: number): void {
    this.commitPause.observe(seconds);
  }

  commitFinished(outcome: string, backgroundSeconds: number, layerBytes: number): void {
    this.commits.inc({ outcome });
    if (outcome === 'ok') {
      this.commitBackground.observe(backgroundSeconds);
      this.commitBytes.inc(layerBytes);
    }
  }

  async text(): Promise<string> {
    return (await this.registry.metrics()) + (await this.sources.layers());
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
