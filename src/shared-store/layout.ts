// The layout of a shared read-only layer store (docs/shared-store.md): a directory that several
// hosts read and that publishers fill, where nothing is ever visible half-written. Everything is
// written under tmp/ and made visible by one rename: a pack (chunk bytes at 4 KiB-aligned
// offsets, never changed once visible), a layer directory (its EROFS image and its record, which
// names the packs and places of its chunks), then the image record, last, once all of its layers
// are there. Readers trust nothing they have not checked: records are validated, the image's
// digest and every chunk's are verified before a layer is served.

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { digestSchema } from '../digest.js';
import { StoreError } from '../errors.js';

export const LAYOUT_VERSION = 1;

/** A pack's file name: written by one publisher, named at random. */
const packName = z.string().regex(/^[0-9a-f]{32}\.pack$/, 'must be <32 hex>.pack');
const count = z.number().int().min(0);

export const layerRecordSchema = z.object({
  version: z.literal(LAYOUT_VERSION),
  /** The layer's uncompressed digest (the image config's diff id): its directory's name. */
  diffId: digestSchema,
  image: z.object({ digest: digestSchema, size: count }).strict(),
  chunkSize: z.number().int().min(4096),
  /** The packs the image's device table names, in order (the mount passes them in this order). */
  devices: z.array(packName),
  /** Each distinct chunk the image points at, and where. */
  chunks: z.array(z.object({ digest: digestSchema, size: z.number().int().min(1), pack: packName, offset: count }).strict()),
  files: count,
  bytes: count,
  usage: z.object({ size: count, inodes: count }).strict(),
}).strict();
export type LayerRecord = z.infer<typeof layerRecordSchema>;

export const imageRecordSchema = z.object({
  version: z.literal(LAYOUT_VERSION),
  ref: z.string().min(1),
  manifestDigest: digestSchema,
  configDigest: digestSchema,
  /** Bottom layer first, as in the manifest. */
  layers: z.array(z.object({ digest: digestSchema, diffId: digestSchema, chainId: digestSchema }).strict()).min(1),
  publishedAt: z.string(),
}).strict();
export type ImageRecord = z.infer<typeof imageRecordSchema>;

/** Paths inside a shared store directory. */
export class StoreLayout {
  constructor(readonly dir: string) {}

  get tmp(): string {
    return join(this.dir, 'tmp');
  }

  get packs(): string {
    return join(this.dir, 'packs');
  }

  get layers(): string {
    return join(this.dir, 'layers');
  }

  get images(): string {
    return join(this.dir, 'images');
  }

  pack(name: string): string {
    return join(this.packs, name);
  }

  /** A layer's directory, named after its diff id's hex. */
  layer(diffId: string): string {
    return join(this.layers, hexOf(diffId));
  }

  layerImage(diffId: string): string {
    return join(this.layer(diffId), 'layer.erofs');
  }

  layerRecord(diffId: string): string {
    return join(this.layer(diffId), 'layer.json');
  }

  /** An image's record, named after the sha256 of its reference (references hold '/' and ':'). */
  imageRecord(ref: string): string {
    return join(this.images, `${createHash('sha256').update(ref).digest('hex')}.json`);
  }

  /** Manifests and configs, content-addressed. */
  blob(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', hexOf(digest));
  }
}

function hexOf(digest: string): string {
  return digest.slice('sha256:'.length);
}

/** Parses a record file with `schema`; StoreError naming the file and what is wrong. */
export async function readRecord<T>(schema: z.ZodType<T>, path: string): Promise<T> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new StoreError(`shared store record ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : `unreadable (${(err as Error).message})`}`);
  }
  const r = schema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new StoreError(`shared store record ${path}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return r.data;
}
