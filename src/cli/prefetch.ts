// dedupctl prefetch add | ls: queue images with a running `dedupd --serve` and follow its jobs.

import { Command } from 'commander';
import { UnixJsonClient } from '../api/unix-socket.js';
import { DEFAULT_DEDUPD_SOCKET } from '../config/config.js';
import type { PrefetchJob } from '../prefetch/prefetch-queue.js';
import { formatBytes, printJson } from '../startup/common.js';

function call<T>(socket: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const client = new UnixJsonClient(socket, 'dedupd', 'is dedupd --serve running?');
  return client.call<T>(method, path, body).finally(() => client.close());
}

function line(j: PrefetchJob): string {
  const p = j.progress.total ? ` ${((100 * j.progress.done) / j.progress.total).toFixed(0)}%` : '';
  const r = j.report ? ` ${j.report.fetched} chunks fetched (${formatBytes(j.report.bytesFetched)}), ${j.report.alreadyStored} already stored, ${j.report.seconds.toFixed(2)} s` : '';
  return `${j.id}  ${j.state.padEnd(7)} ${j.image}${j.full ? ' (full)' : ''}${p}${r}${j.error ? `  ${j.error.message} [${j.error.code}]` : ''}`;
}

export function prefetchCommand(): Command {
  const prefetch = new Command('prefetch').description('queue images with dedupd --serve, which fetches them into the chunk store');
  prefetch.addCommand(new Command('add')
    .description('queue images: the chunks their traces list, or all of them with --full')
    .argument('<image...>')
    .option('--full', 'fetch whole images')
    .option('--wait', 'wait until the jobs end; exit 1 if one failed')
    .option('--socket <path>', 'dedupd job socket', DEFAULT_DEDUPD_SOCKET)
    .option('--json', 'machine-readable output')
    .action(async (images: string[], flags: { full?: boolean; wait?: boolean; socket: string; json?: boolean }) => {
      let jobs: PrefetchJob[] = [];
      for (const image of images) jobs.push(await call<PrefetchJob>(flags.socket, 'POST', '/prefetch', { image, full: flags.full ?? false }));
      while (flags.wait && jobs.some((j) => j.state === 'queued' || j.state === 'running')) {
        await new Promise((r) => setTimeout(r, 250));
        jobs = await Promise.all(jobs.map((j) => call<PrefetchJob>(flags.socket, 'GET', `/prefetch/${j.id}`)));
      }
      if (flags.json) printJson(jobs);
      else for (const j of jobs) process.stdout.write(line(j) + '\n');
      if (jobs.some((j) => j.state === 'failed')) process.exitCode = 1;
    }));
  prefetch.addCommand(new Command('ls')
    .description('jobs of the running dedupd, newest first')
    .option('--socket <path>', 'dedupd job socket', DEFAULT_DEDUPD_SOCKET)
    .option('--json', 'machine-readable output')
    .action(async (flags: { socket: string; json?: boolean }) => {
      const { jobs } = await call<{ jobs: PrefetchJob[] }>(flags.socket, 'GET', '/prefetch');
      if (flags.json) return printJson(jobs);
      for (const j of jobs) process.stdout.write(line(j) + '\n');
      if (!jobs.length) process.stdout.write('no jobs\n');
    }));
  return prefetch;
}
