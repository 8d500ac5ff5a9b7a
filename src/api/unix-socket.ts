// JSON over HTTP on a unix socket: how our processes talk to each other (dedupd's job socket, the
// layer server's control socket). Only local users who can open the socket (mode 0660) get in.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmod, rm } from 'node:fs/promises';
import { Agent, request } from 'undici';
import { NotFoundError } from '../errors.js';

/** Listens on `socket`, replacing a socket file left by a process that was killed. */
export async function listenUnix(socket: string, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Server> {
  const server = createServer(handler);
  await rm(socket, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, () => resolve());
  });
  await chmod(socket, 0o660);
  return server;
}

/** Stops listening, drops idle connections, and removes the socket file unless another process may have bound it since (`keepFile`). */
export async function closeUnix(server: Server, socket: string, keepFile = false): Promise<void> {
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
  if (!keepFile) await rm(socket, { force: true });
}

/** A client of one of those sockets; `refused` makes the typed error for an error answer. */
export class UnixJsonClient {
  private readonly dispatcher: Agent;

  /** `hint`: what to check when nothing listens on the socket. */
  constructor(readonly socket: string, private readonly peer: string, private readonly refused: (code: string, message: string) => Error,
    private readonly hint = `is ${peer} running?`) {
    this.dispatcher = new Agent({ connect: { socketPath: socket } });
  }

  async call<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, timeoutMs = 300_000): Promise<T> {
    const r = await request(`http://${this.peer}${path}`, {
      method, dispatcher: this.dispatcher, body: body === undefined ? undefined : JSON.stringify(body),
      headers: body === undefined ? {} : { 'content-type': 'application/json' }, headersTimeout: timeoutMs, bodyTimeout: timeoutMs,
    }).catch((err: NodeJS.ErrnoException) => {
      const cause = (err.cause as NodeJS.ErrnoException | undefined)?.code ?? err.code;
      if (cause === 'ENOENT' || cause === 'ECONNREFUSED') throw new NotFoundError(`${this.peer} socket ${this.socket}`, this.hint);
      throw err;
    });
    const text = await r.body.text();
    if (r.statusCode >= 400) {
      const doc = JSON.parse(text) as { error?: { code: string; message: string } };
      throw this.refused(doc.error?.code ?? `HTTP ${r.statusCode}`, doc.error?.message ?? 'request refused');
    }
    return (r.headers['content-type']?.toString().startsWith('application/json') ? JSON.parse(text) : text) as T;
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }
}
