// The labels containerd, CRI, nerdctl and ctr-remote put on a Prepare (and the one we set on a
// remote snapshot), and the snapshot name containerd's keys end in.

export const LABEL = {
  /** The name containerd wants the snapshot committed under (its chain id). */
  targetRef: 'containerd.io/snapshot.ref',
  criImageRef: 'containerd.io/snapshot/cri.image-ref',
  criLayerDigest: 'containerd.io/snapshot/cri.layer-digest',
  criManifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  /** This layer's digest and those of the layers above it, comma-separated (what will be prepared next). */
  criImageLayers: 'containerd.io/snapshot/cri.image-layers',
  stargzRef: 'containerd.io/snapshot/remote/stargz.reference',
  stargzDigest: 'containerd.io/snapshot/remote/stargz.digest',
  stargzLayers: 'containerd.io/snapshot/remote/stargz.layers',
  /** Set on our remote snapshots, as stargz-snapshotter does. */
  remote: 'containerd.io/snapshot/remote',
  /** "true" on a Prepare: fetch the whole layer in the background once mounted (per image). */
  backgroundFetch: 'containerd.io/snapshot/dedup.background-fetch',
} as const;

/**
 * The name containerd gave a snapshot, from our key: its metadata store prefixes every key with
 * the namespace and a number ("default/12/sha256:..."), so a committed layer's key ends in its chain id.
 */
export function snapshotName(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}
