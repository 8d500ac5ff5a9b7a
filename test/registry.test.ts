// The registry client against a real docker-registry, directly, through a proxy that demands
// bearer tokens or injects faults, and through mirrors named in a hosts.toml (a real
// docker-registry in proxy mode, a failing one, one that does not connect).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NotFoundError, RegistryAuthError, RegistryError } from '../src/errors.js';
import { RegistryImage } from '../src/image/registry-image.js';
import { loadDockerConfig, parseChallenge } from '../src/registry/auth.js';
import { RegistryClient } from '../src/registry/client.js';
import { HostSkips, type HostSkip } from '../src/registry/host-skips.js';
import { resolveEndpoints } from '../src/registry/hosts.js';
import { parseReference } from '../src/registry/reference.js';
import { sha256 } from './fixtures/images.js';
import { freePort } from './fixtures/process.js';
import { startProxy, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, waitUntilCached, type TestRegistry } from './fixtures/registry.js';

const FAST_RETRY = { retries: 6, baseDelayMs: 5, maxDelayMs: 50 };

describe('registry client', () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  const proxies: TestProxy[] = [];
  const clients: RegistryClient[] = [];
  const client = (opts: ConstructorParameters<typeof RegistryClient>[0] = {}): RegistryClient => {
    const c = new RegistryClient({ plainHttp: true, retry: FAST_RETRY, ...opts });
    clients.push(c);
    return c;
  };
  const proxy = async (opts: Parameters<typeof startProxy>[1]): Promise<TestProxy> => {
    const p = await startProxy(registry!.host, opts);
    proxies.push(p);
    return p;
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-registry-test-'));
    registry = await startRegistry(tmp);
  });

  after(async () => {
    for (const c of clients) await c.close();
    for (const p of proxies) await p.stop();
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('parses references the way docker does', () => {
    assert.deepEqual(parseReference('alpine'), { host: 'docker.io', repository: 'library/alpine', tag: 'latest', digest: undefined });
    assert.deepEqual(parseReference('localhost:5000/a/b:v1'), { host: 'localhost:5000', repository: 'a/b', tag: 'v1', digest: undefined });
    const d = 'sha256:' + 'a'.repeat(64);
    assert.equal(parseReference(`ghcr.io/x/y@${d}`).digest, d);
    assert.throws(() => parseReference('Bad/Name'), /invalid image reference/);
    assert.throws(() => parseReference('a@sha256:123'), /digest/);
    assert.deepEqual(parseChallenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'), {
      scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'reg', scope: 'repository:a/b:pull,push' },
    });
  });

  it('pushes blobs monolithically, in chunks and by cross-repository mount; reads them whole, by range and by their end', async () => {
    const c = client();
    const ref = parseReference(`${registry!.host}/blobs/one:latest`);
    const small = randomBytes(1000);
    const large = randomBytes(3 * 1024 * 1024 + 7);
    assert.equal(await c.pushBlob(ref, sha256(small), small.length, (s, e) => small.subarray(s, e)), 'uploaded');
    assert.equal(await c.pushBlob(ref, sha256(large), large.length, (s, e) => large.subarray(s, e), { chunkSize: 1024 * 1024 }), 'uploaded');
    assert.equal(await c.pushBlob(ref, sha256(large), large.length, (s, e) => large.subarray(s, e)), 'exists');
    assert.ok((await c.getBlob(ref, sha256(large))).equals(large));
    assert.ok((await c.getBlobRange(ref, sha256(large), 1000, 2_000_000)).equals(large.subarray(1000, 2_000_000)));
    // By the end alone, the size unknown: it comes with the bytes; a blob shorter than asked comes whole.
    const tail = await c.getBlobTail(ref, sha256(large), 65536);
    assert.equal(tail.size, large.length);
    assert.ok(tail.bytes.equals(large.subarray(large.length - 65536)));
    const whole = await c.getBlobTail(ref, sha256(small), 65536);
    assert.equal(whole.size, small.length);
    assert.ok(whole.bytes.equals(small));
    const other = parseReference(`${registry!.host}/blobs/two:latest`);
    assert.equal(await c.pushBlob(other, sha256(large), large.length, () => Buffer.alloc(0), { mountFrom: 'blobs/one' }), 'mounted');
    assert.equal(await c.headBlob(other, sha256(large)), large.length);
    await assert.rejects(c.getBlob(ref, sha256(Buffer.from('never pushed'))), NotFoundError);
  });

  it('reuses keep-alive connections', async () => {
    const p = await proxy({});
    const c = client();
    const ref = parseReference(`${p.host}/blobs/one:latest`);
    const blob = randomBytes(100_000);
    // Pushed around the proxy: undici closes a connection after a HEAD (and the pool then
    // churns), which is not what this test is about.
    await client().pushBlob(parseReference(`${registry!.host}/blobs/one:latest`), sha256(blob), blob.length, (s, e) => blob.subarray(s, e));
    for (let i = 0; i < 20; i++) await c.getBlobRange(ref, sha256(blob), i * 100, i * 100 + 50);
    assert.ok(p.stats.connections <= 2, `20 sequential requests used ${p.stats.connections} connections`);
  });

  it('resolves an image index to the platform asked for', async () => {
    const c = client();
    const ref = parseReference(`${registry!.host}/multi/arch:v1`);
    const put = async (b: Buffer): Promise<{ digest: string; size: number }> => {
      await c.pushBlob(ref, sha256(b), b.length, (s, e) => b.subarray(s, e));
      return { digest: sha256(b), size: b.length };
    };
    const manifests = [];
    for (const arch of ['amd64', 'arm64']) {
      const layer = await put(randomBytes(100));
      const config = await put(Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } })));
      const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }] }));
      const digest = await c.putManifest(ref, sha256(m), m, 'application/vnd.oci.image.manifest.v1+json');
      manifests.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: m.length, platform: { os: 'linux', architecture: arch } });
    }
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
    await c.putManifest(ref, 'v1', index, 'application/vnd.oci.image.index.v1+json');
    const img = new RegistryImage(c, ref);
    assert.equal((await img.resolve({ os: 'linux', architecture: 'arm64' })).config.architecture, 'arm64');
    assert.equal((await img.resolve({ os: 'linux', architecture: 'amd64' })).manifestDigest, manifests[0]!.digest);
    await assert.rejects(img.resolve({ os: 'linux', architecture: 's390x' }), /no manifest for platform linux\/s390x \(has: linux\/amd64, linux\/arm64\)/);
  });

  it('gets bearer tokens with credentials from a docker config.json and caches them per scope', async () => {
    const p = await proxy({ bearer: { username: 'alice', password: 's3cret' } });
    const dockerConfig = join(tmp, 'docker-config.json');
    await writeFile(dockerConfig, JSON.stringify({ auths: { [p.host]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }));
    const creds = await loadDockerConfig(dockerConfig);
    const c = client({ credentials: (h) => creds.get(h) });
    const ref = parseReference(`${p.host}/blobs/one:latest`);
    const blob = randomBytes(5000);
    await c.pushBlob(ref, sha256(blob), blob.length, (s, e) => blob.subarray(s, e));
    for (let i = 0; i < 5; i++) assert.ok((await c.getBlobRange(ref, sha256(blob), i, i + 10)).equals(blob.subarray(i, i + 10)));
    assert.ok(p.stats.tokenRequests <= 3, `tokens are cached (${p.stats.tokenRequests} token requests)`);
    assert.ok(p.stats.scopes.includes('repository:blobs/one:pull,push'));
    // Requests sent together meet the challenge together, and share one token.
    const parallel = client({ credentials: (h) => creds.get(h) });
    p.reset();
    await Promise.all(Array.from({ length: 6 }, (_, i) => parallel.getBlobRange(ref, sha256(blob), i, i + 10)));
    assert.equal(p.stats.tokenRequests, 1, `${p.stats.tokenRequests} token requests for 6 parallel reads`);
    const anonymous = client();
    await assert.rejects(anonymous.getBlob(ref, sha256(blob)), (err: unknown) => err instanceof RegistryAuthError && /refused scope "repository:blobs\/one:pull"/.test(err.message));
    const wrong = client({ credentials: () => ({ username: 'alice', password: 'nope' }) });
    await assert.rejects(wrong.getBlob(ref, sha256(blob)), RegistryAuthError);
  });

  it('retries through 500s, 429s and reset connections, and resumes a blob cut off mid-body', async () => {
    const c = client();
    const direct = parseReference(`${registry!.host}/faults/img:latest`);
    const blob = randomBytes(2 * 1024 * 1024);
    await c.pushBlob(direct, sha256(blob), blob.length, (s, e) => blob.subarray(s, e));
    const faults = ['500', 'reset', '429', 'ok', '500', 'ok', 'reset'] as const;
    const p = await proxy({ fault: (_req, n) => faults[(n - 1) % faults.length]! });
    const ref = parseReference(`${p.host}/faults/img:latest`);
    for (let i = 0; i < 6; i++) {
      assert.ok((await c.getBlobRange(ref, sha256(blob), i * 1000, i * 1000 + 4096)).equals(blob.subarray(i * 1000, i * 1000 + 4096)));
    }
    assert.ok((await c.getBlob(ref, sha256(blob))).equals(blob));
    const up = randomBytes(1500);
    await c.pushBlob(ref, sha256(up), up.length, (s, e) => up.subarray(s, e));
    assert.ok(p.stats.faults >= 5);
    assert.ok(c.stats.retries >= 5);
    p.options.fault = (req) => (req.headers.range ? 'ok' : 'reset-mid-body');
    assert.ok((await c.getBlob(ref, sha256(blob))).equals(blob), 'resumed with a Range request after the reset');
    assert.ok(p.stats.rangeRequests >= 1);
  });

  it('gives up with an error that names the request when the registry stays down', async () => {
    const port = await freePort();
    const c = client({ retry: { retries: 2, baseDelayMs: 1, maxDelayMs: 5 } });
    await assert.rejects(c.getBlob(parseReference(`127.0.0.1:${port}/x/y:z`), sha256(Buffer.from('a'))),
      (err: unknown) => err instanceof RegistryError && new RegExp(`GET http://127.0.0.1:${port}/v2/x/y/blobs/sha256:.*after 3 attempts`).test(err.message));
    const p = await proxy({ fault: () => '500' });
    await assert.rejects(c.getBlob(parseReference(`${p.host}/x/y:z`), sha256(Buffer.from('a'))), (err: unknown) => err instanceof RegistryError && err.status === 500);
  });

  it('uses plain HTTP when asked (flag, hosts.toml) and for a loopback registry that does not answer https; hosts.toml wins', async () => {
    const ref = parseReference(`${registry!.host}/blobs/one:latest`);
    const loopback = client({ plainHttp: false, retry: { retries: 0, baseDelayMs: 1, maxDelayMs: 1 } });
    assert.equal(await loopback.headBlob(ref, sha256(Buffer.from('x'))), undefined, 'https first, then plain HTTP');
    const before = loopback.stats.requests;
    assert.equal(await loopback.headBlob(ref, sha256(Buffer.from('x'))), undefined);
    assert.equal(loopback.stats.requests - before, 1, 'and plain HTTP from then on');
    for (const host of ['localhost', '[::1]']) {
      const other = parseReference(`${registry!.host.replace('127.0.0.1', host)}/blobs/one:latest`);
      const r = await loopback.headBlob(other, sha256(Buffer.from('x'))).then(() => 'ok', (err: Error) => err.message);
      // ::1 answers only where the registry listens on it; what matters is that no https error is final.
      assert.ok(r === 'ok' || /http:\/\//.test(r), `${host}: ${r}`);
    }

    const hostsDir = join(tmp, 'certs.d');
    await mkdir(join(hostsDir, registry!.host), { recursive: true });
    await writeFile(join(hostsDir, registry!.host, 'hosts.toml'), `server = "https://${registry!.host}"\n`);
    const tlsOnly = client({ plainHttp: false, hostsDir, retry: { retries: 0, baseDelayMs: 1, maxDelayMs: 1 } });
    await assert.rejects(tlsOnly.headBlob(ref, sha256(Buffer.from('x'))), (err: unknown) => err instanceof RegistryError && err.message.includes(`https://${registry!.host}`),
      'a hosts.toml naming https wins over the loopback rule');
    await writeFile(join(hostsDir, registry!.host, 'hosts.toml'), `server = "http://${registry!.host}"\n[host."http://${registry!.host}"]\n  capabilities = ["pull", "resolve", "push"]\n`);
    const viaHosts = client({ plainHttp: false, hostsDir });
    assert.equal(await viaHosts.headBlob(ref, sha256(Buffer.from('x'))), undefined);
  });

  it('reads hosts.toml as containerd does: mirrors in order, then the server; override_path; the server\'s own capabilities', async () => {
    const hostsDir = join(tmp, 'parse.d');
    await mkdir(join(hostsDir, 'reg.example'), { recursive: true });
    await writeFile(join(hostsDir, 'reg.example', 'hosts.toml'), [
      'server = "https://reg.example"', 'capabilities = ["push"]',
      '[host."http://m1.example:5000/cache"]', '  capabilities = ["pull"]',
      '[host."https://m2.example/raw/api"]', '  override_path = true', '',
    ].join('\n'));
    const eps = await resolveEndpoints('reg.example', 'reg.example', { hostsDir, plainHttp: false });
    assert.deepEqual(eps.map((e) => [e.origin + e.apiRoot, [...e.capabilities].join(','), e.name, e.authHost]), [
      ['http://m1.example:5000/cache/v2', 'pull', 'm1.example:5000/cache', 'm1.example:5000'],
      ['https://m2.example/raw/api', 'pull,resolve', 'm2.example/raw/api', 'm2.example'],
      ['https://reg.example/v2', 'push', 'reg.example', 'reg.example'],
    ]);
    await writeFile(join(hostsDir, 'reg.example', 'hosts.toml'), '[host."http://m1.example"]\n  capabilities = ["pul"]\n');
    await assert.rejects(resolveEndpoints('reg.example', 'reg.example', { hostsDir, plainHttp: false }), /capabilities of host "http:\/\/m1.example" must be a list/);
  });

  it('passes a host over per blob until the TTL has gone by; a host that does not connect for everything', () => {
    const skips = new HostSkips(1000, {});
    skips.skip('m', 'sha256:a', 'ignored_range', 'HTTP 200', 0);
    assert.equal(skips.skipped('m', 'sha256:a', 999), true);
    assert.equal(skips.skipped('m', 'sha256:b', 999), false, 'other blobs still go to it');
    assert.equal(skips.skipped('m', undefined, 999), false, 'and so do manifests');
    assert.equal(skips.skipped('m', 'sha256:a', 1000), false, 'tried again once the TTL is over');
    assert.equal(skips.skip('m', undefined, 'status', 'HTTP 404', 0).until, 0, 'a failed manifest request is not remembered');
    skips.skip('down', 'sha256:a', 'unreachable', 'ECONNREFUSED', 0);
    assert.equal(skips.skipped('down', undefined, 500), true);
    assert.deepEqual(skips.stats('m').fallbacks, { ignored_range: 1, status: 1, unreachable: 0 });
  });

  it('pulls through a pull-through cache (docker-registry in proxy mode): ranges from the origin while the mirror fills, then from the mirror', async () => {
    const toOrigin = await proxy({}); // the registry as the nodes name it: hosts.toml's server
    const mirror = await startRegistry(tmp, { name: 'mirror', proxyOf: registry!.host });
    try {
      const viaMirror = await startProxy(mirror.host); // counts what the nodes get from the mirror
      proxies.push(viaMirror);
      const hostsDir = join(tmp, 'mirror.d');
      await mkdir(join(hostsDir, toOrigin.host), { recursive: true });
      await writeFile(join(hostsDir, toOrigin.host, 'hosts.toml'),
        `server = "http://${toOrigin.host}"\n[host."http://${viaMirror.host}"]\n  capabilities = ["pull", "resolve"]\n`);
      const direct = client();
      const originRef = parseReference(`${registry!.host}/mirrored/app:1`);
      const blob = randomBytes(3 * 1024 * 1024);
      const d = sha256(blob);
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [d] } }));
      for (const b of [blob, config]) await direct.pushBlob(originRef, sha256(b), b.length, (s, e) => b.subarray(s, e));
      const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d, size: blob.length }] }));
      await direct.putManifest(originRef, '1', m, 'application/vnd.oci.image.manifest.v1+json');

      const skipped: HostSkip[] = [];
      const node = client({ hostsDir, mirrorRetryMs: 600_000, onHostSkipped: (s) => skipped.push(s) });
      const ref = parseReference(`${toOrigin.host}/mirrored/app:1`);
      const image = await new RegistryImage(node, ref).resolve({ os: 'linux', architecture: 'amd64' });
      assert.equal(image.manifestDigest, sha256(m));
      assert.equal(toOrigin.stats.requests, 0, 'manifest and config came through the mirror');
      assert.ok(viaMirror.stats.log.some((r) => r.path === '/v2/mirrored/app/manifests/1'));

      // Not cached yet: the mirror answers the Range with the whole blob; the origin serves it.
      assert.ok((await node.getBlobRange(ref, d, 1000, 2000)).equals(blob.subarray(1000, 2000)));
      assert.deepEqual(skipped.map((s) => [s.host, s.blob, s.reason]), [[viaMirror.host, d, 'ignored_range']]);
      const mirrorAsked = viaMirror.stats.requests;
      const tail = await node.getBlobTail(ref, d, 4096);
      assert.ok(tail.bytes.equals(blob.subarray(blob.length - 4096)) && tail.size === blob.length);
      assert.equal(viaMirror.stats.requests, mirrorAsked, 'passed over for this blob\'s ranges until the TTL');
      assert.equal(toOrigin.stats.rangeRequests, 2);
      assert.equal(node.stats.hosts[toOrigin.host]!.bytesReceived, 1000 + 4096);
      assert.equal(node.stats.hosts[viaMirror.host]!.fallbacks.ignored_range, 1);
      // A range that is the whole blob: the mirror's whole-blob answer is exactly that, and serves it.
      const small = randomBytes(100_000);
      await direct.pushBlob(originRef, sha256(small), small.length, (s, e) => small.subarray(s, e));
      const parts: Buffer[] = [];
      for await (const piece of node.blobStream(ref, sha256(small), { start: 0, end: small.length })) parts.push(piece as Buffer);
      assert.ok(Buffer.concat(parts).equals(small));
      assert.equal(skipped.length, 1, 'no skip for it');
      assert.equal(toOrigin.stats.requests, 2);

      // Cached now (it filled itself from the origin): a second node gets every range from the mirror.
      await waitUntilCached(mirror.host, 'mirrored/app', d);
      const second = client({ hostsDir });
      await new RegistryImage(second, ref).resolve({ os: 'linux', architecture: 'amd64' });
      assert.ok((await second.getBlobRange(ref, d, 1000, 2000)).equals(blob.subarray(1000, 2000)));
      assert.ok((await second.getBlobTail(ref, d, 4096)).bytes.equals(blob.subarray(blob.length - 4096)));
      assert.equal(toOrigin.stats.requests, 2, 'nothing more from the origin');
      assert.deepEqual(second.stats.hosts[viaMirror.host]!.fallbacks, { ignored_range: 0, status: 0, unreachable: 0 });
      assert.equal(second.stats.hosts[toOrigin.host], undefined);
    } finally {
      await mirror.stop();
    }
  });

  it('moves past a mirror that fails or does not connect, remembers the one that does not connect, and keeps to the mirrors where the server may not pull', async () => {
    const failing = await proxy({ fault: () => '500' });
    const down = `127.0.0.1:${await freePort()}`;
    const ref = parseReference(`${registry!.host}/blobs/one:latest`);
    const blob = randomBytes(5000);
    await client().pushBlob(ref, sha256(blob), blob.length, (s, e) => blob.subarray(s, e));
    const hostsDir = join(tmp, 'failing.d');
    await mkdir(join(hostsDir, registry!.host), { recursive: true });
    const toml = `server = "http://${registry!.host}"\n[host."http://${down}"]\n[host."http://${failing.host}"]\n`;
    await writeFile(join(hostsDir, registry!.host, 'hosts.toml'), toml);
    const skipped: HostSkip[] = [];
    const c = client({ hostsDir, onHostSkipped: (s) => skipped.push(s) });
    assert.ok((await c.getBlobRange(ref, sha256(blob), 10, 20)).equals(blob.subarray(10, 20)));
    assert.equal(await c.headBlob(ref, sha256(blob)), blob.length);
    assert.deepEqual(skipped.map((s) => [s.host, s.reason]), [[down, 'unreachable'], [failing.host, 'status'], [failing.host, 'status']],
      'the host that did not connect is not asked again; the failing one is, for a request other than that blob\'s ranges');
    assert.equal(c.stats.hosts[down]!.requests, 2, 'one retry, not the registry\'s six');

    await writeFile(join(hostsDir, registry!.host, 'hosts.toml'), `capabilities = ["resolve"]\n${toml}`);
    const mirrorsOnly = client({ hostsDir });
    await assert.rejects(mirrorsOnly.getBlobRange(ref, sha256(blob), 10, 20), (err: unknown) => err instanceof RegistryError && err.status === 500,
      'no fallback to a server that may not pull: the last mirror\'s answer is final');
  });
});
