// dedupctl ksm status | tune | exec: KSM's sysfs settings and figures, and starting commands whose
// memory KSM may merge.

import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { Command } from 'commander';
import { KsmError } from '../errors.js';
import { KSM_DIR, ksmStatus, tuneKsm, type KsmSettings } from '../ksm/ksm.js';
import { getMemoryMerge, setMemoryMerge } from '../ksm/memory-merge.js';
import { audited, configFrom, formatBytes, parseIntFlag, printJson, withCommonFlags, type CommonFlags } from '../startup/common.js';

interface TuneFlags extends CommonFlags {
  run?: number;
  pagesToScan?: number;
  sleepMs?: number;
  mergeAcrossNodes?: number;
}

export function ksmCommand(): Command {
  const ksm = new Command('ksm').description(`kernel samepage merging (${KSM_DIR})`);
  ksm.addCommand(new Command('status')
    .description('scanner settings, pages merged and the memory saved')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const s = await ksmStatus();
      if (flags.json) return printJson(s);
      const runs = ['stopped', 'running', 'stopped, unmerging'][s.run];
      const lines: [string, string][] = [
        ['run', `${s.run} (${runs})`], ['pages_to_scan', String(s.pages_to_scan)], ['sleep_millisecs', String(s.sleep_millisecs)],
        ['merge_across_nodes', String(s.merge_across_nodes)], ['pages_shared', String(s.pages_shared)], ['pages_sharing', String(s.pages_sharing)],
        ['pages_unshared', String(s.pages_unshared)], ['pages_volatile', String(s.pages_volatile)], ['full_scans', String(s.full_scans)],
        ['general_profit', s.general_profit === null ? 'n/a' : formatBytes(s.general_profit)], ['memory saved', formatBytes(s.memory_saved_bytes)],
      ];
      for (const [k, v] of lines) process.stdout.write(`${k.padEnd(19)} ${v}\n`);
    }));
  ksm.addCommand(withCommonFlags(new Command('tune'))
    .description('change scanner settings (all or none are applied)')
    .option('--run <0|1|2>', '0 stop, 1 run, 2 stop and unmerge all', parseIntFlag('--run', 0, 2))
    .option('--pages-to-scan <n>', 'pages scanned per wake-up', parseIntFlag('--pages-to-scan', 1, 10_000_000))
    .option('--sleep-ms <ms>', 'sleep between scans', parseIntFlag('--sleep-ms', 0, 3_600_000))
    .option('--merge-across-nodes <0|1>', 'merge pages of different NUMA nodes (only while nothing is merged)', parseIntFlag('--merge-across-nodes', 0, 1))
    .action(async (flags: TuneFlags) => {
      const want: Partial<Record<keyof KsmSettings, number>> = {};
      if (flags.run !== undefined) want.run = flags.run;
      if (flags.pagesToScan !== undefined) want.pages_to_scan = flags.pagesToScan;
      if (flags.sleepMs !== undefined) want.sleep_millisecs = flags.sleepMs;
      if (flags.mergeAcrossNodes !== undefined) want.merge_across_nodes = flags.mergeAcrossNodes;
      const previous = await audited(await configFrom(flags), 'ksm.tune', KSM_DIR, want, () => tuneKsm(want));
      if (flags.json) return printJson({ set: want, previous });
      process.stdout.write(Object.keys(previous).length
        ? `${Object.entries(previous).map(([k, v]) => `${k}: ${v} -> ${want[k as keyof KsmSettings]}`).join(', ')}\n` : 'nothing to change\n');
    }));
  ksm.addCommand(withCommonFlags(new Command('exec'))
    .description('run a command with all its memory (and its children\'s) open to KSM merging (prctl PR_SET_MEMORY_MERGE)')
    .argument('<command...>', 'the command and its arguments (put -- before it)')
    .action(async (argv: string[], flags: CommonFlags) => {
      setMemoryMerge(true);
      if (!getMemoryMerge()) throw new KsmError('prctl(PR_SET_MEMORY_MERGE) did not take');
      await audited(await configFrom(flags), 'ksm.exec', argv.join(' '), {}, async () => undefined);
      const child = spawn(argv[0]!, argv.slice(1), { stdio: 'inherit' });
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => child.kill(sig));
      const code = await new Promise<number>((resolve, reject) => {
        child.once('error', reject);
        child.once('exit', (c, signal) => resolve(c ?? 128 + (signal ? constants.signals[signal] : 0)));
      });
      process.exitCode = code;
    }));
  return ksm;
}
