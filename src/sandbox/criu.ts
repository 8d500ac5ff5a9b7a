// CRIU as this machine can run it: Debian 13's criu 4.1.1 unpacked with its own libraries into a
// private prefix (scripts/setup.sh) and started through that prefix's dynamic loader, so nothing
// of Debian 13's C library is installed system-wide. Debian 12's criu 3.17 fails `criu check` on
// this kernel.

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CriuError } from '../errors.js';

/** Where scripts/setup.sh unpacks it. */
export const DEFAULT_CRIU_PREFIX = '/opt/dedup-snapshotter/criu';

/**
 * Where criu's kernel probe cache (criu.kdat) is kept for restores: criu keeps it only on a
 * tmpfs, and this machine's /run is not one, so the sandbox shim binds this directory over /run
 * for criu (native/sandbox_shim.c, -k). A restore then skips ~100 ms of probing.
 */
export const KDAT_DIR = '/dev/shm/dedup-snapshotter-criu';

function run(argv: string[], timeoutMs: number): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, out: `${stdout}${stderr}`.trim() });
    });
  });
}

export class Criu {
  /** The command line that runs criu: loader, library path, binary. */
  private constructor(readonly argv: string[]) {}

  /** The criu of a private prefix; CriuError when it is not there. */
  static at(prefix: string = DEFAULT_CRIU_PREFIX): Criu {
    const libs = [join(prefix, 'usr/lib/x86_64-linux-gnu'), join(prefix, 'lib/x86_64-linux-gnu')];
    const loader = join(libs[0]!, 'ld-linux-x86-64.so.2');
    const bin = join(prefix, 'usr/sbin/criu');
    if (!existsSync(loader) || !existsSync(bin)) {
      throw new CriuError(`no CRIU in ${prefix} (${bin} with its loader ${loader}); scripts/setup.sh installs Debian 13's criu there`);
    }
    return new Criu([loader, '--library-path', libs.join(':'), bin]);
  }

  /** `criu check`: CriuError with its output unless it says the kernel does what it needs. */
  async check(): Promise<void> {
    const r = await run([...this.argv, 'check'], 30_000);
    if (r.code !== 0 || !/Looks good/.test(r.out)) throw new CriuError(`criu check failed (exit ${r.code}): ${r.out.split('\n').slice(-3).join('; ')}`);
  }

  /**
   * Dumps the process tree rooted at `pid` into `dir` (which must exist); `leaveRunning` keeps it
   * going. `upper`, the tree's writable layer, is copied to <dir>/upper by criu's post-dump action,
   * which runs while the tree is still stopped: files and memory are of the same instant (criu
   * refuses to restore a file whose size changed since the dump).
   */
  async dump(pid: number, dir: string, leaveRunning: boolean, upper?: string): Promise<void> {
    const copy: string[] = [];
    if (upper) {
      // criu runs an action script by execvp, once per action; only post-dump copies.
      const script = join(dir, 'save-upper.sh');
      await mkdir(join(dir, 'upper'));
      await writeFile(script, `#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" != post-dump ] || { cp -a '${upper}/.' '${join(dir, 'upper')}/' && sync -f '${dir}'; }\n`, { mode: 0o755 });
      copy.push('--action-script', script);
    }
    const args = ['dump', '-t', String(pid), '-D', dir, '-o', 'dump.log', ...(leaveRunning ? ['--leave-running'] : []), ...copy];
    const r = await run([...this.argv, ...args], 120_000);
    if (r.code !== 0) throw new CriuError(`criu dump of pid ${pid} failed (exit ${r.code}); see ${join(dir, 'dump.log')}`);
  }

  /**
   * The restore command the sandbox shim runs: the tree comes back as the shim's child
   * (--restore-sibling), in the shim's cgroup (cgroups left alone), on `rootfs`. Its log and
   * statistics go to `workDir`, so several sandboxes restore the same checkpoint at once.
   */
  restoreArgv(dir: string, rootfs: string, pidfile: string, workDir: string): string[] {
    return [...this.argv, 'restore', '-D', dir, '-W', workDir, '-o', 'restore.log', '--root', rootfs, '--restore-sibling', '--restore-detached',
      '--pidfile', pidfile, '--manage-cgroups=ignore'];
  }
}
