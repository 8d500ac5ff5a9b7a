#!/usr/bin/env node
// dedup-fused: the layer server. Owns the FUSE connections of the snapshotter's lazily mounted
// layers and serves their reads (fetching, verifying and storing chunks), so that restarting,
// killing or upgrading the snapshotter never touches a running container's lower layers. It is
// replaced without dropping a mount by `dedupctl fused upgrade` (or SIGUSR2): a new process takes
// every FUSE descriptor over. A plain SIGTERM/SIGINT stops it only when nothing is mounted;
// `dedupctl cleanup` is the full teardown. With nothing mounted and no client for
// fused.idle_exit_seconds (or its state root removed) it exits by itself. See docs/restarts.md.

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { AuditLog } from '../audit/audit-log.js';
import { CodecPool } from '../codec/codec-pool.js';
import { configFrom, parseSize, registryClientFrom, runCli, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { daemonLogger } from '../startup/log.js';
import { prefetchOptions } from '../config/config.js';
import { ChunkCache } from '../fetch/chunk-cache.js';
import { ControlApi } from '../fused/control-api.js';
import { fusedSocket } from '../fused/client.js';
import { receiveHandover, released, socketFree, startSuccessor } from '../fused/handover.js';
import { LayerServer } from '../fused/layer-server.js';
import { kernelFsFor } from '../kernel/lazy-erofs.js';
import { LayerMetrics } from '../metrics/metrics.js';
import { ChunkStore } from '../store/chunk-store.js';
import { VERSION } from '../version.js';

interface FusedFlags extends CommonFlags {
  socket?: string;
  cacheSize: number;
  traceDir?: string;
}

/**
 * Tells systemd (Type=notify, NotifyAccess=all) which process is the service now; no-op elsewhere.
 * --pid: the message carries this (long-lived) process's credentials, not systemd-notify's.
 */
function notifySystemd(...fields: string[]): void {
  if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', [`--pid=${process.pid}`, ...fields], () => undefined);
}

const program = withCommonFlags(new Command('dedup-fused'))
  .description('layer server: owns and serves the FUSE mounts of lazily pulled layers for dedup-snapshotter')
  .version(VERSION)
  .option('--socket <path>', 'control socket (default: <root>/fused.sock)')
  .option('--cache-size <bytes>', 'in-memory cache of hot chunks', parseSize('--cache-size'), 256 * 1024 * 1024)
  .option('--trace-dir <dir>', 'access traces to record and replay (default: prefetch.trace_dir)')
  .action(async (flags: FusedFlags) => {
    let config = await configFrom(flags);
    const socket = flags.socket ?? fusedSocket(config.root);
    const log = daemonLogger('dedup-fused', config);
    const store = await ChunkStore.open(config.root);
    await store.startIndexWriter();
    const audit = AuditLog.open(config.root);
    const client = await registryClientFrom(flags, config, log);
    const pool = new CodecPool();
    await pool.warm();
    const layerMetrics = new LayerMetrics({ store: () => store.stats(), mounts: () => layers.mountStats(), registryHosts: () => client.stats.hosts }); // read at scrape time
    const onReadError = (layer: string, path: string, err: unknown): void => {
      layerMetrics.fuseReadError();
      log.warn({ layer, path, err: (err as Error).message, code: (err as { code?: string }).code }, 'read failed: EIO');
    };
    const kernelFs = await kernelFsFor(config, log, store, pool, onReadError);
    const layers: LayerServer = new LayerServer({
      client, store, pool, cache: new ChunkCache(flags.cacheSize), traceDir: flags.traceDir ?? config.prefetch.trace_dir, log,
      prefetch: prefetchOptions(config), lazy: { prefetchWorkers: config.prefetch.workers }, observer: layerMetrics, onReadError,
      kernelFs,
    }, {
      lost: (request, reason) => {
        layerMetrics.mountLost(reason);
        audit.record('dedup-fused', 'layer.lost', request.image, { mountpoint: request.mountpoint, layer: request.layer.digest, reason });
      },
    });

    type Leaving = 'stop' | 'handed-over' | 'idle';
    let leave!: (how: Leaving) => void;
    const left = new Promise<Leaving>((resolve) => (leave = resolve));
    let control: ControlApi | undefined;
    const upgrade = async (): Promise<{ pid: number }> => {
      const mounts = await layers.freeze(); // refused if an upgrade is under way
      const child = await startSuccessor(process.argv.slice(1), mounts, join(config.root, 'fused.log')).catch((err: unknown) => {
        layers.thaw();
        throw err;
      });
      log.info({ successor: child.pid, mounts: mounts.length }, 'successor serves the mounts; leaving');
      // After the answer has gone out: stop listening and let the successor have the socket's
      // path, answer what was read, then let go.
      setImmediate(() => void (async () => {
        const closing = control?.close(true);
        await socketFree(child);
        await closing;
        await layers.release();
        log.debug('mounts released');
        await released(child);
        leave('handed-over');
      })());
      return { pid: child.pid! };
    };
    const shutdown = async (): Promise<{ unmounted: number }> => {
      const unmounted = await layers.unmountAll();
      setImmediate(() => leave('stop'));
      return { unmounted };
    };

    let lastSeen = Date.now();
    const incoming = await receiveHandover();
    await layers.adopt(incoming?.mounts ?? []).catch(async (err: Error) => {
      await incoming?.failed(err);
      throw err;
    });
    await incoming?.adopted();
    control = await ControlApi.start(socket, layers, {
      metrics: () => layerMetrics.text(),
      reload: async () => {
        config = await configFrom(flags);
        log.level = config.log_level;
        layers.setPrefetch(prefetchOptions(config), { prefetchWorkers: config.prefetch.workers });
        return { reloaded: true };
      },
      upgrade,
      shutdown,
    }, log, () => (lastSeen = Date.now()));
    await incoming?.settled();
    notifySystemd(`MAINPID=${process.pid}`, 'READY=1');
    log.info({ socket, root: config.root, version: VERSION, pid: process.pid, adopted: incoming?.mounts.length ?? 0 }, 'serving');

    const onStop = (signal: string): void => {
      if (layers.size === 0) return leave('stop');
      log.warn({ signal, mounts: layers.size }, 'not stopping: running containers use these mounts (dedupctl cleanup unmounts them and stops; dedupctl fused upgrade replaces this process)');
    };
    process.on('SIGTERM', () => onStop('SIGTERM'));
    process.on('SIGINT', () => onStop('SIGINT'));
    process.on('SIGUSR2', () => void upgrade().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'upgrade failed; still serving')));

    // A layer server nobody uses leaves: no mount, and no snapshotter checking on it (it does
    // every few seconds) for the grace period, or its state root is gone.
    const idleMs = () => config.fused.idle_exit_seconds * 1000;
    const idleCheck = setInterval(() => void (async () => {
      if (layers.size > 0 || idleMs() === 0) return;
      const rootGone = !existsSync(config.root);
      if (!rootGone && Date.now() - lastSeen < idleMs()) return;
      // Refuse mounts from here on (the client retries, then starts a new layer server); one
      // that came in meanwhile keeps this one.
      const held = await layers.freeze().catch(() => undefined); // refused: an upgrade is under way
      if (!held) return;
      if (held.length) return layers.thaw();
      log.info({ idleSeconds: Math.round((Date.now() - lastSeen) / 1000), rootGone }, rootGone ? 'state root removed; leaving' : 'no mounts and no client; leaving');
      leave('idle');
    })(), Math.min(5000, Math.max(250, idleMs() / 4))).unref();

    const how = await left;
    clearInterval(idleCheck);
    if (how !== 'handed-over') await control.close();
    await pool.close();
    // Chunks whose presence could not be recorded are only fetched again by the next user.
    await store.close().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'index changes not recorded'));
    audit.close();
    await client.close();
    log.info({ how }, 'stopped');
    // Exit even if some handle lingers: a layer server left behind after a hand-over would be a
    // second copy serving nothing.
    process.exit(0);
  });

await runCli(program);
