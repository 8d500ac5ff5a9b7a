// Disk usage of a directory tree as containerd's fs.DiskUsage counts it: allocated bytes
// (st_blocks * 512) and inodes, each hard-linked inode once. Asynchronous: the daemon serves FUSE.

import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

export async function diskUsage(root: string): Promise<{ size: number; inodes: number }> {
  const seen = new Set<string>();
  let size = 0;
  const walk = async (path: string): Promise<void> => {
    const st = await lstat(path, { bigint: true });
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) for (const name of await readdir(path)) await walk(join(path, name));
  };
  try {
    await walk(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  return { size, inodes: seen.size };
}
