// dedupctl commit CONTAINER REF: a running (or stopped) container on one of our snapshots into a
// new image, pausing it only for the final copy (src/commit/). The daemon's POST /commit runs
// the same commitWith().

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { commitContainer, type CommitObserver, type CommitOptions, type CommitReport } from '../commit/committer.js';
import type { Config } from '../config/config.js';
import { SnapshotNotOursError } from '../errors.js';
import { parsePlatform } from '../image/oci.js';
import { SnapshotMetadata } from '../snapshot/metadata.js';
import { audited, configFrom, formatBytes, parseIntFlag, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { byteProgress } from './progress.js';

export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock';

export interface CommitArgs {
  container: string;
  ref: string;
  address: string;
  namespace: string;
  snapshotter: string;
  platform: string;
  plainHttp: boolean;
}

export interface CommitEnv {
  flags: CommonFlags;
  config: Config;
  snapshots: CommitOptions['snapshots'];
  compressionLevel?: number;
  observer?: CommitObserver;
  log?: CommitOptions['log'];
  onProgress?: CommitOptions['onProgress'];
}

export async function commitWith(a: CommitArgs, env: CommitEnv): Promise<CommitReport> {
  const client = await registryClientFrom({ ...env.flags, plainHttp: env.flags.plainHttp || a.plainHttp }, env.config);
  const pool = new CodecPool();
  try {
    return await commitContainer({
      container: a.container, ref: a.ref, containerd: { address: a.address, namespace: a.namespace }, snapshotter: a.snapshotter, platform: parsePlatform(a.platform),
    }, {
      root: env.config.root, snapshots: env.snapshots, client, pool, chunkSize: env.config.chunk_size, compressionLevel: env.compressionLevel ?? 6,
      observer: env.observer, log: env.log, onProgress: env.onProgress,
    });
  } finally {
    await pool.close();
    await client.close();
  }
}

interface CommitFlags extends CommonFlags {
  address: string;
  namespace: string;
  snapshotter: string;
  platform: string;
  compressionLevel: number;
}

export function commitCommand(): Command {
  return withCommonFlags(new Command('commit'))
    .description('commit a container (its rootfs a snapshot of ours) to a new image REF, pausing it only for milliseconds')
    .argument('<container>', 'containerd container id')
    .argument('<ref>', 'target image reference, e.g. registry:5000/app:v2')
    .option('-a, --address <path>', 'containerd socket', process.env.CONTAINERD_ADDRESS ?? DEFAULT_CONTAINERD_ADDRESS)
    .option('-n, --namespace <ns>', 'containerd namespace', process.env.CONTAINERD_NAMESPACE ?? 'default')
    .option('--snapshotter <name>', 'the name containerd knows this snapshotter by (proxy_plugins.NAME)', 'dedup')
    .option('--platform <os/arch[/variant]>', 'platform to take from the image\'s index', 'linux/amd64')
    .option('--compression-level <0-9>', 'gzip level of the new layer', parseIntFlag('--compression-level', 0, 9), 6)
    .action(async (container: string, ref: string, flags: CommitFlags) => {
      const config = await configFrom(flags);
      const db = join(config.root, 'metadata.db');
      if (!existsSync(db)) throw new SnapshotNotOursError(container, `no snapshotter state in ${config.root} (no metadata.db; --root names the snapshotter's root)`);
      const metadata = new SnapshotMetadata(db);
      const bar = byteProgress('building layer', !flags.json);
      const tty = !flags.json && process.stderr.isTTY;
      try {
        const args: CommitArgs = { container, ref, address: flags.address, namespace: flags.namespace, snapshotter: flags.snapshotter, platform: flags.platform, plainHttp: false };
        const report = await audited(config, 'container.commit', ref, { container, namespace: flags.namespace, address: flags.address }, () => commitWith(args, {
          flags, config, snapshots: metadata, compressionLevel: flags.compressionLevel,
          onProgress: (phase, done, total) => {
            if (phase === 'background' && total > 0) bar.update(Math.min(done, total), total);
            else if (tty && phase !== 'background') process.stderr.write(`${phase}…\n`);
          },
        }));
        bar.stop();
        if (flags.json) return printJson(report);
        const paused = report.task === 'running' ? `paused ${report.pause_ms.toFixed(2)} ms (copied ${report.pause_copied_files} files, ${formatBytes(report.pause_copied_bytes)}, after ${report.precopy_passes} pre-copy passes of ${formatBytes(report.precopy_bytes)})` : `not paused (task ${report.task})`;
        process.stdout.write(`${report.container}: ${paused}\n`);
        process.stdout.write(`layer ${report.layer.digest.slice(7, 19)}  ${formatBytes(report.layer.size)}  ${report.entries} entries  toc ${report.layer.toc_digest.slice(7, 19)}\n`);
        process.stdout.write(`base layers: ${report.base_layers.map((l) => `${l.digest.slice(7, 19)} (${l.transfer})`).join(', ') || 'none'}\n`);
        process.stdout.write(`${report.ref}: manifest ${report.manifest_digest} (${report.seconds.toFixed(2)} s, ${report.background_seconds.toFixed(2)} s after the thaw)\n`);
      } finally {
        bar.stop();
        metadata.close();
      }
    });
}
