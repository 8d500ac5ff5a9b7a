// Publishing a file whole or not at all: write a temp file, fsync it, rename it into place.
// A crash leaves at most a temp file (named so its owner's gc can find it), never a torn file.

import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';

/** Writes `data` to `path` atomically; `tmp` defaults to a sibling "<path>.tmp-<random>". */
export async function writeFileAtomic(path: string, data: Uint8Array, tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`): Promise<void> {
  try {
    const fh = await open(tmp, 'wx');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
