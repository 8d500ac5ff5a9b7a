// What the cgroup v2 users (the sandbox pool, the seamless commit's freezer) share: where the
// unified hierarchy is mounted (read from the mount table: /sys/fs/cgroup, or
// /sys/fs/cgroup/unified in a hybrid layout such as this machine's) and the format of cgroup.events.

import { readFileSync } from 'node:fs';
import { UnsupportedError } from './errors.js';

let root: string | undefined;

/** The cgroup v2 mount point (found once); UnsupportedError where none is mounted. */
export function cgroup2Root(): string {
  if (root) return root;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [before, after] = line.split(' - ');
    if (after?.startsWith('cgroup2 ')) return (root = before!.split(' ')[4]!);
  }
  throw new UnsupportedError('no cgroup v2 hierarchy is mounted (/proc/self/mountinfo has no cgroup2)');
}

export interface CgroupEvents {
  populated: boolean;
  frozen: boolean;
}

export function parseEvents(text: string): CgroupEvents {
  const get = (k: string): boolean => new RegExp(`^${k} 1$`, 'm').test(text);
  return { populated: get('populated'), frozen: get('frozen') };
}
