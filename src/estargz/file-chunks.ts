// A regular file's data cut into an eStargz TOC's chunks, as our converter and the gzip index both
// describe it: each chunk's place in the file, its size and chunkDigest, a `chunk` entry after the
// file's own for each chunk past the first, and the file's digest. Pure: the bytes come from the
// tar entry.

import { createHash } from 'node:crypto';
import { hashDigest } from '../digest.js';
import type { TarEntry } from './tar-reader.js';
import type { TocEntryJson } from './toc.js';

export interface FileChunkHooks {
  /** Before a chunk's bytes are read (the converter starts a gzip member there). */
  begin?(): Promise<void>;
  /** Each piece of the file's data, in order. */
  piece?(bytes: Buffer): void;
  /** A chunk's bytes read: its entry and where in the file it begins (before its chunk fields are set). */
  read?(entry: TocEntryJson, at: number): void;
}

/** Reads `entry`'s data in chunks of `chunkSize`, filling in `file` (its TOC entry) and pushing each further chunk's entry. */
export async function chunkFile(entry: TarEntry, file: TocEntryJson, chunkSize: number, push: (chunk: TocEntryJson) => void, hooks: FileChunkHooks = {}): Promise<void> {
  const size = entry.header.size;
  const fileHash = createHash('sha256');
  let current = file;
  for (let written = 0; written < size;) {
    await hooks.begin?.();
    const n = Math.min(chunkSize, size - written);
    const chunkHash = createHash('sha256');
    for (let got = 0; got < n;) {
      const piece = await entry.read(n - got); // a tar cut short throws (TarFormatError)
      chunkHash.update(piece);
      fileHash.update(piece);
      hooks.piece?.(piece);
      got += piece.length;
    }
    hooks.read?.(current, written);
    if (written > 0) current.chunkOffset = written;
    if (n === chunkSize && size > n) current.chunkSize = n;
    current.chunkDigest = hashDigest(chunkHash);
    written += n;
    if (written < size) {
      current = { name: file.name, type: 'chunk' };
      push(current);
    }
  }
  file.digest = hashDigest(fileHash);
}
