#!/usr/bin/env node
// dedupctl: the admin CLI.

import { Command } from 'commander';
import { auditCommand } from '../cli/audit.js';
import { commitCommand } from '../cli/commit.js';
import { runCli } from '../startup/common.js';
import { configCommand } from '../cli/config.js';
import { convertCommand } from '../cli/convert.js';
import { cleanupCommand, fusedCommand } from '../cli/fused.js';
import { gzipIndexCommand } from '../cli/gzip-index.js';
import { ksmCommand } from '../cli/ksm.js';
import { mountCommands } from '../cli/mount.js';
import { poolCommand } from '../cli/pool.js';
import { prefetchCommand } from '../cli/prefetch.js';
import { gcCommand, statsCommand, storeCommand } from '../cli/store.js';
import { tocCommand } from '../cli/toc.js';
import { traceCommand } from '../cli/trace.js';
import { VERSION } from '../version.js';

const program = new Command('dedupctl')
  .description('dedup-snapshotter admin CLI: convert images to eStargz, inspect and mount them lazily, commit running containers to images, manage the chunk store, config, audit log, KSM, the layer server and sandbox pools')
  .version(VERSION)
  .addCommand(convertCommand())
  .addCommand(commitCommand())
  .addCommand(tocCommand())
  .addCommand(storeCommand())
  .addCommand(statsCommand())
  .addCommand(gcCommand())
  .addCommand(traceCommand())
  .addCommand(gzipIndexCommand())
  .addCommand(prefetchCommand())
  .addCommand(configCommand())
  .addCommand(auditCommand())
  .addCommand(ksmCommand())
  .addCommand(fusedCommand())
  .addCommand(poolCommand())
  .addCommand(cleanupCommand());
for (const c of mountCommands()) program.addCommand(c);

await runCli(program);
