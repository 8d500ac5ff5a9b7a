#!/usr/bin/env node
// dedupctl: the admin CLI.

import { Command } from 'commander';
import { runCli } from '../cli/common.js';
import { convertCommand } from '../cli/convert.js';
import { gcCommand, statsCommand, storeCommand } from '../cli/store.js';
import { tocCommand } from '../cli/toc.js';
import { VERSION } from '../version.js';

const program = new Command('dedupctl')
  .description('dedup-snapshotter admin CLI: convert images to eStargz, inspect them, manage the chunk store')
  .version(VERSION)
  .addCommand(convertCommand())
  .addCommand(tocCommand())
  .addCommand(storeCommand())
  .addCommand(statsCommand())
  .addCommand(gcCommand());

await runCli(program);
