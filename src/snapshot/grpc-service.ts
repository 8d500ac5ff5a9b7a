// containerd's Snapshots gRPC service over a Snapshotter (@grpc/grpc-js). The one place where our
// errors become gRPC codes, which containerd maps back to its errdefs.

import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { isDedupError, type ErrorCode } from '../errors.js';
import type { SnapshotInfo } from './metadata.js';
import type { Snapshotter } from './snapshotter.js';

const PROTO_DIR = fileURLToPath(new URL('../../../proto', import.meta.url));

/**
 * containerd's errdefs read NotFound, AlreadyExists, FailedPrecondition and InvalidArgument back
 * as its own kinds (a Prepare answered AlreadyExists is a remote snapshot); Unavailable (the
 * registry or the layer server not answering) and Unimplemented (what this host or build cannot
 * do) as ErrUnavailable and ErrNotImplemented. Anything else is Unknown. A method the service
 * does not have is answered Unimplemented by grpc-js itself.
 */
const GRPC_CODE: Partial<Record<ErrorCode, grpc.status>> = {
  ERR_NOT_FOUND: grpc.status.NOT_FOUND,
  ERR_ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  ERR_FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  ERR_INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  ERR_INVALID_REFERENCE: grpc.status.INVALID_ARGUMENT,
  ERR_REGISTRY: grpc.status.UNAVAILABLE,
  ERR_UNAVAILABLE: grpc.status.UNAVAILABLE,
  ERR_UNSUPPORTED: grpc.status.UNIMPLEMENTED,
  ERR_REGISTRY_AUTH: grpc.status.PERMISSION_DENIED,
};

export function toGrpcError(err: unknown): grpc.ServiceError {
  const code = isDedupError(err) ? GRPC_CODE[err.code] ?? grpc.status.UNKNOWN : grpc.status.UNKNOWN;
  return Object.assign(new Error((err as Error).message), { code, details: (err as Error).message, metadata: new grpc.Metadata() });
}

interface Timestamp {
  seconds: number;
  nanos: number;
}

/** Nanoseconds since the epoch as a protobuf Timestamp, to the nanosecond. */
const ts = (ns: bigint): Timestamp => ({ seconds: Number(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) });
const KIND = { view: 'VIEW', active: 'ACTIVE', committed: 'COMMITTED' } as const;

function info(i: SnapshotInfo): Record<string, unknown> {
  return { name: i.name, parent: i.parent, kind: KIND[i.kind], created_at: ts(i.created), updated_at: ts(i.updated), labels: i.labels };
}

export function loadSnapshotsService(): grpc.ServiceDefinition {
  const def = protoLoader.loadSync('containerd/snapshots.proto', {
    includeDirs: [PROTO_DIR], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { containerd: { services: { snapshots: { v1: { Snapshots: { service: grpc.ServiceDefinition } } } } } };
  return pkg.containerd.services.snapshots.v1.Snapshots.service;
}

type Req = Record<string, unknown> & { key?: string; parent?: string; name?: string; labels?: Record<string, string> };

function unary<T>(fn: (req: Req) => Promise<T> | T): grpc.handleUnaryCall<Req, T> {
  return (call, cb) => {
    Promise.resolve().then(() => fn(call.request)).then((r) => cb(null, r), (err: unknown) => cb(toGrpcError(err)));
  };
}

/** List answers in batches, as containerd's own service does. */
const LIST_BATCH = 100;

export function snapshotsHandlers(s: Snapshotter): grpc.UntypedServiceImplementation {
  return {
    Prepare: unary(async (r) => ({ mounts: await s.prepare(r.key ?? '', r.parent ?? '', r.labels ?? {}) })),
    View: unary(async (r) => ({ mounts: await s.view(r.key ?? '', r.parent ?? '', r.labels ?? {}) })),
    Mounts: unary(async (r) => ({ mounts: await s.mounts(r.key ?? '') })),
    Commit: unary(async (r) => {
      await s.commit(r.name ?? '', r.key ?? '', r.labels ?? {});
      return {};
    }),
    Remove: unary(async (r) => {
      await s.remove(r.key ?? '');
      return {};
    }),
    Stat: unary((r) => ({ info: info(s.stat(r.key ?? '')) })),
    Update: unary((r) => {
      const i = (r.info ?? {}) as { name?: string; labels?: Record<string, string> };
      const paths = ((r.update_mask ?? {}) as { paths?: string[] }).paths ?? [];
      return { info: info(s.update({ name: i.name ?? '', labels: i.labels ?? {} }, paths)) };
    }),
    Usage: unary(async (r) => s.usage(r.key ?? '')),
    Cleanup: unary(async () => {
      await s.cleanup();
      return {};
    }),
    List: (call: grpc.ServerWritableStream<{ filters?: string[] }, unknown>) => {
      try {
        const all = s.list(call.request.filters ?? []).map(info);
        for (let i = 0; i < all.length; i += LIST_BATCH) call.write({ info: all.slice(i, i + LIST_BATCH) });
        call.end();
      } catch (err) {
        call.emit('error', toGrpcError(err));
      }
    },
  };
}
