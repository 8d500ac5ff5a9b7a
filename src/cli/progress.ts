// A progress bar on a terminal (cli-progress), nothing otherwise: scripts and --json stay clean.

import cliProgress from 'cli-progress';
import { formatBytes } from '../startup/common.js';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

export function byteProgress(label: string, enabled: boolean): Progress {
  if (!enabled || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: `${label} [{bar}] {percentage}% {doneH}/{totalH} {speed}`,
    hideCursor: true,
    clearOnComplete: true,
  }, cliProgress.Presets.shades_classic);
  const started = Date.now();
  let startedBar = false;
  return {
    update(done, total) {
      const payload = { doneH: formatBytes(done), totalH: formatBytes(total), speed: `${formatBytes(done / Math.max(0.001, (Date.now() - started) / 1000))}/s` };
      if (!startedBar) {
        bar.start(total, done, payload);
        startedBar = true;
      } else {
        bar.setTotal(total);
        bar.update(done, payload);
      }
    },
    stop() {
      if (startedBar) bar.stop();
    },
  };
}
