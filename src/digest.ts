// sha256 digests as OCI writes them: "sha256:" and 64 lowercase hex digits. The pattern and the
// prefix are written here once for the formats, the store, the converter and the registry client.

import { createHash, type Hash } from 'node:crypto';
import { z } from 'zod';

export const SHA256_DIGEST = /^sha256:[0-9a-f]{64}$/;

export const digestSchema = z.string().regex(SHA256_DIGEST, 'must be sha256:<64 hex digits>');

/** The digest of a hash fed so far (it ends the hash). */
export function hashDigest(hash: Hash): string {
  return 'sha256:' + hash.digest('hex');
}

export function sha256Digest(data: Uint8Array | string): string {
  return hashDigest(createHash('sha256').update(data));
}
