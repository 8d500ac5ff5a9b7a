// Seamless commit with the real parts: containerd + runc containers on our snapshotter (lazily
// pulled through a byte-counting proxy), `dedupctl commit` and POST /commit while the container
// keeps writing, the committed image pulled and run by plain containerd (overlayfs) and lazily by
// ours, compared with the frozen container itself and with `ctr snapshots diff`.

import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { getPriority, setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import tarStream from 'tar-stream';
import { dedupctl } from './fixtures/cli.js';
import { startContainerd, type TestContainerd } from './fixtures/containerd.js';
import { teardownStack } from './fixtures/teardown.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage, type FileSpec } from './fixtures/images.js';
import { logged } from './fixtures/log.js';
import { testMountModeSkip } from './fixtures/mount-mode.js';
import { mustRun, run, waitFor } from './fixtures/process.js';
import { startProxy, type TestProxy } from './fixtures/proxy.js';
import { startRegistry, type TestRegistry } from './fixtures/registry.js';
import { startSnapshotter, type TestSnapshotter } from './fixtures/snapshotter.js';
import { canonicalLinks, expectedTree } from './fixtures/tree.js';

const APPLETS = ['mkdir', 'rm', 'mv', 'ln', 'chmod', 'chown', 'mknod', 'mkfifo', 'dd', 'touch', 'sleep', 'seq', 'tail', 'cp'];
// A directory's size is its filesystem's own (ext4: blocks; EROFS, our kernel-mode layers: its entries), so not listed.
const LISTING = 'cd / && find bin data del d etc opq big fifo dev-null w 2>/dev/null | sort | while read f; do '
  + 'if [ -d "$f" ]; then stat -c "%n %a %u %g - %F %h %t %T" "$f"; else stat -c "%n %a %u %g %s %F %h %t %T" "$f"; fi; done; '
  + 'find data del d etc opq big w -type f 2>/dev/null | sort | xargs sha256sum';
// Each step is one system call, so the state at any instant is one of a few.
const WRITER = 'mkdir -p /w; i=0; while true; do i=$((i+1)); echo $i > /w/tmp; mv /w/tmp /w/f.$i; echo $i >> /w/log; '
  + '[ $i -gt 5 ] && rm /w/f.$((i-5)); done';
const DUMP = 'cd /w && for f in f.*; do echo "$f $(cat $f)"; done; [ -e tmp ] && echo "tmp [$(cat tmp)]"; echo "log $(wc -l < log) $(tail -n 1 log)"; '
  + 'seq 1 $(tail -n 1 log) | sha256sum; sha256sum < log';

interface Report { pause_ms: number; task: string; manifest_digest: string; base_layers: { transfer: string }[]; layer: { digest: string }; precopy_passes: number }

/** The tar entries of a gzip layer as FileSpecs (eStargz's own entries left out). */
async function layerSpecs(blob: Buffer): Promise<FileSpec[]> {
  const out: FileSpec[] = [];
  const ex = tarStream.extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, stream, next) => {
      const parts: Buffer[] = [];
      stream.on('data', (b: unknown) => parts.push(b as Buffer));
      stream.on('end', () => {
        const name = h.name.replace(/^\.\//, '');
        if (!['stargz.index.json', '.no.prefetch.landmark', '.prefetch.landmark'].includes(name)) {
          const xattrs = Object.fromEntries(Object.entries(h.pax ?? {}).filter(([k]) => k.startsWith('SCHILY.xattr.')).map(([k, v]) => [k.slice(13), v]));
          out.push({ name, type: h.type as FileSpec['type'], mode: h.mode, uid: h.uid, gid: h.gid, content: Buffer.concat(parts), linkname: h.linkname ?? undefined,
            devmajor: h.devmajor, devminor: h.devminor, ...(Object.keys(xattrs).length ? { xattrs } : {}) });
        }
        next();
      });
      stream.resume();
    });
    ex.on('finish', resolve);
    ex.on('error', reject);
  });
  ex.end(gunzipSync(blob));
  await done;
  return out;
}

