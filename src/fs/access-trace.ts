// The access trace: the first read of every chunk of a mounted layer (file, offset, length, time
// since mount), written under traces/ when the mount goes away, for prefetch to replay on the
// next start. Format: src/trace-format.ts, docs/trace.md.

import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import type { TocChunk, TocNode } from '../estargz/toc.js';
import { tracePath, TRACE_VERSION, type TraceAccess, type TraceFile } from '../trace-format.js';

export class AccessTrace {
  private readonly started = Date.now();
  private readonly accesses: TraceAccess[] = [];

  constructor(readonly image: string, readonly manifestDigest: string, readonly layer: string) {}

  record(file: TocNode, chunk: TocChunk): void {
    this.accesses.push({ path: file.path, offset: chunk.chunkOffset, length: chunk.chunkSize, chunkDigest: chunk.chunkDigest ?? '', ms: Date.now() - this.started });
  }

  get size(): number {
    return this.accesses.length;
  }

  /** Writes the trace (atomically); returns its path, or undefined when nothing was read. */
  async write(traceDir: string): Promise<string | undefined> {
    if (this.accesses.length === 0) return undefined;
    const path = tracePath(traceDir, this.manifestDigest, this.layer);
    await mkdir(join(path, '..'), { recursive: true });
    const doc: TraceFile = {
      version: TRACE_VERSION, image: this.image, manifestDigest: this.manifestDigest, layer: this.layer,
      recordedAt: new Date().toISOString(), durationMs: Date.now() - this.started, accesses: this.accesses,
    };
    await writeFileAtomic(path, Buffer.from(JSON.stringify(doc, null, 1)));
    return path;
  }
}
