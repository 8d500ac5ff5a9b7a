// One errors module: every failure the project reports is one of these classes, with a stable
// `code` that scripts and tests match on and a message that names the thing that was wrong.
// Edges (CLI exit codes, gRPC codes, HTTP statuses, FUSE errno) translate codes in exactly one
// place each. An error that crosses a process travels as its code and message (WireError) and is
// rebuilt there as the class of its code (fromWire), so callers test classes, never strings.

export type ErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_INVALID_CONFIG'
  | 'ERR_INVALID_REFERENCE'
  | 'ERR_NOT_FOUND'
  | 'ERR_ALREADY_EXISTS'
  | 'ERR_FAILED_PRECONDITION'
  | 'ERR_REGISTRY'
  | 'ERR_REGISTRY_AUTH'
  | 'ERR_UNSUPPORTED_MEDIA_TYPE'
  | 'ERR_MALFORMED_MANIFEST'
  | 'ERR_MALFORMED_LAYER'
  | 'ERR_MALFORMED_ESTARGZ'
  | 'ERR_TOC_DIGEST_MISMATCH'
  | 'ERR_DIGEST_MISMATCH'
  | 'ERR_CHUNK_DIGEST_MISMATCH'
  | 'ERR_INVALID_EROFS_TREE'
  | 'ERR_STORE'
  | 'ERR_MOUNT'
  | 'ERR_TREE_REMOVAL'
  | 'ERR_MALFORMED_TRACE'
  | 'ERR_MALFORMED_GZIP_INDEX'
  | 'ERR_KSM'
  | 'ERR_PEER'
  | 'ERR_UNAVAILABLE'
  | 'ERR_UNSUPPORTED'
  | 'ERR_API_BIND'
  | 'ERR_FREEZE'
  | 'ERR_SNAPSHOT_NOT_OURS'
  | 'ERR_SANDBOX'
  | 'ERR_POOL_EXHAUSTED'
  | 'ERR_CRIU'
  | 'ERR_SHARED_STORE'
  | 'ERR_BAD_JSON'
  | 'ERR_BODY_TOO_LARGE'
  | 'ERR_METHOD_NOT_ALLOWED'
  | 'ERR_UNAUTHORIZED'
  | 'ERR_INTERNAL';

export class DedupError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

export class InvalidArgumentError extends DedupError {
  constructor(message: string) {
    super('ERR_INVALID_ARGUMENT', message);
  }
}

export class InvalidConfigError extends DedupError {
  constructor(message: string) {
    super('ERR_INVALID_CONFIG', message);
  }
}

export class InvalidReferenceError extends DedupError {
  constructor(ref: string, why: string) {
    super('ERR_INVALID_REFERENCE', `invalid image reference "${ref}": ${why}`);
  }
}

export class NotFoundError extends DedupError {
  constructor(what: string, detail?: string) {
    super('ERR_NOT_FOUND', `${what} not found${detail ? ` (${detail})` : ''}`);
  }
}

export class AlreadyExistsError extends DedupError {
  constructor(what: string) {
    super('ERR_ALREADY_EXISTS', `${what}: already exists`);
  }
}

/** The thing exists but is in the wrong state for the operation (containerd's ErrFailedPrecondition). */
export class FailedPreconditionError extends DedupError {
  constructor(message: string) {
    super('ERR_FAILED_PRECONDITION', message);
  }
}

/** A registry answered with an unexpected status, or could not be reached after the retries. */
export class RegistryError extends DedupError {
  readonly status: number | undefined;
  constructor(message: string, status?: number, options?: { cause?: unknown }) {
    super('ERR_REGISTRY', message, options);
    this.status = status;
  }
}

export class RegistryAuthError extends DedupError {
  constructor(message: string) {
    super('ERR_REGISTRY_AUTH', message);
  }
}

