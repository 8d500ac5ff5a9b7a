// Traces shipped with their image: a trace bundle is pushed to the image's repository as an OCI
// artifact about the image manifest (src/image/artifacts.ts: referrers API, and the tag
// "sha256-<manifest hex>.dedup-trace" for registries without it), so any node can fetch the trace
// of the exact image it runs.

import { MalformedTraceError, NotFoundError } from '../errors.js';
import { artifactTag, findArtifact, pushArtifact } from '../image/artifacts.js';
import type { Platform } from '../image/oci.js';
import { RegistryImage } from '../image/registry-image.js';
import type { RegistryClient } from '../registry/client.js';
import { parseBundle, type TraceBundle } from './trace-store.js';

export const TRACE_ARTIFACT_TYPE = 'application/vnd.dedup-snapshotter.trace.v1+json';
export const TRACE_BUNDLE_MEDIA_TYPE = 'application/vnd.dedup-snapshotter.trace.bundle.v1+json';
const TAG_SUFFIX = 'dedup-trace';

/** Pushes `bundle` next to the image it was recorded for; returns the tag. */
export async function pushTrace(client: RegistryClient, imageRef: string, bundle: TraceBundle, platform: Platform): Promise<string> {
  const image = new RegistryImage(client, imageRef);
  const resolved = await image.resolve(platform);
  if (resolved.manifestDigest !== bundle.manifestDigest) {
    throw new MalformedTraceError(imageRef, `the traces are for manifest ${bundle.manifestDigest}, the image is ${resolved.manifestDigest}`);
  }
  const subject = { mediaType: resolved.manifestMediaType, digest: resolved.manifestDigest, size: resolved.manifestBytes.length };
  const blobs = [{ mediaType: TRACE_BUNDLE_MEDIA_TYPE, bytes: Buffer.from(JSON.stringify(bundle)) }];
  return (await pushArtifact(client, image, subject, TRACE_ARTIFACT_TYPE, blobs, TAG_SUFFIX)).tag;
}

/** Fetches the trace bundle pushed for the image `imageRef` resolves to. */
export async function pullTrace(client: RegistryClient, imageRef: string, platform: Platform): Promise<TraceBundle> {
  const image = new RegistryImage(client, imageRef);
  const resolved = await image.resolve(platform);
  const found = await findArtifact(client, image, resolved.manifestDigest, TRACE_ARTIFACT_TYPE, TAG_SUFFIX);
  const where = `${imageRef} (tag ${artifactTag(resolved.manifestDigest, TAG_SUFFIX)})`;
  if (!found) throw new NotFoundError(`a trace for ${where}`);
  const layer = found.manifest.layers.find((l) => l.mediaType === TRACE_BUNDLE_MEDIA_TYPE);
  if (!layer) throw new MalformedTraceError(where, 'artifact holds no trace bundle');
  const b = parseBundle((await client.getBlob(image.ref, layer.digest)).toString('utf8'), where);
  if (b.manifestDigest !== resolved.manifestDigest) throw new MalformedTraceError(where, `is for manifest ${b.manifestDigest}`);
  return b;
}
