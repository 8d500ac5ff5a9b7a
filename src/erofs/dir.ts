// Directory data: erofs_dirent blocks. Each block holds its dirents (12 bytes each) and then their
// names, unterminated; the first dirent's nameoff says how many there are. Names are sorted by
// bytes across all blocks, "." and ".." among them, because lookups binary-search blocks by their
// first name. A directory's size counts every block whole but the last. Pure.

import { BLOCK_SIZE, DIRENT_SIZE, writeDirent } from './format.js';

export interface Dirent<T> {
  name: Buffer;
  fileType: number;
  inode: T;
}

/** Splits sorted dirents into blocks, as many per block as fit. */
export function packDirents<T>(sorted: readonly Dirent<T>[]): Dirent<T>[][] {
  const blocks: Dirent<T>[][] = [];
  let current: Dirent<T>[] = [];
  let used = 0;
  for (const d of sorted) {
    const need = DIRENT_SIZE + d.name.length;
    if (used + need > BLOCK_SIZE) {
      blocks.push(current);
      current = [];
      used = 0;
    }
    current.push(d);
    used += need;
  }
  blocks.push(current);
  return blocks;
}

export function direntBlockSize(block: readonly Dirent<unknown>[]): number {
  return block.reduce((s, d) => s + DIRENT_SIZE + d.name.length, 0);
}

/** One block's bytes, exactly as long as its content (the caller pads whole blocks). */
export function encodeDirentBlock<T>(block: readonly Dirent<T>[], nidOf: (inode: T) => number): Buffer {
  const out = Buffer.alloc(direntBlockSize(block));
  let nameoff = DIRENT_SIZE * block.length;
  block.forEach((d, i) => {
    writeDirent(out, i * DIRENT_SIZE, nidOf(d.inode), nameoff, d.fileType);
    d.name.copy(out, nameoff);
    nameoff += d.name.length;
  });
  return out;
}
