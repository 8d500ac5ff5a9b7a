// dedupctl fused status | upgrade, and dedupctl cleanup: the layer server (dedup-fused) that owns
// the snapshotter's lazy mounts. `upgrade` replaces its process without dropping a mount;
// `cleanup` is the full teardown a plain stop never does.

import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import type { Config } from '../config/config.js';
import { MountError } from '../errors.js';
import { FusedClient, fusedSocket } from '../fused/client.js';
import { waitForExit } from '../mount/mount-records.js';
import { isMountpoint, unmountFuse } from '../system-mounts.js';
import { audited, configFrom, formatBytes, printJson, withCommonFlags, type CommonFlags } from '../startup/common.js';

const EXIT_WAIT_MS = 15_000;

async function withClient<T>(flags: CommonFlags, fn: (c: FusedClient, config: Config) => Promise<T>): Promise<T> {
  const config = await configFrom(flags);
  const client = new FusedClient(fusedSocket(config.root));
  return fn(client, config).finally(() => client.close());
}

async function waitExit(pid: number): Promise<void> {
  if (!(await waitForExit(pid, EXIT_WAIT_MS))) throw new MountError(`dedup-fused ${pid} still runs ${EXIT_WAIT_MS / 1000} s after it was asked to stop`);
}

export function fusedCommand(): Command {
  const fused = new Command('fused').description('the layer server that owns the snapshotter\'s lazy FUSE mounts');
  fused.addCommand(withCommonFlags(new Command('status'))
    .description('its process and the layers it serves')
    .action((flags: CommonFlags) => withClient(flags, async (c) => {
      const [health, mounts] = [await c.health(0), await c.list()];
      if (flags.json) return printJson({ ...health, mounts });
      process.stdout.write(`dedup-fused ${health.version}, pid ${health.pid}, ${mounts.length} layers mounted\n`);
      for (const m of mounts) {
        process.stdout.write(`${m.mountpoint}  ${m.layer.digest.slice(0, 19)}  ${m.image}  ${formatBytes(m.missingBytes)} not fetched, ${m.reads} reads${m.readErrors ? `, ${m.readErrors} failed` : ''}, ${m.mode}\n`);
      }
    })));
  fused.addCommand(withCommonFlags(new Command('upgrade'))
    .description('replace the process with the installed dedup-fused; every mount stays and is served throughout')
    .action((flags: CommonFlags) => withClient(flags, async (c, config) => {
      const before = await c.health(0);
      const { pid } = await audited(config, 'fused.upgrade', `pid ${before.pid}`, { mounts: before.mounts }, () => c.upgrade());
      await waitExit(before.pid);
      const after = await c.health();
      if (after.pid !== pid) throw new MountError(`dedup-fused answers from pid ${after.pid}, not the successor ${pid}`);
      if (flags.json) return printJson({ from: before.pid, to: pid, version: after.version, mounts: after.mounts });
      process.stdout.write(`dedup-fused replaced: pid ${before.pid} -> ${pid} (${after.version}), ${after.mounts} layers still mounted\n`);
    })));
  return fused;
}

export function cleanupCommand(): Command {
  return withCommonFlags(new Command('cleanup'))
    .description('full teardown: unmount every lazy layer and stop the layer server (stop containers and dedup-snapshotter first)')
    .action((flags: CommonFlags) => withClient(flags, async (c, config) => {
      const root = config.root;
      await audited(config, 'fused.cleanup', root, {}, async () => {
        const health = await c.health(0).catch(() => undefined);
        let unmounted = 0;
        if (health) {
          unmounted = (await c.shutdown()).unmounted;
          await waitExit(health.pid);
        }
        // Mounts a killed layer server left (their reads fail with ENOTCONN).
        const snapshots = join(root, 'snapshots');
        for (const name of await readdir(snapshots).catch(() => [] as string[])) {
          const fs = join(snapshots, name, 'fs');
          if (!(await isMountpoint(fs))) continue;
          await unmountFuse(fs);
          await rm(`${fs}.lazy`, { recursive: true, force: true }); // mount mode erofs: its image and chunk files
          unmounted++;
        }
        const summary = { stopped: health?.pid ?? null, unmounted };
        if (flags.json) printJson(summary);
        else process.stdout.write(`${health ? `dedup-fused ${health.pid} stopped` : 'no dedup-fused was running'}; ${unmounted} layers unmounted\n`);
        return summary;
      });
    }));
}
