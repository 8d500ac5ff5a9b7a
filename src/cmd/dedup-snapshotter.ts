#!/usr/bin/env node
// dedup-snapshotter: the containerd proxy snapshotter daemon. Serves containerd's Snapshots API
// on a unix socket and the admin HTTP API; applies the KSM config; keeps the audit log within its
// retention. eStargz layers are mounted lazily by the layer server (dedup-fused), which it starts
// if none runs for its root (unless --no-spawn-fused: systemd runs it as a unit of its own). A
// stop, even SIGKILL, leaves every mount to the layer server (docs/restarts.md).

import { mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { AdminApi } from '../api/admin-api.js';
import { AuditLog } from '../audit/audit-log.js';
import { commitWith } from '../cli/commit.js';
import { registryClientFrom, runCli, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { daemonLogger } from '../startup/log.js';
import { CodecPool } from '../codec/codec-pool.js';
import { DEFAULT_SOCKET, type Config } from '../config/config.js';
import { ApiBindError, UnsupportedError } from '../errors.js';
import { KernelLayers } from '../kernel/kernel-layers.js';
import { LiveConfig } from '../config/live-config.js';
import { FusedClient, fusedSocket } from '../fused/client.js';
import { parsePlatform } from '../image/oci.js';
import { applyKsmConfig, ksmStatus } from '../ksm/ksm.js';
import { COMMIT_OUTCOMES } from '../commit/committer.js';
import { DaemonMetrics } from '../metrics/metrics.js';
import { imageChainId } from '../sandbox/image-snapshot.js';
import { PoolMetrics } from '../sandbox/pool-metrics.js';
import { SandboxPools } from '../sandbox/pools.js';
import { loadSnapshotsService, snapshotsHandlers } from '../snapshot/grpc-service.js';
import { SharedStoreMetrics } from '../shared-store/metrics.js';
import { SharedLayerRelease } from '../shared-store/release.js';
import { SharedStores } from '../shared-store/shared-stores.js';
import { FULL_PULL_REASONS } from '../snapshot/remote-snapshots.js';
import { Snapshotter } from '../snapshot/snapshotter.js';
import { ChunkStore } from '../store/chunk-store.js';
import { VERSION } from '../version.js';

interface DaemonFlags extends CommonFlags {
  check?: boolean;
  socket: string;
  platform: string;
  cacheSize?: string;
  traceDir?: string;
  apiAddr?: string;
  spawnFused: boolean;
}

/** The layer server's flags for this daemon's root, registry access and cache. */
function fusedArgs(flags: DaemonFlags, root: string): string[] {
  const args = ['--root', root];
  if (flags.config) args.push('--config', flags.config);
  if (flags.plainHttp) args.push('--plain-http');
  if (flags.hostsDir) args.push('--hosts-dir', flags.hostsDir);
  if (flags.user) args.push('--user', flags.user);
  if (flags.cacheSize) args.push('--cache-size', flags.cacheSize);
  if (flags.traceDir) args.push('--trace-dir', flags.traceDir);
  return args;
}

const AUDIT_PRUNE_MS = 60 * 60 * 1000;
/** How often the daemon checks that its layer server is the one it attached to. */
const FUSED_WATCH_MS = 5000;
/** How long the socket may be missing before the layer server counts as gone. */
const FUSED_GONE_MS = 3000;
/** How often the lazily pulled layers are checked for completeness (then served by EROFS). */
const LAZY_CHECK_MS = 2000;
/** How often an admin API that could not listen tries again. */
const API_RETRY_MS = 5000;

const program = withCommonFlags(new Command('dedup-snapshotter'))
  .description('containerd proxy snapshotter: lazily pulled eStargz layers over a deduplicating chunk store')
  .version(VERSION)
  .option('--socket <path>', 'gRPC socket to serve on', DEFAULT_SOCKET)
  .option('--platform <os/arch[/variant]>', 'platform of images resolved without a manifest digest', 'linux/amd64')
  .option('--cache-size <bytes>', 'in-memory cache of hot chunks (passed to the layer server it starts)')
  .option('--trace-dir <dir>', 'access traces to record and replay (passed to the layer server it starts; default: prefetch.trace_dir)')
  .option('--no-spawn-fused', 'never start a layer server: one runs as its own unit (systemd)')
  .option('--api-addr <host:port>', 'admin HTTP API address (default: api.addr, 127.0.0.1:8080)')
  .option('--check', 'validate the config and open the state root, then exit')
  .action(async (flags: DaemonFlags) => {
    const live = await LiveConfig.load(flags.config, { root: flags.root, apiAddr: flags.apiAddr });
    const config = live.get();
    if (flags.check) {
      const store = await ChunkStore.open(config.root);
      const stats = await store.stats();
      await store.close();
      const summary = { root: config.root, socket: flags.socket, api: config.api.enabled ? config.api.addr : null, images: stats.images, chunks: stats.chunks };
      process.stdout.write(flags.json ? JSON.stringify(summary) + '\n' : `config ok: root ${config.root}, ${stats.images} images, ${stats.chunks} chunks\n`);
      return;
    }
    await mkdir(config.root, { recursive: true });
    const log = daemonLogger('dedup-snapshotter', config);
    const audit = AuditLog.open(config.root);
    const pruneAudit = (): void => {
      const removed = audit.prune(live.get().audit.retention_days);
      if (removed) log.info({ removed, retentionDays: live.get().audit.retention_days }, 'audit entries past retention removed');
    };
    pruneAudit();
    const pruner = setInterval(pruneAudit, AUDIT_PRUNE_MS).unref();
    const applyKsm = async (c: Config): Promise<void> => {
      if (!c.enable_mem_dedup) return;
      try {
        const { refused } = await applyKsmConfig(c.ksm);
        if (refused) log.warn({ err: refused }, 'KSM merge_across_nodes left as it is');
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'KSM config not applied');
      }
    };
    await applyKsm(config);

    const client = await registryClientFrom(flags, config, log);
    // The layer server resolves it and logs each layer's mode and why (fused.log; GET /mounts).
    log.info({ mount_mode: config.mount_mode, enable_fscache: config.enable_fscache }, 'lazy layers are mounted by the layer server in this mount mode');
    const fused = new FusedClient(fusedSocket(config.root));
    const fusedPid = flags.spawnFused ? await fused.ensureRunning(fusedArgs(flags, config.root), join(config.root, 'fused.log'))
      : (await fused.health()).pid;
    const metrics = new DaemonMetrics({ ksm: () => ksmStatus().catch(() => null), layers: () => fused.metrics().catch(() => ''), fullPullReasons: FULL_PULL_REASONS, commitOutcomes: COMMIT_OUTCOMES,
      registryHosts: () => client.stats.hosts });
    // Kernel mode: committed layers go into the chunk store and are served as EROFS images.
    let store: ChunkStore | undefined;
    let codecs: CodecPool | undefined;
    let kernel: KernelLayers | undefined;
    if (config.enable_erofs) {
      store = await ChunkStore.open(config.root);
      try {
        // The commit's file reads and hashing, and the verification of lazy layers' chunks made EROFS images, run on the codec workers.
        codecs = new CodecPool();
        kernel = KernelLayers.open(config.root, store, config.chunk_size, codecs);
      } catch (err) {
        await codecs?.close();
        codecs = undefined;
        if (!(err instanceof UnsupportedError)) throw err;
        log.warn({ err: err.message }, 'kernel mode off: committed layers stay directories');
      }
    }
    // Shared stores: layers other hosts published, mounted by the kernel (so only in kernel mode).
    let shared: SharedStores | undefined;
    const sharedMetrics = config.shared_stores.length ? new SharedStoreMetrics(metrics.registry) : undefined;
    if (config.shared_stores.length && !kernel) log.warn({ stores: config.shared_stores }, 'shared stores not used: they need kernel mode (enable_erofs and an EROFS-capable kernel)');
    else if (config.shared_stores.length) {
      shared = new SharedStores({
        dirs: config.shared_stores, periodMs: config.shared_stores_refresh_seconds * 1000, log, metrics: sharedMetrics,
        refreshed: async () => {
          await snapshotter.mountSharedAgain();
          await release.run();
        },
      });
    }
    const snapshotter = new Snapshotter({
      root: config.root, client, platform: parsePlatform(flags.platform), lazyPull: config.enable_lazy, layers: fused, log, kernel,
      audit: (action, target, details) => audit.record('containerd', action, target, details),
      fullPull: (reason) => metrics.fullPull(reason),
      shared: shared && { find: (chainId) => shared!.find(chainId), mounted: () => sharedMetrics?.layerMounted() },
    });
    const release = new SharedLayerRelease(snapshotter, { find: (chainId) => shared?.find(chainId), unreadable: (dir) => shared?.unreadable(dir) ?? false }, log, sharedMetrics);
    live.on('change', (change) => {
      const c = change.config;
      log.level = c.log_level;
      void fused.reload().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'layer server did not reload its config'));
      if (change.changed.some((k) => k.startsWith('ksm.') || k === 'enable_mem_dedup')) void applyKsm(c);
      log.info({ changed: change.changed, restartRequired: change.restartRequired }, 'config changed');
    });

    // A layer server that died (and was restarted by systemd, or is started again here) serves
    // nothing: mount the remote snapshots again. An upgrade changes the pid too; then every
    // layer is still served and reattach() does nothing.
    let attachedTo = fusedPid;
    let watching = false;
    const watchFused = async (): Promise<void> => {
      // A short wait: an upgrade leaves the socket's path free only for a moment, and a dead
      // layer server should be replaced before containerd's next call gives up on it.
      const pid = await fused.health(FUSED_GONE_MS).then((h) => h.pid, () => undefined)
        ?? (flags.spawnFused ? await fused.ensureRunning(fusedArgs(flags, config.root), join(config.root, 'fused.log')) : undefined);
      if (pid === undefined || pid === attachedTo) return;
      log.info({ from: attachedTo, to: pid }, 'layer server changed; re-attaching');
      attachedTo = pid;
      await snapshotter.reattach();
    };
    // Lazily pulled layers whose chunks are all stored get their EROFS image (kernel mode).
    const completeLayers = setInterval(() => void snapshotter.serveCompleteLayers()
      .catch((err: unknown) => log.warn({ err: (err as Error).message }, 'cannot check lazy layers for completeness')), LAZY_CHECK_MS).unref();
    const watcher = setInterval(() => {
      if (watching) return;
      watching = true;
      watchFused().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'layer server check failed'))
        .finally(() => (watching = false));
    }, FUSED_WATCH_MS).unref();

    const stopped = new Promise<string>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
    });
    // Sandbox pools on this snapshotter's snapshots; a stop leaves their sandboxes running for
    // the next start to adopt (docs/sandbox.md).
    const platform = parsePlatform(flags.platform);
    const pools = new SandboxPools({
      root: config.root, memoryMerge: config.enable_mem_dedup, log, metrics: new PoolMetrics(metrics.registry),
      snapshots: { stat: async (key) => snapshotter.stat(key), prepare: (key, parent, labels) => snapshotter.prepare(key, parent, labels), remove: (key) => snapshotter.remove(key) },
      resolveImage: (ref) => imageChainId(client, ref, platform),
      audit: (action, target, details, result) => audit.record('dedup-snapshotter', action, target, details, result),
    });
    const server = new grpc.Server();
    let api: AdminApi | undefined;
    let apiRetry: NodeJS.Timeout | undefined;
    try {
      await shared?.start(); // before the snapshotter mounts its layers again
      await snapshotter.start();
      await pools.start();
      server.addService(loadSnapshotsService(), snapshotsHandlers(snapshotter));
      await mkdir(dirname(flags.socket), { recursive: true });
      await rm(flags.socket, { force: true }); // a socket left by a daemon that was killed
      await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${flags.socket}`, grpc.ServerCredentials.createInsecure(),
        (err) => (err ? reject(err) : resolve())));
      // A busy admin address must not take the snapshot service down (another daemon may hold
      // it): gRPC serves on, and the API is tried again until it can listen.
      const startApi = async (): Promise<boolean> => {
        try {
          api = await AdminApi.start({
            addr: config.api.addr, config: live, audit, metrics, log,
            pools,
            commit: (b) => commitWith({ ...b, plainHttp: b.plain_http }, { flags, config: live.get(), snapshots: snapshotter.metadata, observer: metrics, log }),
          });
          return true;
        } catch (err) {
          if (!(err instanceof ApiBindError)) throw err;
          if (!apiRetry) log.error({ err: err.message, code: err.code, addr: err.addr, retryMs: API_RETRY_MS }, 'admin API not serving; snapshots are; retrying');
          return false;
        }
      };
      if (config.api.enabled && !(await startApi())) {
        apiRetry = setInterval(() => void startApi().then((up) => {
          if (!up) return;
          clearInterval(apiRetry);
          log.info({ api: api!.address }, 'admin API serving');
        }, (err: unknown) => log.error({ err: (err as Error).message }, 'admin API failed')), API_RETRY_MS).unref();
      }
      log.info({ socket: flags.socket, api: api?.address ?? null, root: config.root, version: VERSION, lazy: config.enable_lazy, kernel: kernel !== undefined, fused: fusedPid, sharedStores: shared ? config.shared_stores : [] }, 'serving');
      const signal = await stopped;
      log.info({ signal }, 'shutting down');
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 10_000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    } finally {
      clearInterval(pruner);
      clearInterval(watcher);
      clearInterval(completeLayers);
      clearInterval(apiRetry);
      shared?.close();
      await api?.close();
      await pools.detach();
      server.forceShutdown();
      snapshotter.close();
      await store?.close();
      await codecs?.close();
      audit.close();
      await client.close();
      await fused.close();
      await rm(flags.socket, { force: true });
      log.info('stopped');
    }
  });

await runCli(program);
