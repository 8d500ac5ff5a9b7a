// dedupctl audit ls: what audit.db holds, newest first.

import { Command } from 'commander';
import { AuditLog } from '../audit/audit-log.js';
import { InvalidArgumentError } from '../errors.js';
import { configFrom, parseIntFlag, printJson, withCommonFlags, type CommonFlags } from '../startup/common.js';

export function auditCommand(): Command {
  const audit = new Command('audit').description('the audit log (<root>/audit.db)');
  audit.addCommand(withCommonFlags(new Command('ls'))
    .description('list audit entries, newest first')
    .option('--limit <n>', 'at most this many', parseIntFlag('--limit', 1, 1_000_000), 50)
    .option('--since <time>', 'entries at or after this ISO 8601 time')
    .option('--action <action>', 'only this action (e.g. config.update, image.pull, store.gc)')
    .action(async (flags: CommonFlags & { limit: number; since?: string; action?: string }) => {
      const since = flags.since === undefined ? undefined : new Date(flags.since);
      if (since && Number.isNaN(since.getTime())) throw new InvalidArgumentError(`--since "${flags.since}" is not an ISO 8601 time`);
      const log = AuditLog.open((await configFrom(flags)).root);
      try {
        const entries = log.list({ limit: flags.limit, since, action: flags.action });
        if (flags.json) return printJson(entries);
        for (const e of entries) {
          process.stdout.write(`${e.time}  ${e.action.padEnd(16)} ${e.result.padEnd(4)} ${e.actor}  ${e.target}${Object.keys(e.details).length ? `  ${JSON.stringify(e.details)}` : ''}\n`);
        }
      } finally {
        log.close();
      }
    }));
  return audit;
}
