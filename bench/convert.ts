// Scenario "convert": conversion throughput of a >= 200 MiB image, ours vs ctr-remote
// (stargz-snapshotter's `ctr-remote image convert --estargz`), same chunk size and gzip level,
// both from local storage to local storage (an OCI layout for us, containerd's content store for
// ctr-remote), so neither measures the network.

import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { startContainerd } from '../test/fixtures/containerd.js';
import { binary } from '../test/fixtures/cli.js';
import { pushOci, tarOf, writeOciImage, type FileSpec } from '../test/fixtures/images.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { run } from '../test/fixtures/process.js';
import { summarize, timed, type Summary } from './stats.js';

const MiB = 1024 * 1024;

export interface ConvertResult {
  imageBytes: number;
  chunkSize: number;
  compressionLevel: number;
  repetitions: number;
  oursSeconds: Summary;
  ctrRemoteSeconds: Summary;
  oursMiBps: number;
  ctrRemoteMiBps: number;
  /** ours / ctr-remote throughput: above 1 means we are faster. */
  ratio: number;
}

/** Half incompressible, half text: a rough stand-in for binaries plus sources and data. */
export function benchFiles(totalMiB: number): FileSpec[] {
  const files: FileSpec[] = [{ name: 'bin/', type: 'directory' }, { name: 'lib/', type: 'directory' }, { name: 'share/', type: 'directory' }];
  for (let i = 0; i < totalMiB / 2 / 16; i++) files.push({ name: `bin/blob${i}`, type: 'file', content: randomBytes(16 * MiB) });
  const words = Array.from({ length: 5000 }, (_, i) => createHash('md5').update(String(i)).digest('hex').slice(0, 3 + (i % 9)));
  for (let i = 0; i < (totalMiB / 2) * 4; i++) {
    const lines: string[] = [];
    let size = 0;
    for (let n = i; size < 256 * 1024; n = (n * 1103515245 + 12345) % 2 ** 31) {
      const line = `${words[n % words.length]} = ${words[(n >> 8) % words.length]}(${n % 977});\n`;
      lines.push(line);
      size += line.length;
    }
    files.push({ name: `share/src${i}.py`, type: 'file', content: Buffer.from(lines.join('')) });
  }
  return files;
}

export async function convertScenario(tmp: string, opts: { repetitions: number; sizeMiB: number; level: number; log: (s: string) => void }): Promise<ConvertResult> {
  const chunkSize = 4 * MiB;
  const tar = await tarOf(benchFiles(opts.sizeMiB));
  const layout = join(tmp, 'src-layout');
  await writeOciImage(layout, 'src', [{ tar, compression: 'gzip' }]);
  opts.log(`convert: image of ${(tar.length / MiB).toFixed(0)} MiB uncompressed, chunk ${chunkSize / MiB} MiB, gzip level ${opts.level}, ${opts.repetitions} repetitions`);
  const registry = await startRegistry(tmp);
  const containerd = await startContainerd(tmp);
  try {
    const ref = `${registry.host}/bench/convert:src`;
    await pushOci(layout, 'src', ref);
    const pull = await containerd.ctr(['image', 'pull', '--plain-http', ref]);
    if (pull.code !== 0) throw new Error(`ctr image pull: ${pull.stderr}`);
    const ours: number[] = [];
    const theirs: number[] = [];
    for (let i = 0; i < opts.repetitions; i++) {
      const out = join(tmp, `ours-${i}`);
      ours.push(await timed(async () => {
        const r = await binary('dedupctl', ['convert', '--chunk-size', String(chunkSize), '--compression-level', String(opts.level), `oci:${layout}:src`, `oci:${out}:dst`]);
        if (r.code !== 0) throw new Error(`dedupctl convert: ${r.stderr}`);
      }));
      await rm(out, { recursive: true, force: true });
      theirs.push(await timed(async () => {
        const r = await run('ctr-remote', [
          '--address', containerd.socket, 'image', 'convert', '--estargz', '--oci', '--estargz-chunk-size', String(chunkSize),
          '--estargz-compression-level', String(opts.level), ref, `${registry.host}/bench/convert:ctr-remote-${i}`,
        ], { timeoutMs: 600_000 });
        if (r.code !== 0) throw new Error(`ctr-remote image convert: ${r.stderr}`);
      }));
      opts.log(`  repetition ${i + 1}: ours ${ours.at(-1)!.toFixed(2)} s, ctr-remote ${theirs.at(-1)!.toFixed(2)} s`);
    }
    const o = summarize(ours);
    const t = summarize(theirs);
    const mib = tar.length / MiB;
    return {
      imageBytes: tar.length, chunkSize, compressionLevel: opts.level, repetitions: opts.repetitions, oursSeconds: o, ctrRemoteSeconds: t,
      oursMiBps: mib / o.median, ctrRemoteMiBps: mib / t.median, ratio: t.median / o.median,
    };
  } finally {
    await containerd.stop();
    await registry.stop();
  }
}
