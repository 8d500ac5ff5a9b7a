// The captured writable layer as an OCI layer tar: overlayfs's whiteouts (character devices 0/0)
// become ".wh.NAME" entries and its opaque directories a ".wh..wh..opq" entry after the
// directory, as the OCI image spec writes deletions; hard links (one inode, several paths)
// become link entries to the first path. File data comes from the staged copies, never from the
// live upperdir, so the container may change it meanwhile.

import { createReadStream } from 'node:fs';
import { encodeTarHeader, TAR_END, tarPadding, type TarHeader } from '../estargz/tar.js';
import { MalformedLayerError } from '../errors.js';
import type { CapturedNode } from './upper-capture.js';

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';

/** Linux's device number split (the kernel's new_decode_dev). */
function devNumbers(rdev: bigint): { devmajor: number; devminor: number } {
  return {
    devmajor: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)),
    devminor: Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)),
  };
}

function marker(name: string, mtime: number): Buffer {
  return encodeTarHeader({ name, type: 'file', mode: 0, uid: 0, gid: 0, size: 0, mtime });
}

/** The layer tar of `nodes` (parents before children), as a stream of buffers. */
export async function* layerTar(nodes: CapturedNode[], where: string): AsyncGenerator<Buffer> {
  const firstPath = new Map<bigint, string>();
  for (const n of nodes) {
    const cut = n.path.lastIndexOf('/');
    const dir = cut < 0 ? '' : n.path.slice(0, cut + 1);
    if (n.type === 'whiteout') {
      yield marker(`${dir}${WHITEOUT_PREFIX}${n.path.slice(cut + 1)}`, n.mtime);
      continue;
    }
    const h: TarHeader = { name: n.path, type: n.type, mode: n.mode, uid: n.uid, gid: n.gid, size: 0, mtime: n.mtime, xattrs: n.xattrs };
    if (n.type === 'directory') {
      yield encodeTarHeader({ ...h, name: `${n.path}/` });
      if (n.opaque) yield marker(`${n.path}/${OPAQUE_WHITEOUT}`, n.mtime);
      continue;
    }
    if (n.type === 'symlink') {
      yield encodeTarHeader({ ...h, linkname: n.target });
      continue;
    }
    if (n.type === 'character-device' || n.type === 'block-device') {
      yield encodeTarHeader({ ...h, ...devNumbers(n.rdev) });
      continue;
    }
    if (n.type === 'fifo') {
      yield encodeTarHeader(h);
      continue;
    }
    const first = firstPath.get(n.ino);
    if (first !== undefined) {
      yield encodeTarHeader({ ...h, type: 'link', linkname: first });
      continue;
    }
    if (n.nlink > 1) firstPath.set(n.ino, n.path);
    yield encodeTarHeader({ ...h, size: n.size });
    let got = 0;
    for await (const piece of createReadStream(n.data!, { highWaterMark: 1024 * 1024 })) {
      got += (piece as Buffer).length;
      if (got > n.size) break;
      yield piece as Buffer;
    }
    // The staged copy was taken with the file in this very state: a size that differs is a bug.
    if (got !== n.size) throw new MalformedLayerError(where, `staged copy of ${n.path} has ${got} bytes, the file had ${n.size} at the freeze`);
    yield Buffer.alloc(tarPadding(n.size));
  }
  yield TAR_END;
}
