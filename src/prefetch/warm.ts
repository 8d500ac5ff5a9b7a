// dedupd's choice of chunks for a layer: those its trace lists, when the image has a trace (the
// start-up set, in recorded order), else every chunk.

import { existsSync } from 'node:fs';
import type { ChunkRef } from '../fetch/lazy-layer.js';
import type { RemoteLayer } from '../fetch/remote-layer.js';
import { tracePath } from '../trace-format.js';
import { planAll, planFromTrace, readTrace } from './plan.js';

export function traceChunks(traceDir: string, onWarning: (msg: string, fields: object) => void): (layer: RemoteLayer, manifestDigest: string) => Promise<ChunkRef[]> {
  return async (layer, manifestDigest) => {
    const file = tracePath(traceDir, manifestDigest, layer.desc.digest);
    if (!existsSync(file)) return planAll(layer.toc);
    try {
      const plan = planFromTrace(await readTrace(file), layer.toc, layer.desc.digest, file);
      if (plan.unknown.length) onWarning('trace names chunks this layer does not have; ignoring them', { trace: file, count: plan.unknown.length });
      return plan.chunks;
    } catch (err) {
      onWarning('ignoring a bad trace; fetching the whole layer', { trace: file, err: (err as Error).message });
      return planAll(layer.toc);
    }
  };
}
