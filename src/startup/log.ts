// Structured logs for the daemons (pino, JSON lines on stderr), at the config's log_level.

import { destination, pino, type Logger } from 'pino';
import type { Config } from '../config/config.js';

export function daemonLogger(name: string, config: Config): Logger {
  return pino({ name, level: config.log_level, base: { pid: process.pid } }, destination(2));
}
