// What the project's small HTTP servers share (the admin API, dedupd's job socket): JSON bodies
// read within a size limit, JSON answers, and errors as {"error": {"code", "message"}} with the
// status that says what was wrong.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import { isDedupError } from '../errors.js';

export class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly headers: Record<string, string> = {}) {
    super(message);
  }
}

const JSON_TYPES = new Set(['application/json', 'application/merge-patch+json']);

/** Reads a JSON body of at most `limit` bytes (`limitName` says which setting sets it). */
export async function readJson(req: IncomingMessage, limit: number, limitName: string): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (!JSON_TYPES.has(type)) throw new HttpError(415, 'ERR_UNSUPPORTED_MEDIA_TYPE', `body must be application/json, not "${type || '(none)'}"`);
  if (Number(req.headers['content-length'] ?? 0) > limit) throw new HttpError(413, 'ERR_BODY_TOO_LARGE', `body over ${limit} bytes (${limitName})`);
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of req as AsyncIterable<Buffer>) {
    size += part.length;
    if (size > limit) throw new HttpError(413, 'ERR_BODY_TOO_LARGE', `body over ${limit} bytes (${limitName})`);
    parts.push(part);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8'));
  } catch (err) {
    throw new HttpError(400, 'ERR_BAD_JSON', `body is not valid JSON (${(err as Error).message})`);
  }
}

/** A JSON body checked against `schema`; the first problem comes back as 400 naming the field. */
export async function readValid<T>(req: IncomingMessage, schema: z.ZodType<T, z.ZodTypeDef, unknown>, limit: number): Promise<T> {
  const r = schema.safeParse(await readJson(req, limit, `${limit} bytes`));
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  throw new HttpError(400, 'ERR_INVALID_ARGUMENT', `${issue.path.join('.') || (issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : 'body')}: ${issue.message}`);
}

export interface Reply {
  status?: number;
  body: unknown;
  type?: string;
}

/** Handlers by path, then by method. */
export type Routes<H> = Record<string, Partial<Record<string, H>>>;

/** The handler for a request, or the 404 / 405 (with Allow) that says why there is none. */
export function route<H>(routes: Routes<H>, method: string | undefined, path: string): H {
  const byMethod = routes[path];
  if (!byMethod) throw new HttpError(404, 'ERR_NOT_FOUND', `no such endpoint: ${path}`);
  const handler = byMethod[method ?? ''];
  if (!handler) throw new HttpError(405, 'ERR_METHOD_NOT_ALLOWED', `${method} not allowed on ${path}`, { allow: Object.keys(byMethod).join(', ') });
  return handler;
}

export function send(res: ServerResponse, status: number, body: unknown, type?: string, headers: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': type ?? 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

const DEDUP_STATUS: Partial<Record<string, number>> = { ERR_NOT_FOUND: 404, ERR_ALREADY_EXISTS: 409, ERR_UNAVAILABLE: 503, ERR_POOL_EXHAUSTED: 503 };

/** Answers a failed request: HttpError as it says, a DedupError as 404, 409, 503 (unavailable, pool exhausted) or 400, anything else 500 (logged). */
export function sendError(req: IncomingMessage, res: ServerResponse, err: unknown, log: { warn(o: object, m: string): void }): void {
  // A body left unread (too large, wrong type) is not drained: the connection closes instead.
  const close: Record<string, string> = req.complete ? {} : { connection: 'close' };
  if (err instanceof HttpError) return send(res, err.status, { error: { code: err.code, message: err.message } }, undefined, { ...err.headers, ...close });
  if (isDedupError(err)) return send(res, DEDUP_STATUS[err.code] ?? 400, { error: { code: err.code, message: err.message } });
  log.warn({ path: req.url, err: (err as Error).message }, 'HTTP request failed');
  send(res, 500, { error: { code: 'ERR_INTERNAL', message: (err as Error).message } });
}
