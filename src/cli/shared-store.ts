// dedupctl store publish|unpublish|published: an image this node has pulled into kernel-mode
// layers, written into a shared store directory for other hosts (docs/shared-store.md).

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { CodecPool } from '../codec/codec-pool.js';
import { FailedPreconditionError, NotFoundError } from '../errors.js';
import { parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { devicePaths } from '../kernel/kernel-layers.js';
import { isMountpoint, mountErofs, unmount } from '../system-mounts.js';
import { chainId } from '../sandbox/image-snapshot.js';
import { listPublished, publishImage, unpublishImage, type LayerSource } from '../shared-store/publish.js';
import { SnapshotMetadata } from '../snapshot/metadata.js';
import { snapshotName } from '../snapshot/labels.js';
import { packsDir } from '../store/pack-files.js';
import { audited, configFrom, formatBytes, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';

type Row = ReturnType<SnapshotMetadata['all']>[number];

/**
 * Where a committed snapshot's files can be read: its fs directory when that is mounted (the
 * snapshotter serves kernel and lazy layers there) or a plain directory; a kernel layer not
 * mounted is mounted in a temp directory for the walk.
 */
function layerSource(root: string, s: Row, ids: { digest: string; diffId: string; chainId: string }): LayerSource {
  const fs = join(root, 'snapshots', String(s.id), 'fs');
  return {
    ...ids,
    async open() {
      if (await isMountpoint(fs)) return { dir: fs, close: async () => undefined };
      if (s.remote) throw new FailedPreconditionError(`layer ${ids.digest} is a lazy layer not mounted now (${fs}): start the snapshotter first`);
      if (!s.kernel) return { dir: fs, close: async () => undefined }; // kernel mode off: the unpacked directory
      const dir = await mkdtemp(join(tmpdir(), 'dedup-publish-'));
      mountErofs(s.kernel.image, dir, devicePaths(s.kernel, (p) => join(packsDir(root), p)), { diskReadahead: true });
      return { dir, close: async () => { await unmount(dir); await rm(dir, { recursive: true, force: true }); } };
    },
  };
}

export function sharedStoreCommands(): Command[] {
  const publish = withCommonFlags(new Command('publish'))
    .description('write an image this node has pulled (ctr image pull --snapshotter dedup) into a shared store directory: its layers as EROFS images over the chunks they need, its manifest and config')
    .argument('<image>', 'registry reference or oci:DIR[:TAG] (its manifest and config are read from there; the layers from this node)')
    .requiredOption('--to <dir>', 'the shared store directory (made if missing)')
    .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
    .action(async (ref: string, flags: CommonFlags & { to: string; platform: string }) => {
      const config = await configFrom(flags);
      const client = await registryClientFrom(flags, config);
      const metadata = new SnapshotMetadata(join(config.root, 'metadata.db'));
      const pool = new CodecPool();
      try {
        const image = await openImage(ref, client).resolve(parsePlatform(flags.platform));
        const diffIds = image.config.rootfs.diff_ids;
        if (diffIds.length !== image.manifest.layers.length) throw new FailedPreconditionError(`${ref}: ${image.manifest.layers.length} layers in the manifest, ${diffIds.length} diff ids in the config`);
        const rows = new Map(metadata.all().map((s) => [snapshotName(s.key), s]));
        const sources = image.manifest.layers.map((l, i) => {
          const ids = { digest: l.digest, diffId: diffIds[i]!, chainId: chainId(diffIds.slice(0, i + 1)) };
          const s = rows.get(ids.chainId);
          if (!s) throw new NotFoundError(`layer ${i + 1} of ${ref} (chain id ${ids.chainId}) in ${config.root}: pull the image with --snapshotter dedup first`);
          return layerSource(config.root, s, ids);
        });
        const r = await audited(config, 'store.publish', ref, { to: flags.to }, () => publishImage(flags.to, image, sources, config.chunk_size, pool,
          (i, reused) => !flags.json && process.stderr.write(`layer ${i + 1}/${sources.length} ${reused ? 'already in the store' : 'published'}\n`)));
        if (flags.json) return printJson(r);
        const reused = r.layers.filter((l) => l.reused).length;
        process.stdout.write(`${ref}: published to ${r.store}: ${r.layers.length} layers (${reused} already there), ${formatBytes(r.bytesWritten)} of new chunks, ${r.seconds.toFixed(2)} s\n`);
      } finally {
        metadata.close();
        await pool.close();
        await client.close();
      }
    });
  const unpublish = withCommonFlags(new Command('unpublish'))
    .description('remove an image from a shared store, and the layers and chunks no other image there uses (hosts running it keep their mounts)')
    .argument('<image>', 'the image as it was published')
    .requiredOption('--from <dir>', 'the shared store directory')
    .action(async (ref: string, flags: CommonFlags & { from: string }) => {
      const config = await configFrom(flags);
      const r = await audited(config, 'store.unpublish', ref, { from: flags.from }, () => unpublishImage(flags.from, ref));
      if (flags.json) return printJson(r);
      process.stdout.write(`${ref}: removed from ${r.store}: ${r.layersRemoved} layers, ${r.packsRemoved} packs (${formatBytes(r.bytesFreed)})\n`);
    });
  const published = withCommonFlags(new Command('published'))
    .description('list the images in a shared store')
    .requiredOption('--in <dir>', 'the shared store directory')
    .action(async (flags: CommonFlags & { in: string }) => {
      const images = await listPublished(flags.in);
      if (flags.json) return printJson(images);
      for (const i of images) process.stdout.write(`${i.ref}\t${i.manifestDigest}\t${i.layers.length} layers\t${i.publishedAt}\n`);
    });
  return [publish, unpublish, published];
}
