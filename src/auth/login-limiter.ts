/**
 * Rate limit for failed logins: a token bucket of `burst` failures that
 * refills one failure every `refillSec`, per key. While a key's bucket is
 * empty its logins are refused before any password is hashed, so guessing
 * passwords costs an attacker time and the gateway no CPU.
 *
 * LoginGuard keys the buckets by source address AND user name, so that one
 * misconfigured sensor does not lock out every device behind the same NAT,
 * and keeps a much looser bucket per address against password spraying
 * (one guess each over many user names).
 *
 * Memory is bounded: only keys with recent failures are tracked, a key
 * whose bucket is full again is forgotten, and beyond `maxSources` the key
 * idle longest is dropped. IPv6 sources count per /64, the block a single
 * host usually holds, so address hopping inside it does not reset the bucket.
 */
import { isIPv6 } from 'node:net';

export interface LoginLimiterOptions {
  /** Failed logins a source may make in a row; 0 = no limit. */
  burst: number;
  /** Seconds until one more failed login is allowed again. */
  refillSec: number;
  /** Most sources remembered at once. */
  maxSources: number;
  /** Milliseconds clock; injectable for tests. */
  now?: () => number;
}

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export interface FailureOutcome {
  /** True when the source has no attempt left. */
  blocked: boolean;
  /** Seconds until the next attempt is allowed (0 when not blocked). */
  retryAfterSec: number;
}

export class LoginLimiter {
  readonly #options: Required<LoginLimiterOptions>;
  /** Map order is recency order: the first entry is the one idle longest. */
  readonly #buckets = new Map<string, Bucket>();

  constructor(options: LoginLimiterOptions) {
    this.#options = { now: () => performance.now(), ...options };
  }

  get trackedSources(): number {
    return this.#buckets.size;
  }

  /** Whether a login from this source may be checked now. */
  allows(source: string): boolean {
    return this.waitSec(source) === 0;
  }

