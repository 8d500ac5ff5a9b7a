// Reading the pieces of an eStargz blob once they are in memory: the TOC member at the end and
// the gzip member that holds a chunk. Pure: bytes in, values out. Fetching the bytes is the
// fetcher's job.

import { gunzipSync } from 'node:zlib';
import { MalformedEstargzError } from '../errors.js';
import { BLOCK } from './tar.js';
import { sha256Digest } from '../digest.js';
import { parseToc } from './toc-parser.js';
import { TOC_TAR_NAME, type Toc, type TocChunk } from './toc.js';

/** A TOC larger than this (uncompressed) is refused rather than inflated. */
export const MAX_TOC_BYTES = 256 * 1024 * 1024;

export interface TocWithDigest {
  toc: Toc;
  /** sha256 of the TOC JSON: what the toc.digest annotation names. */
  digest: string;
  json: Buffer;
}

function inflate(member: Buffer, where: string, maxOutputLength: number): Buffer {
  try {
    return gunzipSync(member, { maxOutputLength });
  } catch (err) {
    throw new MalformedEstargzError(where, `cannot be decompressed (${(err as Error).message})`);
  }
}

function tarField(block: Buffer, start: number, len: number): string {
  const raw = block.subarray(start, start + len);
  const nul = raw.indexOf(0);
  return raw.subarray(0, nul < 0 ? len : nul).toString('utf8');
}

/** Extracts the TOC JSON from the TOC's gzip member (a one-entry tar named stargz.index.json). */
export function extractTocJson(tocMember: Buffer): Buffer {
  const tar = inflate(tocMember, 'TOC', MAX_TOC_BYTES + 4 * BLOCK);
  if (tar.length < BLOCK) throw new MalformedEstargzError('TOC', `TOC member holds ${tar.length} bytes, less than a tar header`);
  const header = tar.subarray(0, BLOCK);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
  const recorded = Number.parseInt(tarField(header, 148, 8).trim() || 'x', 8);
  if (recorded !== sum) throw new MalformedEstargzError('TOC', 'tar header checksum does not match');
  const name = tarField(header, 0, 100);
  if (name !== TOC_TAR_NAME) throw new MalformedEstargzError('TOC', `first tar entry is "${name}", expected "${TOC_TAR_NAME}"`);
  const size = Number.parseInt(tarField(header, 124, 12).trim() || 'x', 8);
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_TOC_BYTES) {
    throw new MalformedEstargzError('TOC', `tar entry size ${tarField(header, 124, 12)} is not valid`);
  }
  if (tar.length < BLOCK + size) throw new MalformedEstargzError('TOC', `truncated: ${tar.length - BLOCK} of ${size} bytes`);
  return tar.subarray(BLOCK, BLOCK + size);
}

export function readToc(tocMember: Buffer, tocOffset: number): TocWithDigest {
  const json = extractTocJson(tocMember);
  return { toc: parseToc(json, { tocOffset }), digest: sha256Digest(json), json };
}

/**
 * Inflates the member(s) holding one chunk and returns the chunk's bytes. `member` must start at
 * chunk.offset. The caller verifies the digest (verifyChunk) before anybody sees the bytes.
 */
export function inflateChunk(member: Buffer, chunk: Pick<TocChunk, 'innerOffset' | 'chunkSize'>, where: string): Buffer {
  const out = inflate(member, where, chunk.innerOffset + chunk.chunkSize + 64 * 1024 * 1024);
  if (out.length < chunk.innerOffset + chunk.chunkSize) {
    throw new MalformedEstargzError(where, `member inflates to ${out.length} bytes, chunk needs ${chunk.innerOffset + chunk.chunkSize}`);
  }
  return out.subarray(chunk.innerOffset, chunk.innerOffset + chunk.chunkSize);
}
