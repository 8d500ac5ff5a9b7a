// Seamless commit: a container becomes a new image (its image's layers plus one eStargz layer of
// its writable layer) while it keeps running. Phases, as the seed names them:
//   lookup     — the container, its snapshot (ours?), its image and task (nothing touched yet);
//   pre-copy   — its upperdir copied to a staging directory while it runs, in passes, each
//                copying what changed during the one before;
//   pause      — its cgroup frozen (a failure here returns an error; the container runs on);
//   switch     — inside the freeze, only what changed since the last pass is copied;
//   resume     — the cgroup thawed, whatever the switch did (a thaw that fails is reported loudly);
//   background — the staged layer built as eStargz and pushed with a manifest; a failure here
//                never touches the container, and nothing is tagged unless all of it is pushed.
// A stopped (or paused) container is not frozen: its layer does not change.

import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { getPriority, setPriority } from 'node:os';
import { join } from 'node:path';
import { FailedPreconditionError, SnapshotNotOursError } from '../errors.js';
import type { CodecPool } from '../codec/codec-pool.js';
import { convertLayer } from '../convert/layer-converter.js';
import { sha256Digest } from '../digest.js';
import type { Platform } from '../image/oci.js';
import { isAlive } from '../mount/mount-records.js';
import type { RegistryClient } from '../registry/client.js';
import type { SnapshotInfo } from '../snapshot/metadata.js';
import { Containerd, type ContainerdTarget } from './containerd.js';
import { CgroupFreezer } from './freezer.js';
import { pushCommitted, type BlobTransfer } from './image-push.js';
import { layerTar } from './layer-tar.js';
import { UpperCapture, type PassResult } from './upper-capture.js';

export type CommitPhase = 'lookup' | 'pre-copy' | 'pause' | 'switch' | 'resume' | 'background';
export const COMMIT_OUTCOMES = ['ok', 'lookup_failed', 'precopy_failed', 'pause_failed', 'switch_failed', 'resume_failed', 'background_failed'] as const;
export type CommitOutcome = (typeof COMMIT_OUTCOMES)[number];

export interface CommitRequest {
  container: string;
  /** Where the new image goes: a registry reference with a tag. */
  ref: string;
  containerd: ContainerdTarget;
  /** The name containerd knows this snapshotter by (proxy_plugins.NAME). */
  snapshotter: string;
  platform: Platform;
}

/** What the daemon counts (DaemonMetrics). */
export interface CommitObserver {
  commitPaused(seconds: number): void;
  commitFinished(outcome: CommitOutcome, backgroundSeconds: number, layerBytes: number): void;
}

export interface CommitOptions {
  /** The snapshotter's state root: snapshots/<id>/fs are the upperdirs. */
  root: string;
  /** The snapshotter's metadata: containerd's keys of our snapshots. */
  snapshots: { list(): SnapshotInfo[]; get(key: string): { id: number } };
  client: RegistryClient;
  pool: CodecPool;
  chunkSize: number;
  compressionLevel: number;
  observer?: CommitObserver;
  /** Phase changes, and bytes done of total while building the layer. */
  onProgress?: (phase: CommitPhase, done: number, total: number) => void;
  freezeTimeoutMs?: number;
  log?: { warn(o: object, m: string): void; error(o: object, m: string): void };
}

export interface CommitReport {
  container: string;
  image: string;
  ref: string;
  manifest_digest: string;
  config_digest: string;
  layer: { digest: string; size: number; diff_id: string; toc_digest: string; uncompressed_size: number; entries: number };
  base_layers: { digest: string; transfer: BlobTransfer }[];
  /** Freeze to thaw, in milliseconds; 0 when the container was not running. */
  pause_ms: number;
  /** Of the pause: until every process had stopped (cgroup.events "frozen 1"). */
  freeze_wait_ms: number;
  /** running (frozen for the final copy), paused (already frozen) or stopped. */
  task: 'running' | 'paused' | 'stopped';
  precopy_passes: number;
  precopy_bytes: number;
  /** What the final pass, inside the freeze, copied. */
  pause_copied_bytes: number;
  pause_copied_files: number;
  entries: number;
  background_seconds: number;
  seconds: number;
}

/** Pre-copy passes: at most this many, and another only while the last one copied more than PRECOPY_SETTLED bytes. */
const PRECOPY_PASSES = 4;
const PRECOPY_SETTLED = 1024 * 1024;
const THAW_TRIES = 5;

