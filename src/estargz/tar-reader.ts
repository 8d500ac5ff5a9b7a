// A streaming tar reader (ustar, PAX and GNU long names). Hand-written rather than tar-stream
// because PAX values must stay bytes: xattrs such as security.capability are binary, and a
// reader that decodes them as UTF-8 would write wrong bytes into the converted layer.
// Pure: it consumes an async iterable of byte chunks.

import { BLOCK, tarPadding, type TarHeader, type TarType } from './tar.js';

export class TarFormatError extends Error {}

const TYPES: Record<string, TarType> = {
  '0': 'file', '\0': 'file', '7': 'file', '1': 'link', '2': 'symlink', '3': 'character-device', '4': 'block-device',
  '5': 'directory', '6': 'fifo',
};

/** Pulls exact byte counts out of an async iterable of chunks. */
class ByteReader {
  private readonly it: AsyncIterator<Uint8Array>;
  private buf: Buffer = Buffer.alloc(0);
  private done = false;
  /** Bytes consumed so far: lets errors say where in the stream they happened. */
  position = 0;

  constructor(src: AsyncIterable<Uint8Array>) {
    this.it = src[Symbol.asyncIterator]();
  }

  private async fill(n: number): Promise<void> {
    const parts = [this.buf];
    let len = this.buf.length;
    while (len < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else {
        parts.push(Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength));
        len += r.value.byteLength;
      }
    }
    // A buffer used up needs no copy: the common case of reading a file piece by piece.
    if (parts.length > 1) this.buf = parts[0]!.length === 0 && parts.length === 2 ? parts[1]! : Buffer.concat(parts);
  }

  /** Exactly n bytes, or null at a clean end of stream; a partial read is an error. */
  async exact(n: number): Promise<Buffer | null> {
    if (this.buf.length < n) await this.fill(n);
    if (this.buf.length === 0 && this.done) return null;
    if (this.buf.length < n) throw new TarFormatError(`truncated at byte ${this.position + this.buf.length}: wanted ${n} more bytes`);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    this.position += n;
    return out;
  }

  /** Up to n bytes (at least one unless the stream ended). */
  async upTo(n: number): Promise<Buffer> {
    if (this.buf.length === 0) await this.fill(1);
    if (this.buf.length === 0) throw new TarFormatError(`truncated at byte ${this.position}`);
    const out = this.buf.subarray(0, Math.min(n, this.buf.length));
    this.buf = this.buf.subarray(out.length);
    this.position += out.length;
    return out;
  }

  async skip(n: number): Promise<void> {
    while (n > 0) n -= (await this.upTo(n)).length;
  }
}

function cstring(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('utf8');
}

function number(b: Buffer, field: string): number {
  if (b[0]! & 0x80) {
    // GNU base-256: big-endian two's complement with the top bit as the marker.
    let v = b[0]! & 0x7f;
    for (let i = 1; i < b.length; i++) v = v * 256 + b[i]!;
    if (!Number.isSafeInteger(v)) throw new TarFormatError(`${field} is too large`);
    return v;
  }
  const s = cstring(b).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarFormatError(`${field} "${s}" is not octal`);
  return Number.parseInt(s, 8);
}

/** PAX records: "LEN KEY=VALUE\n"; values stay bytes. */
export function parsePax(body: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let i = 0;
  while (i < body.length) {
    if (body[i] === 0) break;
    const sp = body.indexOf(0x20, i);
    if (sp < 0) throw new TarFormatError('PAX record has no length');
    const len = Number(body.subarray(i, sp).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= sp - i || i + len > body.length || body[i + len - 1] !== 0x0a) {
      throw new TarFormatError('PAX record length is wrong');
    }
    const rec = body.subarray(sp + 1, i + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new TarFormatError('PAX record has no "="');
    out.set(rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1)));
    i += len;
  }
  return out;
}

export interface TarEntry {
  header: TarHeader;
  /** Next piece of the entry's data (at most `max` bytes); call until `remaining` is 0. */
  read(max: number): Promise<Buffer>;
  readonly remaining: number;
  /** Where the entry's data begins in the tar stream. */
  readonly offset: number;
}

