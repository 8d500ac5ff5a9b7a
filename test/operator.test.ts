// The operator surface against the real daemon: the admin HTTP API (every endpoint, its errors and
// its auth rule), live config changes (persisted, surviving a restart, audited), audit retention,
// and Prometheus metrics that move when a lazily mounted layer is read.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { AuditLog, DAY_MS } from '../src/audit/audit-log.js';
import { binary, dedupctlJson } from './fixtures/cli.js';
import { unmountUnder } from './fixtures/containerd.js';
import { pushOci, tarOf, writeOciImage } from './fixtures/images.js';
import { logged } from './fixtures/log.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { waitFor } from './fixtures/process.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { snapshotsClient } from './fixtures/snapshots-client.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';

interface Reply {
  status: number;
  headers: Headers;
  text: string;
  json: any; // the tests read whatever shape each endpoint answers
}

async function http(url: string, init: RequestInit = {}): Promise<Reply> {
  const r = await fetch(url, init);
  const text = await r.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, headers: r.headers, text, json };
}

const post = (url: string, body: string, type = 'application/json', headers: Record<string, string> = {}): Promise<Reply> =>
  http(url, { method: 'POST', body, headers: { 'content-type': type, ...headers } });

/** Parses Prometheus text exposition strictly enough to catch a malformed line: sample name+labels → value. */
function parseProm(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      assert.match(line, /^# (HELP \w+ .*|TYPE \w+ (counter|gauge|histogram|summary|untyped))$/, `comment line: ${line}`);
      continue;
    }
    const m = /^([a-zA-Z_:][\w:]*(?:\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})?) (-?[\d.e+-]+|NaN|[+-]Inf)$/.exec(line);
    assert.ok(m, `sample line: ${line}`);
    samples.set(m[1]!, Number(m[2]));
  }
  return samples;
}

