// dedupctl mount | umount | status: an image's root filesystem at a directory, lazily.
// `mount` starts a mount process (the same code the snapshotter daemon will host) in the
// background and returns once the mount is ready; --foreground keeps it attached.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { prefetchOptions, type Config } from '../config/config.js';
import { MountError, NotFoundError } from '../errors.js';
import { ChunkCache } from '../fetch/chunk-cache.js';
import { parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { kernelFsFor } from '../kernel/lazy-erofs.js';
import { ImageMount } from '../mount/image-mount.js';
import { findByDir, isAlive, mountsDir, readRecords, removeRecord, rootsInMountTable, waitForExit, type MountRecord } from '../mount/mount-records.js';
import { mountTable, unmount, unmountFuse } from '../system-mounts.js';
import { ChunkStore } from '../store/chunk-store.js';
import { audited, configFrom, formatBytes, parseSize, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { daemonLogger } from '../startup/log.js';

interface MountFlags extends CommonFlags {
  upper?: string;
  platform: string;
  foreground?: boolean;
  cacheSize: number;
  mountId?: string;
  background?: boolean;
  traceDir?: string;
}

/** The mount process: mounts, reports ready, serves until SIGINT/SIGTERM, then unmounts. */
async function serveMount(ref: string, dir: string, flags: MountFlags): Promise<void> {
  const config = await configFrom(flags);
  const log = daemonLogger('dedupctl-mount', config);
  const client = await registryClientFrom(flags, config, log);
  const store = await ChunkStore.open(config.root);
  const pool = new CodecPool();
  let mount: ImageMount | undefined;
  const onReadError = (layer: string, path: string, err: unknown): void => log.warn({ layer, path, err: (err as Error).message, code: (err as { code?: string }).code }, 'read failed: EIO');
  const kernelFs = await kernelFsFor(config, log, store, pool, onReadError);
  const stop = new Promise<string>((res) => {
    process.once('SIGTERM', () => res('SIGTERM'));
    process.once('SIGINT', () => res('SIGINT'));
  });
  try {
    const started = Date.now();
    mount = await ImageMount.mount({
      root: config.root, traceDir: flags.traceDir ?? config.prefetch.trace_dir, source: openImage(ref, client), platform: parsePlatform(flags.platform),
      dir, upper: flags.upper, store, pool, cache: new ChunkCache(flags.cacheSize), id: flags.mountId, log,
      prefetch: { ...prefetchOptions(config), background: flags.background ?? config.prefetch.background },
      lazy: { prefetchWorkers: config.prefetch.workers },
      onReadError,
      kernelFs,
    });
    const ready = { ...mount.record, mountMs: Date.now() - started };
    log.info(ready, 'mounted');
    if (process.send) {
      process.send({ ready });
      process.disconnect();
    } else if (flags.json) printJson(ready);
    else process.stdout.write(`${ready.image} mounted at ${ready.dir} (${ready.layers.length} layers, ${ready.mountMs} ms); Ctrl-C unmounts\n`);
    const signal = await stop;
    log.info({ signal }, 'unmounting'); // each layer logs its traffic as it goes
    const traces = await mount.unmount();
    mount = undefined;
    log.info({ traces }, 'unmounted');
  } catch (err) {
    if (process.send) process.send({ error: { message: (err as Error).message, code: (err as { code?: string }).code } });
    throw err;
  } finally {
    if (mount) await mount.unmount().catch((e: unknown) => log.error({ err: (e as Error).message }, 'unmount failed'));
    await pool.close();
    await store.close();
    await client.close();
  }
}

/** Starts the mount process in the background and waits until it is mounted (or failed). */
async function startMount(ref: string, dir: string, flags: MountFlags): Promise<void> {
  const config = await configFrom(flags);
  const id = randomBytes(6).toString('hex');
  mkdirSync(mountsDir(config.root), { recursive: true });
  const logPath = join(mountsDir(config.root), `${id}.log`);
  const fd = openSync(logPath, 'a');
  const args = process.argv.slice(2).filter((a) => a !== '--json');
  const child = spawn(process.execPath, [process.argv[1]!, ...args, '--foreground', '--mount-id', id],
    { detached: true, stdio: ['ignore', fd, fd, 'ipc'] });
  closeSync(fd);
  const outcome = await new Promise<{ ready?: MountRecord & { mountMs: number }; error?: { message: string; code?: string } }>((res) => {
    child.once('message', (m) => res(m as never));
    child.once('exit', (code) => res({ error: { message: `mount process exited with code ${code}` } }));
  });
  if (outcome.error) {
    const tail = (await readFile(logPath, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join('\n');
    await rm(logPath, { force: true });
    throw new MountError(`cannot mount ${ref} at ${resolve(dir)}: ${outcome.error.message}${outcome.error.code ? ` [${outcome.error.code}]` : ''}${tail && !tail.includes(outcome.error.message) ? `\n${tail}` : ''}`);
  }
  child.unref();
  child.disconnect?.();
  const r = outcome.ready!;
  if (flags.json) printJson({ ...r, log: logPath });
  else process.stdout.write(`${r.image} mounted at ${r.dir} in ${r.mountMs} ms (${r.layers.length} lazy layers, pid ${r.pid}, log ${logPath})\n`);
}

/**
 * The mount at `dir` and its state root: the given root, else (no --root) the one whose records
 * have it among the roots the mount table shows image mounts of.
 */
async function findMount(config: Config, explicitRoot: boolean, dir: string): Promise<{ root: string; rec: MountRecord }> {
  const roots = explicitRoot ? [config.root] : [config.root, ...rootsInMountTable(await mountTable())];
  for (const root of new Set(roots)) {
    const rec = await findByDir(root, dir);
    if (rec) return { root, rec };
  }
  throw new NotFoundError(`a dedup mount at ${resolve(dir)}`, `state roots looked in: ${[...new Set(roots)].join(', ')}`);
}

async function stopMount(root: string, rec: MountRecord): Promise<MountRecord> {
  if (isAlive(rec.pid)) {
    process.kill(rec.pid, 'SIGTERM');
    if (!(await waitForExit(rec.pid, 60_000))) throw new MountError(`mount process ${rec.pid} for ${rec.dir} did not exit within 60 s`);
  }
  // A process that died without cleaning up leaves mounts and its record: clean them here.
  await unmount(rec.dir);
  for (const l of rec.layers) await unmountFuse(l.mountpoint);
  await rm(join(mountsDir(root), rec.id), { recursive: true, force: true });
  await removeRecord(root, rec.id);
  await rm(join(mountsDir(root), `${rec.id}.log`), { force: true });
  return rec;
}

export function mountCommands(): Command[] {
  const mount = withCommonFlags(new Command('mount'))
    .description('mount an eStargz image lazily at DIR (overlayfs of one FUSE mount per layer)')
    .argument('<image>', 'registry reference or oci:DIR[:TAG]')
    .argument('<dir>', 'where the root filesystem appears')
    .option('--upper <dir>', 'make the mount writable, changes going to this directory')
    .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
    .option('--cache-size <bytes>', 'in-memory cache of hot chunks', parseSize('--cache-size'), 256 * 1024 * 1024)
    .option('--trace-dir <dir>', 'access traces to record and replay (default: prefetch.trace_dir)')
    .option('--background', 'after the start-up set, fetch the rest of the image at low priority (default: prefetch.background)')
    .option('--foreground', 'serve the mount in this process until SIGINT/SIGTERM')
    .option('--mount-id <id>', 'internal: the id chosen by the starting process')
    .action(async (ref: string, dir: string, flags: MountFlags) => {
      if (flags.foreground) return serveMount(ref, dir, flags);
      const config = await configFrom(flags);
      await audited(config, 'image.mount', ref, { dir: resolve(dir) }, () => startMount(ref, dir, flags));
    });
  mount.options.find((o) => o.long === '--mount-id')!.hideHelp();

  const umount = withCommonFlags(new Command('umount'))
    .description('unmount an image mounted with dedupctl mount: overlay, layers, mount process')
    .argument('<dir>', 'the directory given to mount')
    .action(async (dir: string, flags: CommonFlags) => {
      const found = await findMount(await configFrom(flags), flags.root !== undefined, dir);
      const config = await configFrom({ ...flags, root: found.root });
      const rec = await audited(config, 'image.umount', resolve(dir), {}, () => stopMount(found.root, found.rec));
      if (flags.json) printJson({ unmounted: rec.dir, image: rec.image });
      else process.stdout.write(`unmounted ${rec.dir}\n`);
    });

  const status = withCommonFlags(new Command('status'))
    .description('mounted images and, per layer, how much of it is fetched')
    .action(async (flags: CommonFlags) => {
      const config = await configFrom(flags);
      const store = await ChunkStore.open(config.root);
      try {
        const mounts = (await readRecords(config.root)).map((r) => ({
          dir: r.dir, image: r.image, pid: r.pid, running: isAlive(r.pid), upper: r.upper,
          layers: r.layers.map((l) => {
            const p = store.layerProgress(l.digest);
            return { digest: l.digest, size: p.bytes, fetched: p.presentBytes, percent: p.bytes ? (100 * p.presentBytes) / p.bytes : 100, complete: p.present === p.chunks };
          }),
        }));
        if (flags.json) return printJson(mounts);
        for (const m of mounts) {
          process.stdout.write(`${m.dir}  ${m.image}  pid ${m.pid}${m.running ? '' : ' (not running)'}\n`);
          for (const l of m.layers) {
            process.stdout.write(`  ${l.digest.slice(0, 19)}  ${formatBytes(l.size).padStart(10)}  fetched ${formatBytes(l.fetched).padStart(10)}  ${l.percent.toFixed(1).padStart(5)}%  ${l.complete ? 'complete' : 'lazy'}\n`);
          }
        }
        if (mounts.length === 0) process.stdout.write('no mounts\n');
      } finally {
        await store.close();
      }
    });
  return [mount, umount, status];
}
