// Where a snapshot's directories are: snapshots/<id>/ holds fs (its content, or the mountpoint of
// its layer), work (overlayfs's, for an Active snapshot), erofs (a complete lazy layer's EROFS
// image) and unpacked (a kernel layer's unpacked copy, moved aside to be deleted).

import { join } from 'node:path';

export class SnapshotDirs {
  /** Every snapshot's directory is in here, by id. */
  readonly all: string;

  constructor(root: string) {
    this.all = join(root, 'snapshots');
  }

  dir(id: number): string {
    return join(this.all, String(id));
  }

  fs(id: number): string {
    return join(this.dir(id), 'fs');
  }

  work(id: number): string {
    return join(this.dir(id), 'work');
  }

  /** Where a remote snapshot's EROFS image is mounted once its lazy layer is complete. */
  erofs(id: number): string {
    return join(this.dir(id), 'erofs');
  }

  /** Where a kernel layer's unpacked copy goes once its image is mounted, to be deleted. */
  unpacked(id: number): string {
    return join(this.dir(id), 'unpacked');
  }
}