export class UnsupportedMediaTypeError extends DedupError {
  constructor(mediaType: string, where: string) {
    super('ERR_UNSUPPORTED_MEDIA_TYPE', `unsupported media type "${mediaType}" for ${where}`);
  }
}

export class MalformedManifestError extends DedupError {
  constructor(where: string, why: string) {
    super('ERR_MALFORMED_MANIFEST', `malformed ${where}: ${why}`);
  }
}

/** A layer's tar stream (or its compression) is broken. */
export class MalformedLayerError extends DedupError {
  constructor(layer: string, why: string, options?: { cause?: unknown }) {
    super('ERR_MALFORMED_LAYER', `malformed layer ${layer}: ${why}`, options);
  }
}

/** A gzip layer of several gzip members (concatenated), which a gzip index cannot describe. */
export class MultipleGzipMembersError extends MalformedLayerError {
  constructor(layer: string) {
    super(layer, 'holds more than one gzip member, which its index cannot describe');
  }
}

/** The eStargz footer, TOC or an entry of it is broken; `where` says which part. */
export class MalformedEstargzError extends DedupError {
  constructor(where: string, why: string) {
    super('ERR_MALFORMED_ESTARGZ', `malformed eStargz ${where}: ${why}`);
  }
}

export class TocDigestMismatchError extends DedupError {
  constructor(layer: string, expected: string, actual: string) {
    super('ERR_TOC_DIGEST_MISMATCH', `TOC of layer ${layer} has digest ${actual}, annotation says ${expected}`);
  }
}

export class DigestMismatchError extends DedupError {
  constructor(what: string, expected: string, actual: string) {
    super('ERR_DIGEST_MISMATCH', `${what}: expected digest ${expected}, got ${actual}`);
  }
}

export class ChunkDigestMismatchError extends DedupError {
  readonly chunk: string;
  constructor(chunk: string, actual: string, where: string) {
    super('ERR_CHUNK_DIGEST_MISMATCH', `chunk ${chunk} (${where}) has digest ${actual}; refusing to store it`);
    this.chunk = chunk;
  }
}

/** An entry given to the EROFS builder cannot be written: `entry` is its path ("" for the root, "options" for the build options). */
export class InvalidErofsTreeError extends DedupError {
  readonly entry: string;
  readonly why: string;
  constructor(entry: string, why: string) {
    super('ERR_INVALID_EROFS_TREE', `EROFS ${entry === 'options' ? 'build options' : `entry "${entry}"`}: ${why}`);
    this.entry = entry;
    this.why = why;
  }
}

export class StoreError extends DedupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STORE', message, options);
  }
}

/** An access trace file is unreadable, not a trace, or for another image or layer. */
export class MalformedTraceError extends DedupError {
  constructor(file: string, why: string) {
    super('ERR_MALFORMED_TRACE', `trace ${file}: ${why}`);
  }
}

/** A gzip layer's index is broken, or does not fit the layer it claims to index; `where` names it. */
export class MalformedGzipIndexError extends DedupError {
  constructor(where: string, why: string) {
    super('ERR_MALFORMED_GZIP_INDEX', `malformed gzip index ${where}: ${why}`);
  }
}

/** A mount or unmount (FUSE, overlay) failed, or a mount is not where it was asked for. */
export class MountError extends DedupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_MOUNT', message, options);
  }
}

/** A directory tree could not be deleted (rm(1) said why). */
export class TreeRemovalError extends DedupError {
  constructor(dir: string, why: string) {
    super('ERR_TREE_REMOVAL', `cannot remove ${dir}: ${why}`);
  }
}

/** KSM's sysfs is missing, refused a value, or cannot be written. */
export class KsmError extends DedupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_KSM', message, options);
  }
}

/** A peer (the layer server, dedupd, the admin API) answered with a code this build does not know (or none: `HTTP <status>`). */
export class PeerError extends DedupError {
  constructor(readonly peer: string, readonly remoteCode: string, message: string) {
    super('ERR_PEER', `${peer}: ${message} [${remoteCode}]`);
  }
}

