// Lazy pulls through a pull-through cache (#23): a real docker-registry in proxy mode in front of
// a real origin registry, named as mirror in a hosts.toml that containerd and our daemon both
// read. Counting proxies sit between the nodes and each registry, and between the mirror and the
// origin. The first node pulls lazily while the mirror has cached nothing (it answers ranges with
// whole blobs, so the origin serves them); a second node with a fresh state root, after the mirror
// has filled itself, gets its bytes from the mirror and none from the origin.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dedupctlJson } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage } from './fixtures/images.js';
import { logged } from './fixtures/log.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { startProxy, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, waitUntilCached, type TestRegistry } from './fixtures/registry.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';
import { teardownStack } from './fixtures/teardown.js';

interface Node {
  dir: string;
  snap: TestSnapshotter;
  ctd?: TestContainerd;
}

/** Bytes a node received per registry host, the daemon's and its layer server's together, from its /metrics. */
async function bytesByHost(snap: TestSnapshotter): Promise<Map<string, number>> {
  const text = await fetch(`${snap.api}/metrics`).then((r) => r.text());
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^dedup_(?:fused_)?registry_bytes_total\{host="([^"]+)"\} (\d+)/gm)) out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[2]));
  return out;
}

describe('lazy pulls through a pull-through cache (docker-registry in proxy mode) named in hosts.toml', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let origin: TestRegistry | undefined;
  let mirror: TestRegistry | undefined;
  /** mirror → origin: what the mirror fills itself with. */
  let fill: TestProxy | undefined;
  /** nodes → mirror. */
  let viaMirror: TestProxy | undefined;
  /** nodes → origin: the image's registry as the nodes name it (hosts.toml's server). */
  let toOrigin: TestProxy | undefined;
  let hostsDir: string;
  let ref: string;
  let layers: { digest: string; size: number }[] = [];
  const nodes: Node[] = [];

  const startNode = async (name: string): Promise<Node> => {
    const dir = join(tmp, name);
    await mkdir(dir, { recursive: true });
    // No whole-layer prefetch of small layers: what a node fetches is what the container reads.
    const snap = await startSnapshotter(dir, [], { fused: { idle_exit_seconds: 0 }, registry_hosts_dir: hostsDir, prefetch: { small_layer_bytes: 0 } });
    const node: Node = { dir, snap };
    nodes.push(node);
    node.ctd = await startContainerd(dir, { dedupSocket: snap.socket, hostsDir });
    return node;
  };
  const stopNode = async (node: Node): Promise<void> => {
    nodes.splice(nodes.indexOf(node), 1);
    await teardownStack(node.dir, { ctd: node.ctd, snap: node.snap, servers: [] });
  };
  const pullAndRun = async (node: Node, name: string): Promise<void> => {
    const pull = await node.ctd!.rpull(ref);
    assert.equal(pull.code, 0, pull.stderr);
    const r = await node.ctd!.ctr(['run', '--rm', '--snapshotter', 'dedup', ref, name, '/bin/cat', '/hello'], 120_000);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hello\n');
    assert.ok((await logged(node.snap.log, 'remote snapshot mounted lazily')).length > 0, 'a layer was mounted lazily');
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-mirror-test-'));
    origin = await startRegistry(tmp);
    fill = await startProxy(origin.host);
    mirror = await startRegistry(tmp, { name: 'mirror', proxyOf: fill.host });
    viaMirror = await startProxy(mirror.host);
    toOrigin = await startProxy(origin.host);
    await writeOciImage(join(tmp, 'src'), 'app', [
      { tar: await tarOf([...await busyboxEntries(), { name: 'hello', type: 'file', content: Buffer.from('hello\n') }]), compression: 'gzip' },
      { tar: await tarOf([{ name: 'data/', type: 'directory' }, { name: 'data/big', type: 'file', content: randomBytes(24 * 1024 * 1024) }]), compression: 'gzip' },
    ]);
    await pushOci(join(tmp, 'src'), 'app', `${origin.host}/src/app:1`);
    await dedupctlJson(['convert', '--plain-http', `${origin.host}/src/app:1`, `${origin.host}/lazy/app:1`]);
    const manifest = await fetch(`http://${origin.host}/v2/lazy/app/manifests/1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
      .then((r) => r.json()) as { layers: { digest: string; size: number }[] };
    layers = manifest.layers;
    hostsDir = join(tmp, 'certs.d');
    await mkdir(join(hostsDir, toOrigin.host), { recursive: true });
    await writeFile(join(hostsDir, toOrigin.host, 'hosts.toml'),
      `server = "http://${toOrigin.host}"\n\n[host."http://${viaMirror.host}"]\n  capabilities = ["pull", "resolve"]\n`);
    ref = `${toOrigin.host}/lazy/app:1`;
  });

  after(async () => {
    for (const n of [...nodes]) await stopNode(n);
    await teardownStack(tmp, { servers: [viaMirror, toOrigin, mirror, fill, origin] });
  });

  it('the first node pulls lazily while the mirror fills: a small part of the image fetched, the mirror passed over by name', async (t) => {
    const node = await startNode('node1');
    await pullAndRun(node, 'first');
    const total = layers.reduce((n, l) => n + l.size, 0);
    const got = await bytesByHost(node.snap);
    const fetched = [...got.values()].reduce((a, b) => a + b, 0);
    t.diagnostic(`image ${total} bytes; node received ${JSON.stringify(Object.fromEntries(got))}; mirror filled itself with ${fill!.stats.blobBytes} from the origin`);
    assert.ok(fetched > 0 && fetched < total / 4, `fetched ${fetched} of ${total} bytes: ${JSON.stringify([...got])}`);
    const skipped = [...await logged(node.snap.log, /^registry host skipped/, { host: viaMirror!.host }), ...await logged(node.snap.fusedLog, /^registry host skipped/, { host: viaMirror!.host })];
    assert.ok(skipped.length >= 1 && skipped.every((r) => r.reason === 'ignored_range'), 'the mirror answered ranges with whole blobs, and the log says so');
    assert.ok(toOrigin!.stats.rangeRequests > 0, 'the origin served the ranges the mirror could not');
    await stopNode(node);
  });

  it('a second node (fresh state root) after the mirror has cached the blobs gets its bytes from the mirror, none from the origin', async (t) => {
    for (const l of layers) await waitUntilCached(mirror!.host, 'lazy/app', l.digest);
    for (const p of [viaMirror!, toOrigin!, fill!]) p.reset();
    const node = await startNode('node2');
    await pullAndRun(node, 'second');
    const got = await bytesByHost(node.snap);
    t.diagnostic(`node received ${JSON.stringify(Object.fromEntries(got))}; origin sent nodes ${toOrigin!.stats.blobBytes} blob bytes, the mirror ${fill!.stats.blobBytes}`);
    assert.ok((got.get(viaMirror!.host) ?? 0) > 0, JSON.stringify([...got]));
    assert.equal(got.get(toOrigin!.host) ?? 0, 0, 'our daemons received nothing from the origin');
    assert.equal(toOrigin!.stats.blobBytes, 0, 'the origin sent the nodes no blob bytes (containerd neither)');
    assert.equal(fill!.stats.blobBytes, 0, 'the mirror served from its cache');
    assert.ok(viaMirror!.stats.rangeRequests > 0);
  });
});
