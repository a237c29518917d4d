/**
 * Rate limit for failed logins, per source address: a token bucket of
 * `burst` failures that refills one failure every `refillSec`. While a
 * source's bucket is empty its CONNECTs are refused before any password is
 * hashed, so guessing passwords costs an attacker time and the gateway no CPU.
 *
 * Memory is bounded: only sources with recent failures are tracked, a source
 * whose bucket is full again is forgotten, and beyond `maxSources` the source
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
    if (this.#options.burst === 0) return true;
    const bucket = this.#buckets.get(source);
    if (!bucket) return true;
    this.#refill(bucket);
    if (bucket.tokens >= this.#options.burst) {
      this.#buckets.delete(source);
      return true;
    }
    return bucket.tokens >= 1;
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