function chainId(diffIds: string[]): string {
  return diffIds.slice(1).reduce((chain, d) => sha256Digest(Buffer.from(`${chain} ${d}`)), diffIds[0] ?? '');
}

/** A name in our metadata as containerd's metadata layer makes it: NAMESPACE/TXID/NAME (remote snapshots: NAME). */
function containerdName(key: string): string {
  return key.replace(/^[^/]+\/\d+\//, '');
}

export async function commitContainer(req: CommitRequest, opts: CommitOptions): Promise<CommitReport> {
  const started = performance.now();
  const progress = opts.onProgress ?? (() => undefined);
  let outcome: CommitOutcome = 'lookup_failed';
  let backgroundStarted = 0;
  let layerBytes = 0;
  try {
    progress('lookup', 0, 0);
    const ctd = new Containerd(req.containerd);
    const info = await ctd.container(req.container);
    if (info.snapshotter !== req.snapshotter) {
      throw new SnapshotNotOursError(req.container, `its root filesystem is a snapshot of "${info.snapshotter}", not of this snapshotter ("${req.snapshotter}")`);
    }
    const ns = req.containerd.namespace;
    const snap = opts.snapshots.list().find((s) => s.kind === 'active' && s.name.startsWith(`${ns}/`) && containerdName(s.name) === info.snapshotKey);
    if (!snap) throw new SnapshotNotOursError(req.container, `snapshot "${info.snapshotKey}" (namespace "${ns}") is not an active snapshot in ${opts.root}`);
    const base = await ctd.image(info.image, req.platform);
    const chain = chainId(base.config.rootfs.diff_ids);
    if (containerdName(snap.parent) !== chain) {
      throw new FailedPreconditionError(`container "${req.container}": its snapshot's parent ${containerdName(snap.parent) || '(none)'} is not the chain of image ${info.image} (${chain})`);
    }
    const task = await ctd.task(req.container);
    let freezer = task?.status === 'RUNNING' ? CgroupFreezer.forPid(task.pid) : undefined;
    const state: CommitReport['task'] = !task || task.status === 'STOPPED' || task.status === 'CREATED' ? 'stopped' : freezer && !freezer.isFrozen() ? 'running' : 'paused';
    if (state !== 'running') freezer = undefined;

    const upper = join(opts.root, 'snapshots', String(opts.snapshots.get(snap.name).id), 'fs');
    await mkdir(join(opts.root, 'commits'), { recursive: true });
    const unlock = lockCommit(opts.root, snap.name, req.container);
    let stage: string | undefined;
    try {
      stage = await mkdtemp(join(opts.root, 'commits', `${req.container.replace(/[^\w.-]/g, '_')}-`));
      const capture = new UpperCapture(upper, stage);
      let passes = 0;
      let precopyBytes = 0;
      outcome = 'precopy_failed';
      progress('pre-copy', 0, 0);
      // A layer nothing changes needs one pass; the final one then finds nothing to copy.
      for (let last = Infinity; passes < (freezer ? PRECOPY_PASSES : 1) && last > PRECOPY_SETTLED; passes++) {
        last = (await capture.precopy()).copiedBytes;
        precopyBytes += last;
      }
      const { result, pauseMs, frozenMs } = freezeAndCopy(capture, freezer, opts, (o) => (outcome = o));
      if (freezer) opts.observer?.commitPaused(pauseMs / 1000);
      await capture.writeHeld();

      outcome = 'background_failed';
      backgroundStarted = performance.now();
      const total = result.nodes.reduce((n, f) => n + f.size, 0);
      let done = 0;
      progress('background', 0, total);
      const layer = await convertLayer(() => counted(layerTar(result.nodes, `commit of ${req.container}`), (n) => progress('background', (done += n), total)),
        join(stage, 'layer.estargz'), `commit of container ${req.container}`, { chunkSize: opts.chunkSize, compressionLevel: opts.compressionLevel, pool: opts.pool });
      layerBytes = layer.size;
      const pushed = await pushCommitted(opts.client, info.image, base, layer, req.ref, `dedupctl commit ${req.container}`);
      outcome = 'ok';
      return {
        container: req.container, image: info.image, ref: req.ref, manifest_digest: pushed.manifestDigest, config_digest: pushed.configDigest,
        layer: { digest: layer.digest, size: layer.size, diff_id: layer.diffId, toc_digest: layer.tocDigest, uncompressed_size: layer.uncompressedSize, entries: layer.entries },
        base_layers: pushed.baseLayers, pause_ms: pauseMs, freeze_wait_ms: frozenMs, task: state, precopy_passes: passes, precopy_bytes: precopyBytes,
        pause_copied_bytes: freezer ? result.copiedBytes : 0, pause_copied_files: freezer ? result.copiedFiles : 0, entries: result.nodes.length,
        background_seconds: (performance.now() - backgroundStarted) / 1000, seconds: (performance.now() - started) / 1000,
      };
    } finally {
      if (stage) await rm(stage, { recursive: true, force: true });
      unlock();
    }
  } finally {
    opts.observer?.commitFinished(outcome, backgroundStarted ? (performance.now() - backgroundStarted) / 1000 : 0, layerBytes);
  }
}

/**
 * One commit of a snapshot at a time, across processes (dedupctl, the daemon's API): a second
 * one would find the cgroup frozen by the first, take it for paused and copy while the first
 * thaws it. The lock file holds its owner's pid; one whose owner died is taken over.
 */
function lockCommit(root: string, snapshot: string, container: string): () => void {
  const file = join(root, 'commits', `${snapshot.replace(/[^\w.-]/g, '_')}.lock`);
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
    }
    const owner = Number(readFileSync(file, 'utf8'));
    if (owner && isAlive(owner)) throw new FailedPreconditionError(`container "${container}": a commit of its snapshot is in progress (pid ${owner})`);
    rmSync(file, { force: true });
  }
}

