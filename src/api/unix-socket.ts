// JSON over HTTP on a unix socket: how our processes talk to each other (dedupd's job socket, the
// layer server's control socket). Only local users who can open the socket (mode 0660) get in.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmod, rm } from 'node:fs/promises';
import { Agent, request } from 'undici';
import { fromWire, UnavailableError, type WireError } from '../errors.js';

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

/**
 * A client of one of those sockets. An error answer is rebuilt as the class of its code
 * (fromWire); a socket that is missing or refuses connections is an UnavailableError.
 */
export class UnixJsonClient {
  private readonly dispatcher: Agent;

  /** `hint`: what to check when nothing listens on the socket. */
  constructor(readonly socket: string, private readonly peer: string, private readonly hint = `is ${peer} running?`) {
    this.dispatcher = new Agent({ connect: { socketPath: socket } });
  }

  async call<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, timeoutMs = 300_000): Promise<T> {
    const r = await request(`http://${this.peer}${path}`, {
      method, dispatcher: this.dispatcher, body: body === undefined ? undefined : JSON.stringify(body),
      headers: body === undefined ? {} : { 'content-type': 'application/json' }, headersTimeout: timeoutMs, bodyTimeout: timeoutMs,
    }).catch((err: NodeJS.ErrnoException) => {
      const cause = (err.cause as NodeJS.ErrnoException | undefined)?.code ?? err.code;
      if (cause === 'ENOENT') throw new UnavailableError(`${this.peer} socket ${this.socket} not found (${this.hint})`);
      if (cause === 'ECONNREFUSED') throw new UnavailableError(`${this.peer} socket ${this.socket} refuses connections (${this.hint})`);
      throw err;
    });
    const text = await r.body.text();
    if (r.statusCode >= 400) throw fromWire(this.peer, errorOf(text), r.statusCode);
    return (r.headers['content-type']?.toString().startsWith('application/json') ? JSON.parse(text) : text) as T;
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }
}

/** The error a body carries, if it is {"error": {...}} (a proxy or a crash may answer anything). */
function errorOf(text: string): Partial<WireError> | undefined {
  try {
    return (JSON.parse(text) as { error?: Partial<WireError> }).error;
  } catch {
    return undefined;
  }
}
