// Where the built binaries are (package.json "bin"), for a process that starts another: the
// snapshotter and dedupctl start the layer server. Resolved here, not by a path of each caller's.

import { fileURLToPath } from 'node:url';

export type Binary = 'dedup-snapshotter' | 'dedup-fused' | 'dedupd' | 'dedupctl';

export function binaryPath(name: Binary): string {
  return fileURLToPath(new URL(`./cmd/${name}.js`, import.meta.url));
}
