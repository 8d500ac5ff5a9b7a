// Image references as docker and containerd parse them: [HOST[:PORT]/]PATH[:TAG][@DIGEST].

import { SHA256_DIGEST } from '../digest.js';
import { InvalidReferenceError } from '../errors.js';

export interface ImageReference {
  /** Registry host as written (with port); the default (docker.io unless configured) when none was given. */
  host: string;
  /** Repository path, e.g. "library/alpine". */
  repository: string;
  tag: string | undefined;
  digest: string | undefined;
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;

/** `defaultHost`: the registry of a reference without one (config `registry`); docker.io's repositories without a slash are under library/. */
export function parseReference(ref: string, defaultHost = 'docker.io'): ImageReference {
  if (ref.length === 0 || ref.length > 4096) throw new InvalidReferenceError(ref, 'empty or too long');
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!SHA256_DIGEST.test(digest)) throw new InvalidReferenceError(ref, `digest "${digest}" is not sha256:<64 hex digits>`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw new InvalidReferenceError(ref, `tag "${tag}" is not valid`);
  }
  let host = defaultHost;
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    host = first;
    rest = rest.slice(slash + 1);
  }
  if (!/^[a-zA-Z0-9.-]+(?::\d+)?$|^\[[0-9a-fA-F:]+\](?::\d+)?$/.test(host)) throw new InvalidReferenceError(ref, `host "${host}" is not valid`);
  if (host === 'docker.io' && !rest.includes('/')) rest = `library/${rest}`;
  for (const part of rest.split('/')) {
    if (!PATH_COMPONENT.test(part)) throw new InvalidReferenceError(ref, `repository component "${part}" is not valid (lowercase letters, digits and separators)`);
  }
  if (!tag && !digest) tag = 'latest';
  return { host, repository: rest, tag, digest };
}

export function formatReference(r: ImageReference): string {
  return `${r.host}/${r.repository}${r.tag ? ':' + r.tag : ''}${r.digest ? '@' + r.digest : ''}`;
}

/** The host to connect to: docker.io's API lives on registry-1.docker.io. */
export function apiHost(host: string): string {
  return host === 'docker.io' ? 'registry-1.docker.io' : host;
}
