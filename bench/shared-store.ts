// Scenario "shared-store": two hosts (daemons with separate roots, each with its own containerd)
// and one shared directory, over loopback. Host A pulls an ordinary gzip image (busybox and 96 MiB
// of files) into kernel-mode layers and publishes it; measured: the publish, and from the end of
// the publish (the image visible) until host B has verified and added it. Then the start of a
// container to its first output (page cache dropped each time), pull included: on B from the
// shared store (ctr-remote rpull: manifest and config only, then ctr run), on A from its own store
// (the image pulled already: ctr run only), and a full pull on a third containerd with its
// overlayfs snapshotter (ctr image pull, then ctr run). Every repetition starts from fresh state.

import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { dedupctlJson } from '../test/fixtures/cli.js';
import { startContainerd, unmountUnder, type TestContainerd } from '../test/fixtures/containerd.js';
import { busyboxEntries, pushOci, tarOf, writeOciImage, type FileSpec } from '../test/fixtures/images.js';
import { waitFor } from '../test/fixtures/process.js';
import { startProxy } from '../test/fixtures/proxy.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { startSnapshotter, type TestSnapshotter } from '../test/fixtures/snapshotter.js';
import { dropCaches } from './network.js';
import { summarize, timed, type Summary } from './stats.js';

const MiB = 1024 * 1024;

export interface SharedStoreResult {
  imageBytes: number;
  publishSeconds: Summary;
  /** From the end of the publish to B's "shared image added" (refresh and verification). */
  visibleToAddedSeconds: Summary;
  start: { shared: Summary; own: Summary; fullPull: Summary };
  /** Layer bytes B fetched from the registry for its start from the shared store. */
  sharedLayerBytes: Summary;
  refreshSeconds: number;
}

/** Pull (if any) and `ctr run` to the container's first output line. */
async function startToOutput(ctd: TestContainerd, ref: string, name: string, pull: (() => Promise<{ code: number; stderr: string }>) | undefined, snapshotter: string): Promise<number> {
  await dropCaches();
  return timed(async () => {
    if (pull) {
      const p = await pull();
      if (p.code !== 0) throw new Error(`pull ${ref}: ${p.stderr}`);
    }
    const r = await ctd.ctr(['run', '--rm', '--snapshotter', snapshotter, ref, name, '/bin/sh', '-c', 'cat /data/f0 > /dev/null; echo ready'], 300_000);
    if (r.code !== 0 || r.stdout.trim() !== 'ready') throw new Error(`ctr run ${ref}: ${r.stderr}`);
  });
}

export async function sharedStoreScenario(tmp: string, reps: number, log: (s: string) => void): Promise<SharedStoreResult> {
  const refreshSeconds = 5; // the default
  const data: FileSpec[] = [{ name: 'data/', type: 'directory' }, ...Array.from({ length: 24 }, (_, i): FileSpec => ({ name: `data/f${i}`, type: 'file', content: randomBytes(4 * MiB) }))];
  await writeOciImage(join(tmp, 'img'), 'img', [{ tar: await tarOf(await busyboxEntries()), compression: 'gzip' }, { tar: await tarOf(data), compression: 'gzip' }]);
  const imageBytes = 24 * 4 * MiB;
  const registry = await startRegistry(tmp);
  const proxy = await startProxy(registry.host); // B's registry: its layer bytes are counted
  const ref = `${registry.host}/bench/shared:1`;
  const manifestDigest = (JSON.parse(await readFile(join(tmp, 'img', 'index.json'), 'utf8')) as { manifests: { digest: string }[] }).manifests[0]!.digest;
  const manifest = JSON.parse(await readFile(join(tmp, 'img', 'blobs', 'sha256', manifestDigest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  const layerDigests = new Set(manifest.layers.map((l) => l.digest));
  const publish: number[] = [];
  const added: number[] = [];
  const shared: number[] = [];
  const own: number[] = [];
  const full: number[] = [];
  const sharedBytes: number[] = [];
  try {
    await pushOci(join(tmp, 'img'), 'img', ref);
    for (let i = 0; i < reps; i++) {
      const dir = join(tmp, `rep-${i}`);
      const store = join(dir, 'shared');
      const hosts: { snap?: TestSnapshotter; ctd?: TestContainerd }[] = [{}, {}, {}];
      try {
        for (const [h, name, config] of [[0, 'a', {}], [1, 'b', { shared_stores: [store], shared_stores_refresh_seconds: refreshSeconds }]] as const) {
          await mkdir(join(dir, name), { recursive: true });
          hosts[h]!.snap = await startSnapshotter(join(dir, name), [], config);
          hosts[h]!.ctd = await startContainerd(join(dir, name), { dedupSocket: hosts[h]!.snap!.socket });
        }
        await mkdir(store, { recursive: true }); // a share is a directory before anything is published
        await mkdir(join(dir, 'c'), { recursive: true });
        hosts[2]!.ctd = await startContainerd(join(dir, 'c'));
        const [a, b, c] = hosts as Required<(typeof hosts)[number]>[];
        const pulled = await a!.ctd.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'dedup', ref], 300_000);
        if (pulled.code !== 0) throw new Error(`ctr pull on A: ${pulled.stderr}`);
        const bLog = (await readFile(b!.snap.log, 'utf8')).length;
        publish.push(await timed(() => dedupctlJson(['store', 'publish', ref, '--to', store, '--root', a!.snap.root, '--config', a!.snap.config, '--plain-http'])));
        const visible = performance.now();
        await waitFor('B to add the image', async () => (await readFile(b!.snap.log, 'utf8')).slice(bLog).includes('"msg":"shared image added"'), 120_000);
        added.push((performance.now() - visible) / 1000);
        const bRef = `${proxy.host}/bench/shared:1`;
        proxy.reset();
        shared.push(await startToOutput(b!.ctd, bRef, 'from-shared', () => b!.ctd.rpull(bRef, 300_000), 'dedup'));
        sharedBytes.push(proxy.stats.blobRanges.filter((r) => layerDigests.has(r.digest)).reduce((n, r) => n + r.end - r.start, 0));
        own.push(await startToOutput(a!.ctd, ref, 'from-own', undefined, 'dedup'));
        full.push(await startToOutput(c!.ctd, ref, 'full-pull', () => c!.ctd.ctr(['image', 'pull', '--plain-http', ref], 300_000), 'overlayfs'));
        log(`  repetition ${i + 1}: publish ${publish.at(-1)!.toFixed(2)} s, visible to added on B ${added.at(-1)!.toFixed(2)} s; start: shared ${shared.at(-1)!.toFixed(2)} s (${sharedBytes.at(-1)} layer bytes), own store ${own.at(-1)!.toFixed(2)} s, full pull ${full.at(-1)!.toFixed(2)} s`);
      } finally {
        for (const h of hosts.reverse()) {
          await h.ctd?.stop();
          await h.snap?.stop();
        }
        await unmountUnder(dir);
        await rm(dir, { recursive: true, force: true });
      }
    }
  } finally {
    await proxy.stop();
    await registry.stop();
  }
  return {
    imageBytes, publishSeconds: summarize(publish), visibleToAddedSeconds: summarize(added),
    start: { shared: summarize(shared), own: summarize(own), fullPull: summarize(full) }, sharedLayerBytes: summarize(sharedBytes), refreshSeconds,
  };
}
