// Which committed snapshot an image's root filesystem is prepared from: containerd names the
// snapshot of an image's top layer by its chain id, computed from the config's diff ids
// (the OCI image spec: chainID(L0) = diffID(L0), chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))).

import { MalformedManifestError } from '../errors.js';
import type { Platform } from '../image/oci.js';
import { RegistryImage } from '../image/registry-image.js';
import type { RegistryClient } from '../registry/client.js';
import { sha256Digest } from '../digest.js';

export function chainId(diffIds: string[]): string {
  if (diffIds.length === 0) throw new MalformedManifestError('image config', 'rootfs.diff_ids is empty');
  return diffIds.slice(1).reduce((chain, diff) => sha256Digest(`${chain} ${diff}`), diffIds[0]!);
}

/** The chain id of `ref`'s top layer, from its config in the registry. */
export async function imageChainId(client: RegistryClient, ref: string, platform: Platform): Promise<string> {
  const resolved = await new RegistryImage(client, ref).resolve(platform);
  return chainId(resolved.config.rootfs.diff_ids);
}
