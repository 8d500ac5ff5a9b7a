// The native addon (native/, built by scripts/setup.sh): the system calls Node has no binding for.
// Loaded on first use, so commands that never need it run where it was not built.

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { UnsupportedError } from './errors.js';

/** A failed system call, as the addon reports it. */
export interface SysError {
  errno: number;
  call: string;
  message: string;
}

export interface DeviceReader {
  /** Reads nothing more (every request read was delivered already); the last message follows on a later turn. */
  stop(): void;
}

export interface Native {
  setMemoryMerge(on: boolean): true | SysError;
  getMemoryMerge(): boolean | SysError;
  pageSize(): number;
  mount(source: string, target: string, fstype: string, flags: number, data: string): true | SysError;
  /** A file-backed EROFS image with its blob devices, read-only, through fsopen/fsconfig/fsmount/move_mount. */
  mountErofs(image: string, target: string, devices: string[]): true | SysError;
  /** The name under /sys/fs of the filesystem holding `path` (`erofs/erofs-12`; FS_IOC_GETFSSYSFSPATH, Linux 6.10). */
  sysfsName(path: string): string | SysError;
  /** A file's extended attributes, symlinks not followed ({} where the filesystem has none). */
  readXattrs(path: string): Record<string, Buffer> | SysError;
  /** fallocate(PUNCH_HOLE | KEEP_SIZE): frees the blocks of [offset, offset + length). */
  punchHole(fd: number, offset: number, length: number): true | SysError;
  DeviceReader: new (fd: number, bufferSize: number, onMessage: (request: Buffer | null, errno: number) => void) => DeviceReader;
}

const ADDON = fileURLToPath(new URL('../../native/build/Release/dedup_native.node', import.meta.url));
let loaded: Native | undefined;

export function native(): Native {
  if (!loaded) {
    try {
      loaded = createRequire(import.meta.url)(ADDON) as Native;
    } catch (err) {
      throw new UnsupportedError(`native addon ${ADDON} cannot be loaded (${(err as Error).message}); run scripts/setup.sh to build it`);
    }
  }
  return loaded;
}

export function isSysError(r: unknown): r is SysError {
  return typeof r === 'object' && r !== null && 'errno' in r;
}
