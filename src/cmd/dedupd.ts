#!/usr/bin/env node
// dedupd: the prefetch daemon. For now its one-shot form: fetch whole images into the chunk
// store, without mounting them, e.g. to warm a node before a rollout. Several dedupd and
// dedupctl processes may share one root.

import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { audited, configFrom, parseIntFlag, registryClientFrom, runCli, withCommonFlags, type CommonFlags } from '../cli/common.js';
import { daemonLogger } from '../cli/log.js';
import { ingestImage } from '../fetch/ingest.js';
import { parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { traceChunks } from '../prefetch/warm.js';
import { ChunkStore } from '../store/chunk-store.js';
import { VERSION } from '../version.js';

const program = withCommonFlags(new Command('dedupd'))
  .description('prefetch eStargz images into the chunk store without mounting them')
  .version(VERSION)
  .argument('<image...>', 'images to prefetch in full (registry references or oci:DIR[:TAG])')
  .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
  .option('--workers <n>', 'Range requests in flight (default: dedupd.workers from the config)', parseIntFlag('--workers', 1, 64))
  .option('--trace-dir <dir>', 'where traces are (default: prefetch.trace_dir)')
  .option('--full', 'fetch whole images even where a trace says what start-up needs')
  .action(async (refs: string[], flags: CommonFlags & { platform: string; workers?: number; traceDir?: string; full?: boolean }) => {
    const config = await configFrom(flags);
    const log = daemonLogger('dedupd', config);
    const client = await registryClientFrom(flags, config);
    const store = await ChunkStore.open(config.root);
    const pool = new CodecPool();
    let failed = 0;
    try {
      for (const ref of refs) {
        log.info({ image: ref, root: config.root }, 'prefetch started');
        try {
          const r = await audited(config, 'image.prefetch', ref, { full: flags.full ?? false }, () => ingestImage(openImage(ref, client), store, pool, {
            platform: parsePlatform(flags.platform), fetch: { concurrency: flags.workers ?? config.dedupd.workers },
            chunksFor: flags.full ? undefined : traceChunks(flags.traceDir ?? config.prefetch.trace_dir, (msg, fields) => log.warn(fields, msg)),
          }));
          log.info({ image: r.image, chunks: r.chunks, fetched: r.fetched, alreadyStored: r.alreadyStored, bytesFetched: r.bytesFetched, seconds: r.seconds }, 'prefetch done');
        } catch (err) {
          failed++;
          log.error({ image: ref, err: (err as Error).message, code: (err as { code?: string }).code }, 'prefetch failed');
        }
      }
    } finally {
      await pool.close();
      store.close();
      await client.close();
    }
    if (failed > 0) process.exitCode = 1;
    if (flags.json) process.stdout.write(JSON.stringify({ images: refs.length, failed }) + '\n');
  });

await runCli(program);