/**
 * The pause: freeze, the final pass, thaw — thawed whatever the pass did. Returns the pass, the
 * time from the freeze request to the thaw and to the moment all was frozen, in milliseconds.
 */
function freezeAndCopy(capture: UpperCapture, freezer: CgroupFreezer | undefined, opts: CommitOptions, setOutcome: (o: CommitOutcome) => void): { result: PassResult; pauseMs: number; frozenMs: number } {
  if (!freezer) return { result: capture.final(), pauseMs: 0, frozenMs: 0 };
  // The pause lasts as long as this thread takes: on a busy node, do not let others preempt it.
  const priority = getPriority();
  const raised = setPriorityOr(-20);
  try {
    return pause(capture, freezer, opts, setOutcome);
  } finally {
    if (raised) setPriorityOr(priority);
  }
}

function setPriorityOr(priority: number): boolean {
  try {
    setPriority(priority);
    return true;
  } catch {
    return false; // not permitted: run at the priority we have
  }
}

function pause(capture: UpperCapture, freezer: CgroupFreezer, opts: CommitOptions, setOutcome: (o: CommitOutcome) => void): { result: PassResult; pauseMs: number; frozenMs: number } {
  const t0 = performance.now();
  setOutcome('pause_failed');
  freezer.freeze(opts.freezeTimeoutMs ?? 2000); // thaws again itself when it fails
  const frozenMs = performance.now() - t0;
  setOutcome('switch_failed');
  let result: PassResult | undefined;
  let passError: unknown;
  try {
    result = capture.final();
  } catch (err) {
    passError = err;
  }
  const pauseMs = performance.now() - t0;
  const thawed = thaw(freezer, opts);
  // A container left frozen outweighs the pass's own error.
  if (!thawed.ok) {
    setOutcome('resume_failed');
    throw thawed.error;
  }
  if (passError !== undefined) throw passError;
  return { result: result!, pauseMs, frozenMs };
}

function thaw(freezer: CgroupFreezer, opts: CommitOptions): { ok: true } | { ok: false; error: Error } {
  let error: Error | undefined;
  for (let i = 0; i < THAW_TRIES; i++) {
    try {
      freezer.thaw();
      return { ok: true };
    } catch (err) {
      error = err as Error;
    }
  }
  opts.log?.error({ cgroup: freezer.dir, err: error!.message }, 'container left frozen: thaw failed; write 0 to its cgroup.freeze');
  return { ok: false, error: error! };
}

/** Passes buffers through, telling `onBytes` how many went by. */
async function* counted(src: AsyncIterable<Buffer>, onBytes: (n: number) => void): AsyncGenerator<Buffer> {
  for await (const b of src) {
    onBytes(b.length);
    yield b;
  }
}
