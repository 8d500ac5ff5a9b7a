// scripts/install.sh staged under --destdir: what it installs, that a second run changes nothing,
// that it keeps an operator's config and containerd settings, and that --uninstall takes back
// exactly what it added.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { run } from './fixtures/process.js';

const SCRIPT = fileURLToPath(new URL('../../scripts/install.sh', import.meta.url));
const APP = 'usr/local/lib/dedup-snapshotter';

/** Every file outside the app tree, with a hash of its content. */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (relative(root, p) === APP) continue;
      if (e.isDirectory()) await walk(p);
      else out[relative(root, p)] = createHash('sha256').update(await readFile(p)).digest('hex');
    }
  };
  await walk(root);
  return out;
}

describe('scripts/install.sh', () => {
  let tmp: string;
  let dest: string;
  const install = async (...args: string[]): Promise<void> => {
    const r = await run('bash', [SCRIPT, '--destdir', dest, ...args], { timeoutMs: 300_000 });
    assert.equal(r.code, 0, r.stderr);
  };

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dedup-install-test-'));
    dest = join(tmp, 'root');
    await mkdir(join(dest, 'etc/containerd'), { recursive: true });
    await writeFile(join(dest, 'etc/containerd/config.toml'), 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n');
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('installs binaries, a default config, the units and the proxy plugin; a second run changes nothing', async () => {
    await install();
    const first = await snapshot(dest);
    assert.deepEqual(Object.keys(first).sort(), [
      'etc/containerd/config.toml', 'etc/dedup-snapshotter/config.json', 'etc/systemd/system/dedup-fused.service',
      'etc/systemd/system/dedup-snapshotter.service', 'etc/systemd/system/dedupd.service', 'etc/systemd/system/dedupd@.service', 'usr/local/bin/dedup-fused', 'usr/local/bin/dedup-snapshotter', 'usr/local/bin/dedupctl', 'usr/local/bin/dedupd',
    ]);
    const toml = await readFile(join(dest, 'etc/containerd/config.toml'), 'utf8');
    assert.match(toml, /sandbox_image = "pause:3.9"/, 'the operator\'s settings stay');
    assert.match(toml, /\[proxy_plugins\.dedup\]\n {2}type = "snapshot"\n {2}address = "\/run\/containerd\/dedup-snapshotter.sock"/);
    const config = JSON.parse(await readFile(join(dest, 'etc/dedup-snapshotter/config.json'), 'utf8'));
    assert.equal(config.chunk_size, 4194304);
    assert.equal(config.api.addr, '127.0.0.1:8080');
    assert.match(await readFile(join(dest, 'usr/local/bin/dedupctl'), 'utf8'), /exec \S+node \/usr\/local\/lib\/dedup-snapshotter\/dist\/src\/cmd\/dedupctl\.js "\$@"/);
    assert.ok((await readdir(join(dest, APP, 'native/build/Release'))).includes('dedup_native.node'));
    // The layer server is its own unit: a snapshotter restart leaves it; reload upgrades it.
    assert.match(await readFile(join(dest, 'etc/systemd/system/dedup-snapshotter.service'), 'utf8'), /--no-spawn-fused/);
    assert.match(await readFile(join(dest, 'etc/systemd/system/dedup-fused.service'), 'utf8'), /ExecReload=\/usr\/local\/bin\/dedupctl fused upgrade/);

    await writeFile(join(dest, 'etc/dedup-snapshotter/config.json'), '{"log_level": "debug"}\n');
    const edited = await snapshot(dest);
    await install();
    assert.deepEqual(await snapshot(dest), edited, 'second run: same files, the edited config kept, one plugin block');
  });

  it('--uninstall removes what it added and leaves the rest; --purge removes the config too', async () => {
    await install('--uninstall');
    const left = await snapshot(dest);
    assert.deepEqual(Object.keys(left).sort(), ['etc/containerd/config.toml', 'etc/dedup-snapshotter/config.json']);
    assert.equal(await readFile(join(dest, 'etc/containerd/config.toml'), 'utf8'), 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n');
    await install('--uninstall', '--purge');
    assert.deepEqual(Object.keys(await snapshot(dest)), ['etc/containerd/config.toml']);
  });
});
