// KSM (kernel samepage merging) through /sys/kernel/mm/ksm: the scanner's settings and what it has
// merged. Tuning validates every value first and writes them in one go; if the kernel refuses one,
// the values already written are put back, so a refused tune changes nothing.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KsmError } from '../errors.js';
import { pageSize } from './memory-merge.js';

export const KSM_DIR = '/sys/kernel/mm/ksm';

export interface KsmSettings {
  /** 0 stop, 1 run, 2 stop and unmerge everything. */
  run: 0 | 1 | 2;
  pages_to_scan: number;
  sleep_millisecs: number;
  merge_across_nodes: 0 | 1;
}

export interface KsmStatus extends KsmSettings {
  pages_shared: number;
  pages_sharing: number;
  pages_unshared: number;
  pages_volatile: number;
  full_scans: number;
  /** Bytes KSM saves net of its own metadata (Linux 6.1+; null before). */
  general_profit: number | null;
  /** pages_sharing × page size: the memory that merging saves. */
  memory_saved_bytes: number;
  page_size: number;
}

const SETTINGS = ['run', 'pages_to_scan', 'sleep_millisecs', 'merge_across_nodes'] as const;
const COUNTERS = ['pages_shared', 'pages_sharing', 'pages_unshared', 'pages_volatile', 'full_scans'] as const;
const RANGES: Record<keyof KsmSettings, [number, number]> = {
  run: [0, 2], pages_to_scan: [1, 10_000_000], sleep_millisecs: [0, 3_600_000], merge_across_nodes: [0, 1],
};

async function readNumber(dir: string, name: string): Promise<number | null> {
  let text: string;
  try {
    text = await readFile(join(dir, name), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new KsmError(`cannot read ${join(dir, name)}: ${(err as Error).message}`);
  }
  const n = Number(text.trim());
  if (!Number.isFinite(n)) throw new KsmError(`${join(dir, name)}: "${text.trim()}" is not a number`);
  return n;
}

async function readRequired(dir: string, name: string): Promise<number> {
  const n = await readNumber(dir, name);
  if (n === null) throw new KsmError(`${join(dir, name)} is missing: this kernel has no KSM (CONFIG_KSM)`);
  return n;
}

export async function ksmSettings(dir = KSM_DIR): Promise<KsmSettings> {
  const out = {} as Record<string, number>;
  for (const k of SETTINGS) out[k] = k === 'merge_across_nodes' ? ((await readNumber(dir, k)) ?? 1) : await readRequired(dir, k);
  return out as unknown as KsmSettings;
}

export async function ksmStatus(dir = KSM_DIR): Promise<KsmStatus> {
  const counters = {} as Record<string, number>;
  for (const k of COUNTERS) counters[k] = await readRequired(dir, k);
  const page = pageSize();
  return {
    ...(await ksmSettings(dir)), ...(counters as Record<(typeof COUNTERS)[number], number>),
    general_profit: await readNumber(dir, 'general_profit'), memory_saved_bytes: counters.pages_sharing! * page, page_size: page,
  };
}

/** Checks a partial set of settings; the error names the setting and its range. */
export function validateKsmSettings(want: Partial<Record<keyof KsmSettings, number>>): Partial<KsmSettings> {
  for (const [k, v] of Object.entries(want)) {
    const range = RANGES[k as keyof KsmSettings];
    if (!range) throw new KsmError(`unknown KSM setting "${k}"`);
    if (!Number.isInteger(v) || v < range[0] || v > range[1]) throw new KsmError(`KSM ${k} must be an integer from ${range[0]} to ${range[1]}, not ${v}`);
  }
  return want as Partial<KsmSettings>;
}

/**
 * Writes the settings that differ from the current ones; returns the previous values of those it
 * changed (what to pass back to restore them). All or nothing.
 */
export async function tuneKsm(want: Partial<Record<keyof KsmSettings, number>>, dir = KSM_DIR): Promise<Partial<KsmSettings>> {
  const settings = validateKsmSettings(want);
  const before = await ksmSettings(dir);
  const written: Partial<KsmSettings> = {};
  // merge_across_nodes can only change while the scanner is stopped with nothing merged: write it first.
  const order = SETTINGS.filter((k) => settings[k] !== undefined && settings[k] !== before[k])
    .sort((a, b) => Number(b === 'merge_across_nodes') - Number(a === 'merge_across_nodes'));
  try {
    for (const k of order) {
      try {
        await writeFile(join(dir, k), `${settings[k]}\n`);
      } catch (err) {
        const hint = (err as NodeJS.ErrnoException).code === 'EBUSY' ? ' (pages are merged: set run to 2 first to unmerge them)' : '';
        throw new KsmError(`cannot set KSM ${k} to ${settings[k]}: ${(err as Error).message}${hint}`, { cause: err });
      }
      (written as Record<string, number>)[k] = before[k];
    }
  } catch (err) {
    for (const k of Object.keys(written).reverse()) await writeFile(join(dir, k), `${before[k as keyof KsmSettings]}\n`).catch(() => undefined);
    throw err;
  }
  return written;
}

/**
 * Applies the config's "ksm" section (enabled runs the scanner, disabled stops it). The NUMA
 * setting can only change while nothing is merged; if the kernel refuses it, the rest still
 * applies and the refusal is returned for the caller to report.
 */
export async function applyKsmConfig(ksm: { enabled: boolean; scan_interval: number; pages_to_scan: number; merge_across_nodes: boolean },
  dir = KSM_DIR): Promise<{ refused?: string }> {
  await tuneKsm({ run: ksm.enabled ? 1 : 0, pages_to_scan: ksm.pages_to_scan, sleep_millisecs: ksm.scan_interval }, dir);
  try {
    await tuneKsm({ merge_across_nodes: ksm.merge_across_nodes ? 1 : 0 }, dir);
    return {};
  } catch (err) {
    return { refused: (err as Error).message };
  }
}
