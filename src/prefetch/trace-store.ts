// The traces under prefetch.trace_dir (<manifest hex>/<layer hex>.json), and trace bundles: every
// layer trace of one image in one file, to move traces between nodes.

import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { MalformedTraceError, NotFoundError } from '../errors.js';
import { tracePath, type TraceFile } from '../trace-format.js';
import { parseTrace } from './plan.js';

export const BUNDLE_KIND = 'dedup-snapshotter/trace-bundle';

export interface TraceBundle {
  kind: typeof BUNDLE_KIND;
  version: 1;
  image: string;
  manifestDigest: string;
  traces: TraceFile[];
}

/** Every trace in the directory, with a warning for each file that is not a valid trace. */
export async function listTraces(traceDir: string): Promise<{ traces: TraceFile[]; bad: { file: string; error: string }[] }> {
  const traces: TraceFile[] = [];
  const bad: { file: string; error: string }[] = [];
  for (const dir of await readdir(traceDir).catch(() => [] as string[])) {
    for (const name of await readdir(join(traceDir, dir)).catch(() => [] as string[])) {
      if (!name.endsWith('.json')) continue;
      const file = join(traceDir, dir, name);
      try {
        traces.push(parseTrace(await readFile(file, 'utf8'), file));
      } catch (err) {
        bad.push({ file, error: (err as Error).message });
      }
    }
  }
  return { traces, bad };
}

/** The traces of one image, named by manifest digest or by the image name it was recorded for. */
export async function tracesOf(traceDir: string, image: string): Promise<TraceFile[]> {
  const { traces } = await listTraces(traceDir);
  const mine = traces.filter((t) => t.manifestDigest === image || t.image === image);
  if (mine.length === 0) throw new NotFoundError(`traces of ${image} in ${traceDir}`);
  const manifests = new Set(mine.map((t) => t.manifestDigest));
  if (manifests.size > 1) throw new MalformedTraceError(image, `names ${manifests.size} manifests in ${traceDir}: give a manifest digest`);
  return mine;
}

export function bundle(traces: TraceFile[]): TraceBundle {
  return { kind: BUNDLE_KIND, version: 1, image: traces[0]!.image, manifestDigest: traces[0]!.manifestDigest, traces };
}

/** Parses a bundle (or a single trace) and checks every trace in it. */
export function parseBundle(text: string, name: string): TraceBundle {
  let doc: { kind?: unknown; traces?: unknown };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch (err) {
    throw new MalformedTraceError(name, `not valid JSON (${(err as Error).message})`);
  }
  if (doc.kind !== BUNDLE_KIND) return bundle([parseTrace(text, name)]);
  if (!Array.isArray(doc.traces) || doc.traces.length === 0) throw new MalformedTraceError(name, 'bundle holds no traces');
  const traces = doc.traces.map((t, i) => parseTrace(JSON.stringify(t), `${name} (trace ${i})`));
  if (new Set(traces.map((t) => t.manifestDigest)).size !== 1) throw new MalformedTraceError(name, 'bundle mixes traces of several images');
  return bundle(traces);
}

export async function importBundle(traceDir: string, b: TraceBundle): Promise<string[]> {
  const written: string[] = [];
  for (const t of b.traces) {
    const path = tracePath(traceDir, t.manifestDigest, t.layer);
    await mkdir(join(path, '..'), { recursive: true });
    await writeFileAtomic(path, Buffer.from(JSON.stringify(t, null, 1)));
    written.push(path);
  }
  return written;
}

export async function removeTraces(traceDir: string, manifestDigest: string): Promise<void> {
  await rm(join(traceDir, manifestDigest.replace(/^sha256:/, '')), { recursive: true, force: true });
}
