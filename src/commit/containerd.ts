// What a commit needs to know from containerd, asked through its own client `ctr` (the API over
// containerd's socket): the container (image, snapshotter, snapshot key), its task's pid and
// status, the image's target, and the manifest and config blobs from containerd's content
// store, where a lazy pull leaves them too (only layer blobs are skipped), so nothing comes from
// the registry.

import { execFile } from 'node:child_process';
import { z } from 'zod';
import { InvalidArgumentError, NotFoundError, UnavailableError } from '../errors.js';
import {
  configSchema, indexSchema, isIndexMediaType, manifestSchema, parseJson, selectPlatform,
  type ImageConfig, type ImageManifest, type Platform,
} from '../image/oci.js';
import { parseValidatedJson } from '../validated-json.js';
import { SHA256_DIGEST } from '../digest.js';

export interface ContainerdTarget {
  /** containerd's socket. */
  address: string;
  namespace: string;
}

export interface ContainerInfo {
  id: string;
  image: string;
  snapshotter: string;
  snapshotKey: string;
}

export type TaskStatus = 'RUNNING' | 'PAUSED' | 'STOPPED' | 'CREATED' | 'PAUSING' | 'UNKNOWN';

export interface ContainerImage {
  manifestDigest: string;
  manifest: ImageManifest;
  configBytes: Buffer;
  config: ImageConfig;
}

const containerSchema = z.object({
  ID: z.string(),
  Image: z.string(),
  Snapshotter: z.string(),
  SnapshotKey: z.string(),
}).passthrough();

const CTR_TIMEOUT_MS = 60_000;

export class Containerd {
  constructor(readonly target: ContainerdTarget, private readonly ctrPath = 'ctr') {}

  /** Runs ctr; `what` names the thing a "not found" is about. */
  private ctr(args: string[], what: string, encoding: 'utf8' | 'buffer' = 'utf8'): Promise<{ stdout: string | Buffer; stderr: string }> {
    return new Promise((resolve, reject) => {
      execFile(this.ctrPath, ['--address', this.target.address, '--namespace', this.target.namespace, ...args],
        { timeout: CTR_TIMEOUT_MS, maxBuffer: 256 * 1024 * 1024, encoding }, (err, stdout, stderr) => {
          const errText = Buffer.isBuffer(stderr) ? stderr.toString('utf8') : stderr;
          if (!err) return resolve({ stdout, stderr: errText });
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new UnavailableError(`${this.ctrPath} (containerd's client) is not installed`));
          const why = errText.trim().replace(/^ctr: /, '') || err.message;
          if (/not found/.test(why)) return reject(new NotFoundError(`${what} in namespace "${this.target.namespace}" of ${this.target.address}`, why));
          reject(new UnavailableError(`ctr ${args.join(' ')} at ${this.target.address}: ${why}`));
        });
    });
  }

  async container(id: string): Promise<ContainerInfo> {
    if (!id || id.startsWith('-')) throw new InvalidArgumentError(`container id "${id}" is not valid`);
    const { stdout } = await this.ctr(['containers', 'info', id], `container "${id}"`);
    const c = parseValidatedJson(containerSchema, stdout as string, (why) => new UnavailableError(`ctr containers info ${id}: unexpected output (${why})`));
    return { id: c.ID, image: c.Image, snapshotter: c.Snapshotter, snapshotKey: c.SnapshotKey };
  }

  /** The container's task, or undefined when it has none (never started, or deleted). */
  async task(id: string): Promise<{ pid: number; status: TaskStatus } | undefined> {
    const { stdout } = await this.ctr(['tasks', 'ls'], 'tasks');
    for (const line of (stdout as string).split('\n').slice(1)) {
      const [name, pid, status] = line.trim().split(/\s+/);
      if (name === id) return { pid: Number(pid), status: (status ?? 'UNKNOWN') as TaskStatus };
    }
    return undefined;
  }

  private async blob(digest: string): Promise<Buffer> {
    if (!SHA256_DIGEST.test(digest)) throw new InvalidArgumentError(`"${digest}" is not a sha256 digest`);
    return (await this.ctr(['content', 'get', digest], `blob ${digest}`, 'buffer')).stdout as Buffer;
  }

  /** The image's manifest (the platform's, for an index) and config, from the content store. */
  async image(name: string, platform: Platform): Promise<ContainerImage> {
    const { stdout } = await this.ctr(['images', 'ls', `name==${name}`], `image "${name}"`);
    const row = (stdout as string).split('\n').slice(1).map((l) => l.trim().split(/\s+/)).find((cols) => cols[0] === name);
    if (!row || !row[2]) throw new NotFoundError(`image "${name}" in namespace "${this.target.namespace}"`, 'the container\'s image was removed from containerd');
    let digest = row[2];
    let bytes = await this.blob(digest);
    if (isIndexMediaType(row[1])) {
      digest = selectPlatform(parseJson(indexSchema, bytes, `image index of ${name}`), platform, `image index of ${name}`).digest;
      bytes = await this.blob(digest);
    }
    const manifest = parseJson(manifestSchema, bytes, `manifest of ${name}`);
    const configBytes = await this.blob(manifest.config.digest);
    return { manifestDigest: digest, manifest, configBytes, config: parseJson(configSchema, configBytes, `config of ${name}`) };
  }
}
