// How a layer's whiteouts read in the overlayfs form that a full pull leaves on disk: ".wh.NAME"
// is a whiteout of NAME (a 0/0 character device), ".wh..wh..opq" makes its directory opaque
// (trusted.overlay.opaque "y"). The FUSE layer filesystem and the EROFS image of a lazy layer
// both present a TOC directory through this, so the two show the same tree. Pure.

import type { TocNode } from './toc.js';

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
export const OPAQUE_XATTR = 'trusted.overlay.opaque';

/** A directory entry as overlayfs is to see it: a TOC node, or a whiteout of that name. */
export type OverlayChild = { name: string; node: TocNode } | { name: string; node: undefined };

/**
 * A TOC directory's entries in the overlay form, in TOC order: whiteouts in place of their
 * markers (an entry of the hidden name in the same directory wins over its whiteout), the
 * opaque marker left out and reported as `opaque`.
 */
export function overlayChildren(dir: TocNode): { opaque: boolean; children: OverlayChild[] } {
  let opaque = false;
  const children: OverlayChild[] = [];
  for (const [name, node] of dir.children ?? []) {
    if (name === OPAQUE_MARKER) {
      opaque = true;
    } else if (name.startsWith(WHITEOUT_PREFIX) && name.length > WHITEOUT_PREFIX.length) {
      const hidden = name.slice(WHITEOUT_PREFIX.length);
      if (!dir.children!.has(hidden)) children.push({ name: hidden, node: undefined });
    } else {
      children.push({ name, node });
    }
  }
  return { opaque, children };
}
