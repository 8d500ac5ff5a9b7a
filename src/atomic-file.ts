// Publishing a file whole or not at all: write a temp file, fsync it, rename it into place.
// A crash leaves at most a temp file (named so its owner's gc can find it), never a torn file.

import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';

/**
 * Writes `data` to `path` atomically; `tmp` defaults to a sibling "<path>.tmp-<random>". With
 * `sync: false` the data is not flushed before the rename: for files whose content is checked on
 * every read, where a crash may leave a bad file that the check then finds, never a torn one seen
 * as good.
 */
export async function writeFileAtomic(path: string, data: Uint8Array, tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`,
  opts: { sync?: boolean } = {}): Promise<void> {
  try {
    const fh = await open(tmp, 'wx');
    try {
      await fh.writeFile(data);
      if (opts.sync !== false) await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
