// dedupctl store ingest|ls|rm, dedupctl stats, dedupctl gc: the chunk store from the command line.

import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { ingestImage } from '../fetch/ingest.js';
import { parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { ChunkStore } from '../store/chunk-store.js';
import type { Config } from '../config/config.js';
import { audited, configFrom, formatBytes, parseIntFlag, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { byteProgress } from './progress.js';
import { sharedStoreCommands } from './shared-store.js';

async function withStore<T>(flags: CommonFlags, fn: (store: ChunkStore, config: Config) => Promise<T>): Promise<T> {
  const config = await configFrom(flags);
  const store = await ChunkStore.open(config.root);
  try {
    return await fn(store, config);
  } finally {
    await store.close();
  }
}

export function storeCommand(): Command {
  const store = new Command('store').description('the deduplicating chunk store');
  store.addCommand(withCommonFlags(new Command('ingest'))
    .description('fetch every chunk of an eStargz image into the store (chunks it has are skipped)')
    .argument('<image>', 'registry reference or oci:DIR[:TAG]')
    .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
    .option('--concurrency <n>', 'Range requests in flight', parseIntFlag('--concurrency', 1, 64), 4)
    .action(async (ref: string, flags: CommonFlags & { platform: string; concurrency: number }) => {
      const config = await configFrom(flags);
      const client = await registryClientFrom(flags, config);
      const pool = new CodecPool();
      const progress = byteProgress('ingesting', !flags.json);
      try {
        await withStore(flags, async (s) => {
          const r = await audited(config, 'store.ingest', ref, { platform: flags.platform }, () => ingestImage(openImage(ref, client), s, pool, {
            platform: parsePlatform(flags.platform), fetch: { concurrency: flags.concurrency },
            onProgress: (done, total) => progress.update(done, total),
          }));
          progress.stop();
          if (flags.json) return printJson({ ...r, registry: client.stats });
          process.stdout.write(`${r.image}: ${r.layers.length} layers, ${r.chunks} chunks: ${r.fetched} fetched, ${r.alreadyStored} already stored\n`);
          process.stdout.write(`fetched ${formatBytes(r.bytesFetched)} in ${client.stats.requests} requests, stored ${formatBytes(r.bytesStored)} new, ${r.seconds.toFixed(2)} s\n`);
        });
      } finally {
        progress.stop();
        await pool.close();
        await client.close();
      }
    }));
  store.addCommand(withCommonFlags(new Command('ls'))
    .description('list the images recorded in the store')
    .action((flags: CommonFlags) => withStore(flags, async (s) => {
      const images = s.listImages();
      if (flags.json) return printJson(images);
      for (const i of images) process.stdout.write(`${i.ref}\t${i.manifestDigest}\t${i.layers} layers\n`);
    })));
  store.addCommand(withCommonFlags(new Command('rm'))
    .description('forget an image; gc then frees what nothing else uses')
    .argument('<image...>', 'image names as store ls shows them')
    .action((refs: string[], flags: CommonFlags) => withStore(flags, async (s, config) => {
      for (const r of refs) await audited(config, 'store.rm', r, {}, async () => s.removeImage(r));
      if (flags.json) printJson({ removed: refs });
    })));
  for (const c of sharedStoreCommands()) store.addCommand(c);
  return store;
}

export function statsCommand(): Command {
  return withCommonFlags(new Command('stats'))
    .description('chunks, stored and logical bytes, dedup ratio')
    .action((flags: CommonFlags) => withStore(flags, async (s) => {
      const st = await s.stats();
      if (flags.json) return printJson(st);
      const lines = [
        ['images', String(st.images)],
        ['layers', String(st.layers)],
        ['chunks stored', `${st.chunks} (${st.chunksMissing} referenced, not fetched)`],
        ['stored bytes', formatBytes(st.storedBytes)],
        ['logical bytes', formatBytes(st.logicalBytes)],
        ['dedup ratio', `${st.dedupRatio.toFixed(2)}x (saved ${formatBytes(st.savedBytes)})`],
        ['shared chunks', `${st.sharedChunks} with ref_count > 1, ${formatBytes(st.sharedBytes)}`],
      ];
      for (const [k, v] of lines) process.stdout.write(`${k!.padEnd(14)} ${v}\n`);
    }));
}

export function gcCommand(): Command {
  return withCommonFlags(new Command('gc'))
    .description('remove layers no image uses and chunks no layer uses')
    .action((flags: CommonFlags) => withStore(flags, async (s, config) => {
      const r = await audited(config, 'store.gc', config.root, {}, () => s.gc());
      if (flags.json) return printJson(r);
      process.stdout.write(`removed ${r.layersRemoved} layers, ${r.chunksRemoved} chunks (${formatBytes(r.bytesFreed)}; packs gave back ${formatBytes(r.packBytesFreed)} of disk), ${r.tempFilesRemoved} stale temp files\n`);
    }));
}