/** Yields the entries of a tar stream; each entry's data must be read (or is skipped) before the next. */
export async function* readTar(src: AsyncIterable<Uint8Array>): AsyncGenerator<TarEntry> {
  const r = new ByteReader(src);
  let pax = new Map<string, Buffer>();
  let globalPax = new Map<string, Buffer>();
  let longName: string | undefined;
  let longLink: string | undefined;
  for (;;) {
    const block = await r.exact(BLOCK);
    if (!block) return; // a tar without its end blocks: accepted, as GNU tar does
    if (block.every((b) => b === 0)) return;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
    const recorded = /^[0-7 \0]+$/.test(block.subarray(148, 156).toString('latin1')) ? number(block.subarray(148, 156), 'checksum') : -1;
    if (recorded !== sum) throw new TarFormatError(`header at byte ${r.position - BLOCK} has a bad checksum (not a tar?)`);
    const typeflag = String.fromCharCode(block[156]!);
    const size = number(block.subarray(124, 136), 'size');
    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (size > 64 * 1024 * 1024) throw new TarFormatError(`extended header of ${size} bytes is too large`);
      const body = (await r.exact(size)) ?? Buffer.alloc(0);
      await r.skip(tarPadding(size));
      if (typeflag === 'x') pax = parsePax(body);
      else if (typeflag === 'g') globalPax = new Map([...globalPax, ...parsePax(body)]);
      else if (typeflag === 'L') longName = cstring(body);
      else longLink = cstring(body);
      continue;
    }
    const type = TYPES[typeflag];
    if (!type) throw new TarFormatError(`entry "${cstring(block.subarray(0, 100))}" has unsupported type '${typeflag.replace(/[^\x20-\x7e]/g, '?')}'`);
    const records = new Map([...globalPax, ...pax]);
    const ustar = block.subarray(257, 263).toString('latin1') === 'ustar\0';
    const prefix = ustar ? cstring(block.subarray(345, 500)) : '';
    let name = longName ?? (prefix ? `${prefix}/${cstring(block.subarray(0, 100))}` : cstring(block.subarray(0, 100)));
    let linkname = longLink ?? cstring(block.subarray(157, 257));
    const num = (key: string, fallback: number): number => {
      const v = records.get(key);
      if (v === undefined) return fallback;
      const n = Number(v.toString('latin1'));
      if (!Number.isFinite(n) || n < 0) throw new TarFormatError(`PAX ${key} "${v.toString('latin1')}" is not a number`);
      return n;
    };
    if (records.has('path')) name = records.get('path')!.toString('utf8');
    if (records.has('linkpath')) linkname = records.get('linkpath')!.toString('utf8');
    const xattrs: Record<string, Buffer> = {};
    for (const [k, v] of records) if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice('SCHILY.xattr.'.length)] = v;
    const header: TarHeader = {
      name, type, linkname,
      mode: number(block.subarray(100, 108), 'mode'),
      uid: num('uid', number(block.subarray(108, 116), 'uid')),
      gid: num('gid', number(block.subarray(116, 124), 'gid')),
      size: type === 'file' ? num('size', size) : 0,
      mtime: Math.floor(num('mtime', number(block.subarray(136, 148), 'mtime'))),
      uname: records.get('uname')?.toString('utf8') ?? cstring(block.subarray(265, 297)),
      gname: records.get('gname')?.toString('utf8') ?? cstring(block.subarray(297, 329)),
      devmajor: ustar || block.subarray(257, 263).toString('latin1') === 'ustar ' ? number(block.subarray(329, 337), 'devmajor') : 0,
      devminor: ustar || block.subarray(257, 263).toString('latin1') === 'ustar ' ? number(block.subarray(337, 345), 'devminor') : 0,
      xattrs,
    };
    pax = new Map();
    longName = undefined;
    longLink = undefined;
    // Hard links and others may carry a size in the header with no data following in practice;
    // only regular files own data blocks we must read.
    const dataSize = type === 'file' ? header.size : 0;
    let remaining = dataSize;
    const entry: TarEntry = {
      header,
      offset: r.position,
      get remaining() { return remaining; },
      async read(max: number) {
        if (remaining === 0) return Buffer.alloc(0);
        const piece = await r.upTo(Math.min(max, remaining));
        remaining -= piece.length;
        return piece;
      },
    };
    yield entry;
    await r.skip(remaining + tarPadding(dataSize));
  }
}
