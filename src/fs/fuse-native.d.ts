// The part of fuse-native's API we use (the package ships no types).
declare module 'fuse-native' {
  type Cb<T extends unknown[] = []> = (err: number, ...rest: T) => void;
  export interface Stat {
    mode: number; uid: number; gid: number; size: number; nlink: number; ino: number; rdev: number;
    blksize: number; blocks: number; mtime: Date | number; atime: Date | number; ctime: Date | number; dev?: number;
  }
  export interface Ops {
    init?(cb: Cb): void;
    getattr?(path: string, cb: Cb<[Stat?]>): void;
    readdir?(path: string, cb: Cb<[string[]?, Stat[]?]>): void;
    open?(path: string, flags: number, cb: Cb<[number?]>): void;
    release?(path: string, fd: number, cb: Cb): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void;
    readlink?(path: string, cb: Cb<[string?]>): void;
    getxattr?(path: string, name: string, position: number, cb: Cb<[Buffer?]>): void;
    listxattr?(path: string, cb: Cb<[string[]?]>): void;
    statfs?(path: string, cb: Cb<[Record<string, number>?]>): void;
    access?(path: string, mode: number, cb: Cb): void;
  }
  export interface FuseOptions {
    force?: boolean; mkdir?: boolean; debug?: boolean; allowOther?: boolean; defaultPermissions?: boolean; kernelCache?: boolean;
    maxRead?: number; fsname?: string; subtype?: string; entryTimeout?: number; attrTimeout?: number;
    timeout?: number | false | Record<string, number | false>;
  }
  export default class Fuse {
    constructor(mnt: string, ops: Ops, opts?: FuseOptions);
    readonly mnt: string;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    protected _fuseOptions(): string;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static readonly ENOENT: number; static readonly EIO: number; static readonly EROFS: number; static readonly ENODATA: number;
    static readonly EACCES: number; static readonly ENOTDIR: number; static readonly EINVAL: number;
  }
}