describe('dedupctl commit: a running container into a new image', { skip: testMountModeSkip }, () => {
  let tmp: string;
  let registry: TestRegistry | undefined;
  let proxy: TestProxy | undefined;
  let snap: TestSnapshotter | undefined;
  let ctd: TestContainerd | undefined;
  let base: FileSpec[];
  let baseRef: string;
  const commit = async (container: string, ref: string, extra: string[] = []): Promise<{ code: number; stderr: string; report?: Report }> => {
    const r = await dedupctl(['commit', '--root', snap!.root, '--config', snap!.config, '--address', ctd!.socket, '--plain-http', '--json', ...extra, container, ref], { timeoutMs: 300_000 });
    return { code: r.code, stderr: r.stderr, report: r.code === 0 ? (JSON.parse(r.stdout) as Report) : undefined };
  };
  const runOnce = async (snapshotter: string, ref: string, script: string): Promise<string> => {
    const r = await ctd!.ctr(['run', '--rm', '--snapshotter', snapshotter, ref, `once-${Math.random().toString(36).slice(2, 8)}`, '/bin/sh', '-c', script], 180_000);
    assert.equal(r.code, 0, `ctr run ${ref} (${snapshotter}): ${r.stderr}`);
    return r.stdout;
  };
  const exec = async (container: string, script: string): Promise<string> => {
    const r = await ctd!.ctr(['task', 'exec', '--exec-id', `x${Math.random().toString(36).slice(2, 8)}`, container, '/bin/sh', '-c', script]);
    assert.equal(r.code, 0, `exec in ${container}: ${r.stderr}`);
    return r.stdout;
  };
  const taskStatus = async (container: string): Promise<string> =>
    (await ctd!.ctr(['task', 'ls'])).stdout.split('\n').map((l) => l.trim().split(/\s+/)).find((c) => c[0] === container)?.[2] ?? 'none';
  const logLines = async (container: string): Promise<number> => Number((await exec(container, 'wc -l < /w/log')).trim());

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-commit-test-'));
    registry = await startRegistry(tmp);
    proxy = await startProxy(registry.host);
    base = [
      ...(await busyboxEntries()), ...APPLETS.map((a): FileSpec => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
      { name: 'etc/', type: 'directory' }, { name: 'etc/hostname', type: 'file', content: Buffer.from('base\n') },
      { name: 'data/', type: 'directory' }, { name: 'data/small', type: 'file', content: Buffer.from('small\n') },
      { name: 'data/big', type: 'file', content: Buffer.alloc(8 * 1024 * 1024, 7) },
      { name: 'del/', type: 'directory' }, { name: 'del/gone', type: 'file', content: Buffer.from('x') }, { name: 'del/kept', type: 'file', content: Buffer.from('y') },
      { name: 'opq/', type: 'directory' }, { name: 'opq/a', type: 'file', content: Buffer.from('a') }, { name: 'opq/b', type: 'file', content: Buffer.from('b') },
    ];
    await writeOciImage(join(tmp, 'src'), 'base', [{ tar: await tarOf(base), compression: 'gzip' }]);
    await pushOci(join(tmp, 'src'), 'base', `${registry.host}/src/base:1`);
    const conv = await dedupctl(['convert', '--plain-http', `${registry.host}/src/base:1`, `${registry.host}/lazy/base:1`]);
    assert.equal(conv.code, 0, conv.stderr);
    baseRef = `${proxy.host}/lazy/base:1`;
    // The base layer stays lazy throughout: fetched whole at mount (it is small), it would become
    // complete and switch to EROFS, and that switch's TOC read would count against the commit.
    snap = await startSnapshotter(tmp, [], { prefetch: { whole_layer_bytes: 0 } });
    ctd = await startContainerd(tmp, { dedupSocket: snap.socket });
    const pull = await ctd.rpull(baseRef);
    assert.equal(pull.code, 0, pull.stderr);
  });

  after(async () => {
    await teardownStack(tmp, { ctd, snap, servers: [proxy, registry] });
  });

  it('a container writing all the time commits to one consistent instant, fetching no base layer data; plain containerd runs the image', async () => {
    const started = await ctd!.ctr(['run', '-d', '--snapshotter', 'dedup', baseRef, 'writer', '/bin/sh', '-c', WRITER]);
    assert.equal(started.code, 0, started.stderr);
    await waitFor('the writer to get going', async () => (await logLines('writer')) > 200, 60_000);
    // The freeze boosts the container's threads (nice -20) and must give each its own back.
    const shell = Number((await ctd!.ctr(['task', 'ls'])).stdout.split('\n').map((l) => l.trim().split(/\s+/)).find((c) => c[0] === 'writer')![1]);
    setPriority(shell, 7);
    proxy!.reset();
    const c = await commit('writer', `${proxy!.host}/commits/writer:1`);
    assert.equal(c.code, 0, c.stderr);
    const report = c.report!;
    assert.equal(report.task, 'running');
    assert.ok(report.pause_ms > 0 && report.precopy_passes >= 1, JSON.stringify(report));
    assert.equal(proxy!.stats.blobBytes, 0, 'the commit read no blob from the registry');
    assert.deepEqual(report.base_layers.map((l) => l.transfer), ['mounted']);
    assert.equal(await taskStatus('writer'), 'RUNNING');
    assert.equal(getPriority(shell), 7, 'the writer has its own priority back');
    const before = await logLines('writer');
    await waitFor('the writer to go on after the commit', async () => (await logLines('writer')) > before + 50, 30_000);

    // Plain containerd: a full pull with its overlayfs snapshotter.
    const ref = `${registry!.host}/commits/writer:1`;
    const pull = await ctd!.ctr(['image', 'pull', '--plain-http', ref], 180_000);
    assert.equal(pull.code, 0, pull.stderr);
    const lines = (await runOnce('overlayfs', ref, DUMP)).trim().split('\n');
    const [, count, last] = lines.find((l) => l.startsWith('log '))!.split(' ').map(Number);
    assert.equal(count, last, 'the log holds lines 1..L');
    const sums = lines.filter((l) => / -$/.test(l) || /^[0-9a-f]{64}/.test(l));
    assert.equal(sums[0], sums[1], 'the log is exactly "1\\n2\\n…L\\n": no line torn or missing');
    const files = lines.filter((l) => l.startsWith('f.')).map((l) => l.split(' '));
    for (const [name, content] of files) assert.equal(name, `f.${content}`, `${name} holds its own number`);
    const have = files.map(([n]) => Number(n!.slice(2))).sort((a, b) => a - b);
    const tmpLine = lines.find((l) => l.startsWith('tmp '));
    const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, k) => from + k).filter((k) => k >= 1);
    // The states between two system calls of the loop, around the last line L of the log.
    const valid = [
      { files: range(last! - 5, last!), tmp: undefined }, // L appended, f.(L-5) not removed yet
      { files: range(last! - 4, last!), tmp: undefined }, // f.(L-5) removed
      { files: range(last! - 4, last!), tmp: 'tmp []' }, // tmp created, not written yet
      { files: range(last! - 4, last!), tmp: `tmp [${last! + 1}]` }, // tmp written, not renamed yet
      { files: range(last! - 4, last! + 1), tmp: undefined }, // renamed, L+1 not appended yet
    ];
    assert.ok(valid.some((v) => JSON.stringify(v.files) === JSON.stringify(have) && v.tmp === tmpLine),
      `files ${JSON.stringify(have)} and ${tmpLine ?? 'no tmp'} with log at ${last} are not one instant of the loop`);
    await ctd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'writer']);
    await ctd!.ctr(['task', 'delete', '-f', 'writer']);
  });

  it('the image is the frozen container: same files as the container itself and as ctr snapshots diff (whiteouts, opaque dirs, modes, owners, links, devices, xattrs)', async () => {
    const script = 'rm /del/gone; rm -rf /opq; mkdir /opq; echo c > /opq/c; chmod 0640 /etc/hostname; echo new > /etc/new; ln /etc/new /etc/new-hard; '
      + 'ln -s /etc/new /etc/new-sym; mkdir -p /d/e; echo deep > /d/e/f; chown 1234:5678 /d/e/f; chmod 4755 /d/e/f; mknod /dev-null c 1 3; mkfifo /fifo; '
      + 'dd if=/dev/urandom of=/big bs=1024 count=3000 2>/dev/null; mv /data/small /data/moved; echo more >> /data/big; touch /ready; sleep 100000';
    // A full pull into our snapshots: containerd's differ cannot list xattrs on a lazy layer
    // (the FUSE layer answers ENOSYS for xattrs where the layer has none).
    const fullRef = `${registry!.host}/src/base:1`;
    assert.equal((await ctd!.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', fullRef], 180_000)).code, 0);
    const started = await ctd!.ctr(['run', '-d', '--snapshotter', 'dedup', fullRef, 'changer', '/bin/sh', '-c', script]);
    assert.equal(started.code, 0, started.stderr);
    await waitFor('the changes', async () => (await exec('changer', '[ -e /ready ] && echo yes')).trim() === 'yes', 60_000);
    // An xattr set from the host on the writable layer (busybox cannot).
    const mounts = (await ctd!.ctr(['snapshots', '--snapshotter', 'dedup', 'mounts', '/x', 'changer'])).stdout;
    const upper = /upperdir=([^,\s]+)/.exec(mounts)![1]!;
    await mustRun('setfattr', ['-n', 'user.note', '-v', 'hello', join(upper, 'etc/new')]);
    const inContainer = await exec('changer', LISTING);

    const ref = `${registry!.host}/commits/changer:1`;
    const c = await commit('changer', ref);
    assert.equal(c.code, 0, c.stderr);
    assert.equal((await ctd!.ctr(['image', 'pull', '--plain-http', ref], 180_000)).code, 0);
    assert.equal(await runOnce('overlayfs', ref, LISTING), inContainer, 'plain containerd shows what the container showed');
    assert.equal((await ctd!.rpull(ref)).code, 0);
    assert.equal(await runOnce('dedup', ref, LISTING), inContainer, 'a lazy pull with ours shows it too');

    // The layer against containerd's own diff of the same snapshot, both applied on the base.
    // ctr snapshots diff writes the gzip layer to stdout.
    const theirs = await layerSpecs(Buffer.from(await mustRun('sh', ['-c', `ctr --address ${ctd!.socket} snapshots --snapshotter dedup diff changer | base64 -w0`]), 'base64'));
    const ours = await layerSpecs(Buffer.from(await (await fetch(`http://${registry!.host}/v2/commits/changer/blobs/${c.report!.layer.digest}`)).arrayBuffer()));
    assert.ok(ours.some((s) => s.name === 'opq/.wh..wh..opq') && ours.some((s) => s.name === 'del/.wh.gone'), 'whiteouts as OCI entries');
    assert.deepEqual(ours.find((s) => s.name === 'etc/new')?.xattrs, { 'user.note': 'hello' });
    // containerd's differ keeps only security.capability of a file's xattrs; we keep them all.
    const capabilityOnly = ours.map((e) => ({ ...e, xattrs: undefined }));
    assert.deepEqual(canonicalLinks(expectedTree([base, capabilityOnly])), canonicalLinks(expectedTree([base, theirs])));
    await ctd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'changer']);
  });

  it('a commit of a commit: the chain of layers runs, lazily and on plain containerd; POST /commit answers with pause_ms; metrics and audit count it', async () => {
    const ref1 = `${registry!.host}/commits/changer:1`;
    const started = await ctd!.ctr(['run', '-d', '--snapshotter', 'dedup', ref1, 'second', '/bin/sh', '-c', 'echo two > /etc/second; rm /etc/new-sym; sleep 100000']);
    assert.equal(started.code, 0, started.stderr);
    await waitFor('the second change', async () => (await exec('second', 'cat /etc/second 2>/dev/null')).trim() === 'two', 30_000);
    const res = await fetch(`${snap!.api}/commit`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ container: 'second', ref: `${registry!.host}/commits/changer:2`, address: ctd!.socket }),
    });
    const report = (await res.json()) as Report;
    assert.equal(res.status, 200, JSON.stringify(report));
    assert.equal(typeof report.pause_ms, 'number');
    const plainRef = `${registry!.host}/commits/changer:2`;
    assert.equal((await ctd!.ctr(['image', 'pull', '--plain-http', plainRef], 180_000)).code, 0);
    const out = await runOnce('overlayfs', plainRef, 'cat /etc/second /etc/new /opq/c; ls /etc/new-sym 2>&1; ls /del');
    assert.match(out, /^two\nnew\nc\n.*No such file.*\nkept\n$/s);
    assert.equal((await ctd!.rpull(plainRef)).code, 0);
    assert.equal(await runOnce('dedup', plainRef, 'cat /etc/second /etc/new /opq/c; ls /del'), 'two\nnew\nc\nkept\n');
    const metrics = await (await fetch(`${snap!.api}/metrics`)).text();
    assert.match(metrics, /dedup_commits_total\{outcome="ok"\} 1/);
    assert.match(metrics, /dedup_commit_pause_seconds_count 1/);
    const audit = (await (await fetch(`${snap!.api}/audit/logs?action=container.commit`)).json()) as { entries: { result: string; target: string }[] };
    assert.ok(audit.entries.some((e) => e.result === 'ok' && e.target.endsWith('commits/changer:2')));
    await ctd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'second']);
  });

  it('a stopped container commits without a pause', async () => {
    assert.equal(await taskStatus('changer'), 'STOPPED');
    const ref = `${registry!.host}/commits/changer:stopped`;
    const c = await commit('changer', ref);
    assert.equal(c.code, 0, c.stderr);
    assert.equal(c.report!.task, 'stopped');
    assert.equal(c.report!.pause_ms, 0);
    assert.equal((await ctd!.ctr(['image', 'pull', '--plain-http', ref], 180_000)).code, 0);
    assert.equal(await runOnce('overlayfs', ref, 'cat /etc/new /opq/c; ls /del'), 'new\nc\nkept\n');
  });

  it('errors: an unknown container, a snapshot not ours, a registry refusing the push: typed, the container runs on, nothing tagged', async () => {
    const unknown = await commit('nope', `${proxy!.host}/commits/x:1`);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /container.*nope.*not found.*\[ERR_NOT_FOUND\]/);

    const plainRef = `${registry!.host}/src/base:1`;
    assert.equal((await ctd!.ctr(['image', 'pull', '--plain-http', plainRef], 180_000)).code, 0);
    assert.equal((await ctd!.ctr(['run', '-d', plainRef, 'foreign', '/bin/sh', '-c', 'sleep 100000'])).code, 0);
    const foreign = await commit('foreign', `${proxy!.host}/commits/x:1`);
    assert.equal(foreign.code, 1);
    assert.match(foreign.stderr, /"overlayfs", not of this snapshotter.*\[ERR_SNAPSHOT_NOT_OURS\]/);
    await ctd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'foreign']);

    assert.equal((await ctd!.ctr(['run', '-d', '--snapshotter', 'dedup', baseRef, 'refused', '/bin/sh', '-c', WRITER])).code, 0);
    await waitFor('the writer to get going', async () => (await logLines('refused')) > 50, 60_000);
    // One commit of a snapshot at a time: a lock held by a live process refuses, a dead one's is taken over.
    const key = (await mustRun('sqlite3', [join(snap!.root, 'metadata.db'), "SELECT key FROM snapshots WHERE key LIKE 'default/%/refused'"])).trim();
    const lock = join(snap!.root, 'commits', `${key.replace(/[^\w.-]/g, '_')}.lock`);
    await writeFile(lock, String(process.pid));
    const busy = await commit('refused', `${proxy!.host}/commits/busy:1`);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr, /a commit of its snapshot is in progress \(pid \d+\).*\[ERR_FAILED_PRECONDITION\]/);
    await writeFile(lock, '999999999');
    proxy!.options.fault = (req) => (req.method === 'PUT' && /\/blobs\/uploads\//.test(req.url ?? '') ? '500' : 'ok');
    try {
      const refused = await commit('refused', `${proxy!.host}/commits/refused:1`);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /upload of blob.*HTTP 500.*\[ERR_REGISTRY\]/);
    } finally {
      proxy!.options.fault = undefined;
    }
    assert.equal((await fetch(`http://${registry!.host}/v2/commits/refused/manifests/1`)).status, 404, 'nothing tagged');
    assert.equal(await taskStatus('refused'), 'RUNNING');
    const lines = await logLines('refused');
    await waitFor('the writer to go on', async () => (await logLines('refused')) > lines + 20, 30_000);
    const audit = await run(process.execPath, [join(import.meta.dirname, '../src/cmd/dedupctl.js'), 'audit', 'ls', '--root', snap!.root, '--config', snap!.config, '--json']);
    assert.match(audit.stdout, /container\.commit[\s\S]*ERR_REGISTRY/);
    assert.deepEqual(await logged(snap!.log, /^container left frozen/), []);
    await ctd!.ctr(['task', 'kill', '-s', 'SIGKILL', 'refused']);
  });
});
