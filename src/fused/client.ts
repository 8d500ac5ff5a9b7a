// The snapshotter's (and dedupctl's) side of the layer server's control socket. The socket is at
// <root>/fused.sock: one layer server per state root, as it owns the root's FUSE mounts.

import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { UnixJsonClient } from '../api/unix-socket.js';
import { binaryPath } from '../binaries.js';
import { MountError, UnavailableError } from '../errors.js';
import type { MountInfo, MountRequest, OpenAheadRequest } from '../layer-server-protocol.js';

/** How long a call waits for a layer server that is being replaced (its socket briefly absent). */
const RECONNECT_MS = 15_000;
const START_TIMEOUT_MS = 30_000;

export function fusedSocket(root: string): string {
  return join(root, 'fused.sock');
}

export interface FusedHealth {
  status: string;
  pid: number;
  version: string;
  mounts: number;
}

export class FusedClient {
  private readonly client: UnixJsonClient;

  constructor(readonly socket: string) {
    this.client = new UnixJsonClient(socket, 'dedup-fused');
  }

  /** A call, retried while the socket is missing or the server is handing over (an upgrade) for up to RECONNECT_MS. */
  private async call<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, retryMs = RECONNECT_MS): Promise<T> {
    const deadline = Date.now() + retryMs;
    for (;;) {
      try {
        return await this.client.call<T>(method, path, body);
      } catch (err) {
        if (!(err instanceof UnavailableError) || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  health(retryMs = RECONNECT_MS): Promise<FusedHealth> {
    return this.call('GET', '/healthz', undefined, retryMs);
  }

  /** True when it mounted; false when the layer was already served there. */
  async mount(request: MountRequest): Promise<boolean> {
    return (await this.call<{ mounted: boolean }>('POST', '/mounts', request)).mounted;
  }

  /** Has the layer server read these layers' footers and TOCs now, for mounts to come; answers at once. */
  async openAhead(request: OpenAheadRequest): Promise<number> {
    return (await this.call<{ opening: number }>('POST', '/tocs', request)).opening;
  }

  async unmount(mountpoint: string): Promise<void> {
    await this.call('DELETE', '/mounts', { mountpoint });
  }

  /** Has the layer server let go of a mount once nothing uses it (LayerServer.retire). */
  async retire(mountpoint: string): Promise<void> {
    await this.call('DELETE', '/mounts', { mountpoint, whenUnused: true });
  }

  async list(): Promise<MountInfo[]> {
    return (await this.call<{ mounts: MountInfo[] }>('GET', '/mounts')).mounts;
  }

  metrics(): Promise<string> {
    return this.call('GET', '/metrics', undefined, 0);
  }

  reload(): Promise<unknown> {
    return this.call('POST', '/reload');
  }

  upgrade(): Promise<{ pid: number }> {
    return this.call('POST', '/upgrade');
  }

  shutdown(): Promise<{ unmounted: number }> {
    return this.call('POST', '/shutdown', undefined, 0);
  }

  close(): Promise<void> {
    return this.client.close();
  }

  /**
   * Starts a layer server for `args` (the state root's flags) in a session of its own, so it
   * outlives the caller, unless one answers already. Returns its pid. Under systemd the layer
   * server is a unit of its own instead (packaging/systemd/dedup-fused.service).
   */
  async ensureRunning(args: string[], logFile: string): Promise<number> {
    const up = await this.health(0).catch(() => undefined);
    if (up) return up.pid;
    const log = openSync(logFile, 'a');
    const child = spawn(process.execPath, [binaryPath('dedup-fused'), '--socket', this.socket, ...args], { detached: true, stdio: ['ignore', log, log] });
    closeSync(log);
    child.unref();
    const exited = new Promise<never>((_, reject) => child.once('exit', (code, signal) =>
      reject(new MountError(`dedup-fused exited (${signal ?? code}) at start; see ${logFile}`))));
    exited.catch(() => undefined);
    return (await Promise.race([this.health(START_TIMEOUT_MS), exited])).pid;
  }
}