describe('operator surface: admin API, audit log, metrics', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let snap: TestSnapshotter | undefined;
  const others: TestSnapshotter[] = [];
  let ref: string;
  let layerDigest: string;
  const big = randomBytes(3 * 1024 * 1024);

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-operator-test-'));
    registry = await startRegistry(tmp);
    const tar = await tarOf([
      { name: 'etc/', type: 'directory' }, { name: 'etc/motd', type: 'file', content: Buffer.from('hello\n') },
      { name: 'data/', type: 'directory' }, { name: 'data/big', type: 'file', content: big },
    ]);
    await writeOciImage(join(tmp, 'src'), 'app', [{ tar, compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'app', `${registry.host}/src/app:1`);
    ref = `${registry.host}/lazy/app:1`;
    const conv = await dedupctlJson<{ layers: { digest: string }[] }>(['convert', '--plain-http', `${registry.host}/src/app:1`, ref]);
    layerDigest = conv.layers[0]!.digest;
    await mkdir(join(tmp, 'main'));
    snap = await startSnapshotter(join(tmp, 'main'));
  });

  after(async () => {
    for (const s of [snap, ...others]) await s?.stop();
    await unmountUnder(tmp);
    await registry?.stop();
    await rm(tmp, { recursive: true, force: true });
  });

  it('serves /healthz, /config, /audit/logs and /metrics, and answers bad requests with clear 4xx errors', async () => {
    const api = snap!.api;
    const health = await http(`${api}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(health.json.status, 'ok');
    const config = await http(`${api}/config`);
    assert.equal(config.status, 200);
    assert.equal(config.json.prefetch.workers, 4);
    assert.equal(config.json.root, snap!.root);
    const fileBefore = await readFile(snap!.config, 'utf8');

    const cases: [Promise<Reply>, number, string, RegExp][] = [
      [post(`${api}/config`, '{"prefetch": '), 400, 'ERR_BAD_JSON', /not valid JSON/],
      [post(`${api}/config`, '[1]'), 400, 'ERR_INVALID_CONFIG', /must be a JSON object/],
      [post(`${api}/config`, '{"prefetch": {"workerz": 8}}'), 400, 'ERR_INVALID_CONFIG', /prefetch\.workerz: unknown key/],
      [post(`${api}/config`, '{"prefetch": {"workers": 0}}'), 400, 'ERR_INVALID_CONFIG', /prefetch\.workers/],
      [post(`${api}/config`, '{"log_level": "loud"}'), 400, 'ERR_INVALID_CONFIG', /log_level/],
      [post(`${api}/config`, '{"api": {"addr": "0.0.0.0:8080"}}'), 400, 'ERR_INVALID_CONFIG', /needs api\.token/],
      [post(`${api}/config`, 'workers=8', 'text/plain'), 415, 'ERR_UNSUPPORTED_MEDIA_TYPE', /application\/json/],
      [post(`${api}/config`, JSON.stringify({ registry: 'x'.repeat(2 * 1024 * 1024) })), 413, 'ERR_BODY_TOO_LARGE', /max_body_bytes/],
      [http(`${api}/nope`), 404, 'ERR_NOT_FOUND', /\/nope/],
      [http(`${api}/config`, { method: 'DELETE' }), 405, 'ERR_METHOD_NOT_ALLOWED', /DELETE/],
      [http(`${api}/audit/logs?limit=abc`), 400, 'ERR_INVALID_ARGUMENT', /limit/],
      [http(`${api}/audit/logs?since=yesterday`), 400, 'ERR_INVALID_ARGUMENT', /since/],
      [http(`${api}/audit/logs?colour=red`), 400, 'ERR_INVALID_ARGUMENT', /colour/],
    ];
    for (const [reply, status, code, message] of cases) {
      const r = await reply;
      assert.equal(r.status, status, r.text);
      assert.equal(r.json.error.code, code);
      assert.match(r.json.error.message, message);
    }
    assert.equal((await http(`${api}/config`, { method: 'DELETE' })).headers.get('allow'), 'GET, POST');
    assert.deepEqual((await http(`${api}/config`)).json, config.json, 'refused updates change nothing in memory');
    assert.equal(await readFile(snap!.config, 'utf8'), fileBefore, 'nor on disk');
    const refused = await http(`${api}/audit/logs?action=config.update&limit=100`);
    assert.ok(refused.json.entries.some((e: { result: string }) => e.result === 'ERR_INVALID_CONFIG'), 'refused updates are audited');

    const metrics = await http(`${api}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(metrics.headers.get('content-type') ?? '', /^text\/plain/);
    const m = parseProm(metrics.text);
    for (const name of ['dedup_store_chunks', 'dedup_store_dedup_ratio', 'dedup_mounts', 'dedup_prefetch_queue', 'dedup_fuse_read_errors_total',
      'dedup_fetch_bytes_total', 'dedup_fetch_duration_seconds_count', 'dedup_chunk_reads_total{from="memory"}', 'dedup_ksm_pages_sharing']) {
      assert.ok(m.has(name), `metric ${name}`);
    }
  });

  it('a config change shows in GET /config, is applied or flagged for restart, survives a restart and is audited', async () => {
    const r = await post(`${snap!.api}/config`, JSON.stringify({ prefetch: { workers: 8 }, log_level: 'debug', enable_erofs: false }), 'application/merge-patch+json');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual([...r.json.changed].sort(), ['enable_erofs', 'log_level', 'prefetch.workers']);
    assert.deepEqual([...r.json.applied].sort(), ['log_level', 'prefetch.workers']);
    assert.deepEqual(r.json.restart_required, ['enable_erofs']);
    assert.equal((await http(`${snap!.api}/config`)).json.prefetch.workers, 8);
    const file = JSON.parse(await readFile(snap!.config, 'utf8'));
    assert.equal(file.prefetch.workers, 8);
    assert.equal(file.log_level, 'debug');

    await snap!.stop();
    snap = await startSnapshotter(join(tmp, 'main'));
    const after = (await http(`${snap.api}/config`)).json;
    assert.equal(after.prefetch.workers, 8);
    assert.equal(after.log_level, 'debug');
    assert.equal(after.enable_erofs, false);

    const audit = (await http(`${snap.api}/audit/logs?action=config.update&limit=1`)).json.entries;
    assert.equal(audit.length, 1);
    assert.equal(audit[0].actor, 'api 127.0.0.1');
    assert.equal(audit[0].result, 'ok');
    assert.deepEqual(audit[0].details.patch, { prefetch: { workers: 8 }, log_level: 'debug', enable_erofs: false });
    const cli = await dedupctlJson<{ action: string; result: string }[]>(['audit', 'ls', '--root', snap.root, '--action', 'config.update', '--limit', '1']);
    assert.deepEqual(cli.map((e) => [e.action, e.result]), [['config.update', 'ok']]);

    // null puts a key back to its default (JSON merge patch).
    const reset = await post(`${snap.api}/config`, JSON.stringify({ prefetch: { workers: null } }));
    assert.equal(reset.json.config.prefetch.workers, 4);
  });

  it('/metrics parses as Prometheus text and its counters move when a lazy mount is read', async () => {
    const scrape = async (): Promise<Map<string, number>> => parseProm((await http(`${snap!.api}/metrics`)).text);
    const before = await scrape();
    const { call, code, close } = snapshotsClient(snap!.socket);
    try {
      const labels = {
        'containerd.io/snapshot.ref': 'chain-app', 'containerd.io/snapshot/remote/stargz.reference': ref,
        'containerd.io/snapshot/remote/stargz.digest': layerDigest,
      };
      assert.equal(await code(call('Prepare', { key: 'extract-app', parent: '', labels })), grpc.status.ALREADY_EXISTS, 'mounted lazily');
      const view = (await call('View', { key: 'view-app', parent: 'chain-app', labels: {} })) as { mounts: { source: string }[] };
      const dir = view.mounts[0]!.source;
      const data = await readFile(join(dir, 'data/big'));
      assert.equal(createHash('sha256').update(data).digest('hex'), createHash('sha256').update(big).digest('hex'));
      const now = await scrape();
      const grew = (name: string): number => (now.get(name) ?? 0) - (before.get(name) ?? 0);
      assert.ok(grew('dedup_fetch_bytes_total') > 0, 'bytes fetched');
      assert.ok(grew('dedup_fetch_requests_total{result="ok"}') > 0, 'fetches');
      assert.ok(grew('dedup_fetch_duration_seconds_count') > 0, 'latency histogram');
      // A layer this small is downloaded whole at mount, so its chunks are served from memory.
      assert.ok(grew('dedup_chunk_reads_total{from="registry"}') + grew('dedup_chunk_reads_total{from="memory"}') > 0, 'chunks served');
      // Stored after the reader was answered, and recorded in the index in batches: not at once.
      await waitFor('the fetched chunks to be recorded as stored', async () => ((await scrape()).get('dedup_store_chunks') ?? 0) > (before.get('dedup_store_chunks') ?? 0));
      assert.equal(now.get('dedup_mounts'), 1);
      const pulls = (await http(`${snap!.api}/audit/logs?action=image.pull`)).json.entries;
      assert.equal(pulls[0].target, ref);
      assert.equal(pulls[0].actor, 'containerd');
      await call('Remove', { key: 'view-app' });
      await call('Remove', { key: 'chain-app' });
      assert.equal((await scrape()).get('dedup_mounts'), 0);
      assert.equal((await http(`${snap!.api}/audit/logs?action=snapshot.remove&limit=1`)).json.entries[0].target, 'chain-app');
    } finally {
      close();
    }
  });

  it('with api.token every endpoint but /healthz needs the bearer token; off loopback a token is required', async () => {
    const dir = join(tmp, 'token');
    await mkdir(dir);
    const s = await startSnapshotter(dir, [], { api: { token: 's3cret' } });
    others.push(s);
    for (const path of ['/config', '/metrics', '/audit/logs']) {
      const none = await http(`${s.api}${path}`);
      assert.equal(none.status, 401, path);
      assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
      assert.equal((await http(`${s.api}${path}`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
      assert.equal((await http(`${s.api}${path}`, { headers: { authorization: 'Bearer s3cret' } })).status, 200);
    }
    assert.equal((await post(`${s.api}/config`, '{"log_level":"warn"}')).status, 401);
    assert.equal((await http(`${s.api}/healthz`)).status, 200);
    assert.equal((await http(`${s.api}/config`, { headers: { authorization: 'Bearer s3cret' } })).json.api.token, '<redacted>');

    const open = await binary('dedup-snapshotter', ['--check', '--root', join(dir, 'r2'), '--config', join(dir, 'none.json'), '--api-addr', '0.0.0.0:0']);
    assert.equal(open.code, 1);
    assert.match(open.stderr, /none\.json: cannot read/);
    const offLoopback = await binary('dedup-snapshotter', ['--check', '--root', join(dir, 'r2'), '--config', s.config, '--api-addr', '0.0.0.0:0']);
    assert.equal(offLoopback.code, 0, 'a token is configured: allowed');
    const noToken = await binary('dedup-snapshotter', ['--check', '--root', join(dir, 'r2'), '--config', snap!.config, '--api-addr', '0.0.0.0:0']);
    assert.equal(noToken.code, 1);
    assert.match(noToken.stderr, /api\.addr: a non-loopback address needs api\.token/);
  });

  it('a second daemon whose admin address is taken serves snapshots, says which address and key, and brings the API up once it is free', async () => {
    const dir = join(tmp, 'busy');
    await mkdir(dir);
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const addr = `127.0.0.1:${(blocker.address() as AddressInfo).port}`;
    let s: TestSnapshotter;
    try {
      s = await startSnapshotter(dir, ['--api-addr', addr]);
      others.push(s);
      const snapshots = snapshotsClient(s.socket);
      try {
        assert.deepEqual(await snapshots.list([]), [], 'gRPC serves while the admin address is busy');
      } finally {
        snapshots.close();
      }
      const [record] = await logged(s.log, /^admin API not serving/, { code: 'ERR_API_BIND' });
      assert.ok(record, 'the bind failure is logged with its code');
      assert.match(String(record.err), new RegExp(`cannot listen on ${addr} \\(address in use\\); set api\\.addr in the config or --api-addr`));
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
    await waitFor('the admin API to come up on the freed address', async () => (await http(`http://${addr}/healthz`)).status === 200, 20_000);
    assert.ok((await logged(s.log, 'admin API serving', { api: addr })).length > 0, `the admin API says it serves on ${addr}`);
  });

  it('audit retention: the daemon removes entries older than audit.retention_days, and only those', async () => {
    const dir = join(tmp, 'retention');
    const root = join(dir, 'dedup-root');
    await mkdir(dir);
    const at = (daysAgo: number): AuditLog => AuditLog.open(root, () => Date.now() - daysAgo * DAY_MS);
    for (const [days, target] of [[45, 'old-45'], [31, 'old-31'], [29, 'kept-29'], [1, 'kept-1']] as const) {
      const log = at(days);
      log.record('test', 'store.gc', target);
      log.close();
    }
    const s = await startSnapshotter(dir, [], { audit: { retention_days: 30 } });
    others.push(s);
    const targets = (await http(`${s.api}/audit/logs?action=store.gc`)).json.entries.map((e: { target: string }) => e.target);
    assert.deepEqual(targets, ['kept-1', 'kept-29']);
    const since = (await http(`${s.api}/audit/logs?action=store.gc&since=${new Date(Date.now() - 2 * DAY_MS).toISOString()}`)).json.entries;
    assert.deepEqual(since.map((e: { target: string }) => e.target), ['kept-1']);
  });
});
