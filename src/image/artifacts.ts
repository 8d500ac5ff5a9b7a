// Artifacts that travel with an image in its repository (traces, gzip indexes): an OCI manifest
// with an artifactType, the empty config, its blobs as layers and the image's manifest as subject
// (OCI 1.1), tagged "sha256-<manifest hex>.<suffix>" as well, the tag schema cosign uses, so that
// registries without the referrers API serve it too. Found through the referrers API first, then
// the tag.

import { NotFoundError } from '../errors.js';
import { sha256Digest } from '../digest.js';
import type { RegistryClient } from '../registry/client.js';
import { indexSchema, MANIFEST_ACCEPT, manifestSchema, MediaType, parseJson, type Descriptor, type ImageManifest } from './oci.js';
import type { RegistryImage } from './registry-image.js';

const EMPTY_CONFIG = Buffer.from('{}');
const EMPTY_MEDIA_TYPE = 'application/vnd.oci.empty.v1+json';

export interface ArtifactBlob {
  mediaType: string;
  bytes: Buffer;
  annotations?: Record<string, string>;
}

export interface FoundArtifact {
  manifest: ImageManifest;
  digest: string;
  via: 'referrers' | 'tag';
}

export function artifactTag(manifestDigest: string, suffix: string): string {
  return `sha256-${manifestDigest.replace(/^sha256:/, '')}.${suffix}`;
}

/** Pushes the blobs as one artifact about `subject` (an image manifest) into `image`'s repository; returns its tag and digest. */
export async function pushArtifact(client: RegistryClient, image: RegistryImage, subject: Descriptor, artifactType: string, blobs: ArtifactBlob[],
  tagSuffix: string): Promise<{ tag: string; digest: string }> {
  const config = { mediaType: EMPTY_MEDIA_TYPE, digest: sha256Digest(EMPTY_CONFIG), size: EMPTY_CONFIG.length };
  await image.putBlob(config, { bytes: EMPTY_CONFIG });
  const layers: Descriptor[] = [];
  for (const b of blobs) {
    const desc: Descriptor = { mediaType: b.mediaType, digest: sha256Digest(b.bytes), size: b.bytes.length, ...(b.annotations ? { annotations: b.annotations } : {}) };
    await image.putBlob(desc, { bytes: b.bytes });
    layers.push(desc);
  }
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType, config, layers,
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
  }));
  const tag = artifactTag(subject.digest, tagSuffix);
  const digest = await client.putManifest(image.ref, tag, manifest, MediaType.ociManifest);
  return { tag, digest };
}

/**
 * The artifact of `artifactType` about the manifest `subjectDigest` in `image`'s repository:
 * the first the referrers API lists, else the one under the tag; undefined when there is none.
 * Both are asked at once: a registry without the referrers API (most) then costs one round trip
 * to the pull, not two; the tag's answer is dropped when the referrers API lists the artifact.
 */
export async function findArtifact(client: RegistryClient, image: RegistryImage, subjectDigest: string, artifactType: string,
  tagSuffix: string): Promise<FoundArtifact | undefined> {
  const byTag = manifestOf(client, image, artifactTag(subjectDigest, tagSuffix))
    .then((m): FoundArtifact => ({ ...m, via: 'tag' }), (err: unknown) => (err instanceof NotFoundError ? undefined : Promise.reject(err)));
  byTag.catch(() => undefined); // awaited below unless the referrers answer (or fail) first
  const referrers = await client.getReferrers(image.ref, subjectDigest, artifactType);
  if (referrers) {
    const listed = parseJson(indexSchema, referrers, `referrers of ${subjectDigest} in ${image.name}`).manifests
      .find((m) => (m as { artifactType?: string }).artifactType === artifactType);
    if (listed) return { ...(await manifestOf(client, image, listed.digest)), via: 'referrers' };
  }
  return byTag;
}

async function manifestOf(client: RegistryClient, image: RegistryImage, reference: string): Promise<{ manifest: ImageManifest; digest: string }> {
  const m = await client.getManifest(image.ref, reference, MANIFEST_ACCEPT);
  return { manifest: parseJson(manifestSchema, m.bytes, `artifact ${image.ref.repository}:${reference}`), digest: m.digest };
}
