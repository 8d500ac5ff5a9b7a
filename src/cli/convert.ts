// dedupctl convert SRC DST: an image (registry reference or oci:DIR[:TAG]) into eStargz.

import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { convertImage } from '../convert/image-converter.js';
import { InvalidArgumentError } from '../errors.js';
import { parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { parseBundle } from '../prefetch/trace-store.js';
import { configFrom, formatBytes, parseIntFlag, parseSize, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { byteProgress } from './progress.js';

interface ConvertFlags extends CommonFlags {
  chunkSize?: number;
  compressionLevel: number;
  platform: string;
  prefetchList?: string;
  prefetchTrace?: string;
  threads?: number;
}

export function convertCommand(): Command {
  return withCommonFlags(new Command('convert'))
    .description('convert an image to eStargz (lazily pullable) and write it to DST')
    .argument('<src>', 'source image: registry reference or oci:DIR[:TAG]')
    .argument('<dst>', 'target image: registry reference or oci:DIR[:TAG]')
    .option('--chunk-size <bytes>', 'chunk size (default: chunk_size from the config, 4M)', parseSize('--chunk-size'))
    .option('--compression-level <0-9>', 'gzip level', parseIntFlag('--compression-level', 0, 9), 6)
    .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
    .option('--prefetch-list <file>', 'file listing paths (one per line) to put first in each layer, before the prefetch landmark')
    .option('--prefetch-trace <file>', 'put the files an access trace (or trace bundle) lists first, before the prefetch landmark')
    .option('--threads <n>', 'compression threads (default: one per CPU)', parseIntFlag('--threads', 1, 256))
    .action(async (src: string, dst: string, flags: ConvertFlags) => {
      const config = await configFrom(flags);
      const chunkSize = flags.chunkSize ?? config.chunk_size;
      if (chunkSize < 4096 || chunkSize > 256 * 1024 * 1024) throw new InvalidArgumentError(`--chunk-size ${chunkSize} is outside 4K..256M`);
      let prefetch: Set<string> | undefined;
      if (flags.prefetchList) {
        const text = await readFile(flags.prefetchList, 'utf8').catch((err: Error) => {
          throw new InvalidArgumentError(`--prefetch-list ${flags.prefetchList}: ${err.message}`);
        });
        prefetch = new Set(text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')));
      }
      if (flags.prefetchTrace) {
        const b = parseBundle(await readFile(flags.prefetchTrace, 'utf8').catch((err: Error) => {
          throw new InvalidArgumentError(`--prefetch-trace ${flags.prefetchTrace}: ${err.message}`);
        }), flags.prefetchTrace);
        prefetch = new Set([...(prefetch ?? []), ...b.traces.flatMap((t) => t.accesses.map((a) => a.path))]);
      }
      const client = await registryClientFrom(flags, config);
      const pool = new CodecPool(flags.threads);
      const progress = byteProgress('converting', !flags.json);
      try {
        const report = await convertImage(openImage(src, client), openImage(dst, client), {
          platform: parsePlatform(flags.platform), chunkSize, compressionLevel: flags.compressionLevel, pool, prefetch,
          onProgress: (done, total) => progress.update(done, total),
        });
        progress.stop();
        if (flags.json) {
          printJson({ ...report, chunkSize, throughputMiBps: report.inputBytes / 1048576 / report.seconds });
          return;
        }
        for (const l of report.layers) {
          process.stdout.write(`${l.kept ? 'kept     ' : 'converted'} ${l.source.slice(7, 19)} -> ${l.digest.slice(7, 19)}  ${formatBytes(l.size).padStart(10)}  toc ${l.tocDigest.slice(7, 19)}  (${l.transfer})\n`);
        }
        process.stdout.write(`${report.target}: manifest ${report.manifestDigest}\n`);
        process.stdout.write(`${formatBytes(report.inputBytes)} converted in ${report.seconds.toFixed(2)} s (${(report.inputBytes / 1048576 / report.seconds).toFixed(1)} MiB/s)\n`);
      } finally {
        progress.stop();
        await pool.close();
        await client.close();
      }
    });
}
