// Converts an image into eStargz: every layer that is not eStargz yet is converted (in order,
// its chunks compressed in parallel), the config gets the new diff_ids, and blobs, config and an
// OCI manifest are written to the target. Layers that already are eStargz are kept as they are.

import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { CodecPool } from '../codec/codec-pool.js';
import { MalformedLayerError } from '../errors.js';
import { sha256Digest } from '../digest.js';
import { TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION } from '../estargz/toc.js';
import { layerCompression, MediaType, type Descriptor, type Platform } from '../image/oci.js';
import type { ImageSource, ImageTarget } from '../image/source.js';
import { convertLayer } from './layer-converter.js';
import { countedStream, decompressLayer, DigestingSource } from './decompress.js';

export interface ImageConvertOptions {
  platform: Platform;
  chunkSize: number;
  compressionLevel: number;
  pool: CodecPool;
  /** Paths of files to put first in every layer that has them (then the prefetch landmark). */
  prefetch?: Set<string>;
  /** Where temporary layer files go (default: the system temp dir). */
  workDir?: string;
  /** Progress in compressed source bytes read, of `total`. */
  onProgress?: (done: number, total: number) => void;
}

export interface ConvertedLayerReport {
  source: string;
  digest: string;
  size: number;
  diffId: string;
  tocDigest: string;
  uncompressedSize: number;
  /** True when the source layer was eStargz already and was copied unchanged. */
  kept: boolean;
  transfer: 'exists' | 'mounted' | 'uploaded';
}

export interface ImageConvertReport {
  source: string;
  target: string;
  manifestDigest: string;
  configDigest: string;
  layers: ConvertedLayerReport[];
  /** Uncompressed bytes of the source layers that were converted. */
  inputBytes: number;
  seconds: number;
}

export async function convertImage(src: ImageSource, dst: ImageTarget, opts: ImageConvertOptions): Promise<ImageConvertReport> {
  const started = process.hrtime.bigint();
  const image = await src.resolve(opts.platform);
  const layers = image.manifest.layers;
  if (layers.length !== image.config.rootfs.diff_ids.length) {
    throw new MalformedLayerError(image.name, `manifest has ${layers.length} layers but config has ${image.config.rootfs.diff_ids.length} diff_ids`);
  }
  const total = layers.reduce((n, l) => n + l.size, 0);
  let done = 0;
  const work = await mkdtemp(join(opts.workDir ?? tmpdir(), 'dedup-convert-'));
  const reports: ConvertedLayerReport[] = [];
  const outLayers: Descriptor[] = [];
  let inputBytes = 0;
  try {
    for (const [i, desc] of layers.entries()) {
      const where = `${desc.digest} (layer ${i} of ${image.name})`;
      const compression = layerCompression(desc.mediaType, `layer ${i} of ${image.name}`);
      const base = done;
      const blob = countedStream(src.blobStream(desc), (n) => {
        done += n;
        opts.onProgress?.(done, total);
      });
      const tocDigest = desc.annotations?.[TOC_DIGEST_ANNOTATION];
      if (tocDigest && compression === 'gzip') {
        // Already eStargz: copied unchanged (a registry on the same host is asked to mount it
        // first; the local copy is what gets uploaded if it refuses).
        const path = join(work, `layer-${i}.keep`);
        await pipeline(blob, createWriteStream(path));
        const transfer = await dst.putBlob(desc, { path }, src.location);
        done = base + desc.size;
        outLayers.push(desc);
        reports.push({
          source: desc.digest, digest: desc.digest, size: desc.size, diffId: image.config.rootfs.diff_ids[i]!, tocDigest,
          uncompressedSize: Number(desc.annotations?.[UNCOMPRESSED_SIZE_ANNOTATION] ?? 0), kept: true, transfer,
        });
        continue;
      }
      const tar = new DigestingSource(decompressLayer(blob, compression, where));
      const outPath = join(work, `layer-${i}.estargz`);
      const layerOpts = { chunkSize: opts.chunkSize, compressionLevel: opts.compressionLevel, pool: opts.pool, prefetch: opts.prefetch };
      let converted;
      if (opts.prefetch && opts.prefetch.size > 0) {
        // Prefetch ordering reads the tar more than once: spool it uncompressed first.
        const spool = join(work, `layer-${i}.tar`);
        await pipeline(tar, createWriteStream(spool));
        await checkDiffId(tar, image.config.rootfs.diff_ids[i]!, where);
        converted = await convertLayer(() => createReadStream(spool, { highWaterMark: 1024 * 1024 }), outPath, where, layerOpts);
        await rm(spool, { force: true });
      } else {
        converted = await convertLayer(() => tar, outPath, where, layerOpts);
        await checkDiffId(tar, image.config.rootfs.diff_ids[i]!, where);
      }
      inputBytes += converted.uncompressedSize;
      const out: Descriptor = {
        mediaType: MediaType.ociLayerGzip, digest: converted.digest, size: converted.size,
        annotations: { [TOC_DIGEST_ANNOTATION]: converted.tocDigest, [UNCOMPRESSED_SIZE_ANNOTATION]: String(converted.uncompressedSize) },
      };
      const transfer = await dst.putBlob(out, { path: converted.path });
      await rm(converted.path, { force: true });
      outLayers.push(out);
      reports.push({ source: desc.digest, ...converted, kept: false, transfer });
    }
    const config = JSON.parse(image.configBytes.toString('utf8')) as { rootfs: { diff_ids: string[] } };
    config.rootfs.diff_ids = reports.map((r) => r.diffId);
    const configBytes = Buffer.from(JSON.stringify(config));
    const configDesc: Descriptor = { mediaType: MediaType.ociConfig, digest: sha256Digest(configBytes), size: configBytes.length };
    await dst.putBlob(configDesc, { bytes: configBytes });
    const manifest = { schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDesc, layers: outLayers };
    const manifestDigest = await dst.putManifest(Buffer.from(JSON.stringify(manifest)), MediaType.ociManifest);
    return {
      source: src.name, target: dst.name, manifestDigest, configDigest: configDesc.digest, layers: reports, inputBytes,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function checkDiffId(tar: DigestingSource, expected: string, where: string): Promise<void> {
  const actual = await tar.digest();
  if (actual !== expected) throw new MalformedLayerError(where, `uncompressed digest ${actual} does not match the config's diff_id ${expected}`);
}
