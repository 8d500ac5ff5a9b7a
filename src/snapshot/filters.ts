// containerd's filter syntax (its filters package), for List: a filter is selectors joined by ","
// (all must match); a list of filters matches when any does. A selector is a field path
// (name, parent, kind, labels.KEY, with "quoted" parts for keys holding dots) alone (present and
// not empty) or with ==, != or ~= (regular expression) and a value, bare or "quoted".

import { InvalidArgumentError } from '../errors.js';
import type { SnapshotInfo } from './metadata.js';

interface Selector {
  path: string[];
  op: '' | '==' | '!=' | '~=';
  value: string;
  re?: RegExp;
}

function parseQuoted(s: string, i: number, filter: string): [string, number] {
  let out = '';
  for (let j = i + 1; j < s.length; j++) {
    if (s[j] === '\\' && j + 1 < s.length) out += s[++j];
    else if (s[j] === '"') return [out, j + 1];
    else out += s[j];
  }
  throw new InvalidArgumentError(`filter "${filter}": unterminated quote`);
}

export function parseFilter(filter: string): Selector[] {
  const sels: Selector[] = [];
  let i = 0;
  const s = filter;
  while (i < s.length) {
    const path: string[] = [];
    for (;;) {
      while (s[i] === ' ') i++;
      if (s[i] === '"') {
        const [q, next] = parseQuoted(s, i, filter);
        path.push(q);
        i = next;
      } else {
        const m = /^[A-Za-z0-9_/\-]+/.exec(s.slice(i));
        if (!m) throw new InvalidArgumentError(`filter "${filter}": expected a field name at position ${i}`);
        path.push(m[0]);
        i += m[0].length;
      }
      if (s[i] === '.') {
        i++;
        continue;
      }
      break;
    }
    while (s[i] === ' ') i++;
    let op: Selector['op'] = '';
    let value = '';
    const two = s.slice(i, i + 2);
    if (two === '==' || two === '!=' || two === '~=') {
      op = two;
      i += 2;
      while (s[i] === ' ') i++;
      if (s[i] === '"') {
        [value, i] = parseQuoted(s, i, filter);
      } else {
        const m = /^[^,]*/.exec(s.slice(i))!;
        value = m[0].trim();
        i += m[0].length;
      }
    }
    const sel: Selector = { path, op, value };
    if (op === '~=') {
      try {
        sel.re = new RegExp(value);
      } catch {
        throw new InvalidArgumentError(`filter "${filter}": "${value}" is not a regular expression`);
      }
    }
    sels.push(sel);
    while (s[i] === ' ') i++;
    if (i < s.length) {
      if (s[i] !== ',') throw new InvalidArgumentError(`filter "${filter}": unexpected "${s[i]}" at position ${i}`);
      i++;
      if (s.slice(i).trim() === '') throw new InvalidArgumentError(`filter "${filter}": a selector must follow ","`);
    }
  }
  return sels;
}

function field(info: SnapshotInfo, path: string[]): string | undefined {
  switch (path[0]) {
    case 'name': return info.name;
    case 'parent': return info.parent;
    case 'kind': return info.kind;
    case 'labels': return path.length > 1 ? info.labels[path.slice(1).join('.')] : undefined;
    default: return undefined;
  }
}

/** A matcher for a list of filters (any may match); no filters match everything. */
export function snapshotMatcher(filters: string[]): (info: SnapshotInfo) => boolean {
  const parsed = filters.filter((f) => f.trim() !== '').map(parseFilter);
  if (parsed.length === 0) return () => true;
  return (info) => parsed.some((sels) => sels.every((sel) => {
    const v = field(info, sel.path);
    switch (sel.op) {
      case '': return v !== undefined && v !== '';
      case '==': return v === sel.value;
      case '!=': return v !== sel.value;
      case '~=': return v !== undefined && sel.re!.test(v);
    }
  }));
}
