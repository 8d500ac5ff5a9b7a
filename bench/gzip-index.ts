// Scenario "gzip-index": `dedupctl index create` of an unmodified gzip image of >= 200 MiB (half
// incompressible, half text, as the convert scenario's), against converting the same image to
// eStargz with `dedupctl convert`, the other way to make it lazily pullable; both from an OCI
// layout to local disk, so neither measures the network. Reports the index's size against the layer's.

import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { dedupctlJson } from '../test/fixtures/cli.js';
import { tarOf, writeOciImage } from '../test/fixtures/images.js';
import { benchFiles } from './convert.js';
import { summarize, timed, type Summary } from './stats.js';

const MiB = 1024 * 1024;

export interface GzipIndexResult {
  tarBytes: number;
  layerBytes: number;
  indexBytes: number;
  checkpoints: number;
  spacing: number;
  indexSeconds: Summary;
  convertSeconds: Summary;
}

export async function gzipIndexScenario(tmp: string, opts: { repetitions: number; sizeMiB: number; log: (s: string) => void }): Promise<GzipIndexResult> {
  const tar = await tarOf(benchFiles(opts.sizeMiB));
  const layout = join(tmp, 'src-layout');
  await writeOciImage(layout, 'src', [{ tar, compression: 'gzip' }]);
  opts.log(`gzip-index: image of one ${(tar.length / MiB).toFixed(0)} MiB layer (uncompressed), ${opts.repetitions} repetitions`);
  const indexed: number[] = [];
  const converted: number[] = [];
  let last: { layers: { layerSize: number; indexSize: number; checkpoints: number }[]; spacing: number } | undefined;
  for (let i = 0; i < opts.repetitions; i++) {
    const root = join(tmp, `root-${i}`);
    indexed.push(await timed(async () => {
      last = await dedupctlJson(['index', 'create', '--root', root, `oci:${layout}:src`]);
    }));
    const out = join(tmp, `esgz-${i}`);
    converted.push(await timed(async () => {
      await dedupctlJson(['convert', `oci:${layout}:src`, `oci:${out}:dst`]);
    }));
    await rm(root, { recursive: true, force: true });
    await rm(out, { recursive: true, force: true });
    opts.log(`  repetition ${i + 1}: index create ${indexed.at(-1)!.toFixed(2)} s, convert ${converted.at(-1)!.toFixed(2)} s`);
  }
  const layer = last!.layers[0]!;
  return {
    tarBytes: tar.length, layerBytes: layer.layerSize, indexBytes: layer.indexSize, checkpoints: layer.checkpoints, spacing: last!.spacing,
    indexSeconds: summarize(indexed), convertSeconds: summarize(converted),
  };
}
