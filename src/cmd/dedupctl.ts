#!/usr/bin/env node
// dedupctl: the admin CLI.

import { Command } from 'commander';
import { runCli } from '../cli/common.js';
import { convertCommand } from '../cli/convert.js';
import { mountCommands } from '../cli/mount.js';
import { gcCommand, statsCommand, storeCommand } from '../cli/store.js';
import { tocCommand } from '../cli/toc.js';
import { traceCommand } from '../cli/trace.js';
import { VERSION } from '../version.js';

const program = new Command('dedupctl')
  .description('dedup-snapshotter admin CLI: convert images to eStargz, inspect and mount them lazily, manage the chunk store')
  .version(VERSION)
  .addCommand(convertCommand())
  .addCommand(tocCommand())
  .addCommand(storeCommand())
  .addCommand(statsCommand())
  .addCommand(gcCommand())
  .addCommand(traceCommand());
for (const c of mountCommands()) program.addCommand(c);

await runCli(program);
