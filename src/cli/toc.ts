// dedupctl toc IMAGE: the table of contents of each eStargz layer, read without downloading.

import { Command } from 'commander';
import { MalformedLayerError } from '../errors.js';
import type { TocNode } from '../estargz/toc.js';
import { layerCompression, parsePlatform } from '../image/oci.js';
import { openImage } from '../image/open.js';
import { RemoteLayer } from '../fetch/remote-layer.js';
import { configFrom, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';

const TYPE_CHAR: Record<TocNode['type'], string> = { dir: 'd', reg: '-', symlink: 'l', hardlink: 'h', char: 'c', block: 'b', fifo: 'p' };

function modeString(n: TocNode): string {
  const m = n.mode;
  const rwx = (bits: number, special: boolean, ch: string): string =>
    `${bits & 4 ? 'r' : '-'}${bits & 2 ? 'w' : '-'}${special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-'}`;
  return TYPE_CHAR[n.type] + rwx(m >> 6, (m & 0o4000) !== 0, 's') + rwx(m >> 3, (m & 0o2000) !== 0, 's') + rwx(m, (m & 0o1000) !== 0, 't');
}

/** Entries of a TOC in path order, hard links under their own names. */
export function tocListing(layer: RemoteLayer): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const [path, node] of [...layer.toc.nodes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (path === '') continue;
    const link = layer.toc.hardlinks.get(path);
    out.push({
      path, type: link ? 'hardlink' : node.type, mode: node.mode, uid: node.uid, gid: node.gid, size: node.size, mtime: node.mtime,
      ...(node.type === 'symlink' ? { linkName: node.linkName } : {}), ...(link ? { linkName: link } : {}),
      ...(node.type === 'char' || node.type === 'block' ? { devMajor: node.devMajor, devMinor: node.devMinor } : {}),
      ...(node.xattrs.size ? { xattrs: Object.fromEntries([...node.xattrs].map(([k, v]) => [k, v.toString('base64')])) } : {}),
      ...(node.type === 'reg' && !link ? { chunks: node.chunks.length, digest: node.digest } : {}),
      numLink: node.numLink, modeString: modeString(node),
    });
  }
  return out;
}

export function tocCommand(): Command {
  return withCommonFlags(new Command('toc'))
    .description('list the table of contents of an eStargz image (fetches only footers and TOCs)')
    .argument('<image>', 'registry reference or oci:DIR[:TAG]')
    .option('--platform <os/arch[/variant]>', 'platform to take from a multi-platform image', 'linux/amd64')
    .action(async (ref: string, flags: CommonFlags & { platform: string }) => {
      const config = await configFrom(flags);
      const client = await registryClientFrom(flags, config);
      try {
        const src = openImage(ref, client);
        const image = await src.resolve(parsePlatform(flags.platform));
        const layers = [];
        for (const [i, desc] of image.manifest.layers.entries()) {
          if (layerCompression(desc.mediaType, `layer ${i} of ${image.name}`) !== 'gzip') {
            throw new MalformedLayerError(desc.digest, `layer ${i} of ${image.name} is ${desc.mediaType}, not eStargz`);
          }
          const layer = await RemoteLayer.open(src, desc);
          layers.push({ digest: desc.digest, size: desc.size, tocDigest: layer.tocDigest, prefetchLandmark: layer.toc.prefetchLandmark,
            chunks: layer.toc.chunkCount, entries: tocListing(layer) });
        }
        if (flags.json) {
          printJson({ image: image.name, manifestDigest: image.manifestDigest, layers });
          return;
        }
        for (const l of layers) {
          process.stdout.write(`# layer ${l.digest} (${l.chunks} chunks, TOC ${l.tocDigest})\n`);
          for (const e of l.entries) {
            const target = e.linkName ? (e.type === 'hardlink' ? ` link to ${e.linkName as string}` : ` -> ${e.linkName as string}`) : '';
            process.stdout.write(`${e.modeString as string} ${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)} ${String(e.size).padStart(11)} ${e.path as string}${target}\n`);
          }
        }
      } finally {
        await client.close();
      }
    });
}
