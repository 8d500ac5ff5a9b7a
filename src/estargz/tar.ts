// Tar header encoding for the layers we write. eStargz is tar inside gzip members, and the
// converter must control exactly where each header and each chunk of file data begins, so it
// encodes headers itself (ustar, plus a PAX record block when a field does not fit or xattrs are
// present). Input tars are parsed by tar-reader.ts.

export const BLOCK = 512;
/** Two zero blocks end a tar archive. */
export const TAR_END = Buffer.alloc(2 * BLOCK);

export type TarType = 'file' | 'link' | 'symlink' | 'character-device' | 'block-device' | 'directory' | 'fifo';

const TYPEFLAG: Record<TarType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  'character-device': '3',
  'block-device': '4',
  directory: '5',
  fifo: '6',
};

export interface TarHeader {
  name: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  linkname?: string;
  uname?: string;
  gname?: string;
  devmajor?: number;
  devminor?: number;
  /** Extended attributes, written as PAX "SCHILY.xattr.NAME" records. */
  xattrs?: Record<string, Buffer>;
}

/** Bytes of zero padding after `size` bytes of file data. */
export function tarPadding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

function octal(value: number, width: number): string | undefined {
  const s = value.toString(8);
  return s.length > width - 1 ? undefined : s.padStart(width - 1, '0') + '\0';
}

function fitsString(s: string, max: number): boolean {
  return Buffer.byteLength(s) <= max && !/[^\x00-\x7f]/.test(s);
}

function paxRecord(key: string, value: Buffer): Buffer {
  // "%d %s=%s\n" where %d counts the whole record, itself included.
  const rest = Buffer.byteLength(key) + value.length + 3; // ' ', '=', '\n'
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  return Buffer.concat([Buffer.from(`${len} ${key}=`), value, Buffer.from('\n')]);
}

function ustarBlock(h: {
  name: string; prefix: string; mode: number; uid: number; gid: number; size: number; mtime: number;
  typeflag: string; linkname: string; uname: string; gname: string; devmajor: number; devminor: number;
}): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(h.name, 0, 100);
  b.write(octal(h.mode, 8) ?? '0000000\0', 100, 8, 'latin1');
  b.write(octal(h.uid, 8) ?? '0000000\0', 108, 8, 'latin1');
  b.write(octal(h.gid, 8) ?? '0000000\0', 116, 8, 'latin1');
  b.write(octal(h.size, 12) ?? '00000000000\0', 124, 12, 'latin1');
  b.write(octal(h.mtime, 12) ?? '00000000000\0', 136, 12, 'latin1');
  b.write(h.typeflag, 156, 1, 'latin1');
  b.write(h.linkname, 157, 100);
  b.write('ustar\x0000', 257, 8, 'latin1');
  b.write(h.uname, 265, 32);
  b.write(h.gname, 297, 32);
  b.write(octal(h.devmajor, 8) ?? '0000000\0', 329, 8, 'latin1');
  b.write(octal(h.devminor, 8) ?? '0000000\0', 337, 8, 'latin1');
  b.write(h.prefix, 345, 155);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return b;
}

/** Encodes the header block(s) of one entry: an optional PAX header and its records, then ustar. */
export function encodeTarHeader(h: TarHeader): Buffer {
  const pax: Buffer[] = [];
  let name = h.name;
  let prefix = '';
  if (!fitsString(name, 100)) {
    const cut = name.lastIndexOf('/', 155);
    if (fitsString(name, 256) && cut > 0 && name.length - cut - 1 <= 100 && name.length - cut - 1 > 0) {
      prefix = name.slice(0, cut);
      name = name.slice(cut + 1);
    } else {
      pax.push(paxRecord('path', Buffer.from(h.name)));
      name = Buffer.from(h.name).subarray(0, 100).toString('latin1');
    }
  }
  const linkname = h.linkname ?? '';
  if (!fitsString(linkname, 100)) pax.push(paxRecord('linkpath', Buffer.from(linkname)));
  for (const [field, value, width] of [['size', h.size, 12], ['uid', h.uid, 8], ['gid', h.gid, 8]] as const) {
    if (octal(value, width) === undefined) pax.push(paxRecord(field, Buffer.from(String(value))));
  }
  for (const [field, value] of [['uname', h.uname ?? ''], ['gname', h.gname ?? '']] as const) {
    if (!fitsString(value, 32)) pax.push(paxRecord(field, Buffer.from(value)));
  }
  for (const key of Object.keys(h.xattrs ?? {}).sort()) {
    pax.push(paxRecord(`SCHILY.xattr.${key}`, h.xattrs![key]!));
  }
  const main = ustarBlock({
    name, prefix, mode: h.mode & 0o7777, uid: h.uid, gid: h.gid, size: h.size, mtime: Math.max(0, Math.floor(h.mtime)),
    typeflag: TYPEFLAG[h.type], linkname: fitsString(linkname, 100) ? linkname : linkname.slice(0, 100),
    uname: fitsString(h.uname ?? '', 32) ? h.uname ?? '' : '', gname: fitsString(h.gname ?? '', 32) ? h.gname ?? '' : '',
    devmajor: h.devmajor ?? 0, devminor: h.devminor ?? 0,
  });
  if (pax.length === 0) return main;
  const body = Buffer.concat(pax);
  const paxName = `PaxHeaders.0/${h.name.split('/').filter(Boolean).pop() ?? 'entry'}`.slice(0, 99);
  const paxHeader = ustarBlock({
    name: paxName, prefix: '', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 0, typeflag: 'x',
    linkname: '', uname: '', gname: '', devmajor: 0, devminor: 0,
  });
  return Buffer.concat([paxHeader, body, Buffer.alloc(tarPadding(body.length)), main]);
}
