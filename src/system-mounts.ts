// Kernel mounts done through mount(8)/umount(8)/fusermount, always asynchronously: the process
// that calls them also serves the FUSE layers they touch, and a synchronous call would deadlock.
// The one exception is an EROFS image over blob files (mountErofs): the kernel reads only those
// files, never a FUSE mount of ours, and mount(8) cannot do it (it wants block devices).

import { execFile } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { MountError } from './errors.js';
import { isSysError, native } from './native.js';

function exec(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 120_000 }, (err, _stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stderr: stderr.trim() || (err?.message ?? '') });
    });
  });
}

export async function mountOverlay(dir: string, lowers: string[], upper?: { upper: string; work: string }): Promise<void> {
  const opts = [`lowerdir=${lowers.join(':')}`];
  if (upper) opts.push(`upperdir=${upper.upper}`, `workdir=${upper.work}`);
  const r = await exec('mount', ['-t', 'overlay', 'overlay', '-o', opts.join(','), dir]);
  if (r.code !== 0) throw new MountError(`cannot mount overlay at ${dir}: ${r.stderr}`);
}

/** glibc's major/minor of a dev_t. */
export function devParts(dev: bigint): { devMajor: number; devMinor: number } {
  return {
    devMajor: Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)),
    devMinor: Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn)),
  };
}

/** read_ahead_kb of the disk holding `path` (a partition's is its disk's), or undefined where it is on none (tmpfs, overlay). */
function diskReadaheadKb(path: string): string | undefined {
  const { devMajor: major, devMinor: minor } = devParts(statSync(path, { bigint: true }).dev);
  for (const at of ['bdi', '../bdi']) {
    try {
      return readFileSync(`/sys/dev/block/${major}:${minor}/${at}/read_ahead_kb`, 'utf8').trim();
    } catch {
      /* not a disk, or a partition: its disk's */
    }
  }
  return undefined;
}

/**
 * Gives the EROFS mount at `dir` the readahead of the disk its blobs are on. A file-backed mount
 * gets a backing device of its own with the kernel's default of 128 KiB, where ext4 on this disk
 * reads ahead 8 MiB: a cold python start through EROFS issued 384 block requests against 263
 * through overlayfs on ext4 (mapped libraries faulted in 128 KiB at a time); now 115. The packs
 * are read buffered (not `directio`): their own readahead then brings in the files next to the
 * one read (a directory's files lie one after another in the pack), which the next reads find
 * cached; with direct I/O the start took 226 requests, and reading /usr/lib/python3.11 whole 990
 * against 220 (ext4: 1,143). The price is that those bytes are cached twice, in the pack's page
 * cache and the EROFS file's. Before Linux 6.10 the mount's device cannot be named (it keeps 128 KiB).
 */
function matchReadahead(dir: string, blob: string): void {
  const sysfs = sysfsDir(dir);
  const kb = diskReadaheadKb(blob);
  if (!sysfs?.startsWith('/sys/fs/erofs/') || kb === undefined) return;
  writeFileSync(`/sys/class/bdi/${sysfs.slice('/sys/fs/erofs/'.length)}/read_ahead_kb`, kb);
}

/**
 * Where the filesystem mounted at `dir` shows under /sys/fs (`/sys/fs/erofs/erofs-12`); undefined
 * before Linux 6.10. A file-backed EROFS superblock's name is not given again while the machine
 * runs, and it stays there while the superblock lives: after a lazy unmount, until its last user
 * is gone.
 */
export function sysfsDir(dir: string): string | undefined {
  const name = native().sysfsName(dir);
  return isSysError(name) ? undefined : `/sys/fs/${name}`;
}

/**
 * Mounts the file-backed EROFS `image` read-only at `dir`, with `devices` (the blob files its
 * chunk indexes point into, in device-table order) each passed on its own (fsconfig), so their
 * number is not bounded by mount(2)'s one page of options. `diskReadahead`: with the readahead of
 * the disk the blobs are on (blobs whose bytes are all there, as packs; a lazily filled mount
 * keeps the kernel's 128 KiB, so a read does not have chunks far ahead of it fetched).
 */
export function mountErofs(image: string, dir: string, devices: readonly string[], opts: { diskReadahead?: boolean } = {}): void {
  const r = native().mountErofs(image, dir, [...devices]);
  if (isSysError(r)) throw new MountError(`cannot mount EROFS image ${image} at ${dir}: ${r.call}: ${r.message}`);
  if (!opts.diskReadahead) return;
  try {
    matchReadahead(dir, devices[0] ?? image);
  } catch {
    /* best effort: with the default readahead the mount serves all the same, only slower when cold */
  }
}

/** A containerd-style mount (type, source, options) at `dir`: what a snapshot's Mounts answer says to do. */
export async function mountAt(dir: string, m: { type: string; source: string; options: string[] }): Promise<void> {
  const bind = m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind');
  const args = bind ? ['--rbind', m.source, dir] : ['-t', m.type, m.source, '-o', m.options.join(','), dir];
  const r = await exec('mount', args);
  if (r.code !== 0) throw new MountError(`cannot mount ${m.type} ${m.source} at ${dir}: ${r.stderr}`);
}

/** Unmounts `dir`; a busy mount is detached lazily rather than left behind. */
export async function unmount(dir: string): Promise<void> {
  if (!(await isMountpoint(dir))) return;
  const r = await exec('umount', [dir]);
  if (r.code === 0) return;
  const lazy = await exec('umount', ['-l', dir]);
  if (lazy.code !== 0) throw new MountError(`cannot unmount ${dir}: ${lazy.stderr}`);
}

/** Detaches a FUSE mount whose server is gone (ENOTCONN): fusermount -uz. */
export async function unmountFuse(dir: string): Promise<void> {
  if (!(await isMountpoint(dir))) return;
  const r = await exec('fusermount', ['-uz', dir]);
  if (r.code !== 0) await unmount(dir);
}

export interface MountEntry {
  source: string;
  target: string;
  fstype: string;
  options: string;
}

/** The mount table as this process sees it (/proc/self/mounts, octal escapes decoded). */
export async function mountTable(): Promise<MountEntry[]> {
  const unescape = (f: string): string => f.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return (await readFile('/proc/self/mounts', 'utf8')).split('\n').filter(Boolean).map((l) => {
    const [source = '', target = '', fstype = '', options = ''] = l.split(' ');
    return { source: unescape(source), target: unescape(target), fstype, options: unescape(options) };
  });
}

export async function isMountpoint(dir: string): Promise<boolean> {
  return (await mountTable()).some((m) => m.target === dir);
}
