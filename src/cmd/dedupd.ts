#!/usr/bin/env node
// dedupd: the prefetch daemon. Fetches images into the chunk store without mounting them, e.g. to
// warm nodes before a rollout: the chunks an image's trace lists (what start-up reads), or the
// whole image. One-shot (`dedupd IMAGE…`) or as a daemon (`dedupd --serve`) that takes jobs on a
// unix socket (`dedupctl prefetch`). Several dedupd and dedupctl processes and the snapshotter
// may share one root.

import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { audited, configFrom, parseIntFlag, registryClientFrom, runCli, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { daemonLogger } from '../startup/log.js';
import { DEFAULT_DEDUPD_SOCKET, type Config } from '../config/config.js';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import { ingestImage, type IngestReport } from '../fetch/ingest.js';
import { parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { PrefetchQueue } from '../prefetch/prefetch-queue.js';
import { PrefetchServer } from '../prefetch/prefetch-server.js';
import { traceChunks } from '../prefetch/warm.js';
import type { RegistryClient } from '../registry/client.js';
import { ChunkStore } from '../store/chunk-store.js';
import { VERSION } from '../version.js';

interface DedupdFlags extends CommonFlags {
  platform: string;
  workers?: number;
  traceDir?: string;
  full?: boolean;
  serve?: boolean;
  socket: string;
}

const program = withCommonFlags(new Command('dedupd'))
  .description('prefetch eStargz images into the chunk store without mounting them')
  .version(VERSION)
  .argument('[image...]', 'images to prefetch (registry references or oci:DIR[:TAG]); none with --serve')
  .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
  .option('--workers <n>', 'Range requests in flight (default: dedupd.workers from the config)', parseIntFlag('--workers', 1, 64))
  .option('--trace-dir <dir>', 'where traces are (default: prefetch.trace_dir)')
  .option('--full', 'fetch whole images even where a trace says what start-up needs')
  .option('--serve', 'run as a daemon taking prefetch jobs on --socket until SIGTERM')
  .option('--socket <path>', 'job socket of --serve', DEFAULT_DEDUPD_SOCKET)
  .action(async (refs: string[], flags: DedupdFlags) => {
    if (flags.serve === (refs.length > 0)) throw new InvalidArgumentError(flags.serve ? '--serve takes no images: queue them with dedupctl prefetch' : 'name at least one image, or --serve');
    const config = await configFrom(flags);
    if (!config.dedupd.enabled) throw new FailedPreconditionError('dedupd.enabled is false in the config: dedupd does not run (set it to true to prefetch)');
    const log = daemonLogger('dedupd', config);
    const client = await registryClientFrom(flags, config, log);
    const store = await ChunkStore.open(config.root);
    const pool = new CodecPool();
    const prefetch = (ref: string, full: boolean, onProgress?: (done: number, total: number) => void): Promise<IngestReport> =>
      prefetchImage(config, client, store, pool, flags, ref, full, (msg, fields) => log.warn(fields, msg), onProgress);
    try {
      if (flags.serve) {
        const queue = new PrefetchQueue((job, onProgress) => prefetch(job.image, job.full, onProgress), log);
        await mkdir(dirname(flags.socket), { recursive: true });
        const server = await PrefetchServer.start(flags.socket, queue, log);
        log.info({ socket: flags.socket, root: config.root, version: VERSION }, 'serving');
        const signal = await new Promise<string>((resolve) => {
          process.once('SIGTERM', () => resolve('SIGTERM'));
          process.once('SIGINT', () => resolve('SIGINT'));
        });
        log.info({ signal }, 'shutting down: the running job finishes, queued ones are dropped');
        await server.close();
        await queue.stop();
        return;
      }
      let failed = 0;
      for (const ref of refs) {
        log.info({ image: ref, root: config.root }, 'prefetch started');
        try {
          const r = await prefetch(ref, flags.full ?? false);
          log.info({ image: r.image, chunks: r.chunks, fetched: r.fetched, alreadyStored: r.alreadyStored, bytesFetched: r.bytesFetched, seconds: r.seconds }, 'prefetch done');
        } catch (err) {
          failed++;
          log.error({ image: ref, err: (err as Error).message, code: (err as { code?: string }).code }, 'prefetch failed');
        }
      }
      if (failed > 0) process.exitCode = 1;
      if (flags.json) process.stdout.write(JSON.stringify({ images: refs.length, failed }) + '\n');
    } finally {
      await pool.close();
      await store.close();
      await client.close();
    }
  });

/** One image into the store: the chunks its trace lists (whole layers where there is none), or all with `full`. */
function prefetchImage(config: Config, client: RegistryClient, store: ChunkStore, pool: CodecPool, flags: DedupdFlags, ref: string, full: boolean,
  warn: (msg: string, fields: object) => void, onProgress?: (done: number, total: number) => void): Promise<IngestReport> {
  return audited(config, 'image.prefetch', ref, { full }, () => ingestImage(openImage(ref, client), store, pool, {
    platform: parsePlatform(flags.platform), fetch: { concurrency: flags.workers ?? config.dedupd.workers }, onProgress,
    chunksFor: full ? undefined : traceChunks(flags.traceDir ?? config.prefetch.trace_dir, warn),
  }));
}

await runCli(program);
