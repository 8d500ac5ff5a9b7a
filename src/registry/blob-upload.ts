// One upload session of a blob (the distribution spec's push): a cross-repository mount when asked
// and the registry can, else a monolithic PUT for a small blob and chunked PATCHes for a large one.

import { RegistryError } from '../errors.js';
import { apiHost, type ImageReference } from './reference.js';
import type { RegistryTransport, ReplayableBody } from './transport.js';

export const DEFAULT_UPLOAD_CHUNK = 16 * 1024 * 1024;

export interface UploadOptions {
  /** A repository of the same registry that has the blob: mounted from there when the registry can. */
  mountFrom?: string;
  chunkSize?: number;
}

/** Uploads a blob in one session; a RegistryError leaves the session broken (the caller starts another). */
export async function uploadBlob(t: RegistryTransport, ref: ImageReference, digest: string, size: number,
  open: (start: number, end: number) => ReplayableBody, opts: UploadOptions): Promise<'mounted' | 'uploaded'> {
  const scope = `repository:${ref.repository}:pull,push` + (opts.mountFrom ? ` repository:${opts.mountFrom}:pull` : '');
  const what = `upload of blob ${digest} to ${ref.host}/${ref.repository}`;
  const query = opts.mountFrom ? `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(opts.mountFrom)}` : '';
  const start = await t.send(ref, { method: 'POST', path: `${ref.repository}/blobs/uploads/${query}`, headers: { 'content-length': '0' }, scope, capability: 'push' });
  // fail() reads the body: a body is dumped only once the status is the one wanted.
  if (start.statusCode !== 202 && !(start.statusCode === 201 && opts.mountFrom)) return t.fail(start, what);
  await start.body.dump();
  if (start.statusCode === 201) return 'mounted';
  let location = await uploadLocation(t, start.headers.location, start.statusCode, ref);
  const chunkSize = opts.chunkSize ?? DEFAULT_UPLOAD_CHUNK;
  if (size > chunkSize) {
    for (let off = 0; off < size; off += chunkSize) {
      const end = Math.min(size, off + chunkSize);
      const res = await t.send(ref, {
        method: 'PATCH', path: location, body: open(off, end), scope, capability: 'push',
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${off}-${end - 1}`, 'content-length': String(end - off) },
      });
      if (res.statusCode !== 202) return t.fail(res, `${what} (chunk at ${off})`);
      await res.body.dump();
      location = await uploadLocation(t, res.headers.location, res.statusCode, ref);
    }
    const done = await t.send(ref, {
      method: 'PUT', path: withQuery(location, 'digest', digest), headers: { 'content-length': '0' }, scope, capability: 'push',
    });
    if (done.statusCode !== 201) return t.fail(done, what);
    await done.body.dump();
    return 'uploaded';
  }
  const res = await t.send(ref, {
    method: 'PUT', path: withQuery(location, 'digest', digest), body: open(0, size), scope, capability: 'push',
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
  });
  if (res.statusCode !== 201) return t.fail(res, what);
  await res.body.dump();
  return 'uploaded';
}

/** The upload URL a registry answered with; a relative one is relative to the push endpoint. */
async function uploadLocation(t: RegistryTransport, loc: string | string[] | undefined, status: number, ref: ImageReference): Promise<string> {
  const l = Array.isArray(loc) ? loc[0] : loc;
  if (!l) throw new RegistryError(`upload to ${ref.host}/${ref.repository}: registry gave no Location`, status);
  const ep = (await t.endpointsFor(ref.host)).find((e) => e.capabilities.has('push'));
  return new URL(l, ep?.origin ?? `https://${apiHost(ref.host)}`).toString();
}

function withQuery(url: string, key: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(key, value);
  return u.toString();
}
