// Errors both ways, without root: every class answered by a server of ours (sendError over a unix
// socket in a temp dir) comes back to the client (UnixJsonClient) as the same class with the same
// code, with the HTTP status its code maps to (bad input 4xx, our faults 5xx, the registry's 502);
// answers that are not ours become a PeerError; and the gRPC edge maps codes as containerd expects.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Agent, request } from 'undici';
import { HTTP_STATUS, sendError } from '../src/api/http.js';
import { closeUnix, listenUnix, UnixJsonClient } from '../src/api/unix-socket.js';
import {
  AlreadyExistsError, ApiBindError, BodyTooLargeError, ChunkDigestMismatchError, CriuError, DedupError, DigestMismatchError, FailedPreconditionError,
  FreezeError, fromWire, InternalError, InvalidArgumentError, InvalidConfigError, InvalidErofsTreeError, InvalidReferenceError, KsmError,
  MalformedEstargzError, MalformedGzipIndexError, MalformedJsonError, MalformedLayerError, MalformedManifestError, MalformedTraceError,
  MethodNotAllowedError, MountError, NotFoundError, PeerError, PoolExhaustedError, RegistryAuthError, RegistryError, SandboxError,
  SharedStoreError, SnapshotNotOursError, StoreError, TocDigestMismatchError, TreeRemovalError, UnauthorizedError, UnavailableError,
  UnsupportedError, UnsupportedMediaTypeError,
} from '../src/errors.js';
import { loadSnapshotsService, snapshotsHandlers, toGrpcError } from '../src/snapshot/grpc-service.js';
import type { Snapshotter } from '../src/snapshot/snapshotter.js';

const D = 'sha256:' + 'a'.repeat(64);
/** One of every class, each code once. */
const SAMPLES: DedupError[] = [
  new InvalidArgumentError('limit must be an integer'), new InvalidConfigError('config.json: prefetch.workerz: unknown key'),
  new InvalidReferenceError('Bad/Name', 'uppercase'), new NotFoundError(`layer ${D}`, 'gone'), new AlreadyExistsError('snapshot "a"'),
  new FailedPreconditionError('snapshot "a" has children'), new RegistryError('GET http://r/v2/x: HTTP 500', 500), new RegistryAuthError('token server refused'),
  new UnsupportedMediaTypeError('application/x-tar', 'layer'), new MalformedManifestError('manifest', 'no layers'), new MalformedLayerError(D, 'truncated'),
  new MalformedEstargzError('footer', 'bad magic'), new TocDigestMismatchError(D, D, D), new DigestMismatchError(`blob ${D}`, D, D),
  new ChunkDigestMismatchError(D, D, 'offset 0'), new InvalidErofsTreeError('etc/passwd', 'bad mode'), new StoreError('pack 3 is full'),
  new MountError('fusermount failed'), new TreeRemovalError('/x', 'busy'), new MalformedTraceError('t.json', 'not a trace'),
  new MalformedGzipIndexError(D, 'bad checkpoint'), new KsmError('no ksm'), new PeerError('dedupd', 'ERR_FROM_THE_FUTURE', 'what'),
  new UnavailableError('handing over'), new UnsupportedError('kernel lacks EROFS'), new ApiBindError('127.0.0.1:8080', 'address in use'),
  new FreezeError('cgroup x', 'EBUSY'), new SnapshotNotOursError('c1', 'overlayfs'), new SandboxError('sandbox 1 would not start'),
  new PoolExhaustedError('web', 100), new CriuError('criu dump failed'), new SharedStoreError('record', 'record missing'),
  new MalformedJsonError('body', 'Unexpected end'), new BodyTooLargeError(1024, 'api.max_body_bytes'), new MethodNotAllowedError('DELETE', '/config', ['GET', 'POST']),
  new UnauthorizedError('wrong bearer token', 'Bearer realm="dedup-snapshotter"'), new InternalError('a bug'),
];

