// dedupctl trace ls | show | export | import | rm: access traces as artifacts an operator moves
// between nodes (docs/trace.md).

import { readFile, writeFile } from 'node:fs/promises';
import { Command } from 'commander';
import { bundle, importBundle, listTraces, parseBundle, removeTraces, tracesOf } from '../prefetch/trace-store.js';
import { parsePlatform } from '../image/oci.js';
import { pullTrace, pushTrace } from '../prefetch/trace-registry.js';
import { configFrom, formatBytes, printJson, registryClientFrom, withCommonFlags, type CommonFlags } from '../startup/common.js';

interface TraceFlags extends CommonFlags {
  traceDir?: string;
}

const dirOf = async (flags: TraceFlags): Promise<string> => flags.traceDir ?? (await configFrom(flags)).prefetch.trace_dir;
const withDir = (c: Command): Command => withCommonFlags(c).option('--trace-dir <dir>', 'trace directory (default: prefetch.trace_dir)');

export function traceCommand(): Command {
  const trace = new Command('trace').description('access traces: what a workload read at start-up, replayed as prefetch');
  trace.addCommand(withDir(new Command('ls')).description('list traces per image and layer')
    .action(async (flags: TraceFlags) => {
      const { traces, bad } = await listTraces(await dirOf(flags));
      const rows = traces.map((t) => ({ image: t.image, manifestDigest: t.manifestDigest, layer: t.layer, chunks: t.accesses.length,
        bytes: t.accesses.reduce((n, a) => n + a.length, 0), spanMs: Math.max(0, ...t.accesses.map((a) => a.ms)), recordedAt: t.recordedAt }));
      for (const b of bad) process.stderr.write(`dedupctl: warning: ${b.error}\n`);
      if (flags.json) return printJson(rows);
      for (const r of rows) process.stdout.write(`${r.image}  ${r.manifestDigest.slice(0, 19)}  layer ${r.layer.slice(0, 19)}  ${r.chunks} chunks, ${formatBytes(r.bytes)}, ${r.spanMs} ms  ${r.recordedAt}\n`);
    }));
  trace.addCommand(withDir(new Command('show')).description('the files a trace holds, in order of first access')
    .argument('<image>', 'image name or manifest digest')
    .action(async (image: string, flags: TraceFlags) => {
      const traces = await tracesOf(await dirOf(flags), image);
      if (flags.json) return printJson(traces);
      for (const t of traces) {
        process.stdout.write(`# layer ${t.layer}: ${t.accesses.length} chunks over ${Math.max(0, ...t.accesses.map((a) => a.ms))} ms\n`);
        const files = new Map<string, { first: number; bytes: number }>();
        for (const a of t.accesses) {
          const f = files.get(a.path) ?? { first: a.ms, bytes: 0 };
          f.bytes += a.length;
          files.set(a.path, f);
        }
        for (const [path, f] of files) process.stdout.write(`${String(f.first).padStart(8)} ms  ${formatBytes(f.bytes).padStart(10)}  ${path}\n`);
      }
    }));
  trace.addCommand(withDir(new Command('export')).description("write an image's traces to one file")
    .argument('<image>', 'image name or manifest digest').argument('<file>', 'output file')
    .action(async (image: string, file: string, flags: TraceFlags) => {
      const b = bundle(await tracesOf(await dirOf(flags), image));
      await writeFile(file, JSON.stringify(b));
      if (flags.json) printJson({ file, manifestDigest: b.manifestDigest, layers: b.traces.length });
    }));
  trace.addCommand(withDir(new Command('import')).description('add traces exported elsewhere (a bundle or one trace file)')
    .argument('<file>', 'bundle or trace file')
    .action(async (file: string, flags: TraceFlags) => {
      const b = parseBundle(await readFile(file, 'utf8'), file);
      const written = await importBundle(await dirOf(flags), b);
      if (flags.json) printJson({ manifestDigest: b.manifestDigest, written });
      else process.stdout.write(`imported ${written.length} layer traces of ${b.image}\n`);
    }));
  trace.addCommand(withDir(new Command('push')).description('push the traces of an image to its repository (tag sha256-<manifest>.dedup-trace)')
    .argument('<image>', 'registry reference the traces were recorded for')
    .option('--platform <os/arch[/variant]>', 'platform of a multi-platform image', 'linux/amd64')
    .action(async (image: string, flags: TraceFlags & { platform: string }) => {
      const config = await configFrom(flags);
      const client = await registryClientFrom(flags, config);
      try {
        const b = bundle(await tracesOf(flags.traceDir ?? config.prefetch.trace_dir, image));
        const tag = await pushTrace(client, image, b, parsePlatform(flags.platform));
        if (flags.json) printJson({ image, tag, layers: b.traces.length });
        else process.stdout.write(`pushed ${b.traces.length} layer traces as ${tag}\n`);
      } finally {
        await client.close();
      }
    }));
  trace.addCommand(withDir(new Command('pull')).description('fetch the traces pushed for an image, into the trace directory')
    .argument('<image>', 'registry reference')
    .option('--platform <os/arch[/variant]>', 'platform of a multi-platform image', 'linux/amd64')
    .action(async (image: string, flags: TraceFlags & { platform: string }) => {
      const config = await configFrom(flags);
      const client = await registryClientFrom(flags, config);
      try {
        const b = await pullTrace(client, image, parsePlatform(flags.platform));
        const written = await importBundle(flags.traceDir ?? config.prefetch.trace_dir, b);
        if (flags.json) printJson({ image, manifestDigest: b.manifestDigest, written });
        else process.stdout.write(`pulled ${written.length} layer traces of ${image}\n`);
      } finally {
        await client.close();
      }
    }));
  trace.addCommand(withDir(new Command('rm')).description("remove an image's traces")
    .argument('<image>', 'image name or manifest digest')
    .action(async (image: string, flags: TraceFlags) => {
      const dir = await dirOf(flags);
      const traces = await tracesOf(dir, image);
      await removeTraces(dir, traces[0]!.manifestDigest);
      if (flags.json) printJson({ removed: traces.length });
    }));
  return trace;
}
