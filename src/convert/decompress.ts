// A layer blob as its uncompressed tar stream, whatever its compression (gzip, zstd, none).
// Node 20's zlib has no zstd, so zstd goes through fzstd (pure JS, streaming).

import { createHash } from 'node:crypto';
import { pipeline, Transform, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Decompress } from 'fzstd';
import { MalformedLayerError } from '../errors.js';
import type { LayerCompression } from '../image/oci.js';
import { hashDigest } from '../digest.js';

function zstdStream(layer: string): Transform {
  let out: Transform;
  const z = new Decompress((chunk) => out.push(Buffer.from(chunk)));
  out = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      try {
        z.push(chunk);
        cb();
      } catch (err) {
        cb(new MalformedLayerError(layer, `zstd: ${(err as Error).message}`));
      }
    },
    flush(cb) {
      try {
        z.push(new Uint8Array(0), true);
        cb();
      } catch (err) {
        cb(new MalformedLayerError(layer, `zstd: ${(err as Error).message}`));
      }
    },
  });
  return out;
}

/**
 * `stream` as its reader reads it, each chunk's length told to `count` (progress). A 'data'
 * listener on it instead would set it flowing before its reader comes: an uncompressed layer read
 * straight through was sometimes all gone by then, and hashed as empty.
 */
export function countedStream(stream: Readable, count: (bytes: number) => void): Readable {
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      count(chunk.length);
      cb(null, chunk);
    },
  });
  return pipeline(stream, counter, () => {
    /* errors reach the reader of `counter` through destroy */
  });
}

/** Decompresses `blob`; errors of either side surface when the result is read. */
export function decompressLayer(blob: Readable, compression: LayerCompression, layer: string): Readable {
  if (compression === 'none') return blob;
  const inflater = compression === 'gzip' ? createGunzip() : zstdStream(layer);
  return pipeline(blob, inflater, () => {
    /* errors reach the reader of `inflater` through destroy */
  });
}

/**
 * Passes a stream through while hashing it, so the caller can check a layer's diff_id once the
 * stream has been read to its end (drain() reads what the consumer left, e.g. tar end blocks).
 */
export class DigestingSource implements AsyncIterable<Uint8Array> {
  private readonly hash = createHash('sha256');
  private readonly it: AsyncIterator<Buffer>;
  private ended = false;

  constructor(stream: Readable) {
    this.it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    for (;;) {
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        return;
      }
      this.hash.update(r.value);
      yield r.value;
    }
  }

  async digest(): Promise<string> {
    while (!this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
      else this.hash.update(r.value);
    }
    return hashDigest(this.hash);
  }
}
