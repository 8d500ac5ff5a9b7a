// The layer filesystem's answers on their own (no kernel): what each node looks like, and the
// extended attributes a layer without any answers with ENOSYS (the kernel then stops asking).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseToc } from '../src/estargz/toc-parser.js';
import { type TocEntryJson } from '../src/estargz/toc.js';
import type { LazyLayer } from '../src/fetch/lazy-layer.js';
import { ERRNO, FuseErrno } from '../src/fs/fuse-session.js';
import { OPAQUE_XATTR } from '../src/estargz/whiteouts.js';
import { LayerFs } from '../src/fs/layer-fs.js';

const D = (c: string): string => 'sha256:' + c.repeat(64);
const layerFs = (entries: TocEntryJson[]): LayerFs =>
  new LayerFs(parseToc(Buffer.from(JSON.stringify({ version: 1, entries })), { tocOffset: 100 }), undefined as unknown as LazyLayer);
const errno = (n: number) => (err: unknown): boolean => err instanceof FuseErrno && err.errno === n;

describe('layer filesystem', () => {
  it('answers xattr requests with ENOSYS when no node of the layer has one, so the kernel stops asking', () => {
    const fs = layerFs([{ name: 'bin/', type: 'dir' }, { name: 'bin/sh', type: 'reg', size: 3, offset: 10, chunkDigest: D('a') }]);
    const sh = fs.lookup(fs.lookup(1, 'bin')!.ino, 'sh')!;
    assert.throws(() => fs.getxattr(sh.ino, 'trusted.overlay.metacopy'), errno(ERRNO.ENOSYS));
    assert.throws(() => fs.listxattr(1), errno(ERRNO.ENOSYS));
  });

  it('serves the xattrs of a layer that has some, and ENODATA for a name a node lacks', () => {
    const fs = layerFs([
      { name: 'ping', type: 'reg', size: 3, offset: 10, chunkDigest: D('a'), xattrs: { 'security.capability': Buffer.from('cap').toString('base64') } },
      { name: 'sh', type: 'reg', size: 3, offset: 20, chunkDigest: D('b') },
    ]);
    assert.equal(fs.getxattr(fs.lookup(1, 'ping')!.ino, 'security.capability').toString(), 'cap');
    assert.throws(() => fs.getxattr(fs.lookup(1, 'sh')!.ino, 'security.capability'), errno(ERRNO.ENODATA));
    assert.deepEqual(fs.listxattr(fs.lookup(1, 'sh')!.ino), []);
  });

  it('marks an opaque directory (its only xattr) and shows whiteouts as 0/0 character devices', () => {
    const fs = layerFs([{ name: 'opq/', type: 'dir' }, { name: 'opq/.wh..wh..opq', type: 'reg', size: 0 }, { name: '.wh.gone', type: 'reg', size: 0 }]);
    const opq = fs.lookup(1, 'opq')!;
    assert.equal(fs.getxattr(opq.ino, OPAQUE_XATTR).toString(), 'y');
    assert.deepEqual(fs.readdir(opq.ino).map((e) => e.name), ['.', '..']);
    const gone = fs.lookup(1, 'gone')!;
    assert.equal(gone.mode, 0o020000);
    assert.equal(gone.rdev, 0);
    assert.deepEqual(fs.readdir(1).map((e) => e.name), ['.', '..', 'opq', 'gone']);
  });
});
