// What the project's small HTTP servers share (the admin API, dedupd's job socket, the layer
// server's control socket): JSON bodies read within a size limit, JSON answers, and errors as
// {"error": {"code", "message"}} (errors.ts's WireError) with the status that says whose fault it
// was: 4xx for a bad request, 5xx for the server's own faults, 502 for the registry's (upstream).

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import {
  BodyTooLargeError, InvalidArgumentError, isDedupError, MalformedJsonError, MethodNotAllowedError, NotFoundError, toWire,
  UnauthorizedError, UnsupportedMediaTypeError, type ErrorCode,
} from '../errors.js';

/** The one place codes become HTTP statuses. */
export const HTTP_STATUS: { [C in ErrorCode]: number } = {
  ERR_INVALID_ARGUMENT: 400,
  ERR_INVALID_CONFIG: 400,
  ERR_INVALID_REFERENCE: 400,
  ERR_BAD_JSON: 400,
  ERR_UNAUTHORIZED: 401,
  ERR_NOT_FOUND: 404,
  ERR_METHOD_NOT_ALLOWED: 405,
  ERR_ALREADY_EXISTS: 409,
  ERR_FAILED_PRECONDITION: 409,
  ERR_SNAPSHOT_NOT_OURS: 409,
  ERR_BODY_TOO_LARGE: 413,
  ERR_UNSUPPORTED_MEDIA_TYPE: 415,
  ERR_INTERNAL: 500,
  ERR_INVALID_EROFS_TREE: 500,
  ERR_STORE: 500,
  ERR_MOUNT: 500,
  ERR_TREE_REMOVAL: 500,
  ERR_MALFORMED_TRACE: 500,
  ERR_KSM: 500,
  ERR_API_BIND: 500,
  ERR_FREEZE: 500,
  ERR_SANDBOX: 500,
  ERR_CRIU: 500,
  ERR_SHARED_STORE: 500,
  ERR_UNSUPPORTED: 501,
  // Upstream: the registry (or a peer) failed, or what it served is broken.
  ERR_REGISTRY: 502,
  ERR_REGISTRY_AUTH: 502,
  ERR_MALFORMED_MANIFEST: 502,
  ERR_MALFORMED_LAYER: 502,
  ERR_MALFORMED_ESTARGZ: 502,
  ERR_MALFORMED_GZIP_INDEX: 502,
  ERR_TOC_DIGEST_MISMATCH: 502,
  ERR_DIGEST_MISMATCH: 502,
  ERR_CHUNK_DIGEST_MISMATCH: 502,
  ERR_PEER: 502,
  ERR_UNAVAILABLE: 503,
  ERR_POOL_EXHAUSTED: 503,
};

const JSON_TYPES = new Set(['application/json', 'application/merge-patch+json']);

/** Reads a JSON body of at most `limit` bytes (`limitName` says which setting sets it). */
export async function readJson(req: IncomingMessage, limit: number, limitName: string): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (!JSON_TYPES.has(type)) throw new UnsupportedMediaTypeError(type || '(none)', 'the request body (it must be application/json)');
  if (Number(req.headers['content-length'] ?? 0) > limit) throw new BodyTooLargeError(limit, limitName);
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of req as AsyncIterable<Buffer>) {
    size += part.length;
    if (size > limit) throw new BodyTooLargeError(limit, limitName);
    parts.push(part);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8'));
  } catch (err) {
    throw new MalformedJsonError('body', (err as Error).message);
  }
}

/** A JSON body checked against `schema`; the first problem comes back as 400 naming the field. */
export async function readValid<T>(req: IncomingMessage, schema: z.ZodType<T, z.ZodTypeDef, unknown>, limit: number): Promise<T> {
  const r = schema.safeParse(await readJson(req, limit, `${limit} bytes`));
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  throw new InvalidArgumentError(`${issue.path.join('.') || (issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : 'body')}: ${issue.message}`);
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
  if (!byMethod) throw new NotFoundError(`endpoint ${path}`);
  const handler = byMethod[method ?? ''];
  if (!handler) throw new MethodNotAllowedError(method ?? '(none)', path, Object.keys(byMethod));
  return handler;
}

export function send(res: ServerResponse, status: number, body: unknown, type?: string, headers: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': type ?? 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Headers an error's answer carries besides its body. */
function headersOf(err: unknown): Record<string, string> {
  if (err instanceof MethodNotAllowedError) return { allow: err.allow.join(', ') };
  if (err instanceof UnauthorizedError && err.challenge) return { 'www-authenticate': err.challenge };
  return {};
}

/** Answers a failed request with its code's status (HTTP_STATUS); anything not ours is a 500 ERR_INTERNAL. Server faults (5xx) are logged. */
export function sendError(req: IncomingMessage, res: ServerResponse, err: unknown, log: { warn(o: object, m: string): void }): void {
  const wire = toWire(err);
  const status = isDedupError(err) ? HTTP_STATUS[err.code] : 500;
  if (status >= 500) log.warn({ path: req.url, code: wire.code, err: wire.message }, 'HTTP request failed');
  // A body left unread (too large, wrong type) is not drained: the connection closes instead.
  const close: Record<string, string> = req.complete ? {} : { connection: 'close' };
  send(res, status, { error: wire }, undefined, { ...headersOf(err), ...close });
}
