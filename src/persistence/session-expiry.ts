/**
 * Session expiry, and the wills whose delay outlives a restart: this store
 * is the authority for both, because it survives a restart (aedes 2 times
 * them in memory only, aedes #839; the broker's seam, aedes-seam/sessions.ts,
 * keeps aedes' own session timer out of it).
 *
 * A session expires when its client has been away for its expiry time
 * (session-clock.ts: the configured one for 3.1.1, the Session Expiry
 * Interval for MQTT 5 [MQTT-3.1.2-23]); time the broker was not running does
 * not count. Sessions are swept every expiryCheckIntervalSec (which also
 * refreshes connected clients' times) and when the next one falls due: one
 * timer for all sessions, re-armed by each sweep, so a one-second MQTT 5
 * expiry is kept to within the timer's precision.
 */
import { encodePacket, WILL_DUE_AT } from './codec.js';
import type { BatchOp } from './group-commit.js';
import { willKey } from './keys.js';
import type { Logger } from '../observability/logger.js';
import type { ResolvedOptions } from './options.js';
import { aliveOp, type RecoveredWill } from './recover.js';
import type { SessionClock } from './session-clock.js';
import { withDeadline } from '../util/deadline.js';
import type { PersistenceState } from './types.js';

/** What session expiry uses of the store core (store.ts, which owns it: named here, not imported, so no circle). */
interface ExpiryStore {
  readonly options: ResolvedOptions;
  readonly log: Logger;
  readonly now: () => number;
  readonly state: PersistenceState;
  readonly sessions: SessionClock;
  readonly counters: { sessionsExpired: number };
  readonly willsHeldUntil: Map<string, number>;
  readonly delayedWills: Map<string, number>;
  ready(): unknown;
  isOnline(clientId: string): boolean;
  dropSession(clientId: string, ops: BatchOp[]): void;
  write(ops: readonly BatchOp[]): Promise<void>;
}

/** Told of the sessions about to expire, before they are dropped (LevelPersistence.beforeSessionsExpire). */
export type BeforeExpiry = (clientIds: string[]) => Promise<void>;

export class SessionExpiry {
  readonly #store: ExpiryStore;
  /**
   * What must happen to sessions before they expire, awaited by the sweep
   * (the broker's shared subscriptions hand their messages to another
   * member). The sweep at start, before the broker runs, has none.
   */
  beforeExpiry: BeforeExpiry | undefined;
  #interval: NodeJS.Timeout | undefined;
  /** The sweep armed for the next session to fall due, and when. */
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Infinity;
  #running = false;
  /** The sweep running, and the one asked for meanwhile (see sweep). */
  #sweep: Promise<number> | undefined;
  #nextSweep: Promise<number> | undefined;

  constructor(store: ExpiryStore) {
    this.#store = store;
  }

