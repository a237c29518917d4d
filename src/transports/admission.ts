/**
 * WebSocket upgrades handed to the broker a few per event-loop turn, in the
 * order they came, instead of all at once.
 *
 * A poll of the event loop returns the reads of up to 1,024 sockets: in a
 * reconnect storm, that many upgrade requests in one turn. Set up on the
 * spot, every handshake, then every aedes Client, then every CONNECT runs
 * before the first client gets its CONNACK, and the turn is so long that
 * new TCP connections (libuv 1.46 accepts one per turn) wait behind it.
 * Handed over ADMITTED_PER_TURN at a time, a connection goes from its
 * upgrade to its CONNACK within a few turns while the rest wait their turn:
 * the same work, first come, first served. A connection that closes while it
 * waits is skipped; the limits (connection counts, rate) are applied when
 * its turn comes, against the connections open then.
 */
import type { Duplex } from 'node:stream';

/**
 * The 'error' listener of a connection while it waits: one that resets
 * meanwhile closes (and is skipped), instead of raising an uncaught error.
 * Remove it when the connection's turn comes.
 */
export function whileWaiting(this: Duplex): void {
  this.destroy();
}

/** Connections handed over per event-loop turn (each costs well under a millisecond). */
const ADMITTED_PER_TURN = 64;

export class Admission<T> {
  readonly #admit: (item: T) => void;
  readonly #waiting: T[] = [];
  #scheduled = false;

  /** `admit` sets up one connection; it runs from setImmediate, never inside push(). */
  constructor(admit: (item: T) => void) {
    this.#admit = admit;
  }

  /** Queues `item`; handed to `admit` in a later turn, after those queued before it. */
  push(item: T): void {
    this.#waiting.push(item);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#drain);
    }
  }

  readonly #drain = (): void => {
    // Taken out of the queue, so that nothing keeps an admitted connection's request.
    const batch = this.#waiting.splice(0, ADMITTED_PER_TURN);
    // The next turn is settled before any connection is set up, so that one
    // that throws cannot leave the rest waiting.
    if (this.#waiting.length > 0) setImmediate(this.#drain);
    else this.#scheduled = false;
    for (const item of batch) this.#admit(item);
  };
}