/** Not now: a peer that does not answer (its socket missing) or a transient state (a hand-over) refuses the request; the caller may retry. */
export class UnavailableError extends DedupError {
  constructor(message: string) {
    super('ERR_UNAVAILABLE', message);
  }
}

/** This kernel or build lacks something the operation needs; the message says what. */
export class UnsupportedError extends DedupError {
  constructor(message: string) {
    super('ERR_UNSUPPORTED', message);
  }
}

/** The admin HTTP API cannot listen where it was told (the address is in use, or not this host's). */
export class ApiBindError extends DedupError {
  constructor(readonly addr: string, reason: string) {
    super('ERR_API_BIND', `admin API cannot listen on ${addr} (${reason}); set api.addr in the config or --api-addr (127.0.0.1:0 picks a free port)`);
  }
}

/** A container's cgroup could not be frozen or thawed (`what` names the cgroup or task). */
export class FreezeError extends DedupError {
  constructor(what: string, why: string) {
    super('ERR_FREEZE', `freezer of ${what}: ${why}`);
  }
}

/** A container to commit whose writable layer is not a snapshot of this snapshotter. */
export class SnapshotNotOursError extends DedupError {
  constructor(container: string, why: string) {
    super('ERR_SNAPSHOT_NOT_OURS', `container "${container}": ${why}`);
  }
}

/** A sandbox could not be started, frozen, thawed or destroyed; the message names it and the step. */
export class SandboxError extends DedupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_SANDBOX', message, options);
  }
}

/** No frozen sandbox of the pool became ready within the Acquire's timeout. */
export class PoolExhaustedError extends DedupError {
  constructor(readonly pool: string, timeoutMs: number) {
    super('ERR_POOL_EXHAUSTED', `pool ${pool}: no sandbox ready within ${timeoutMs} ms`);
  }
}

/** CRIU is missing, failed its check, or a dump or restore failed; the message points at its log. */
export class CriuError extends DedupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CRIU', message, options);
  }
}

/** Why a shared store's image is not served (docs/shared-store.md); `reason` is the metric's label. */
export type SharedStoreRejection = 'record' | 'incomplete' | 'image_digest' | 'chunk_digest' | 'unreadable';

/** A shared store's image that is not served: incomplete, corrupt or unreadable; the message names the file. */
export class SharedStoreError extends DedupError {
  constructor(readonly reason: SharedStoreRejection, message: string, options?: { cause?: unknown }) {
    super('ERR_SHARED_STORE', message, options);
  }
}

/** A request body that is not valid JSON. */
export class MalformedJsonError extends DedupError {
  constructor(what: string, why: string) {
    super('ERR_BAD_JSON', `${what} is not valid JSON (${why})`);
  }
}

/** A request body over its limit; `setting` names what sets the limit. */
export class BodyTooLargeError extends DedupError {
  constructor(limit: number, setting: string) {
    super('ERR_BODY_TOO_LARGE', `body over ${limit} bytes (${setting})`);
  }
}

/** An endpoint that does not take this method; `allow` lists those it takes. */
export class MethodNotAllowedError extends DedupError {
  constructor(method: string, path: string, readonly allow: string[]) {
    super('ERR_METHOD_NOT_ALLOWED', `${method} not allowed on ${path} (${allow.join(', ')})`);
  }
}

/** A request without the credentials the server wants; `challenge` is its WWW-Authenticate. */
export class UnauthorizedError extends DedupError {
  constructor(message: string, readonly challenge?: string) {
    super('ERR_UNAUTHORIZED', message);
  }
}

/** A failure that is none of the above (a bug, or a system error no class names), as a server answers it. */
export class InternalError extends DedupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INTERNAL', message, options);
  }
}

export function isDedupError(err: unknown): err is DedupError {
  return err instanceof DedupError;
}

/** An error as it crosses a process: the HTTP helpers' JSON answers are {"error": WireError}. */
export interface WireError {
  code: string;
  message: string;
}

