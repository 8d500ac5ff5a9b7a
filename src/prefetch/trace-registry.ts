// Traces shipped with their image: a trace bundle is pushed to the image's repository as an OCI
// artifact under the tag "sha256-<manifest hex>.dedup-trace" (the tag convention cosign uses for
// signatures, since registries without the referrers API can still serve it), with the image
// manifest as its subject, so any node can fetch the trace of the exact image it runs.

import { createHash } from 'node:crypto';
import { MalformedTraceError, NotFoundError } from '../errors.js';
import { MANIFEST_ACCEPT, MediaType, parseJson, manifestSchema, type Platform } from '../image/oci.js';
import { RegistryImage } from '../image/registry-image.js';
import type { RegistryClient } from '../registry/client.js';
import { parseBundle, type TraceBundle } from './trace-store.js';

export const TRACE_ARTIFACT_TYPE = 'application/vnd.dedup-snapshotter.trace.v1+json';
export const TRACE_BUNDLE_MEDIA_TYPE = 'application/vnd.dedup-snapshotter.trace.bundle.v1+json';
const EMPTY_CONFIG = Buffer.from('{}');
const EMPTY_MEDIA_TYPE = 'application/vnd.oci.empty.v1+json';

const sha256 = (b: Buffer): string => 'sha256:' + createHash('sha256').update(b).digest('hex');

export function traceTag(manifestDigest: string): string {
  return `sha256-${manifestDigest.replace(/^sha256:/, '')}.dedup-trace`;
}

/** Pushes `bundle` next to the image it was recorded for; returns the tag. */
export async function pushTrace(client: RegistryClient, imageRef: string, bundle: TraceBundle, platform: Platform): Promise<string> {
  const image = new RegistryImage(client, imageRef);
  const resolved = await image.resolve(platform);
  if (resolved.manifestDigest !== bundle.manifestDigest) {
    throw new MalformedTraceError(imageRef, `the traces are for manifest ${bundle.manifestDigest}, the image is ${resolved.manifestDigest}`);
  }
  const body = Buffer.from(JSON.stringify(bundle));
  await image.putBlob({ mediaType: EMPTY_MEDIA_TYPE, digest: sha256(EMPTY_CONFIG), size: EMPTY_CONFIG.length }, { bytes: EMPTY_CONFIG });
  await image.putBlob({ mediaType: TRACE_BUNDLE_MEDIA_TYPE, digest: sha256(body), size: body.length }, { bytes: body });
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MediaType.ociManifest, artifactType: TRACE_ARTIFACT_TYPE,
    config: { mediaType: EMPTY_MEDIA_TYPE, digest: sha256(EMPTY_CONFIG), size: EMPTY_CONFIG.length },
    layers: [{ mediaType: TRACE_BUNDLE_MEDIA_TYPE, digest: sha256(body), size: body.length }],
    subject: { mediaType: resolved.manifestMediaType, digest: resolved.manifestDigest, size: resolved.manifestBytes.length },
  }));
  const tag = traceTag(resolved.manifestDigest);
  await client.putManifest(image.ref, tag, manifest, MediaType.ociManifest);
  return tag;
}

/** Fetches the trace bundle pushed for the image `imageRef` resolves to. */
export async function pullTrace(client: RegistryClient, imageRef: string, platform: Platform): Promise<TraceBundle> {
  const image = new RegistryImage(client, imageRef);
  const resolved = await image.resolve(platform);
  const tag = traceTag(resolved.manifestDigest);
  let m;
  try {
    m = await client.getManifest(image.ref, tag, MANIFEST_ACCEPT);
  } catch (err) {
    if (err instanceof NotFoundError) throw new NotFoundError(`a trace for ${imageRef} (tag ${tag})`);
    throw err;
  }
  const manifest = parseJson(manifestSchema, m.bytes, `trace artifact ${tag}`);
  const layer = manifest.layers.find((l) => l.mediaType === TRACE_BUNDLE_MEDIA_TYPE);
  if (!layer) throw new MalformedTraceError(`${imageRef} (tag ${tag})`, 'artifact holds no trace bundle');
  const b = parseBundle((await client.getBlob(image.ref, layer.digest)).toString('utf8'), `${imageRef} (tag ${tag})`);
  if (b.manifestDigest !== resolved.manifestDigest) throw new MalformedTraceError(`${imageRef} (tag ${tag})`, `is for manifest ${b.manifestDigest}`);
  return b;
}
