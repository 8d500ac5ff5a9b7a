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

/** A fanotify event as FanotifyReader hands it over. */
export interface FanotifyEvent {
  mask: number;
  /** The listener's own descriptor of the file (opened with the group's event flags): close it once answered. */
  fd: number;
  /** The process whose access raised it. */
  pid: number;
  /** A pre-content event's range; -1 where the event has none (count 0: the whole file). */
  offset: number;
  count: number;
}

export interface FanotifyReader {
  /** Reads nothing more; the last message follows on a later turn. */
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
  fanotifyInit(flags: number, eventFlags: number): number | SysError;
  fanotifyMark(fd: number, flags: number, mask: number, path: string): true | SysError;
  /** Answers a permission event: errno 0 allows, any other denies with that errno (FAN_DENY | FAN_ERRNO). */
  fanotifyRespond(fd: number, eventFd: number, errno: number): true | SysError;
  /** A descriptor of this process for `pid`'s descriptor `fd` (pidfd_getfd): the same open file. */
  pidfdGetfd(pid: number, fd: number): number | SysError;
  FanotifyReader: new (fd: number, onEvent: (event: FanotifyEvent | null, errno: number) => void) => FanotifyReader;
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