/** How `err` travels: its code and message; anything not ours as ERR_INTERNAL. */
export function toWire(err: unknown): WireError {
  if (isDedupError(err)) return { code: err.code, message: err.message };
  return { code: 'ERR_INTERNAL', message: err instanceof Error ? err.message : String(err) };
}

/** The class each code is rebuilt as (the most general one where classes share a code). */
const CLASS_OF: { [C in ErrorCode]: { prototype: DedupError } } = {
  ERR_INVALID_ARGUMENT: InvalidArgumentError,
  ERR_INVALID_CONFIG: InvalidConfigError,
  ERR_INVALID_REFERENCE: InvalidReferenceError,
  ERR_NOT_FOUND: NotFoundError,
  ERR_ALREADY_EXISTS: AlreadyExistsError,
  ERR_FAILED_PRECONDITION: FailedPreconditionError,
  ERR_REGISTRY: RegistryError,
  ERR_REGISTRY_AUTH: RegistryAuthError,
  ERR_UNSUPPORTED_MEDIA_TYPE: UnsupportedMediaTypeError,
  ERR_MALFORMED_MANIFEST: MalformedManifestError,
  ERR_MALFORMED_LAYER: MalformedLayerError,
  ERR_MALFORMED_ESTARGZ: MalformedEstargzError,
  ERR_TOC_DIGEST_MISMATCH: TocDigestMismatchError,
  ERR_DIGEST_MISMATCH: DigestMismatchError,
  ERR_CHUNK_DIGEST_MISMATCH: ChunkDigestMismatchError,
  ERR_INVALID_EROFS_TREE: InvalidErofsTreeError,
  ERR_STORE: StoreError,
  ERR_MOUNT: MountError,
  ERR_TREE_REMOVAL: TreeRemovalError,
  ERR_MALFORMED_TRACE: MalformedTraceError,
  ERR_MALFORMED_GZIP_INDEX: MalformedGzipIndexError,
  ERR_KSM: KsmError,
  ERR_PEER: PeerError,
  ERR_UNAVAILABLE: UnavailableError,
  ERR_UNSUPPORTED: UnsupportedError,
  ERR_API_BIND: ApiBindError,
  ERR_FREEZE: FreezeError,
  ERR_SNAPSHOT_NOT_OURS: SnapshotNotOursError,
  ERR_SANDBOX: SandboxError,
  ERR_POOL_EXHAUSTED: PoolExhaustedError,
  ERR_CRIU: CriuError,
  ERR_SHARED_STORE: SharedStoreError,
  ERR_BAD_JSON: MalformedJsonError,
  ERR_BODY_TOO_LARGE: BodyTooLargeError,
  ERR_METHOD_NOT_ALLOWED: MethodNotAllowedError,
  ERR_UNAUTHORIZED: UnauthorizedError,
  ERR_INTERNAL: InternalError,
};

function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(CLASS_OF, code);
}

/**
 * The error `peer` answered with, rebuilt as the class of its code with the peer's message (named
 * after the peer). Only the code and message travel: a class's own fields (RegistryError.status,
 * ChunkDigestMismatchError.chunk, ...) are left unset. A code this build does not know, or an
 * answer without one (`status` is its HTTP status), is a PeerError.
 */
export function fromWire(peer: string, wire: Partial<WireError> | undefined, status: number): DedupError {
  const code = typeof wire?.code === 'string' ? wire.code : undefined;
  const message = typeof wire?.message === 'string' ? wire.message : `HTTP ${status}`;
  if (code === undefined || !isErrorCode(code)) return new PeerError(peer, code ?? `HTTP ${status}`, message);
  // The base constructor with the class as new.target: the prototype (instanceof, name) is the class's.
  return Reflect.construct(DedupError, [code, `${peer}: ${message}`], CLASS_OF[code] as unknown as new () => DedupError) as DedupError;
}
