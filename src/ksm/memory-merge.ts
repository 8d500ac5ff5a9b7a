// Opting processes into KSM: prctl(PR_SET_MEMORY_MERGE) through the native addon (native/). The
// setting covers all anonymous memory of the calling process and is inherited by its children
// across fork and (from Linux 6.7) exec, so a launcher that sets it and then spawns a command
// opts that whole process tree in. The kernel offers no way to do it to another running process.

import { release } from 'node:os';
import { KsmError, UnsupportedError } from '../errors.js';
import { isSysError, native, type SysError } from '../native.js';

const EINVAL = 22;

function check<T>(r: T | SysError): T {
  if (isSysError(r)) {
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
