/**
 * The failed-login limits that every way in shares (MQTT CONNECT, the admin
 * API): the LoginGuard in force, rebuilt when `auth.failedLogins` changes on
 * reload, with its counters and its log lines. The authorizer asks it before
 * hashing a password and tells it each failure.
 */
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { LoginGuard, sourceKey, type LoginBlock } from './login-limiter.js';

export type FailedLoginSettings = Config['auth']['failedLogins'];

export class FailedLogins {
  #settings: FailedLoginSettings;
  #guard: LoginGuard;
  readonly #log: Logger;
  readonly #now: (() => number) | undefined;
  /** Wrong password or unknown user, every way in. */
  failures = 0;
  /** Logins refused without a check: blocked for now. */
  refusals = 0;

  constructor(settings: FailedLoginSettings, log: Logger, now?: () => number) {
    this.#settings = settings;
    this.#log = log;
    this.#now = now;
    this.#guard = this.#build(settings);
  }

  #build(settings: FailedLoginSettings): LoginGuard {
    const { burst, refillSec, addressBurst, maxSources } = settings;
    return new LoginGuard({ burst, refillSec, addressBurst, maxSources, ...(this.#now ? { now: this.#now } : {}) });
  }

  /** Applies new settings (forgetting every failure when they change); returns the keys that changed. */
  reconfigure(next: FailedLoginSettings): string[] {
    const changed = (Object.keys(next) as Array<keyof FailedLoginSettings>).filter((key) => next[key] !== this.#settings[key]);
    if (changed.length > 0) this.#guard = this.#build(next);
    this.#settings = next;
    return changed.map((key) => `auth.failedLogins.${key}`);
  }

  /**
   * Seconds a login of `user` from `remote` must wait before it is checked,
   * counted as a refusal when above 0; 0 = check it now.
   */
  refuses(remote: string | undefined, user: string): number {
    const wait = this.#guard.waitSec(sourceKey(remote), user);
    if (wait > 0) this.refusals += 1;
    return wait;
  }

  /** Counts a failed login, and logs when it blocks its user (or its source). */
  failed(remote: string | undefined, user: string): void {
    this.failures += 1;
    const source = sourceKey(remote);
    const outcome = this.#guard.recordFailure(source, user);
    if (outcome.blocked) {
      this.#log.warn({ source, user, retryAfterSec: outcome.retryAfterSec }, 'too many failed logins: refusing this user from this source for now');
    }
  }

  /** Sources with recent failures. */
  get trackedSources(): number {
    return this.#guard.trackedSources;
  }

  blocks(): LoginBlock[] {
    return this.#guard.blocks();
  }

  /** Lifts the blocks of an address (of one user from it, when given); returns how many. */
  unblock(address: string, user?: string): number {
    const lifted = this.#guard.unblock(address, user);
    this.#log.info({ address, user: user ?? null, lifted }, 'failed-login blocks lifted');
    return lifted;
  }
}
