// Which endpoints to pass over for a while, and what each endpoint did. A mirror (a pull-through
// cache) that has not cached a blob yet answers a Range request with the whole blob (200) while
// it fills its cache; later it answers ranges. So a host that ignored a Range, or failed, for a
// blob is passed over for ranges of that blob until `ttlMs` has gone by and is then tried again;
// a host that did not connect is passed over for everything for as long.

/** Why a host was passed over. */
export type SkipReason = 'ignored_range' | 'status' | 'unreachable';
export const SKIP_REASONS: readonly SkipReason[] = ['ignored_range', 'status', 'unreachable'];

export interface HostSkip {
  /** The endpoint's name (host[:port][/path]). */
  host: string;
  /** The blob whose ranges it is passed over for; undefined: every request. */
  blob: string | undefined;
  reason: SkipReason;
  /** The answer or error that made us move on. */
  detail: string;
  /** When it is tried again (ms since the epoch; now: at the next request). */
  until: number;
}

export interface HostTransferStats {
  requests: number;
  /** Body bytes received from this host for blob and manifest GETs. */
  bytesReceived: number;
  /** Requests this host did not serve that went on to the next host, by reason. */
  fallbacks: Record<SkipReason, number>;
}

/** Entries past which expired ones are dropped on the next insertion. */
const PRUNE_AT = 4096;
const ANY = '';

export class HostSkips {
  private readonly until = new Map<string, number>();

  /** @param hosts where the counters go, by host name (a plain object: it is printed as JSON) */
  constructor(private readonly ttlMs: number, readonly hosts: Record<string, HostTransferStats>) {}

  /** The counters of `host`, created at zero. */
  stats(host: string): HostTransferStats {
    return (this.hosts[host] ??= { requests: 0, bytesReceived: 0, fallbacks: { ignored_range: 0, status: 0, unreachable: 0 } });
  }

  /** Whether `host` is passed over now: for everything, or (with `blob`) for ranges of that blob. */
  skipped(host: string, blob: string | undefined, now = Date.now()): boolean {
    return this.live(`${host} ${ANY}`, now) || (blob !== undefined && this.live(`${host} ${blob}`, now));
  }

  /**
   * Counts a fallback from `host` and, for ranges of `blob` or for a host that did not connect,
   * passes it over until the TTL has gone by. Returns what was decided (for the log).
   */
  skip(host: string, blob: string | undefined, reason: SkipReason, detail: string, now = Date.now()): HostSkip {
    this.stats(host).fallbacks[reason]++;
    const scope = reason === 'unreachable' ? undefined : blob;
    const remembered = reason === 'unreachable' || blob !== undefined;
    const until = remembered ? now + this.ttlMs : now;
    if (remembered) {
      if (this.until.size >= PRUNE_AT) for (const [k, t] of this.until) if (t <= now) this.until.delete(k);
      this.until.set(`${host} ${scope ?? ANY}`, until);
    }
    return { host, blob: scope, reason, detail, until };
  }

  private live(key: string, now: number): boolean {
    const t = this.until.get(key);
    if (t === undefined) return false;
    if (t > now) return true;
    this.until.delete(key);
    return false;
  }
}
