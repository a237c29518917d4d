/**
 * aedes' lib/write.js for the seam's own writes (direct-deliveries.ts), with
 * its callback deferred as aedes defers it, to after this turn's I/O, but
 * through one setImmediate per turn for all of a broker's writes instead of
 * one per packet (src/util/turn-callbacks.ts says what that saves, and why
 * the order holds).
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
import type { Deferred, TurnCallbacks } from '../../util/turn-callbacks.js';

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
