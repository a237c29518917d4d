/**
 * Nothing a client sends after its CONNECT reaches aedes' packet handling
 * before aedes has accepted that CONNECT.
 *
 * A client may send packets right after CONNECT without waiting for CONNACK,
 * but "if the Server rejects the CONNECT, it MUST NOT process any data sent
 * by the Client after the CONNECT Packet" [MQTT-3.1.4-5] (MQTT 5:
 * [MQTT-3.1.4-6], AUTH excepted). aedes 1.2 (and 2.0.0-beta.1) breaks this:
 * lib/client.js queues the packets parsed from the same chunk as the CONNECT,
 * but a chunk read after it, before `authenticate` pauses the client (the
 * CONNECT waits one setImmediate after preConnect in aedes' own connect
 * handler, which still takes MQTT 5 CONNECTs), goes straight to the
 * handlers. A PUBLISH that completes in a later socket read of the same
 * event-loop turn (any CONNECT followed by more than one 64 KiB read's worth,
 * in one write or several) was published, and PUBACKed, as an anonymous
 * client, before its wrong password got CONNACK 4.
 *
 * So aedes gets the bytes of the first packet only (the protocol guard in
 * front makes sure it is a CONNECT), and `read()` gives it nothing more until
 * aedes has written a CONNACK that accepts it. Then the bytes held back, and
 * everything after them, go to aedes in the order they came, and `read` is
 * the stream's own again: nothing is done per packet once the client is in.
 * A refused CONNECT closes the connection with what was held. While held,
 * bytes stay in the stream's buffer, whose high-water mark stops reading from
 * the socket: a client that keeps sending costs no more than one buffer.
 */
import type { Duplex } from 'node:stream';
import type { Client } from 'aedes';
import { connackAccepted as accepted } from './aedes-seam/index.js';

type Read = (size?: number) => unknown;

/**
 * Holds back the bytes after the first packet on `conn` until `client` (the
 * aedes Client for it) is accepted. Call right after `aedes.handle(conn)`,
 * before the first 'readable'; other `conn.read` wrappers (the protocol
 * guard) stay underneath and see every byte once, in order.
 */
export function holdUntilConnack(conn: Duplex, client: Client): void {
  const ownRead = Object.hasOwn(conn, 'read');
  const read = conn.read as Read;
  /** Bytes of the first packet still to hand over; null until its Remaining Length is known. */
  let packetLeft: number | null = null;
  let headerBytes = 0;
  let length = 0;
  let multiplier = 1;
  /** What came after the first packet in the read that completed it. */
  let held: Uint8Array | null = null;

  function release(size?: number): unknown {
    if (ownRead) conn.read = read as Duplex['read'];
    else delete (conn as { read?: unknown }).read;
    const rest = read.call(conn, size);
    if (held === null) return rest;
    const first = held;
    held = null;
    return rest instanceof Uint8Array ? Buffer.concat([first, rest]) : first;
  }

  conn.read = function readUntilConnack(size?: number) {
    if (accepted(client)) return release(size);
    if (packetLeft === 0) return null;
    const chunk = read.call(conn, size);
    if (!(chunk instanceof Uint8Array)) return chunk;
    let index = 0;
    // Fixed header: type byte, then Remaining Length, 7 bits a byte [MQTT-2.2.3].
    while (packetLeft === null && index < chunk.length) {
      const byte = chunk[index++] as number;
      headerBytes++;
      if (headerBytes === 1) continue;
      length += (byte & 0x7f) * multiplier;
      multiplier *= 128;
      // A fifth length byte is malformed: aedes' parser refuses it and closes.
      if ((byte & 0x80) === 0 || headerBytes === 5) packetLeft = length;
    }
    if (packetLeft === null) return chunk;
    const take = Math.min(packetLeft, chunk.length - index);
    packetLeft -= take;
    index += take;
    if (index === chunk.length) return chunk;
    held = chunk.subarray(index);
    return chunk.subarray(0, index);
  } as Duplex['read'];
}
