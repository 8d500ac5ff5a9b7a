// The layer server's control socket (HTTP on a unix socket, like dedupd's):
//   GET    /healthz                 -> {status, pid, version, mounts}
//   GET    /mounts                  -> {mounts: [...]}
//   POST   /mounts   MountRequest   -> 201 {mounted: true}, or 200 {mounted: false} when already served there
//   DELETE /mounts   {mountpoint}   -> {unmounted: mountpoint}
//                    {mountpoint, whenUnused: true} -> {retired: mountpoint}: leaves the mountpoint, served until unused
//   POST   /tocs     {image, layers: [digest]} -> 202 {opening: n}: reads those layers' footers and TOCs ahead of their mounts
//   GET    /metrics                 -> Prometheus text (fetches, store, mounts)
//   POST   /reload                  -> re-reads the config file (prefetch settings, log level)
//   POST   /upgrade                 -> {pid}: a new process serves every mount; this one leaves
//   POST   /shutdown                -> {unmounted: n}: unmounts everything and exits (the full teardown)

import type { IncomingMessage, Server } from 'node:http';
import { z } from 'zod';
import { readValid, route, send, sendError, type Reply, type Routes } from '../api/http.js';
import { closeUnix, listenUnix } from '../api/unix-socket.js';
import { VERSION } from '../version.js';
import { mountRequestSchema, openAheadRequestSchema } from '../layer-server-protocol.js';
import type { LayerServer } from './layer-server.js';

const MAX_BODY = 64 * 1024;
const unmountSchema = z.object({ mountpoint: z.string().startsWith('/'), whenUnused: z.boolean().default(false) }).strict();

export interface ControlActions {
  metrics(): Promise<string>;
  reload(): Promise<unknown>;
  upgrade(): Promise<{ pid: number }>;
  shutdown(): Promise<{ unmounted: number }>;
}

export class ControlApi {
  private constructor(private readonly server: Server, readonly socket: string) {}

  /** `seen`: called for every request (a client is alive). */
  static async start(socket: string, layers: LayerServer, actions: ControlActions, log: { warn(o: object, m: string): void }, seen?: () => void): Promise<ControlApi> {
    const routes: Routes<(req: IncomingMessage) => Promise<Reply>> = {
      '/healthz': { GET: async () => ({ body: { status: 'ok', pid: process.pid, version: VERSION, mounts: layers.size } }) },
      '/mounts': {
        GET: async () => ({ body: { mounts: layers.list() } }),
        POST: async (req) => {
          const mounted = await layers.mount(await readValid(req, mountRequestSchema, MAX_BODY));
          return { status: mounted ? 201 : 200, body: { mounted } };
        },
        DELETE: async (req) => {
          const { mountpoint, whenUnused } = await readValid(req, unmountSchema, MAX_BODY);
          if (whenUnused) {
            await layers.retire(mountpoint);
            return { body: { retired: mountpoint } };
          }
          await layers.unmount(mountpoint);
          return { body: { unmounted: mountpoint } };
        },
      },
      '/tocs': {
        POST: async (req) => ({ status: 202, body: { opening: layers.openAhead(await readValid(req, openAheadRequestSchema, MAX_BODY)) } }),
      },
      '/metrics': { GET: async () => ({ body: await actions.metrics(), type: 'text/plain; version=0.0.4; charset=utf-8' }) },
      '/reload': { POST: async () => ({ body: await actions.reload() }) },
      '/upgrade': { POST: async () => ({ body: await actions.upgrade() }) },
      '/shutdown': { POST: async () => ({ body: await actions.shutdown() }) },
    };
    const server = await listenUnix(socket, (req, res) => {
      seen?.();
      const path = new URL(req.url ?? '/', 'http://dedup-fused').pathname;
      Promise.resolve().then(() => route(routes, req.method, path)(req))
        .then((r) => send(res, r.status ?? 200, r.body, r.type), (err: unknown) => sendError(req, res, err, log));
    });
    return new ControlApi(server, socket);
  }

  /**
   * Stops listening; the path is unlinked at once (libuv does it when the listener closes), and
   * with `handedOver` not again once connections have ended, as a successor may have bound it.
   */
  close(handedOver = false): Promise<void> {
    return closeUnix(this.server, this.socket, handedOver);
  }
}
