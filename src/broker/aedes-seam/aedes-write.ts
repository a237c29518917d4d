/**
 * aedes' lib/write.js for the seam's own writes (direct-deliveries.ts), with
 * its callback deferred as aedes defers it, to after this turn's I/O, but
 * through one setImmediate per turn for all of a broker's writes instead of
 * one per packet: an Immediate, its arguments and a closure were ~0.3 KB
 * of garbage per QoS 1 delivery (bench/persistence-qos1.ts under V8's
 * sampling heap profiler), and each a step of the event loop.
 *
 * The callbacks of one turn run in the order deferred, one after another in
 * the first one's place in the event loop's queue of immediates: ahead of
 * immediates queued after it in the same turn (the write coalescer's flush,
 * the group commit's start), where aedes' would have run among them. What
 * they do (the flow control's next message, a publisher's PUBACK) is then
 * written before the flush and stored in the batch being filled: sooner,
 * never in another order.
 *
 * What lib/write.js does (2.0.0-beta.1), kept: a packet for a client neither
 * connecting nor connected is not written, and its callback gets 'connection
 * closed'; one mqtt-packet cannot encode gets 'packet received not valid'
 * (the encoder's error as its cause); one the connection cannot take now
 * waits for 'drain' through the client's waitForDrain (its drain timeout
 * included). It is written with mqtt-packet's writeToStream as aedes loads
 * it, read at each write (where packet-writes.ts hooks the PUBLISH and
 * PUBACK encodings), at the client's protocol level (`_wireVersion`, 4 when
 * unset). Canary: test/aedes-canaries-client.test.ts (aedes' callback comes
 * in a later turn, after the PUBACK is written).
 */
import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';

/** A deferred callback: the write's error (null when written) and two arguments given with it, so that no closure is made per packet. */
export type Deferred<A, B> = (error: Error | null, a: A, b: B) => void;

/** The client fields lib/write.js reads. */
export interface WritingClient {
  connecting?: boolean;
  connected?: boolean;
  errored?: boolean;
  conn: Duplex;
  _wireVersion?: number;
  waitForDrain(done: (error: Error | null) => void): void;
}

type WriteToStream = (packet: object, stream: object, options: { protocolVersion: number }) => boolean;

/** mqtt-packet's exports as aedes imports them (lib/write.js reads `mqtt.writeToStream` at each write). */
const mqttPacket = createRequire(createRequire(import.meta.url).resolve('aedes'))('mqtt-packet') as { writeToStream: WriteToStream };

/** lib/write.js WRITE_OPTS: frozen options per level. */
const WRITE_OPTS: Record<number, { protocolVersion: number }> = {
  3: Object.freeze({ protocolVersion: 3 }),
  4: Object.freeze({ protocolVersion: 4 }),
  5: Object.freeze({ protocolVersion: 5 }),
};

/** Callbacks deferred to after this turn's I/O, all from one setImmediate; one per broker. */
export class TurnCallbacks {
  #callbacks: Array<Deferred<unknown, unknown>> = [];
  #errors: Array<Error | null> = [];
  #a: unknown[] = [];
  #b: unknown[] = [];
  #scheduled = false;
  readonly #run = (): void => this.#runDue();

  defer<A, B>(callback: Deferred<A, B>, error: Error | null, a: A, b: B): void {
    this.#callbacks.push(callback as Deferred<unknown, unknown>);
    this.#errors.push(error);
    this.#a.push(a);
    this.#b.push(b);
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(this.#run);
  }

  #runDue(): void {
    const callbacks = this.#callbacks;
    const errors = this.#errors;
    const a = this.#a;
    const b = this.#b;
    this.#callbacks = [];
    this.#errors = [];
    this.#a = [];
    this.#b = [];
    this.#scheduled = false;
    for (let i = 0; i < callbacks.length; i++) {
      try {
        callbacks[i]!(errors[i]!, a[i], b[i]);
      } catch (error) {
        // Each was a setImmediate of its own: the ones after a callback that threw still run, a turn later.
        for (let j = i + 1; j < callbacks.length; j++) this.defer(callbacks[j]!, errors[j]!, a[j], b[j]);
        throw error;
      }
    }
  }
}

/** lib/write.js (see the header): `done(error, a, b)` after this turn's I/O, or once the connection drains. */
export function writeAsAedes<A, B>(client: WritingClient, packet: object, later: TurnCallbacks, done: Deferred<A, B>, a: A, b: B): void {
  let error: Error | null = null;
  if (client.connecting === true || client.connected === true) {
    try {
      const written = mqttPacket.writeToStream(packet, client.conn, WRITE_OPTS[client._wireVersion ?? 4] ?? WRITE_OPTS[4]!);
      if (!written && client.errored !== true) {
        client.waitForDrain((drained) => done(drained ?? null, a, b));
        return;
      }
    } catch (cause) {
      error = new Error('packet received not valid', { cause });
    }
  } else {
    error = new Error('connection closed');
  }
  later.defer(done, error, a, b);
}
