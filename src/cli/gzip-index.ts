// dedupctl index create | ls | show | rm: gzip indexes of unmodified images (docs/gzip-index.md).

import { Command } from 'commander';
import { gzipIndexDefaults } from '../config/config.js';
import { indexesOf, indexImage, listIndexes, pushIndexes, removeIndexes, type ImageIndexRecord } from '../convert/gzip-indexer.js';
import { InvalidArgumentError } from '../errors.js';
import { parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { RegistryImage } from '../image/registry-image.js';
import { audited, configFrom, formatBytes, parseIntFlag, parseSize, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';
import { byteProgress } from './progress.js';

interface CreateFlags extends CommonFlags {
  push?: boolean;
  spacing?: number;
  chunkSize?: number;
  parallel: number;
  platform: string;
}

function printRecord(r: ImageIndexRecord): void {
  const index = r.layers.reduce((n, l) => n + l.indexSize, 0);
  const layers = r.layers.reduce((n, l) => n + l.layerSize, 0);
  process.stdout.write(`${r.image}  ${r.manifestDigest}  ${r.layers.length} layers indexed, ${formatBytes(index)} of index for ${formatBytes(layers)} of layers  ${r.createdAt}\n`);
}

export function gzipIndexCommand(): Command {
  const cmd = new Command('index').description('gzip indexes: lazy pulls of unmodified gzip images (no conversion, digest unchanged)');
  cmd.addCommand(withCommonFlags(new Command('create')).description('build the gzip index of every gzip layer of an image, without changing the image')
    .argument('<image>', 'registry reference or oci:DIR[:TAG]')
    .option('--push', "push the indexes to the image's repository, as an artifact whose subject is the image (tag sha256-<manifest>.dedup-gzip-index)")
    .option('--spacing <bytes>', 'uncompressed bytes between checkpoints (default: gzip_index.spacing from the config, 4M)', parseSize('--spacing'))
    .option('--chunk-size <bytes>', 'chunk size (default: chunk_size from the config)', parseSize('--chunk-size'))
    .option('--parallel <n>', 'layers read at once', parseIntFlag('--parallel', 1, 64), 3)
    .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
    .action(async (image: string, flags: CreateFlags) => {
      const config = await configFrom(flags);
      const { spacing, chunkSize } = gzipIndexDefaults(config, flags);
      const client = await registryClientFrom(flags, config);
      const source = openImage(image, client);
      if (flags.push && !(source instanceof RegistryImage)) throw new InvalidArgumentError(`--push needs a registry image, not ${image}`);
      const progress = byteProgress('indexing', !flags.json);
      try {
        const started = performance.now();
        const record = await audited(config, 'index.create', image, { push: flags.push ?? false }, () =>
          indexImage(source, config.root, { platform: parsePlatform(flags.platform), spacing, chunkSize, parallel: flags.parallel, onProgress: (d, t) => progress.update(d, t) }));
        progress.stop();
        const seconds = (performance.now() - started) / 1000;
        const pushed = flags.push ? await pushIndexes(client, source as RegistryImage, config.root, record) : undefined;
        if (flags.json) return printJson({ ...record, seconds, ...(pushed ? { pushed } : {}) });
        for (const l of record.layers) {
          process.stdout.write(`indexed  ${l.layer.slice(7, 19)}  ${formatBytes(l.layerSize).padStart(10)}  index ${formatBytes(l.indexSize)} (${(100 * l.indexSize / Math.max(1, l.layerSize)).toFixed(2)}%), ${l.checkpoints} checkpoints, ${l.entries} entries\n`);
        }
        for (const s of record.skipped) process.stdout.write(`skipped  ${s.layer.slice(7, 19)}  ${s.reason}\n`);
        process.stdout.write(`${image}: ${record.layers.length} layers indexed in ${seconds.toFixed(2)} s${pushed ? `, pushed as ${pushed.tag}` : ''}\n`);
      } finally {
        progress.stop();
        await client.close();
      }
    }));
  cmd.addCommand(withCommonFlags(new Command('ls')).description('list the images with gzip indexes in the state root')
    .action(async (flags: CommonFlags) => {
      const records = await listIndexes((await configFrom(flags)).root);
      if (flags.json) return printJson(records.map(({ layers, ...r }) => ({ ...r, layers: layers.length, indexBytes: layers.reduce((n, l) => n + l.indexSize, 0) })));
      for (const r of records) printRecord(r);
    }));
  cmd.addCommand(withCommonFlags(new Command('show')).description("an image's gzip indexes, layer by layer")
    .argument('<image>', 'image name as indexed, or manifest digest')
    .action(async (image: string, flags: CommonFlags) => {
      const records = await indexesOf((await configFrom(flags)).root, image);
      if (flags.json) return printJson(records);
      for (const r of records) {
        printRecord(r);
        for (const l of r.layers) {
          process.stdout.write(`  ${l.layer}  ${formatBytes(l.layerSize)} (${formatBytes(l.uncompressedSize)} uncompressed): index ${l.index.slice(0, 19)} ${formatBytes(l.indexSize)}, ${l.checkpoints} checkpoints, ${l.entries} entries\n`);
        }
        for (const s of r.skipped) process.stdout.write(`  ${s.layer}  not indexed: ${s.reason}\n`);
      }
    }));
  cmd.addCommand(withCommonFlags(new Command('rm')).description("remove an image's gzip indexes from the state root (not from the registry)")
    .argument('<image>', 'image name as indexed, or manifest digest')
    .action(async (image: string, flags: CommonFlags) => {
      const config = await configFrom(flags);
      const removed = await audited(config, 'index.rm', image, {}, () => removeIndexes(config.root, image));
      if (flags.json) printJson({ removed: removed.map((r) => r.manifestDigest) });
    }));
  return cmd;
}
