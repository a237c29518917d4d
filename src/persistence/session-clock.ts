/**
 * When each persistent session's client was last seen, for expiry (like
 * Mosquitto's persistent_client_expiration). A session exists while its client
 * has subscriptions, queued messages or QoS 2 state; its time is stored under
 * the session key and updated on connect, disconnect, and periodically while
 * the client stays connected.
 */
import type { BatchOp } from './group-commit.js';
import { encodeTime, sessionKey } from './keys.js';

export class SessionClock {
  readonly #lastSeen: Map<string, number>;

  constructor(recovered: Map<string, number>) {
    this.#lastSeen = recovered;
  }

  get size(): number {
    return this.#lastSeen.size;
  }

  has(clientId: string): boolean {
    return this.#lastSeen.has(clientId);
  }

  set(clientId: string, now: number, ops: BatchOp[]): void {
    this.#lastSeen.set(clientId, now);
    ops.push({ type: 'put', key: sessionKey(clientId), value: encodeTime(now) });
  }

  /** Starts the clock of a client that gets its first persistent state. */
  start(clientId: string, now: number, ops: BatchOp[]): void {
    if (!this.#lastSeen.has(clientId)) this.set(clientId, now, ops);
  }

  forget(clientId: string, ops: BatchOp[]): void {
    if (this.#lastSeen.delete(clientId)) ops.push({ type: 'del', key: sessionKey(clientId) });
  }

  /**
   * After recovery: clients with state get a time, times without state go,
   * and `downMs` (how long the broker was not running, when it exceeds
   * `minShiftMs`) is added to every time, so a gateway switched off for a
   * week does not expire every session when it boots.
   */
  reconcile(now: number, downMs: number, minShiftMs: number, withState: Set<string>, ops: BatchOp[]): void {
    const shift = downMs > minShiftMs ? downMs : 0;
    for (const [clientId, lastSeen] of this.#lastSeen) {
      if (!withState.has(clientId)) this.forget(clientId, ops);
      else if (shift > 0) this.set(clientId, Math.min(now, lastSeen + shift), ops);
    }
    for (const clientId of withState) this.start(clientId, now, ops);
  }

  /**
   * Sessions idle for `expiryMs` or longer, with their idle time; connected
   * clients never are, and their time is refreshed every `refreshMs` so it
   * stays current should the process die.
   */
  expired(now: number, expiryMs: number, refreshMs: number, isOnline: (clientId: string) => boolean, ops: BatchOp[]): Array<[string, number]> {
    const due: Array<[string, number]> = [];
    for (const [clientId, lastSeen] of this.#lastSeen) {
      if (isOnline(clientId)) {
        if (now - lastSeen >= refreshMs) this.set(clientId, now, ops);
      } else if (expiryMs > 0 && now - lastSeen >= expiryMs) {
        due.push([clientId, now - lastSeen]);
      }
    }
    return due;
  }
}
