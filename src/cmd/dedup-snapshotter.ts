#!/usr/bin/env node
// dedup-snapshotter: the containerd proxy snapshotter daemon. Serves containerd's Snapshots API
// on a unix socket; eStargz layers are mounted lazily from the registry into the chunk store.

import { mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { configFrom, parseSize, registryClientFrom, runCli, withCommonFlags, type CommonFlags } from '../cli/common.js';
import { daemonLogger } from '../cli/log.js';
import { DEFAULT_SOCKET } from '../config/config.js';
import { ChunkCache } from '../fetch/chunk-cache.js';
import { parsePlatform } from '../image/oci.js';
import { loadSnapshotsService, snapshotsHandlers } from '../snapshot/grpc-service.js';
import { Snapshotter } from '../snapshot/snapshotter.js';
import { ChunkStore } from '../store/chunk-store.js';
import { VERSION } from '../version.js';

interface DaemonFlags extends CommonFlags {
  check?: boolean;
  socket: string;
  platform: string;
  cacheSize: number;
  traceDir?: string;
}

const program = withCommonFlags(new Command('dedup-snapshotter'))
  .description('containerd proxy snapshotter: lazily pulled eStargz layers over a deduplicating chunk store')
  .version(VERSION)
  .option('--socket <path>', 'gRPC socket to serve on', DEFAULT_SOCKET)
  .option('--platform <os/arch[/variant]>', 'platform of images resolved without a manifest digest', 'linux/amd64')
  .option('--cache-size <bytes>', 'in-memory cache of hot chunks', parseSize('--cache-size'), 256 * 1024 * 1024)
  .option('--trace-dir <dir>', 'access traces to record and replay (default: prefetch.trace_dir)')
  .option('--check', 'validate the config and open the state root, then exit')
  .action(async (flags: DaemonFlags) => {
    const config = await configFrom(flags);
    const store = await ChunkStore.open(config.root);
    if (flags.check) {
      const stats = store.stats();
      store.close();
      const summary = { root: config.root, socket: flags.socket, chunkSize: config.chunk_size, images: stats.images, chunks: stats.chunks };
      process.stdout.write(flags.json ? JSON.stringify(summary) + '\n' : `config ok: root ${config.root}, ${stats.images} images, ${stats.chunks} chunks\n`);
      return;
    }
    const log = daemonLogger('dedup-snapshotter', config);
    const client = await registryClientFrom(flags, config);
    const pool = new CodecPool();
    const snapshotter = new Snapshotter({
      root: config.root, client, platform: parsePlatform(flags.platform), lazyPull: config.enable_lazy, store, pool,
      cache: new ChunkCache(flags.cacheSize), traceDir: flags.traceDir ?? config.prefetch.trace_dir, log,
      prefetch: { enabled: config.prefetch.enabled, queueSize: config.prefetch.queue_size, background: config.prefetch.background },
      lazy: { prefetchWorkers: config.prefetch.workers },
      onReadError: (layer, path, err) => log.warn({ layer, path, err: (err as Error).message, code: (err as { code?: string }).code }, 'read failed: EIO'),
    });
    const stopped = new Promise<string>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
    });
    const server = new grpc.Server();
    try {
      await snapshotter.start();
      server.addService(loadSnapshotsService(), snapshotsHandlers(snapshotter));
      await mkdir(dirname(flags.socket), { recursive: true });
      await rm(flags.socket, { force: true }); // a socket left by a daemon that was killed
      await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${flags.socket}`, grpc.ServerCredentials.createInsecure(),
        (err) => (err ? reject(err) : resolve())));
      log.info({ socket: flags.socket, root: config.root, version: VERSION, lazy: config.enable_lazy }, 'serving');
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
      server.forceShutdown();
      await snapshotter.close();
      await pool.close();
      store.close();
      await client.close();
      await rm(flags.socket, { force: true });
      log.info('stopped');
    }
  });

await runCli(program);
