// Opting processes into KSM: prctl(PR_SET_MEMORY_MERGE) through the native addon (native/). The
// setting covers all anonymous memory of the calling process and is inherited by its children
// across fork and (from Linux 6.7) exec, so a launcher that sets it and then spawns a command
// opts that whole process tree in. The kernel offers no way to do it to another running process.

import { createRequire } from 'node:module';
import { release } from 'node:os';
import { fileURLToPath } from 'node:url';
import { KsmError, UnsupportedError } from '../errors.js';

interface Native {
  setMemoryMerge(on: boolean): true | SysError;
  getMemoryMerge(): boolean | SysError;
  pageSize(): number;
}

interface SysError {
  errno: number;
  call: string;
  message: string;
}

const ADDON = fileURLToPath(new URL('../../../native/build/Release/dedup_native.node', import.meta.url));
const EINVAL = 22;
let loaded: Native | undefined;

function native(): Native {
  if (!loaded) {
    try {
      loaded = createRequire(import.meta.url)(ADDON) as Native;
    } catch (err) {
      throw new UnsupportedError(`native addon ${ADDON} cannot be loaded (${(err as Error).message}); run scripts/setup.sh to build it`);
    }
  }
  return loaded;
}

function check<T>(r: T | SysError): T {
  if (typeof r === 'object' && r !== null && 'errno' in r) {
    if (r.errno === EINVAL) throw new UnsupportedError(`${r.call}: kernel ${release()} lacks per-process KSM (needs Linux 6.4 or later)`);
    throw new KsmError(`${r.call}: ${r.message}`);
  }
  return r as T;
}

/** Opts this process (and the children it starts from now on) in or out of KSM merging. */
export function setMemoryMerge(on: boolean): void {
  check(native().setMemoryMerge(on));
}

export function getMemoryMerge(): boolean {
  return check(native().getMemoryMerge());
}

export function pageSize(): number {
  return native().pageSize();
}
