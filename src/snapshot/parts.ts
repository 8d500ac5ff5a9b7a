// What the Snapshotter shares with its parts (remote-snapshots.ts, kernel-snapshots.ts): its
// metadata, its directories, its log and audit, its one queue of mount repairs.

import type { CompleteLayers } from './complete-layers.js';
import type { SnapshotMetadata } from './metadata.js';
import type { SnapshotDirs } from './snapshot-dirs.js';

export interface SnapshotLog {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
}

/** Records what containerd had done to the node (the audit log). */
export type AuditRecord = (action: string, target: string, details: Record<string, unknown>) => void;

export interface SnapshotterParts {
  metadata: SnapshotMetadata;
  dirs: SnapshotDirs;
  /** Kernel mode: remote snapshots whose complete layer EROFS serves (no FUSE mount needed for those). */
  complete: CompleteLayers | undefined;
  log: SnapshotLog;
  audit?: AuditRecord;
  /** Runs a mount repair after those before it: two could otherwise detach each other's fresh mount. */
  serially(fn: () => Promise<void>): Promise<void>;
}
