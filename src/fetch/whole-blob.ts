// A layer downloaded whole in one request (up to where its tail read began), serving chunks from
// memory as it comes in: bytes [0, arrived) are in, and a reader whose bytes are still to come
// waits for them rather than fetching them too, so no byte comes twice.

import { MalformedEstargzError } from '../errors.js';
import type { Descriptor } from '../image/oci.js';
import type { ImageSource } from '../image/source.js';

export class WholeBlob {
  private readonly blob: Buffer;
  private arrived = 0;
  /** The download broke off: what arrived still serves, the rest is fetched as usual. */
  failed = false;
  /** Settle true once bytes up to `end` are in, false if the download failed first. */
  private waiters: { end: number; settle(arrived: boolean): void }[] = [];

  constructor(private readonly desc: Descriptor, size: number) {
    this.blob = Buffer.allocUnsafe(size);
  }

  get size(): number {
    return this.blob.length;
  }

  /** Bytes received so far. */
  get received(): number {
    return this.arrived;
  }

  /**
   * Streams the blob in, waking readers as their bytes arrive; `stop` is asked after each piece
   * and throws to break off. On any failure the blob is marked failed and its waiters woken.
   */
  async download(source: ImageSource, stop: () => void): Promise<void> {
    try {
      if (this.blob.length > 0) for await (const piece of source.blobStream(this.desc, { start: 0, end: this.blob.length })) {
        const b = piece as Buffer;
        if (this.arrived + b.length > this.blob.length) throw new MalformedEstargzError(`layer ${this.desc.digest}`, `more than the ${this.blob.length} bytes asked for came`);
        b.copy(this.blob, this.arrived);
        this.arrived += b.length;
        this.wake(true);
        stop();
      }
    } catch (err) {
      this.fail();
      throw err;
    }
  }

  /** Breaks off: every waiter is woken to fetch its bytes itself. */
  fail(): void {
    this.failed = true;
    this.wake(false);
  }

  /**
   * Bytes [start, end): at once if they are in, after a wait if they are still to come (fetching
   * them too would bring them twice), else undefined: the download failed before them.
   * `waited` says whether a reader waited.
   */
  async bytes(start: number, end: number): Promise<{ bytes: Buffer; waited: boolean } | undefined> {
    if (this.arrived >= end) return { bytes: this.blob.subarray(start, end), waited: false };
    if (this.failed) return undefined;
    const ok = await new Promise<boolean>((settle) => this.waiters.push({ end, settle }));
    return ok ? { bytes: this.blob.subarray(start, end), waited: true } : undefined;
  }

  /** Wakes the waiters whose bytes are in, or all of them when the download failed. */
  private wake(arrived: boolean): void {
    const ready = arrived ? this.waiters.filter((w) => w.end <= this.arrived) : this.waiters;
    this.waiters = arrived ? this.waiters.filter((w) => w.end > this.arrived) : [];
    for (const w of ready) w.settle(arrived);
  }
}
