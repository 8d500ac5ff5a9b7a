// The admin API's sandbox pool endpoints (docs/sandbox.md): GET/POST /pools, POST
// /pools/acquire, /pools/release, /pools/checkpoint, /pools/remove. Bodies are JSON; each change
// is audited with its outcome. The pools themselves live in src/sandbox/ (PoolsApi is their shape).

import type { IncomingMessage } from 'node:http';
import { z } from 'zod';
import type { AuditLog } from '../audit/audit-log.js';
import { readJson, readValid, type Reply, type Routes } from './http.js';

export interface PoolsApi {
  list(): unknown[];
  create(config: unknown): Promise<unknown>;
  acquire(name: string, timeoutMs?: number): Promise<{ id: string; pid: number; ms: number }>;
  release(name: string, id: string, destroy?: boolean): Promise<'frozen' | 'destroyed'>;
  checkpoint(name: string, id: string, asBase?: boolean): Promise<unknown>;
  remove(name: string): Promise<void>;
}

type Handler = (req: IncomingMessage, url: URL, actor: string) => Promise<Reply>;

const named = z.object({ name: z.string().min(1) }).strict();
const acquireBody = named.extend({ timeout_ms: z.number().int().min(0).max(600_000).optional() }).strict();
const sandboxBody = named.extend({ id: z.string().min(1) }).strict();
const releaseBody = sandboxBody.extend({ destroy: z.boolean().optional() }).strict();
const checkpointBody = sandboxBody.extend({ as_base: z.boolean().optional() }).strict();

export function poolRoutes(pools: PoolsApi, audit: AuditLog, bodyLimit: () => number): Routes<Handler> {
  const audited = <T>(actor: string, action: string, target: string, details: Record<string, unknown>, fn: () => Promise<T>): Promise<T> =>
    audit.audited(actor, action, target, details, fn);
  return {
    '/pools': {
      GET: async () => ({ body: { pools: pools.list() } }),
      POST: async (req, _url, actor) => {
        const config = await readJson(req, bodyLimit(), 'api.max_body_bytes');
        const name = String((config as { name?: unknown })?.name ?? '');
        return { status: 201, body: await audited(actor, 'pool.create', name, { config }, () => pools.create(config)) };
      },
    },
    '/pools/acquire': {
      POST: async (req, _url, actor) => {
        const b = await readValid(req, acquireBody, bodyLimit());
        const got = await audited(actor, 'pool.acquire', b.name, {}, () => pools.acquire(b.name, b.timeout_ms));
        return { body: got };
      },
    },
    '/pools/release': {
      POST: async (req, _url, actor) => {
        const b = await readValid(req, releaseBody, bodyLimit());
        const state = await audited(actor, 'pool.release', `${b.name}/${b.id}`, { destroy: b.destroy ?? false }, () => pools.release(b.name, b.id, b.destroy));
        return { body: { id: b.id, state } };
      },
    },
    '/pools/checkpoint': {
      POST: async (req, _url, actor) => {
        const b = await readValid(req, checkpointBody, bodyLimit());
        return { body: await audited(actor, 'pool.checkpoint', `${b.name}/${b.id}`, { as_base: b.as_base ?? false }, () => pools.checkpoint(b.name, b.id, b.as_base)) };
      },
    },
    '/pools/remove': {
      POST: async (req, _url, actor) => {
        const b = await readValid(req, named, bodyLimit());
        await audited(actor, 'pool.remove', b.name, {}, () => pools.remove(b.name));
        return { body: { removed: b.name } };
      },
    },
  };
}
