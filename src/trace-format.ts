// The access trace's format (docs/trace.md): the first read of every chunk of a mounted layer, kept
// under traces/. Below fs/, which records traces, and prefetch/, which replays them.

import { join } from 'node:path';

export const TRACE_VERSION = 1;

export interface TraceAccess {
  path: string;
  /** Offset of the chunk in the file, and its length. */
  offset: number;
  length: number;
  chunkDigest: string;
  /** Milliseconds since the layer was mounted. */
  ms: number;
}

export interface TraceFile {
  version: typeof TRACE_VERSION;
  image: string;
  manifestDigest: string;
  layer: string;
  recordedAt: string;
  durationMs: number;
  accesses: TraceAccess[];
}

/** Where the trace of a layer of an image lives: <trace_dir>/<manifest hex>/<layer hex>.json. */
export function tracePath(traceDir: string, manifestDigest: string, layer: string): string {
  return join(traceDir, manifestDigest.replace(/^sha256:/, ''), `${layer.replace(/^sha256:/, '')}.json`);
}
