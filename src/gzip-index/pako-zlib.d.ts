// Types for the two modules of pako's zlib port that the index builder drives directly: inflate
// with Z_BLOCK, which stops at every deflate block boundary and says where (data_type), which
// Node's zlib does not expose.

declare module 'pako/lib/zlib/zstream.js' {
  export default class ZStream {
    input: Uint8Array | null;
    next_in: number;
    avail_in: number;
    total_in: number;
    output: Uint8Array | null;
    next_out: number;
    avail_out: number;
    total_out: number;
    msg: string;
    /** Unused bits in the last input byte, +64 in the last block, +128 at a block boundary. */
    data_type: number;
  }
}

declare module 'pako/lib/zlib/inflate.js' {
  import type ZStream from 'pako/lib/zlib/zstream.js';
  export function inflateInit2(strm: ZStream, windowBits: number): number;
  export function inflate(strm: ZStream, flush: number): number;
  export function inflateEnd(strm: ZStream): number;
}
