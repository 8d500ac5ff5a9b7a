// dedupd's job socket: HTTP on a unix socket (only local users who can open it may queue work).
//   POST /prefetch {"image": REF, "full": false}  -> 202 and the job
//   GET  /prefetch                                  -> {"jobs": [...]}, newest first
//   GET  /prefetch/<id>                             -> the job
//   GET  /healthz

import type { IncomingMessage, Server } from 'node:http';
import { z } from 'zod';
import { readValid, route, send, sendError, type Reply, type Routes } from '../api/http.js';
import { closeUnix, listenUnix } from '../api/unix-socket.js';
import { NotFoundError } from '../errors.js';
import { VERSION } from '../version.js';
import type { PrefetchQueue } from './prefetch-queue.js';

const MAX_BODY = 64 * 1024;
const requestSchema = z.object({ image: z.string().min(1), full: z.boolean().default(false) }).strict();

export class PrefetchServer {
  private constructor(private readonly server: Server, readonly socket: string) {}

  static async start(socket: string, queue: PrefetchQueue, log: { warn(o: object, m: string): void }): Promise<PrefetchServer> {
    const routes: Routes<(req: IncomingMessage) => Promise<Reply>> = {
      '/healthz': { GET: async () => ({ body: { status: 'ok', version: VERSION } }) },
      '/prefetch': {
        GET: async () => ({ body: { jobs: queue.list() } }),
        POST: async (req) => {
          const job = await readValid(req, requestSchema, MAX_BODY);
          return { status: 202, body: queue.add(job.image, job.full) };
        },
      },
    };
    const server = await listenUnix(socket, (req, res) => {
      const path = new URL(req.url ?? '/', 'http://dedupd').pathname;
      const job = /^\/prefetch\/([0-9a-f]+)$/.exec(path);
      const serve = async (): Promise<Reply> => {
        if (job && req.method === 'GET') {
          const found = queue.get(job[1]!);
          if (!found) throw new NotFoundError(`prefetch job ${job[1]}`);
          return { body: found };
        }
        return route(routes, req.method, path)(req);
      };
      serve().then((r) => send(res, r.status ?? 200, r.body), (err: unknown) => sendError(req, res, err, log));
    });
    return new PrefetchServer(server, socket);
  }

  close(): Promise<void> {
    return closeUnix(this.server, this.socket);
  }
}
