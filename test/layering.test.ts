// The layering check (scripts/check-layering.mjs) on this tree and on small made-up trees, and the
// binaries' paths (src/binaries.ts) against package.json. No root, no servers.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { binaryPath, type Binary } from '../src/binaries.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CHECK = join(ROOT, 'scripts/check-layering.mjs');

function check(root?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [CHECK, ...(root ? ['--root', root] : [])], (err, stdout, stderr) => {
      done({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/** A tree with docs/development.md listing `units` in order, and src/ files by path. */
async function tree(dir: string, units: string[], files: Record<string, string>): Promise<string> {
  await rm(dir, { recursive: true, force: true });
  const rows = units.map((u) => `| \`src/${u}\` | ${u} |`).join('\n');
  await mkdir(join(dir, 'docs'), { recursive: true });
  await writeFile(join(dir, 'docs/development.md'), `# Development\n\n## Source tree\n\n| unit | what |\n| --- | --- |\n${rows}\n\n## Tests\n\n| \`src/x/\` | not the table |\n`);
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, 'src', path)), { recursive: true });
    await writeFile(join(dir, 'src', path), text);
  }
  return dir;
}

describe('layering check', () => {
  let tmp = '';
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'layering-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('passes on this tree: src/ follows docs/development.md', async () => {
    const r = await check();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /import only units listed before them/);
  });

  it('passes a tree whose imports go down the table, over several lines and re-exports', async () => {
    const dir = await tree(join(tmp, 'ok'), ['base.ts', 'low/', 'high/'], {
      'base.ts': 'export const A = 1;\n',
      'low/a.ts': "import { A } from '../base.js';\nexport const B = A + Buffer.from('..').length;\n",
      'high/b.ts': "import {\n  B,\n} from '../low/a.js';\nexport { A } from '../base.js';\nexport const C = B;\nconst later = () => import('./c.js');\nvoid later;\n",
      'high/c.ts': 'export {};\n',
    });
    const r = await check(dir);
    assert.equal(r.code, 0, r.stderr);
  });

  /** The check's refusal of a made-up tree (exit 1): its stderr. */
  const refusal = async (name: string, units: string[], files: Record<string, string>): Promise<string> => {
    const r = await check(await tree(join(tmp, name), units, files));
    assert.equal(r.code, 1, r.stdout);
    return r.stderr;
  };

  it('names an import against the order, and the cycle it makes', async () => {
    const stderr = await refusal('up', ['low/', 'high/'], {
      'low/a.ts': "import { C } from '../high/b.js';\nexport const A = C;\n",
      'high/b.ts': "import { A } from '../low/a.js';\nexport const C = 1;\nvoid A;\n",
    });
    assert.match(stderr, /src\/low\/a\.ts: '\.\.\/high\/b\.js': src\/low imports src\/high, which docs\/development\.md lists after it/);
    assert.match(stderr, /import cycle between src\/high, src\/low/);
  });

  it('names an import against the order in every form: over several lines, a re-export, a dynamic import, a bare import', async () => {
    const forms: Record<string, string> = {
      multi: "import {\n  H,\n} from '../high/h.js';\nexport const M = H;\n",
      reexport: "export { H } from '../high/h.js';\n",
      dynamic: "export const D = (): Promise<unknown> => import('../high/h.js');\n",
      bare: "import '../high/h.js';\n",
    };
    const stderr = await refusal('forms', ['low/', 'high/'], {
      'high/h.ts': 'export const H = 1;\n',
      ...Object.fromEntries(Object.entries(forms).map(([f, text]) => [`low/${f}.ts`, text])),
    });
    for (const f of Object.keys(forms)) assert.match(stderr, new RegExp(`src/low/${f}\\.ts: '\\.\\./high/h\\.js': src/low imports src/high`), f);
  });

  it('refuses a unit missing from the table, a row without its unit, and an import out of src/', async () => {
    const stderr = await refusal('drift', ['low/', 'gone/'], {
      'low/a.ts': "import { W } from '../../workers/w.js';\nexport const A = W;\n",
      'extra.ts': 'export {};\n',
    });
    assert.match(stderr, /src\/extra is not in docs\/development\.md's Source tree table/);
    assert.match(stderr, /lists src\/gone, which does not exist/);
    assert.match(stderr, /src\/low\/a\.ts: '\.\.\/\.\.\/workers\/w\.js' leaves src\//);
  });
});

describe('binaries', () => {
  it('are where package.json says', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<Binary, string> };
    for (const [name, path] of Object.entries(pkg.bin) as [Binary, string][]) assert.equal(binaryPath(name), join(ROOT, path), name);
  });
});
