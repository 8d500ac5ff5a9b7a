#!/usr/bin/env node
// dedup-snapshotter: the containerd proxy snapshotter daemon. Its Snapshots gRPC service is not
// built yet; today the binary validates its config and state root, so packaging and config
// management can be set up against it, and says plainly that it cannot serve.

import { Command } from 'commander';
import { configFrom, runCli, withCommonFlags, type CommonFlags } from '../cli/common.js';
import { DEFAULT_SOCKET } from '../config/config.js';
import { DedupError } from '../errors.js';
import { ChunkStore } from '../store/chunk-store.js';
import { VERSION } from '../version.js';

class NotServingError extends DedupError {
  constructor() {
    super('ERR_INVALID_ARGUMENT', 'the containerd Snapshots service is not part of this build yet; use --check to validate the config and root');
  }
}

const program = withCommonFlags(new Command('dedup-snapshotter'))
  .description('containerd proxy snapshotter: lazily pulled eStargz layers over a deduplicating chunk store')
  .version(VERSION)
  .option('--socket <path>', 'gRPC socket to serve on', DEFAULT_SOCKET)
  .option('--check', 'validate the config and open the state root, then exit')
  .action(async (flags: CommonFlags & { check?: boolean; socket: string }) => {
    const config = await configFrom(flags);
    const store = await ChunkStore.open(config.root);
    const stats = store.stats();
    store.close();
    if (!flags.check) throw new NotServingError();
    const summary = { root: config.root, socket: flags.socket, chunkSize: config.chunk_size, images: stats.images, chunks: stats.chunks };
    process.stdout.write(flags.json ? JSON.stringify(summary) + '\n' : `config ok: root ${config.root}, ${stats.images} images, ${stats.chunks} chunks\n`);
  });

await runCli(program);
