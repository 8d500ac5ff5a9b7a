// The admin HTTP API (seed: port 8080, on loopback unless configured): GET/POST /config,
// GET /audit/logs, GET /metrics (Prometheus text), GET /healthz, POST /commit (a container into
// a new image, docs/commit.md). With api.token set, every request but /healthz must carry
// "Authorization: Bearer <token>". Errors are JSON:
// {"error": {"code": "...", "message": "..."}} with the code's status (http.ts's HTTP_STATUS).

import { timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AuditLog } from '../audit/audit-log.js';
import { ApiBindError, InvalidArgumentError, UnauthorizedError } from '../errors.js';
import { parseHostPort, redactConfig } from '../config/config.js';
import type { LiveConfig } from '../config/live-config.js';
import type { DaemonMetrics } from '../metrics/metrics.js';
import { z } from 'zod';
import { readJson, readValid, route, send, sendError, type Reply, type Routes } from './http.js';
import { poolRoutes, type PoolsApi } from './pool-routes.js';
import { VERSION } from '../version.js';

export interface AdminApiOptions {
  addr: string;
  config: LiveConfig;
  audit: AuditLog;
  metrics: DaemonMetrics;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
  /** Commits a container (POST /commit); the answer is its report. */
  commit?: (req: CommitBody) => Promise<object>;
  /** The daemon's sandbox pools (the /pools endpoints). */
  pools?: PoolsApi;
}

/** POST /commit: the fields of `dedupctl commit`. */
export const commitBodySchema = z.object({
  container: z.string().min(1),
  ref: z.string().min(1),
  address: z.string().min(1).default('/run/containerd/containerd.sock'),
  namespace: z.string().min(1).default('default'),
  snapshotter: z.string().min(1).default('dedup'),
  platform: z.string().default('linux/amd64'),
  plain_http: z.boolean().default(false),
}).strict();
export type CommitBody = z.infer<typeof commitBodySchema>;

type Handler = (req: IncomingMessage, url: URL, actor: string) => Promise<Reply>;

export class AdminApi {
  private constructor(private readonly server: Server, readonly address: string) {}

  static async start(opts: AdminApiOptions): Promise<AdminApi> {
    const routes: Routes<Handler> = {
      '/healthz': { GET: async () => ({ body: { status: 'ok', version: VERSION } }) },
      '/config': {
        GET: async () => ({ body: redactConfig(opts.config.get()) }),
        POST: async (req, _url, actor) => {
          const patch = await readJson(req, opts.config.get().api.max_body_bytes, 'api.max_body_bytes');
          try {
            const change = await opts.config.update(patch);
            opts.audit.record(actor, 'config.update', opts.config.file, { patch: redactPatch(patch), changed: change.changed });
            return { body: { config: redactConfig(change.config), changed: change.changed, applied: change.applied, restart_required: change.restartRequired } };
          } catch (err) {
            opts.audit.record(actor, 'config.update', opts.config.file, { patch: redactPatch(patch), error: (err as Error).message }, (err as { code?: string }).code ?? 'error');
            throw err;
          }
        },
      },
      '/audit/logs': {
        GET: async (_req, url) => ({ body: { entries: opts.audit.list(auditQuery(url.searchParams)) } }),
      },
      '/metrics': {
        GET: async () => ({ body: await opts.metrics.text(), type: opts.metrics.contentType }),
      },
      ...(opts.pools ? poolRoutes(opts.pools, opts.audit, () => opts.config.get().api.max_body_bytes) : {}),
    };
    const commit = opts.commit;
    if (commit) {
      routes['/commit'] = {
        POST: async (req, _url, actor) => {
          const body = await readValid(req, commitBodySchema, opts.config.get().api.max_body_bytes);
          const { container, namespace, address } = body;
          return { body: await opts.audit.audited(actor, 'container.commit', body.ref, { container, namespace, address }, () => commit(body)) };
        },
      };
    }

    const server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://admin');
      const actor = `api ${req.socket.remoteAddress ?? 'unknown'}`;
      const serve = async (): Promise<Reply> => {
        const handler = route(routes, req.method, url.pathname);
        if (url.pathname !== '/healthz') authorize(req, opts.config.get().api.token);
        return handler(req, url, actor);
      };
      serve().then((r) => send(res, r.status ?? 200, r.body, r.type), (err: unknown) => sendError(req, res, err, opts.log));
    });
    server.requestTimeout = 30_000;
    server.headersTimeout = 10_000;
    const { host, port } = parseHostPort(opts.addr)!;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(new ApiBindError(opts.addr, err.code === 'EADDRINUSE' ? 'address in use' : err.message)));
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const a = server.address() as AddressInfo;
    return new AdminApi(server, a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

function authorize(req: IncomingMessage, token: string): void {
  if (!token) return;
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  const given = Buffer.from(m?.[1] ?? '');
  const want = Buffer.from(token);
  if (given.length !== want.length || !timingSafeEqual(given, want)) {
    throw new UnauthorizedError(m ? 'wrong bearer token' : 'this API needs "Authorization: Bearer <api.token>"', 'Bearer realm="dedup-snapshotter"');
  }
}

function auditQuery(q: URLSearchParams): { limit: number; since?: Date; action?: string } {
  const known = new Set(['limit', 'since', 'action']);
  for (const k of q.keys()) if (!known.has(k)) throw new InvalidArgumentError(`unknown query parameter "${k}" (limit, since, action)`);
  const limit = q.has('limit') ? Number(q.get('limit')) : 100;
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new InvalidArgumentError(`limit must be an integer from 1 to 10000, not "${q.get('limit')}"`);
  let since: Date | undefined;
  if (q.has('since')) {
    const s = q.get('since')!;
    since = new Date(/^\d+$/.test(s) ? Number(s) : s);
    if (Number.isNaN(since.getTime())) throw new InvalidArgumentError(`since must be an ISO 8601 time or milliseconds since the epoch, not "${s}"`);
  }
  return { limit, since, action: q.get('action') ?? undefined };
}

/** A patch as the audit log keeps it: a new token is never written down. */
function redactPatch(patch: unknown): unknown {
  const p = patch as { api?: { token?: unknown } };
  return p?.api?.token !== undefined ? { ...p, api: { ...p.api, token: '<redacted>' } } : patch;
}