describe('errors across a process', () => {
  let dir: string;
  let socket: string;
  let server: Server | undefined;
  const quiet = { warn: () => undefined };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dedup-error-wire-'));
    socket = join(dir, 'peer.sock');
    server = await listenUnix(socket, (req, res) => {
      const what = new URL(req.url ?? '/', 'http://peer').searchParams;
      if (what.has('raw')) return void res.writeHead(502, { 'content-type': 'text/html' }).end('<html>bad gateway</html>');
      if (what.has('bug')) return sendError(req, res, new TypeError('x is undefined'), quiet);
      sendError(req, res, SAMPLES[Number(what.get('i'))], quiet);
    });
  });

  after(async () => {
    if (server) await closeUnix(server, socket);
    await rm(dir, { recursive: true, force: true });
  });

  it('has one sample of every code, and a status for each', () => {
    assert.deepEqual(new Set(SAMPLES.map((e) => e.code)), new Set(Object.keys(HTTP_STATUS)));
  });

  it('rebuilds every error as its own class with its code and message, named after the peer', async () => {
    const client = new UnixJsonClient(socket, 'peer');
    try {
      for (const [i, sent] of SAMPLES.entries()) {
        await assert.rejects(client.call('GET', `/?i=${i}`), (got: unknown) => {
          assert.ok(got instanceof (sent.constructor as typeof DedupError), `${sent.name}: got ${(got as Error).name}`);
          assert.equal((got as DedupError).code, sent.code);
          assert.equal((got as Error).name, sent.name);
          assert.equal((got as Error).message, `peer: ${sent.message}`);
          return true;
        });
      }
      await assert.rejects(client.call('GET', '/?bug'), (got: unknown) => got instanceof InternalError && /x is undefined/.test(got.message));
      await assert.rejects(client.call('GET', '/?raw'), (got: unknown) => got instanceof PeerError && got.remoteCode === 'HTTP 502');
    } finally {
      await client.close();
    }
  });

  it('answers each code with its status: bad input 4xx, our faults 5xx, the registry\'s 502, with Allow and WWW-Authenticate', async () => {
    const agent = new Agent({ connect: { socketPath: socket } });
    try {
      const answer = async (query: string): Promise<{ status: number; code: string; headers: Record<string, unknown> }> => {
        const r = await request(`http://peer/?${query}`, { dispatcher: agent });
        const body = (await r.body.json()) as { error: { code: string } };
        return { status: r.statusCode, code: body.error.code, headers: r.headers };
      };
      const status = async (sample: DedupError): Promise<number> => (await answer(`i=${SAMPLES.indexOf(sample)}`)).status;
      const byClass = (cls: abstract new (...a: never[]) => DedupError): DedupError => SAMPLES.find((e) => e.constructor === cls)!;
      for (const [cls, want] of [[InvalidArgumentError, 400], [InvalidConfigError, 400], [NotFoundError, 404], [AlreadyExistsError, 409],
        [FailedPreconditionError, 409], [RegistryError, 502], [RegistryAuthError, 502], [MalformedEstargzError, 502], [ChunkDigestMismatchError, 502],
        [StoreError, 500], [MountError, 500], [UnsupportedError, 501], [UnavailableError, 503], [PoolExhaustedError, 503], [PeerError, 502]] as const) {
        assert.equal(await status(byClass(cls)), want, cls.name);
      }
      for (const sample of SAMPLES) assert.equal(await status(sample), HTTP_STATUS[sample.code], sample.name);
      const bug = await answer('bug');
      assert.deepEqual([bug.status, bug.code], [500, 'ERR_INTERNAL']);
      assert.equal((await answer(`i=${SAMPLES.indexOf(byClass(MethodNotAllowedError))}`)).headers.allow, 'GET, POST');
      assert.equal((await answer(`i=${SAMPLES.indexOf(byClass(UnauthorizedError))}`)).headers['www-authenticate'], 'Bearer realm="dedup-snapshotter"');
    } finally {
      await agent.close();
    }
  });

  it('says a peer is unavailable when its socket is missing', async () => {
    const client = new UnixJsonClient(join(dir, 'none.sock'), 'dedupd', 'is dedupd --serve running?');
    try {
      await assert.rejects(client.call('GET', '/healthz'), (err: unknown) => err instanceof UnavailableError && /none\.sock not found \(is dedupd --serve running\?\)/.test(err.message));
    } finally {
      await client.close();
    }
  });

  it('keeps a code it does not know as a PeerError naming the peer and the code', () => {
    const err = fromWire('dedup-fused', { code: 'ERR_NEWER', message: 'something new' }, 500);
    assert.ok(err instanceof PeerError);
    assert.equal(err.remoteCode, 'ERR_NEWER');
    assert.equal(err.message, 'dedup-fused: something new [ERR_NEWER]');
    assert.ok(fromWire('p', { code: 'toString', message: 'x' }, 400) instanceof PeerError, 'only the table\'s own keys');
  });
});

describe('errors as gRPC codes', () => {
  it('keeps containerd\'s codes and adds UNAVAILABLE and UNIMPLEMENTED', () => {
    const code = (err: unknown): grpc.status => toGrpcError(err).code;
    assert.equal(code(new NotFoundError('snapshot "a"')), grpc.status.NOT_FOUND);
    assert.equal(code(new AlreadyExistsError('snapshot "a"')), grpc.status.ALREADY_EXISTS);
    assert.equal(code(new FailedPreconditionError('has children')), grpc.status.FAILED_PRECONDITION);
    assert.equal(code(new InvalidArgumentError('bad label')), grpc.status.INVALID_ARGUMENT);
    assert.equal(code(new UnavailableError('layer server down')), grpc.status.UNAVAILABLE);
    assert.equal(code(new RegistryError('GET x: ECONNREFUSED')), grpc.status.UNAVAILABLE);
    assert.equal(code(new UnsupportedError('kernel lacks EROFS')), grpc.status.UNIMPLEMENTED);
    assert.equal(code(new MountError('mount failed')), grpc.status.UNKNOWN);
    assert.equal(code(new TypeError('a bug')), grpc.status.UNKNOWN);
  });

  it('answers a layer server error rebuilt in the snapshotter by its code, and a method it lacks with UNIMPLEMENTED', async () => {
    const def = loadSnapshotsService();
    const stub = {
      stat: () => {
        throw fromWire('dedup-fused', { code: 'ERR_UNAVAILABLE', message: 'layer server is handing its mounts to a new process; retry' }, 503);
      },
    } as unknown as Snapshotter;
    const server = new grpc.Server();
    server.addService(def, snapshotsHandlers(stub));
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    const Client = grpc.makeGenericClientConstructor(def, 'Snapshots');
    const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Stat(req: object, cb: (err: grpc.ServiceError) => void): void };
    try {
      const stat = await new Promise<grpc.ServiceError>((resolve) => client.Stat({ key: 'a' }, (err) => resolve(err)));
      assert.equal(stat.code, grpc.status.UNAVAILABLE);
      assert.match(stat.details, /dedup-fused: layer server is handing/);
      const none = await new Promise<grpc.ServiceError>((resolve) => client.makeUnaryRequest('/containerd.services.snapshots.v1.Snapshots/Nope',
        (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (err) => resolve(err!)));
      assert.equal(none.code, grpc.status.UNIMPLEMENTED);
    } finally {
      client.close();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    }
  });
});
