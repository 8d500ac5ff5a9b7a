// Replacing the layer server by a new process (an upgrade) without dropping a mount. The old
// process starts the successor with every FUSE descriptor inherited (same open file, so the
// kernel sees one connection throughout) and an IPC channel (a kernel EROFS mount has no
// descriptor: the successor marks its chunk directory too, and either process fills a chunk); the successor rebuilds each layer's
// tree, whose inode numbers are the ones the kernel knows, and starts reading; the old one gives
// up the control socket, which the successor binds at once, then stops reading, answers what it
// had read, and leaves. Between the two, requests wait in the kernel's queue or are answered by
// either process: both serve the same immutable content.
//
//   new -> old  {type: 'ready'}                 listening for the hand-over (messages before are lost)
//   old -> new  {type: 'handover', mounts}      descriptors at fd 4, 5, ... in the successor
//   new -> old  {type: 'adopted'}               it serves the mounts; or it exits or says 'failed':
//                                               the old one carries on
//   old -> new  {type: 'socket'}                the old one stopped listening (closing a unix socket
//                                               server unlinks its path, so it goes first)
//   old -> new  {type: 'released'}              the old one has stopped reading

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { MountError } from '../errors.js';
import type { HandedMount } from './layer-server.js';

/** Set in a successor's environment. */
export const HANDOVER_ENV = 'DEDUP_FUSED_HANDOVER';
const FIRST_FD = 4;
const ADOPT_TIMEOUT_MS = 120_000;

type Message = { type: 'ready' } | { type: 'handover'; mounts: HandedMount[] } | { type: 'adopted' } | { type: 'socket' } | { type: 'released' }
  | { type: 'failed'; message: string };

/**
 * Starts `argv` (the installed dedup-fused, so an upgrade runs the new code) with the mounts'
 * descriptors and waits until it serves them. Throws, with the successor gone, when it cannot.
 */
export async function startSuccessor(argv: string[], mounts: HandedMount[], logFile: string): Promise<ChildProcess> {
  const log = openSync(logFile, 'a');
  const child = spawn(process.execPath, argv, {
    detached: true, // its own session: it outlives us
    stdio: ['ignore', log, log, 'ipc', ...mounts.flatMap((m) => m.connection ? [m.connection.fd] : [])],
    env: { ...process.env, [HANDOVER_ENV]: '1' },
  });
  closeSync(log);
  try {
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new MountError(`successor ${child.pid} did not take the mounts over in ${ADOPT_TIMEOUT_MS / 1000} s`)), ADOPT_TIMEOUT_MS);
      child.once('error', reject);
      child.once('exit', (code, signal) => reject(new MountError(`successor exited (${signal ?? code}) before taking the mounts over; see ${logFile}`)));
      child.on('message', (m: Message) => {
        if (m.type === 'ready') {
          let fd = FIRST_FD;
          child.send({ type: 'handover', mounts: mounts.map((h) => (h.connection ? { ...h, connection: { ...h.connection, fd: fd++ } } : h)) } satisfies Message);
        }
        if (m.type === 'adopted') resolve();
        if (m.type === 'failed') reject(new MountError(`successor cannot take the mounts over: ${m.message}`));
      });
    }).finally(() => {
      clearTimeout(timer);
      child.removeAllListeners();
    });
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return child;
}

/** Tells the successor the control socket's path is free. */
export function socketFree(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => child.send({ type: 'socket' } satisfies Message, () => resolve()));
}

/** Tells the successor we have stopped serving; it may report itself as the service's main process. */
export function released(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.send({ type: 'released' } satisfies Message, () => {
      child.disconnect();
      child.unref();
      resolve();
    });
  });
}

/** A successor's side of a hand-over: the mounts it was given, and the answers it owes. */
export interface Incoming {
  mounts: HandedMount[];
  /** It serves the mounts; resolves once the control socket's path is free (or the predecessor died). */
  adopted(): Promise<void>;
  /** Resolves once the predecessor has stopped reading (or died). */
  settled(): Promise<void>;
  failed(err: Error): Promise<void>;
}

/** In a successor: asks for the mounts and receives them. Not a successor: undefined. */
export async function receiveHandover(): Promise<Incoming | undefined> {
  if (!process.env[HANDOVER_ENV] || !process.send) return undefined;
  delete process.env[HANDOVER_ENV];
  const reply = (m: Message): Promise<void> => new Promise((resolve) => process.send!(m, () => resolve()));
  const mounts = await new Promise<HandedMount[]>((resolve) => {
    process.once('message', (m: Message) => resolve(m.type === 'handover' ? m.mounts : []));
    void reply({ type: 'ready' });
  });
  // Resolves on `type`, or when the predecessor is gone (then nothing more will come).
  const next = (type: Message['type']): Promise<void> => new Promise((resolve) => {
    if (!process.connected) return resolve();
    const done = (): void => {
      process.off('message', onMessage);
      process.off('disconnect', done);
      resolve();
    };
    const onMessage = (m: Message): void => {
      if (m.type === type) done();
    };
    process.on('message', onMessage);
    process.once('disconnect', done);
  });
  return {
    mounts,
    async adopted() {
      const free = next('socket');
      await reply({ type: 'adopted' });
      await free;
    },
    async settled() {
      await next('released');
      if (process.connected) process.disconnect();
    },
    failed: (err) => reply({ type: 'failed', message: err.message }),
  };
}
