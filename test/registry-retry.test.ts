// The registry client's one retry loop, without root: withRetries on its own, and the client
// against a fake registry on 127.0.0.1:0 (node:http) that answers 503 with Retry-After, asks for
// a bearer token from a token server that fails once, cuts a body off mid-way, and refuses an
// upload session once.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { RegistryError, StoreError } from '../src/errors.js';
import { RegistryClient } from '../src/registry/client.js';
import { parseReference } from '../src/registry/reference.js';
import { withRetries } from '../src/registry/retry.js';

const FAST = { retries: 3, baseDelayMs: 1, maxDelayMs: 2 };
const reset = (): Error => Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });

describe('withRetries', () => {
  it('retries connection faults up to the policy, then gives up with the attempts made', async () => {
    let tries = 0;
    let retried = 0;
    assert.equal(await withRetries(FAST, { onRetry: () => retried++ }, async () => (++tries < 3 ? Promise.reject(reset()) : 'ok')), 'ok');
    assert.deepEqual([tries, retried], [3, 2]);
    tries = 0;
    await assert.rejects(withRetries(FAST, { retries: 1, giveUp: (err, n) => new Error(`${(err as Error).message} after ${n}`) }, async () => {
      tries++;
      throw reset();
    }), /socket hang up after 2/);
    assert.equal(tries, 2);
  });

  it('does not retry what is not retryable: other errors, and ours (their retries were made where they were thrown)', async () => {
    let tries = 0;
    const ours = new StoreError('store broke', { cause: reset() });
    await assert.rejects(withRetries(FAST, {}, async () => {
      tries++;
      throw ours;
    }), (err) => err === ours);
    await assert.rejects(withRetries(FAST, {}, async () => {
      tries++;
      throw new TypeError('a bug');
    }), TypeError);
    assert.equal(tries, 2);
    assert.equal(await withRetries(FAST, { retryable: (e) => e instanceof StoreError }, async (n) => {
      if (n === 0) throw ours;
      return n;
    }), 1);
  });

  it('tries again on an answer `again` turns down, and returns the last answer whatever it is', async () => {
    const seen: number[] = [];
    const last = await withRetries(FAST, { again: async (v: number) => (v < 10 ? { retryAfter: '0' } : undefined) }, async (n) => {
      seen.push(n);
      return n;
    });
    assert.equal(last, 3, 'the fourth answer (retries: 3) is returned though `again` would turn it down');
    assert.deepEqual(seen, [0, 1, 2, 3]);
  });
});

describe('registry client retries against a fake registry', () => {
  let server: Server;
  let host: string;
  const blob = randomBytes(256 * 1024);
  const digest = 'sha256:' + createHash('sha256').update(blob).digest('hex');
  const seen = { blobGets: 0, ranges: [] as string[], tokenRequests: 0, uploads: 0, puts: 0 };
  /** What the next requests meet; each handler is used once, then the plain answer. */
  const faults = { blob: [] as string[], token: [] as string[], put: [] as string[] };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', `http://${host}`);
    if (url.pathname === '/token') {
      seen.tokenRequests++;
      if (faults.token.shift() === '503') return void res.writeHead(503).end();
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'good', expires_in: 300 }));
    }
    if (url.pathname === `/v2/r/blobs/${digest}` && req.method === 'GET') {
      if (req.headers.authorization !== 'Bearer good') {
        return void res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${host}/token",service="fake",scope="repository:r:pull"` }).end();
      }
      seen.blobGets++;
      const fault = faults.blob.shift();
      if (fault === '503') return void res.writeHead(503, { 'retry-after': '0' }).end();
      if (fault === '500') return void res.writeHead(500).end();
      const range = req.headers.range;
      if (range) seen.ranges.push(range);
      const m = /^bytes=(\d+)-(\d*)$/.exec(range ?? '');
      const start = m ? Number(m[1]) : 0;
      const end = m && m[2] ? Number(m[2]) + 1 : blob.length;
      const body = blob.subarray(start, end);
      res.writeHead(m ? 206 : 200, { 'content-length': body.length, ...(m ? { 'content-range': `bytes ${start}-${end - 1}/${blob.length}` } : {}) });
      if (fault === 'cut') {
        // Half the body, then the connection goes: the client resumes (or repeats) with a Range.
        res.write(body.subarray(0, body.length >> 1), () => res.socket?.destroy());
        return;
      }
      return void res.end(body);
    }
    if (url.pathname === '/v2/r/blobs/uploads/' && req.method === 'POST') {
      seen.uploads++;
      return void res.writeHead(202, { location: `/v2/r/blobs/uploads/session-${seen.uploads}` }).end();
    }
    if (url.pathname.startsWith('/v2/r/blobs/uploads/session-') && req.method === 'PUT') {
      seen.puts++;
      req.resume();
      return void req.on('end', () => res.writeHead(faults.put.shift() === '400' ? 400 : 201).end());
    }
    res.writeHead(404).end();
  };

  const client = (): RegistryClient => new RegistryClient({ plainHttp: true, retry: FAST });

  before(async () => {
    server = createServer(handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('meets a 503 with Retry-After, a token server that fails once and a body cut off, and still delivers the verified blob', async () => {
    const c = client();
    try {
      faults.blob.push('503', 'cut');
      faults.token.push('503');
      const ref = parseReference(`${host}/r:latest`);
      const got = await c.getBlob(ref, digest);
      assert.ok(got.equals(blob));
      assert.equal(seen.tokenRequests, 2, 'the token request was retried once');
      assert.deepEqual(seen.ranges, [`bytes=${blob.length >> 1}-`], 'the cut body resumed where it broke off');
      assert.equal(c.stats.retries, 2, 'the 503 and the cut body (token retries are not counted)');
    } finally {
      await c.close();
    }
  });

  it('repeats a Range request whose body was cut off, and gives up on a registry that stays at 500 with its status', async () => {
    const c = client();
    try {
      const ref = parseReference(`${host}/r:latest`);
      seen.ranges = [];
      faults.blob.push('cut');
      assert.ok((await c.getBlobRange(ref, digest, 1000, 5096)).equals(blob.subarray(1000, 5096)));
      assert.deepEqual(seen.ranges, ['bytes=1000-5095', 'bytes=1000-5095']);
      const before = seen.blobGets;
      faults.blob.push('500', '500', '500', '500');
      await assert.rejects(c.getBlobRange(ref, digest, 0, 10), (err: unknown) => err instanceof RegistryError && err.status === 500);
      assert.equal(seen.blobGets - before, FAST.retries + 1, 'one try and the policy\'s retries, no more');
    } finally {
      await c.close();
    }
  });

  it('starts a new upload session when one is refused', async () => {
    const c = client();
    try {
      faults.put.push('400');
      const small = Buffer.from('a small blob');
      const d = 'sha256:' + createHash('sha256').update(small).digest('hex');
      assert.equal(await c.pushBlob(parseReference(`${host}/r:latest`), d, small.length, (s, e) => small.subarray(s, e)), 'uploaded');
      assert.deepEqual([seen.uploads, seen.puts], [2, 2]);
    } finally {
      await c.close();
    }
  });
});
