/**
 * Enforces the broker's maximum packet size on a raw MQTT byte stream.
 *
 * aedes 1.2 has no packet size limit: its parser buffers a packet until the
 * whole Remaining Length (up to 256 MiB [MQTT-2.2.3]) has arrived. The guard
 * follows packet boundaries from the fixed headers alone and refuses a packet
 * as soon as its header announces more than the limit, before the body is read.
 */
import type { Duplex } from 'node:stream';

export class PacketSizeGuard {
  readonly maxBytes: number;
  /** Body bytes of the current packet still to pass. */
  #bodyLeft = 0;
  #readingLength = false;
  #length = 0;
  #multiplier = 1;
  #lengthBytes = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** Feeds the next bytes of the stream; returns why the stream must close, or null. */
  inspect(chunk: Uint8Array): string | null {
    let index = 0;
    while (index < chunk.length) {
      if (this.#bodyLeft > 0) {
        const step = Math.min(this.#bodyLeft, chunk.length - index);
        index += step;
        this.#bodyLeft -= step;
        continue;
      }
      const byte = chunk[index++] as number;
      if (!this.#readingLength) {
        // First byte of the fixed header: packet type and flags.
        this.#readingLength = true;
        this.#length = 0;
        this.#multiplier = 1;
        this.#lengthBytes = 0;
        continue;
      }
      // Remaining Length: 7 bits per byte, continuation bit 0x80, at most
      // 4 bytes [MQTT-2.2.3].
      this.#length += (byte & 0x7f) * this.#multiplier;
      this.#multiplier *= 128;
      this.#lengthBytes += 1;
      if (byte & 0x80) {
        if (this.#lengthBytes === 4) return 'malformed Remaining Length';
        continue;
      }
      this.#readingLength = false;
      const total = 1 + this.#lengthBytes + this.#length;
      if (total > this.maxBytes) return `packet of ${total} bytes exceeds the limit of ${this.maxBytes}`;
      this.#bodyLeft = this.#length;
    }
    return null;
  }
}

/**
 * Puts a guard in front of aedes on one connection. aedes pulls bytes with
 * `conn.read()` on 'readable' (lib/client.js) and never uses 'data', so
 * wrapping that instance's read() sees every byte without an extra stream
 * stage per connection. On a violation the bytes are withheld and the
 * connection is destroyed; `onViolation` is told why.
 */
export function guardPacketSize(conn: Duplex, maxBytes: number, onViolation: (reason: string) => void): void {
  const guard = new PacketSizeGuard(maxBytes);
  const read = conn.read.bind(conn);
  let violated = false;
  conn.read = (size?: number) => {
    if (violated) return null;
    const chunk: unknown = read(size);
    if (chunk instanceof Uint8Array) {
      const reason = guard.inspect(chunk);
      if (reason !== null) {
        violated = true;
        onViolation(reason);
        conn.destroy();
        return null;
      }
    }
    return chunk;
  };
}
