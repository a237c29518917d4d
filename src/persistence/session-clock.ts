/**
 * When each persistent session's client was last seen, and how long the
 * session outlives its connection, for expiry. A session exists while its
 * client has subscriptions, queued messages or QoS 2 state; its record
 * (keys.ts encodeSession) is stored under the session key and updated on
 * connect, disconnect, and periodically while the client stays connected.
 *
 * How long a session lives after its connection:
 * - MQTT 3.1.1: the configured time (persistence.sessionExpirySec, like
 *   Mosquitto's persistent_client_expiration; 0 = never).
 * - MQTT 5: the client's Session Expiry Interval [MQTT-3.1.2-23], which aedes
 *   has clamped to that configured maximum (aedes' sessionExpiryIntervalLimit,
 *   set from it); 0xFFFFFFFF, "never", is the configured maximum too. A
 *   DISCONNECT may change it (MQTT 5 §3.14.2.2.2). It is "declared" for a
 *   connected client as soon as it connects, so a session that gets its first
 *   state during the connection, or whose broker dies, is stored with it.
 * Time the broker was not running does not count (reconcile).
 */
import type { BatchOp } from './group-commit.js';
import { encodeSession, sessionKey, type SessionTimes } from './keys.js';

/** MQTT 5's "the Session does not expire" [MQTT-3.1.2-23]. */
const SESSION_NEVER_EXPIRES = 0xffff_ffff;

export class SessionClock {
  readonly #lastSeen: Map<string, number>;
  /** MQTT 5 Session Expiry Intervals (s) of stored sessions and of connected clients. */
  readonly #declared: Map<string, number>;

  constructor(recovered: Map<string, SessionTimes>) {
    this.#lastSeen = new Map();
    this.#declared = new Map();
    for (const [clientId, { lastSeen, expirySec }] of recovered) {
      this.#lastSeen.set(clientId, lastSeen);
      if (expirySec !== undefined) this.#declared.set(clientId, expirySec);
    }
  }

  get size(): number {
    return this.#lastSeen.size;
  }

  has(clientId: string): boolean {
    return this.#lastSeen.has(clientId);
  }

  set(clientId: string, now: number, ops: BatchOp[]): void {
    this.#lastSeen.set(clientId, now);
    ops.push({ type: 'put', key: sessionKey(clientId), value: encodeSession({ lastSeen: now, expirySec: this.#declared.get(clientId) }) });
  }

  /** Starts the clock of a client that gets its first persistent state. */
  start(clientId: string, now: number, ops: BatchOp[]): void {
    if (!this.#lastSeen.has(clientId)) this.set(clientId, now, ops);
  }

  /** The session's record goes; its declared expiry stays (its client may still be connected: see undeclare). */
  forget(clientId: string, ops: BatchOp[]): void {
    if (this.#lastSeen.delete(clientId)) ops.push({ type: 'del', key: sessionKey(clientId) });
  }

  /**
   * Sets (a number: MQTT 5) or clears (undefined: 3.1.1) the Session Expiry
   * Interval of `clientId`, rewriting its record when it has one.
   */
  declare(clientId: string, expirySec: number | undefined, ops: BatchOp[]): void {
    if (this.#declared.get(clientId) === expirySec) return;
    if (expirySec === undefined) this.#declared.delete(clientId);
    else this.#declared.set(clientId, expirySec);
    const lastSeen = this.#lastSeen.get(clientId);
    if (lastSeen !== undefined) this.set(clientId, lastSeen, ops);
  }

  /** Forgets the declared expiry of a client that has neither a connection nor a session. */
  undeclare(clientId: string): void {
    if (!this.#lastSeen.has(clientId)) this.#declared.delete(clientId);
  }

  /** How long the session of `clientId` lives after its connection, in ms (Infinity: no expiry); `maxMs` 0 = no maximum. */
  expiryMs(clientId: string, maxMs: number): number {
    const declared = this.#declared.get(clientId);
    const max = maxMs > 0 ? maxMs : Infinity;
    if (declared === undefined || declared >= SESSION_NEVER_EXPIRES) return max;
    return Math.min(declared * 1000, max);
  }

  /** When the session of an offline client expires (ms since epoch; Infinity: never, or no session). */
  dueAt(clientId: string, maxMs: number): number {
    const lastSeen = this.#lastSeen.get(clientId);
    return lastSeen === undefined ? Infinity : lastSeen + this.expiryMs(clientId, maxMs);
  }

  /**
   * After recovery: clients with state get a time, times without state go,
   * and `shift` (how long the broker was not running, 0 when too short to
   * count: LevelStore) is added to every time, so a gateway switched off for
   * a week does not expire every session when it boots.
   */
  reconcile(now: number, shift: number, withState: Set<string>, ops: BatchOp[]): void {
    for (const [clientId, lastSeen] of this.#lastSeen) {
      if (!withState.has(clientId)) {
        this.forget(clientId, ops);
        this.undeclare(clientId);
      } else if (shift > 0) this.set(clientId, Math.min(now, lastSeen + shift), ops);
    }
    for (const clientId of withState) this.start(clientId, now, ops);
  }

  /**
   * Sessions idle for their expiry time or longer, with their idle time, and
   * when the next one falls due (Infinity: none); `maxMs` is the configured
   * maximum (0 = none). Connected clients never expire, and their time is
   * refreshed every `refreshMs` so it stays current should the process die.
   */
  expired(
    now: number,
    maxMs: number,
    refreshMs: number,
    isOnline: (clientId: string) => boolean,
    ops: BatchOp[],
  ): { due: Array<[string, number]>; nextAt: number } {
    const due: Array<[string, number]> = [];
    let nextAt = Infinity;
    for (const [clientId, lastSeen] of this.#lastSeen) {
      if (isOnline(clientId)) {
        if (now - lastSeen >= refreshMs) this.set(clientId, now, ops);
        continue;
      }
      const at = lastSeen + this.expiryMs(clientId, maxMs);
      if (at <= now) due.push([clientId, now - lastSeen]);
      else if (at < nextAt) nextAt = at;
    }
    return { due, nextAt };
  }
}
