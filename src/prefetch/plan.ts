// What to prefetch for a layer, in order: the chunks its access trace lists (recorded on an
// earlier run, or imported), else the files before its prefetch landmark; then, if asked, the
// rest of the layer in the background.

import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { MalformedTraceError } from '../errors.js';
import type { Toc, TocNode } from '../estargz/toc.js';
import { everyChunk } from '../fetch/layer-chunks.js';
import type { ChunkRef } from '../fetch/lazy-layer.js';
import { TRACE_VERSION, type TraceFile } from '../trace-format.js';
import { parseValidatedJson } from '../validated-json.js';
import { digestSchema as digest } from '../digest.js';

const traceSchema = z.object({
  version: z.literal(TRACE_VERSION),
  image: z.string(),
  manifestDigest: digest,
  layer: digest,
  recordedAt: z.string(),
  durationMs: z.number().nonnegative(),
  accesses: z.array(z.object({
    path: z.string().min(1),
    offset: z.number().int().nonnegative(),
    length: z.number().int().positive(),
    chunkDigest: z.string(),
    ms: z.number().nonnegative(),
  }).strict()).max(10_000_000),
}).strict();

/** Reads and validates a trace file; the error names the file and what is wrong with it. */
export async function readTrace(path: string): Promise<TraceFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new MalformedTraceError(path, `cannot read (${(err as Error).message})`);
  }
  return parseTrace(text, path);
}

export function parseTrace(text: string, name: string): TraceFile {
  return parseValidatedJson(traceSchema, text, (why) => new MalformedTraceError(name, why)) as TraceFile;
}

function chunkAt(node: TocNode, offset: number): number {
  let lo = 0;
  let hi = node.chunks.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const c = node.chunks[mid]!.chunkOffset;
    if (c === offset) return mid;
    if (c < offset) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

export interface TracePlan {
  chunks: ChunkRef[];
  /** Accesses that name no chunk of this layer ("path@offset"). */
  unknown: string[];
}

/** The chunks a trace lists, in its order; the trace must be for `layer`. */
export function planFromTrace(trace: TraceFile, toc: Toc, layer: string, name: string): TracePlan {
  if (trace.layer !== layer) throw new MalformedTraceError(name, `is for layer ${trace.layer}, not ${layer}`);
  const chunks: ChunkRef[] = [];
  const unknown: string[] = [];
  const seen = new Set<string>();
  for (const a of trace.accesses) {
    const node = toc.nodes.get(a.path);
    const index = node && node.type === 'reg' ? chunkAt(node, a.offset) : -1;
    if (!node || index < 0) {
      unknown.push(`${a.path}@${a.offset}`);
      continue;
    }
    const key = `${node.path}@${index}`;
    if (seen.has(key)) continue;
    seen.add(key);
    chunks.push({ file: node, index });
  }
  return { chunks, unknown };
}

/** Every chunk of the files before the prefetch landmark (eStargz's start-up set). */
export function planFromLandmark(toc: Toc): ChunkRef[] {
  const out: ChunkRef[] = [];
  for (const path of toc.prefetchFiles) {
    const node = toc.nodes.get(path);
    if (node) for (let i = 0; i < node.chunks.length; i++) out.push({ file: node, index: i });
  }
  return out;
}

/** Every chunk of the layer, in blob order (background fetch, a layer fetched whole, dedupd without a trace). */
export function planAll(toc: Toc): ChunkRef[] {
  return everyChunk(toc);
}

/** Files up to this size count as small (modules, scripts, class files). */
const SMALL_FILE_BYTES = 64 * 1024;
/** Small files a layer needs before fetching it whole beats a round trip per file read. */
const MANY_SMALL_FILES = 512;

/**
 * True for the layer an interpreter or a JVM reads file after file at start-up (a standard
 * library, node_modules): hundreds of small files, each a round trip when read lazily.
 */
export function manySmallFiles(toc: Toc): boolean {
  let small = 0;
  const seen = new Set<TocNode>();
  for (const node of toc.nodes.values()) {
    if (node.type !== 'reg' || seen.has(node)) continue;
    seen.add(node);
    if (node.size <= SMALL_FILE_BYTES && ++small >= MANY_SMALL_FILES) return true;
  }
  return false;
}
