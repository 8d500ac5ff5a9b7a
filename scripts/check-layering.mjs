#!/usr/bin/env node
// The layering check (npm run check:layers, .ci/run): every relative import in src/ goes from a
// unit (a folder or a single file directly in src/) to one listed before it in the "Source tree"
// table of docs/development.md, the one place the order is written. It fails on an import against
// that order, on an import that leaves src/, on a cycle between units, and when the table and
// `ls src/` disagree. Node built-ins only: it runs on a fresh clone before anything is installed.
//
//   node scripts/check-layering.mjs [--root DIR] [--graph]
//
// --graph prints the unit graph (unit -> units it imports, with the number of imports).

import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const rootAt = args.indexOf('--root');
const root = rootAt >= 0 ? resolve(args[rootAt + 1] ?? '.') : resolve(dirname(fileURLToPath(import.meta.url)), '..');
const showGraph = args.includes('--graph');
const src = join(root, 'src');
const doc = join(root, 'docs', 'development.md');

/** The units of the Source tree table, in their order: `src/NAME/` or `src/NAME.ts` in a row's first cell. */
function documentedOrder(text) {
  const start = text.indexOf('\n## Source tree');
  if (start < 0) throw new Error(`${doc}: no "## Source tree" section`);
  const end = text.indexOf('\n## ', start + 1);
  const order = [];
  for (const line of text.slice(start, end < 0 ? undefined : end).split('\n')) {
    if (!line.startsWith('|')) continue;
    const cell = line.split('|')[1] ?? '';
    for (const m of cell.matchAll(/`src\/([A-Za-z0-9_-]+)(?:\.ts|\/)`/g)) order.push(m[1]);
  }
  return order;
}

function sourceFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

/** The unit a path under src/ belongs to: its first folder, or the file's name without .ts/.js. */
function unitOf(path) {
  const [first, ...rest] = relative(src, path).split(sep);
  return rest.length > 0 ? first : first.replace(/\.(ts|js)$/, '');
}

// Static imports and re-exports (possibly over several lines), side-effect imports, dynamic imports.
const IMPORT_RES = [
  /^\s*(?:import|export)\b[^'";]*?\bfrom\s*['"]([^'"]+)['"]/gm,
  /^\s*import\s*['"]([^'"]+)['"]/gm,
  /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
];

function importsOf(file) {
  const text = readFileSync(file, 'utf8');
  return IMPORT_RES.flatMap((re) => [...text.matchAll(re)].map((m) => m[1])).filter((s) => s.startsWith('.'));
}

/** Strongly connected components of more than one unit (Tarjan). */
function cycles(graph) {
  const index = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const found = [];
  let next = 0;
  const visit = (v) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)?.keys() ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), index.get(w)));
    }
    if (low.get(v) === index.get(v)) {
      const scc = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) found.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

function checkLayering() {
  const problems = [];
  const order = documentedOrder(readFileSync(doc, 'utf8'));
  const rank = new Map(order.map((u, i) => [u, i]));
  for (const u of order.filter((u, i) => order.indexOf(u) !== i)) problems.push(`docs/development.md lists src/${u} twice`);

  const present = readdirSync(src, { withFileTypes: true })
    .filter((e) => e.isDirectory() || e.name.endsWith('.ts'))
    .map((e) => (e.isDirectory() ? e.name : e.name.replace(/\.ts$/, '')));
  for (const u of present) if (!rank.has(u)) problems.push(`src/${u} is not in docs/development.md's Source tree table`);
  for (const u of order) if (!present.includes(u)) problems.push(`docs/development.md lists src/${u}, which does not exist`);

  /** unit -> (imported unit -> "file: specifier" lines) */
  const graph = new Map();
  for (const file of sourceFiles(src)) {
    const from = unitOf(file);
    for (const spec of importsOf(file)) {
      const target = resolve(dirname(file), spec);
      const where = `${relative(root, file)}: '${spec}'`;
      if (relative(src, target).startsWith('..')) {
        problems.push(`${where} leaves src/`);
        continue;
      }
      const to = unitOf(target);
      if (to === from) continue;
      if (!graph.has(from)) graph.set(from, new Map());
      const edges = graph.get(from);
      if (!edges.has(to)) edges.set(to, []);
      edges.get(to).push(where);
      if (rank.has(from) && rank.has(to) && rank.get(to) > rank.get(from)) {
        problems.push(`${where}: src/${from} imports src/${to}, which docs/development.md lists after it`);
      }
    }
  }
  for (const scc of cycles(graph)) problems.push(`import cycle between ${scc.map((u) => `src/${u}`).join(', ')}`);
  return { order, graph, problems };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { order, graph, problems } = checkLayering();
  if (showGraph) {
    for (const u of order) {
      const edges = [...(graph.get(u) ?? new Map())].sort(([a], [b]) => order.indexOf(a) - order.indexOf(b));
      console.log(`${u} -> ${edges.map(([to, why]) => `${to}(${why.length})`).join(' ')}`);
    }
  }
  for (const p of problems) console.error(`layering: ${p}`);
  if (problems.length > 0) {
    console.error(`layering: ${problems.length} problem(s); the order is docs/development.md's Source tree table`);
    process.exit(1);
  }
  console.log(`layering: ${order.length} units in src/ import only units listed before them in docs/development.md`);
}
