/**
 * Logging for events a client can trigger at will (limit hits, protocol
 * violations): at most one line per key per interval, so that an attacker
 * cannot flood the journal. The first event of a key is logged at once; the
 * ones swallowed after it are reported as `suppressed` on the next line.
 *
 * Keys must come from a fixed set (limit names, rule ids), never from the
 * wire, so the map of keys stays bounded.
 */
import type { Logger } from '../observability/logger.js';

export const DEFAULT_LOG_INTERVAL_MS = 10_000;

type Level = 'warn' | 'info';

/**
 * A line's fields, or a function that makes them: called only when the line
 * is written, so that an event hit per message (a delivery waiting for a
 * client's inflight window) builds nothing while its key is quiet.
 */
export type LogFields = Record<string, unknown> | (() => Record<string, unknown>);

export class RateLimitedLog {
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #now: () => number;
  readonly #keys = new Map<string, { loggedAt: number; suppressed: number }>();

  constructor(log: Logger, intervalMs = DEFAULT_LOG_INTERVAL_MS, now: () => number = () => performance.now()) {
    this.#log = log;
    this.#intervalMs = intervalMs;
    this.#now = now;
  }

  warn(key: string, fields: LogFields, message: string): void {
    this.#write('warn', key, fields, message);
  }

  info(key: string, fields: LogFields, message: string): void {
    this.#write('info', key, fields, message);
  }

  #write(level: Level, key: string, fields: LogFields, message: string): void {
    const now = this.#now();
    const state = this.#keys.get(key);
    if (state && now - state.loggedAt < this.#intervalMs) {
      state.suppressed++;
      return;
    }
    const suppressed = state?.suppressed ?? 0;
    this.#keys.set(key, { loggedAt: now, suppressed: 0 });
    const made = typeof fields === 'function' ? fields() : fields;
    this.#log[level](suppressed > 0 ? { ...made, suppressed } : made, message);
  }
}
