// When and how long to retry a registry request: connection failures, resets, 429 and 5xx, with
// exponential backoff and full jitter, honouring Retry-After. `withRetries` is the one loop that
// does it, for requests, token requests, bodies cut off mid-way and upload sessions.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Dispatcher } from 'undici';
import { isDedupError } from '../errors.js';

export interface RetryPolicy {
  /** Retries after the first attempt. */
  retries: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { retries: 5, baseDelayMs: 100, maxDelayMs: 10_000 };

const RETRYABLE_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED',
]);

export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}

/** A connection fault (in the error or its causes); never one of ours, whose retries were made where it was thrown. */
export function isRetryableError(err: unknown): boolean {
  if (isDedupError(err)) return false;
  for (let e = err as { code?: string; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if (typeof e.code === 'string' && RETRYABLE_CODES.has(e.code)) return true;
  }
  return false;
}

/** Delay before retry number `attempt` (1-based); a Retry-After header wins, capped at maxDelayMs. */
export function retryDelay(policy: RetryPolicy, attempt: number, retryAfter?: string | string[], now = Date.now()): number {
  const ra = Array.isArray(retryAfter) ? retryAfter[0] : retryAfter;
  if (ra) {
    const secs = Number(ra);
    const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(ra) - now;
    if (Number.isFinite(ms) && ms >= 0) return Math.min(ms, policy.maxDelayMs);
  }
  const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(cap / 2 + Math.random() * (cap / 2));
}

export interface RetryOptions<T> {
  /** Retries after the first attempt (the policy's unless given: a mirror gets fewer). */
  retries?: number;
  /** Whether a try that threw is worth another (default: isRetryableError, a connection fault). */
  retryable?: (err: unknown) => boolean;
  /**
   * Whether an answer is worth another try (a 429 or 5xx): its Retry-After (or `{}`) once its
   * body is let go, else undefined. The last try's answer is returned whatever it is.
   */
  again?: (value: T) => Promise<{ retryAfter?: string | string[] } | undefined>;
  /** Told before each retry (the transfer counters). */
  onRetry?: () => void;
  /** The error thrown when a try failed for good (not retryable, or the last): `attempts` made. */
  giveUp?: (err: unknown, attempts: number) => unknown;
}

/** Runs `attempt` until it gives an answer worth keeping or the retries run out, waiting retryDelay between tries. */
export async function withRetries<T>(policy: RetryPolicy, opts: RetryOptions<T>, attempt: (n: number) => Promise<T>): Promise<T> {
  const retries = opts.retries ?? policy.retries;
  for (let n = 0; ; n++) {
    let retryAfter: string | string[] | undefined;
    try {
      const value = await attempt(n);
      const again = n < retries ? await opts.again?.(value) : undefined;
      if (!again) return value;
      retryAfter = again.retryAfter;
    } catch (err) {
      if (n >= retries || !(opts.retryable ?? isRetryableError)(err)) throw opts.giveUp ? opts.giveUp(err, n + 1) : err;
    }
    opts.onRetry?.();
    await sleep(retryDelay(policy, n + 1, retryAfter));
  }
}

/** `again` for an HTTP answer: a retryable status is dumped and retried after its Retry-After. */
export async function retryableAnswer(res: Dispatcher.ResponseData): Promise<{ retryAfter?: string | string[] } | undefined> {
  if (!isRetryableStatus(res.statusCode)) return undefined;
  await res.body.dump();
  return { retryAfter: res.headers['retry-after'] };
}