  /** Seconds until a login from this source may be checked; 0 = now. */
  waitSec(source: string): number {
    if (this.#options.burst === 0) return 0;
    const bucket = this.#buckets.get(source);
    if (!bucket) return 0;
    this.#refill(bucket);
    if (bucket.tokens >= this.#options.burst) {
      this.#buckets.delete(source);
      return 0;
    }
    return bucket.tokens >= 1 ? 0 : Math.ceil((1 - bucket.tokens) * this.#options.refillSec);
  }

  /** The keys blocked now, with the seconds each has to wait. */
  blocked(): Array<{ key: string; retryAfterSec: number }> {
    const result: Array<{ key: string; retryAfterSec: number }> = [];
    for (const key of [...this.#buckets.keys()]) {
      const retryAfterSec = this.waitSec(key);
      if (retryAfterSec > 0) result.push({ key, retryAfterSec });
    }
    return result;
  }

  /** The keys tracked now (blocked or with some failures). */
  keys(): IterableIterator<string> {
    return this.#buckets.keys();
  }

  /** Forgets the keys `matches` selects; returns how many of them were blocked. */
  forget(matches: (key: string) => boolean): number {
    let unblocked = 0;
    for (const key of [...this.#buckets.keys()]) {
      if (!matches(key)) continue;
      if (this.waitSec(key) > 0) unblocked++;
      this.#buckets.delete(key);
    }
    return unblocked;
  }

  /** Counts a failed login from this source. */
  recordFailure(source: string): FailureOutcome {
    const { burst, refillSec, maxSources } = this.#options;
    if (burst === 0) return { blocked: false, retryAfterSec: 0 };
    let bucket = this.#buckets.get(source);
    if (bucket) {
      this.#refill(bucket);
      this.#buckets.delete(source);
    } else {
      bucket = { tokens: burst, updatedAt: this.#options.now() };
    }
    bucket.tokens = Math.max(0, bucket.tokens - 1);
    this.#buckets.set(source, bucket);
    this.#prune(maxSources);
    const blocked = bucket.tokens < 1;
    return { blocked, retryAfterSec: blocked ? Math.ceil((1 - bucket.tokens) * refillSec) : 0 };
  }

  #refill(bucket: Bucket): void {
    const now = this.#options.now();
    const elapsedSec = (now - bucket.updatedAt) / 1000;
    bucket.tokens = Math.min(this.#options.burst, bucket.tokens + elapsedSec / this.#options.refillSec);
    bucket.updatedAt = now;
  }

  /** Drops full buckets from the idle end, then the idlest sources beyond the bound. */
  #prune(maxSources: number): void {
    for (const [source, bucket] of this.#buckets) {
      if (this.#buckets.size <= 1) break;
      this.#refill(bucket);
      if (bucket.tokens < this.#options.burst) break;
      this.#buckets.delete(source);
    }
    while (this.#buckets.size > maxSources) {
      const oldest = this.#buckets.keys().next();
      if (oldest.done) break;
      this.#buckets.delete(oldest.value);
    }
  }
}

export interface LoginGuardOptions {
  /** Failed logins one user name may make in a row from one source; 0 = no limit. */
  burst: number;
  /** Seconds until one more failed login of that user from that source is allowed. */
  refillSec: number;
  /** Failed logins one source may make in a row over every user name; 0 = no such bound. */
  addressBurst: number;
  /** Most keys remembered at once, per kind (source and user; source). */
  maxSources: number;
  now?: () => number;
}

/** A source, or a user from a source, whose logins are refused for now. */
export interface LoginBlock {
  /** The source as limited: an IPv4 address, or an IPv6 /64 prefix. */
  address: string;
  /** null: every user name from that source (the per-address bound). */
  user: string | null;
  retryAfterSec: number;
}

/**
 * Failed logins limited per (source, user name), and more loosely per
 * source. The source's bucket refills completely in the time a user's does
 * (burst × refillSec), so it allows addressBurst / burst times the failure
 * rate of one user: with the defaults (5 and 100 per 150 s) twenty devices
 * behind one NAT may keep failing at the blocked rate without locking out
 * their neighbours, while a password spray over many user names is held to
 * about 40 guesses a minute.
 */
export class LoginGuard {
  readonly #users: LoginLimiter;
  readonly #addresses: LoginLimiter;

  constructor(options: LoginGuardOptions) {
    const { burst, refillSec, addressBurst, maxSources, now } = options;
    const clock = now ? { now } : {};
    this.#users = new LoginLimiter({ burst, refillSec, maxSources, ...clock });
    const addressRefillSec = burst > 0 && addressBurst > 0 ? (burst * refillSec) / addressBurst : refillSec;
    this.#addresses = new LoginLimiter({ burst: addressBurst, refillSec: addressRefillSec, maxSources, ...clock });
  }

  /** Seconds until a login of `user` from `source` (a sourceKey) may be checked; 0 = now. */
  waitSec(source: string, user: string): number {
    return Math.max(this.#addresses.waitSec(source), this.#users.waitSec(userKey(source, user)));
  }

  /** Counts a failed login of `user` from `source`. */
  recordFailure(source: string, user: string): FailureOutcome {
    const byUser = this.#users.recordFailure(userKey(source, user));
    const byAddress = this.#addresses.recordFailure(source);
    return { blocked: byUser.blocked || byAddress.blocked, retryAfterSec: Math.max(byUser.retryAfterSec, byAddress.retryAfterSec) };
  }

  /** Sources with recent failures (of any user). */
  get trackedSources(): number {
    const sources = new Set(this.#addresses.keys());
    for (const key of this.#users.keys()) sources.add(splitUserKey(key).address);
    return sources.size;
  }

  blocks(): LoginBlock[] {
    return [
      ...this.#addresses.blocked().map(({ key, retryAfterSec }) => ({ address: key, user: null, retryAfterSec })),
      ...this.#users.blocked().map(({ key, retryAfterSec }) => ({ ...splitUserKey(key), retryAfterSec })),
    ];
  }

  /**
   * Lifts the blocks of a source (an address, or the sourceKey listed by
   * blocks()): of one user from it, or, without `user`, of every user from it
   * and of the source itself. Their failures are forgotten too. Returns how
   * many blocks were lifted.
   */
  unblock(address: string, user?: string): number {
    const source = address.endsWith('::/64') ? address : sourceKey(address);
    if (user !== undefined) return this.#users.forget((key) => key === userKey(source, user));
    return this.#addresses.forget((key) => key === source) + this.#users.forget((key) => splitUserKey(key).address === source);
  }
}

/** A source key never holds a space (an address, a /64 prefix, 'unknown'): the first one ends it. */
function userKey(source: string, user: string): string {
  return `${source} ${user}`;
}

function splitUserKey(key: string): { address: string; user: string } {
  const space = key.indexOf(' ');
  return { address: key.slice(0, space), user: key.slice(space + 1) };
}

/**
 * The key a source is limited by: the IPv4 address (also when it arrives
 * IPv4-mapped on a dual-stack socket), or the /64 prefix of an IPv6 address.
 */
export function sourceKey(address: string | undefined): string {
  if (!address) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!isIPv6(address)) return address;
  const [head = '', tail = ''] = address.split('%')[0]!.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = address.includes('::') ? (tail === '' ? [] : tail.split(':')) : [];
  const groups = address.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups
    .slice(0, 4)
    .map((group) => (Number.parseInt(group, 16) || 0).toString(16))
    .join(':')}::/64`;
}
