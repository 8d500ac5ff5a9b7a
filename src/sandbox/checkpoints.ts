// CRIU checkpoints on disk: <dir>/<id>/ holds criu's images, checkpoint.json and upper/ (the
// sandbox's writable layer at the dump). A checkpoint is
// dumped into <dir>/.tmp-<id>/, every file and the directory are fsynced, then it is renamed into
// place and the parent fsynced: a crash leaves either a complete checkpoint or a .tmp- directory
// that open() removes (with the .failed- ones kept for their logs). A checkpoint in use (a pool's base) holds references and is not removed.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { access, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { FailedPreconditionError, NotFoundError, StoreError } from '../errors.js';
import type { Criu } from './criu.js';

const metaSchema = z.object({
  id: z.string(),
  /** The sandbox it was taken of, and its pool. */
  sandbox: z.string(),
  pool: z.string(),
  /** base: the pool starts sandboxes from it; sandbox: a recovery point of one sandbox. */
  kind: z.enum(['base', 'sandbox']),
  /** Milliseconds since the epoch. */
  created: z.number(),
  /** The base checkpoint the sandbox had been restored from, if any. */
  from: z.string().optional(),
});
export type CheckpointInfo = z.infer<typeof metaSchema> & { dir: string };

const META = 'checkpoint.json';

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class CheckpointStore {
  private refs = new Map<string, number>();

  private constructor(readonly dir: string, private readonly criu: Criu) {}

  /** Opens (creating) the directory and removes what an interrupted dump left. */
  static async open(dir: string, criu: Criu): Promise<CheckpointStore> {
    await mkdir(dir, { recursive: true });
    for (const name of await readdir(dir)) {
      if (name.startsWith('.tmp-') || name.startsWith('.failed-')) await rm(join(dir, name), { recursive: true, force: true });
    }
    return new CheckpointStore(dir, criu);
  }

  /** Dumps the tree at `pid` as a new checkpoint, atomically. */
  /** `upper`: the tree's writable layer, saved with it (see Criu.dump). */
  async take(pid: number, meta: Omit<CheckpointInfo, 'id' | 'created' | 'dir'>, leaveRunning: boolean, upper?: string): Promise<CheckpointInfo> {
    const id = `ck-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
    const tmp = join(this.dir, `.tmp-${id}`);
    await mkdir(tmp);
    try {
      await this.criu.dump(pid, tmp, leaveRunning, upper);
      const info = { id, created: Date.now(), ...meta };
      await writeFile(join(tmp, META), JSON.stringify(info));
      for (const name of await readdir(tmp)) await fsyncPath(join(tmp, name));
      await fsyncPath(tmp);
      await rename(tmp, join(this.dir, id));
      await fsyncPath(this.dir);
      return { ...info, dir: join(this.dir, id) };
    } catch (err) {
      // Kept on failure only long enough to read the log the error names.
      await rename(tmp, join(this.dir, `.failed-${id}`)).catch(() => rm(tmp, { recursive: true, force: true }));
      throw err;
    }
  }

  /** A complete checkpoint (its metadata parses and criu's inventory is there); NotFoundError otherwise. */
  async get(id: string): Promise<CheckpointInfo> {
    if (!/^ck-[a-z0-9-]+$/.test(id)) throw new NotFoundError(`checkpoint ${id}`, 'not a checkpoint id');
    const dir = join(this.dir, id);
    try {
      const meta = metaSchema.parse(JSON.parse(await readFile(join(dir, META), 'utf8')));
      await access(join(dir, 'inventory.img'));
      return { ...meta, dir };
    } catch {
      throw new NotFoundError(`checkpoint ${id}`, `no complete checkpoint in ${dir}`);
    }
  }

  /** Complete checkpoints, newest first; `sandbox` keeps those of one sandbox. */
  async list(sandbox?: string): Promise<CheckpointInfo[]> {
    const out: CheckpointInfo[] = [];
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (!name.startsWith('ck-')) continue;
      const info = await this.get(name).catch(() => undefined);
      if (info && (sandbox === undefined || info.sandbox === sandbox)) out.push(info);
    }
    return out.sort((a, b) => b.created - a.created);
  }

  /**
   * Makes `upper` (a sandbox's writable layer, not mounted) what it was at the checkpoint: emptied,
   * then the saved copy put in with owners, modes, times, xattrs and whiteouts (cp -a).
   */
  async restoreUpper(ck: CheckpointInfo, upper: string): Promise<void> {
    const saved = join(ck.dir, 'upper');
    if (!existsSync(saved)) return;
    await rm(upper, { recursive: true, force: true });
    await mkdir(upper);
    await new Promise<void>((resolve, reject) => execFile('cp', ['-a', `${saved}/.`, `${upper}/`], (err, _out, stderr) =>
      (err ? reject(new StoreError(`cannot restore ${upper} from checkpoint ${ck.id}: ${stderr.trim() || err.message}`)) : resolve())));
  }

  ref(id: string): void {
    this.refs.set(id, (this.refs.get(id) ?? 0) + 1);
  }

  unref(id: string): void {
    const n = (this.refs.get(id) ?? 0) - 1;
    if (n > 0) this.refs.set(id, n);
    else this.refs.delete(id);
  }

  async remove(id: string): Promise<void> {
    if (this.refs.has(id)) throw new FailedPreconditionError(`checkpoint ${id} is in use (${this.refs.get(id)} references: a pool's base)`);
    await this.get(id);
    await rm(join(this.dir, id), { recursive: true, force: true });
  }
}
