// What is mounted where: one record per image mount under <root>/mounts/, written once the mount
// is ready and removed when it is gone, so `dedupctl umount` and `status` find the process that
// serves a mount, and a crashed one's leftovers can be cleaned.

import { readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeFileAtomic } from '../atomic-file.js';
import type { MountEntry } from '../system-mounts.js';

export interface MountRecord {
  id: string;
  pid: number;
  /** Where the image's root filesystem is (the overlay mount). */
  dir: string;
  image: string;
  manifestDigest: string;
  upper: string | undefined;
  layers: { digest: string; mountpoint: string; compressedSize: number }[];
  startedAt: string;
}

export function mountsDir(root: string): string {
  return join(root, 'mounts');
}

export async function writeRecord(root: string, r: MountRecord): Promise<void> {
  await mkdir(mountsDir(root), { recursive: true });
  await writeFileAtomic(join(mountsDir(root), `${r.id}.json`), Buffer.from(JSON.stringify(r, null, 2)));
}

export async function removeRecord(root: string, id: string): Promise<void> {
  await rm(join(mountsDir(root), `${id}.json`), { force: true });
}

export async function readRecords(root: string): Promise<MountRecord[]> {
  const names = await readdir(mountsDir(root)).catch(() => [] as string[]);
  const out: MountRecord[] = [];
  for (const n of names.filter((x) => x.endsWith('.json')).sort()) {
    try {
      out.push(JSON.parse(await readFile(join(mountsDir(root), n), 'utf8')) as MountRecord);
    } catch {
      /* a record being replaced or removed right now */
    }
  }
  return out;
}

export async function findByDir(root: string, dir: string): Promise<MountRecord | undefined> {
  const want = resolve(dir);
  return (await readRecords(root)).find((r) => r.dir === want);
}

/** <root>/mounts/<id>/layers/<i>: where an image mount's layers are (image-mount.ts). */
const LAYER_MOUNTPOINT = /^(.+)\/mounts\/[^/]+\/layers\/\d+$/;

/**
 * The state roots that image mounts in the mount table belong to: their layers' FUSE mountpoints
 * and their overlays' lower directories are under <root>/mounts/. Lets `umount DIR` work without
 * the --root the mount was made with.
 */
export function rootsInMountTable(table: MountEntry[]): string[] {
  const roots = new Set<string>();
  const add = (path: string): void => {
    const m = LAYER_MOUNTPOINT.exec(path);
    if (m) roots.add(m[1]!);
  };
  for (const e of table) {
    add(e.target);
    const lower = e.fstype === 'overlay' ? /(?:^|,)lowerdir=([^,]*)/.exec(e.options)?.[1] : undefined;
    for (const l of lower?.split(':') ?? []) add(l);
  }
  return [...roots];
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie has exited: one whose parent left is never reaped where PID 1 does not reap.
  try {
    return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false; // reaped meanwhile
  }
}

/** Waits up to `ms` for process `pid` to be gone; false if it still runs. */
export async function waitForExit(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (isAlive(pid)) {
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
  return true;
}