  get #maxMs(): number {
    return this.#store.options.sessionExpirySec * 1000;
  }

  /** Starts the periodic sweep (also without a configured expiry: MQTT 5 sessions carry their own). */
  start(): void {
    this.#running = true;
    this.#interval = setInterval(() => this.#sweepLogged(), this.#store.options.expiryCheckIntervalSec * 1000);
    this.#interval.unref();
  }

  stop(): void {
    this.#running = false;
    clearInterval(this.#interval);
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
  }

  /**
   * Removes the sessions whose client has been away longer than their
   * expiry; returns how many. One at a time: asked for while one waits for
   * beforeExpiry, it runs once that one is done, and answers for itself.
   */
  sweep(): Promise<number> {
    if (this.#sweep === undefined) {
      this.#sweep = this.#sweepOnce().finally(() => (this.#sweep = undefined));
      return this.#sweep;
    }
    this.#nextSweep ??= this.#sweep.then(this.#followUp, this.#followUp);
    return this.#nextSweep;
  }

  readonly #followUp = (): Promise<number> => {
    this.#nextSweep = undefined;
    // Stopped meanwhile: nothing more to sweep until the next start.
    return this.#running ? this.sweep() : Promise.resolve(0);
  };

  async #sweepOnce(): Promise<number> {
    const store = this.#store;
    store.ready();
    const now = store.now();
    const ops: BatchOp[] = [aliveOp(now)];
    const { due, nextAt } = store.sessions.expired(
      now,
      this.#maxMs,
      store.options.expiryCheckIntervalSec * 1000,
      (clientId) => store.isOnline(clientId),
      ops,
    );
    this.#arm(nextAt);
    let expiring = due;
    const before = this.beforeExpiry;
    if (due.length > 0 && before !== undefined) {
      // The times refreshed above are written now: a newer one written during the wait (clientSeen) must not be overwritten by them.
      const refreshed = store.write(ops);
      // Awaited after the wait; a failure meanwhile must not go unhandled (it would end the process).
      refreshed.catch(() => undefined);
      ops.length = 0;
      await this.#bounded(before(due.map(([clientId]) => clientId)));
      await refreshed;
      // Stopped meanwhile: the sessions expire at the next start, their time not counting the stop.
      if (!this.#running) return 0;
      // A client back meanwhile keeps its session (also one that left again: its time starts over).
      expiring = due.filter(([clientId]) => !store.isOnline(clientId) && store.sessions.dueAt(clientId, this.#maxMs) <= store.now());
    }
    for (const [clientId, idleMs] of expiring) {
      store.dropSession(clientId, ops);
      store.log.info({ clientId, idleSec: Math.round(idleMs / 1000) }, 'expired an abandoned persistent session');
    }
    store.counters.sessionsExpired += expiring.length;
    if (ops.length > 0) await store.write(ops);
    return expiring.length;
  }

  /** Waits for beforeExpiry at most one check interval: sessions go on expiring whatever it does. */
  async #bounded(work: Promise<void>): Promise<void> {
    const limitMs = this.#store.options.expiryCheckIntervalSec * 1000;
    try {
      await withDeadline(work, limitMs, 'what comes before sessions expire');
    } catch (error) {
      this.#store.log.warn({ err: error }, 'could not finish what comes before a session expires');
    }
  }

  /** A client connected or disconnected: its session's last-seen time moves on; gone, its expiry is timed. */
  clientSeen(clientId: string, connected: boolean): void {
    const store = this.#store;
    if (store.state !== 'running') return;
    if (!store.sessions.has(clientId)) {
      if (!connected) store.sessions.undeclare(clientId);
      return;
    }
    const ops: BatchOp[] = [];
    store.sessions.set(clientId, store.now(), ops);
    if (!connected) this.#arm(store.sessions.dueAt(clientId, this.#maxMs));
    store.write(ops).catch((error: unknown) => store.log.warn({ err: error, clientId }, 'could not record session time'));
  }

  /**
   * The Session Expiry Interval (s) of an MQTT 5 client's session: its
   * CONNECT's (clamped) while connected, and as it stands when the
   * connection closes (a DISCONNECT may change it, MQTT 5 §3.14.2.2.2);
   * undefined for a 3.1.1 client (the configured expiry applies). Stored with
   * the session record, so the session expires on time after a restart too.
   */
  declare(clientId: string, expirySec: number | undefined): void {
    const store = this.#store;
    if (store.state !== 'running') return;
    const online = store.isOnline(clientId);
    if (!online && !store.sessions.has(clientId)) {
      store.sessions.undeclare(clientId);
      return;
    }
    const ops: BatchOp[] = [];
    store.sessions.declare(clientId, expirySec, ops);
    if (!online) this.#arm(store.sessions.dueAt(clientId, this.#maxMs));
    if (ops.length > 0) store.write(ops).catch((error: unknown) => store.log.warn({ err: error, clientId }, 'could not record session expiry'));
  }

  /**
   * Ends a session with its connection (MQTT 5, Session Expiry Interval 0
   * [MQTT-3.1.2-23]): its subscriptions, queue and QoS 2 state go in one
   * write; nothing is read or sent.
   */
  async end(clientId: string): Promise<void> {
    const store = this.#store;
    store.ready();
    const ops: BatchOp[] = [];
    store.dropSession(clientId, ops);
    await store.write(ops);
  }

  #sweepLogged(): void {
    if (!this.#running) return;
    this.sweep().catch((error: unknown) => this.#store.log.warn({ err: error }, 'session expiry sweep failed'));
  }

  /** Sweeps at `at` (ms since epoch) when that comes before the sweep armed and the periodic one. */
  #arm(at: number): void {
    if (!this.#running || !(at < this.#timerAt)) return;
    const delay = Math.max(0, at - this.#store.now());
    if (delay >= this.#store.options.expiryCheckIntervalSec * 1000) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#timerAt = Infinity;
      // Timers run on the monotonic clock and can fire a millisecond before
      // the wall clock the sweep judges by reaches `at`: then wait again,
      // rather than sweep too soon and leave the session to the periodic sweep.
      if (this.#store.now() < at) this.#arm(at);
      else this.#sweepLogged();
    }, delay);
    this.#timer.unref();
  }
}

/**
 * Start-up: the wills an earlier run left with a Will Delay Interval are
 * held back. One whose connection had closed, its delay running, falls due
 * when the delay ends, the time the broker was down added as for sessions
 * (`shiftMs`, written into its record): the broker times it (delayedWills).
 * One withheld at a planned stop, or left by a crash while its client was
 * connected, is published as any will of an earlier run (after about four
 * heartbeat intervals, aedes' _clearWills, unless its client is back), but
 * not before its Will Delay Interval has passed since this start.
 */
export function holdWills(store: ExpiryStore, recovered: Map<string, RecoveredWill>, now: number, shiftMs: number, ops: BatchOp[]): void {
  for (const [clientId, will] of recovered) {
    if (will.dueAt !== undefined && will.packet) {
      const dueAt = will.dueAt + shiftMs;
      if (shiftMs > 0) ops.push({ type: 'put', key: willKey(clientId), value: encodePacket({ ...will.packet, [WILL_DUE_AT]: dueAt }) });
      store.willsHeldUntil.set(clientId, dueAt);
      store.delayedWills.set(clientId, dueAt);
    } else if (will.delaySec !== undefined) {
      store.willsHeldUntil.set(clientId, now + will.delaySec * 1000);
    }
  }
}
