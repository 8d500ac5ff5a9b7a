// The eStargz footer: an empty gzip member whose header "extra" field carries the TOC offset.
// eStargz writes it as a 51-byte member (subfield id "SG"); the older stargz format as 47 bytes
// (the payload as the whole extra field). Pure: bytes in, values out.

import { MalformedEstargzError } from '../errors.js';

export const FOOTER_SIZE = 51;
export const LEGACY_FOOTER_SIZE = 47;
const PAYLOAD_LEN = 22; // "%016x" + "STARGZ"

/** The empty deflate stream (one final stored block), its CRC32 and ISIZE: always the same. */
const EMPTY_DEFLATE_AND_TRAILER = Buffer.from([0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);

function payload(tocOffset: number): string {
  return tocOffset.toString(16).padStart(16, '0') + 'STARGZ';
}

/** Encodes the eStargz footer for a TOC that starts at `tocOffset` in the blob. */
export function encodeFooter(tocOffset: number): Buffer {
  if (!Number.isSafeInteger(tocOffset) || tocOffset < 0) {
    throw new MalformedEstargzError('footer', `TOC offset ${tocOffset} is not a non-negative integer`);
  }
  const header = Buffer.from([0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0x00, 0xff]);
  const xlen = Buffer.alloc(2);
  xlen.writeUInt16LE(4 + PAYLOAD_LEN);
  const sub = Buffer.alloc(4);
  sub.write('SG', 0, 'latin1');
  sub.writeUInt16LE(PAYLOAD_LEN, 2);
  const out = Buffer.concat([header, xlen, sub, Buffer.from(payload(tocOffset), 'latin1'), EMPTY_DEFLATE_AND_TRAILER]);
  return out;
}

export interface Footer {
  tocOffset: number;
  /** 51 for eStargz, 47 for legacy stargz. */
  size: number;
}

function parsePayload(p: Buffer): number {
  const text = p.toString('latin1');
  if (!/^[0-9a-f]{16}STARGZ$/.test(text)) {
    throw new MalformedEstargzError('footer', `extra field "${text.replace(/[^\x20-\x7e]/g, '?')}" is not "<16 hex digits>STARGZ"`);
  }
  const off = Number.parseInt(text.slice(0, 16), 16);
  if (!Number.isSafeInteger(off)) throw new MalformedEstargzError('footer', `TOC offset ${text.slice(0, 16)} is too large`);
  return off;
}

function checkGzipHeader(p: Buffer, xlen: number): void {
  if (p[0] !== 0x1f || p[1] !== 0x8b || p[2] !== 0x08) throw new MalformedEstargzError('footer', 'not a gzip member');
  if ((p[3]! & 0x04) === 0) throw new MalformedEstargzError('footer', 'gzip member has no extra field');
  if (p.readUInt16LE(10) !== xlen) throw new MalformedEstargzError('footer', `extra field is ${p.readUInt16LE(10)} bytes, expected ${xlen}`);
}

/**
 * Parses the footer from the last bytes of a blob. `tail` may be longer than the footer (only its
 * end is read), so callers can fetch FOOTER_SIZE bytes and also recognise the legacy footer.
 */
export function parseFooter(tail: Buffer, blobSize?: number): Footer {
  let footer: Footer | undefined;
  if (tail.length >= FOOTER_SIZE) {
    const p = tail.subarray(tail.length - FOOTER_SIZE);
    if (p[0] === 0x1f && p[1] === 0x8b && p.readUInt16LE(10) === 4 + PAYLOAD_LEN && p[12] === 0x53 && p[13] === 0x47) {
      checkGzipHeader(p, 4 + PAYLOAD_LEN);
      if (p.readUInt16LE(14) !== PAYLOAD_LEN) throw new MalformedEstargzError('footer', 'subfield "SG" has the wrong length');
      footer = { tocOffset: parsePayload(p.subarray(16, 16 + PAYLOAD_LEN)), size: FOOTER_SIZE };
    }
  }
  if (!footer && tail.length >= LEGACY_FOOTER_SIZE) {
    const p = tail.subarray(tail.length - LEGACY_FOOTER_SIZE);
    if (p[0] === 0x1f && p[1] === 0x8b && p.readUInt16LE(10) === PAYLOAD_LEN) {
      checkGzipHeader(p, PAYLOAD_LEN);
      footer = { tocOffset: parsePayload(p.subarray(12, 12 + PAYLOAD_LEN)), size: LEGACY_FOOTER_SIZE };
    }
  }
  if (!footer) {
    throw new MalformedEstargzError('footer', tail.length < LEGACY_FOOTER_SIZE ? `blob is only ${tail.length} bytes` : 'no stargz footer at the end of the blob (not an eStargz layer?)');
  }
  if (blobSize !== undefined && footer.tocOffset >= blobSize - footer.size) {
    throw new MalformedEstargzError('footer', `TOC offset ${footer.tocOffset} is beyond the blob's ${blobSize} bytes`);
  }
  return footer;
}
