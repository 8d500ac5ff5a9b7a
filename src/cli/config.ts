// dedupctl config show | validate FILE.

import { Command } from 'commander';
import { configOf, flattenConfig, readConfigDocument, redactConfig } from '../config/config.js';
import { printJson, withCommonFlags, type CommonFlags } from '../startup/common.js';

export function configCommand(): Command {
  const config = new Command('config').description('the daemon config file (/etc/dedup-snapshotter/config.json)');
  config.addCommand(withCommonFlags(new Command('show'))
    .description('the effective config: the file with every default filled in (api.token redacted)')
    .option('--defaults', 'the defaults alone, as if there were no config file')
    .action(async (flags: CommonFlags & { defaults?: boolean }) => {
      const doc = flags.defaults ? { file: '(defaults)', doc: {} } : await readConfigDocument(flags.config);
      const c = redactConfig(configOf(doc, { root: flags.root }));
      if (flags.json) return printJson(c);
      for (const [k, v] of flattenConfig(c)) process.stdout.write(`${k} = ${JSON.stringify(v)}\n`);
    }));
  config.addCommand(new Command('validate')
    .description('check a config file: exits 1 naming the first bad key, 0 if it is valid')
    .argument('<file>')
    .option('--json', 'machine-readable output')
    .action(async (file: string, flags: { json?: boolean }) => {
      configOf(await readConfigDocument(file));
      if (flags.json) printJson({ file, valid: true });
      else process.stdout.write(`${file}: valid\n`);
    }));
  return config;
}
