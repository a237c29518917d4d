/**
 * The Connect Flags byte and Keep Alive of a CONNECT (3.1.2.3 to 3.1.2.10):
 * the same bits in MQTT 3.1.1 and 5.0, so both versions' rules read them
 * here. Only the reading is shared: which combinations each version refuses,
 * under which clause and as what (3.1.1 closes; 5.0 names a Malformed
 * Packet) stays in rules-3-1-1.ts and rules-5.ts, as the clause numbers
 * differ between the versions.
 */
import type { FieldReader } from './field-reader.js';

export interface ConnectFlags {
  /** Bit 0, which both versions reserve. */
  reserved: boolean;
  will: boolean;
  /** Bits 3-4, as sent (3 included). */
  willQoS: number;
  willRetain: boolean;
  password: boolean;
  username: boolean;
}

/** Reads the Connect Flags and skips the Keep Alive; null when the body ends first. */
export function readConnectFlags(reader: FieldReader): ConnectFlags | null {
  const flags = reader.byte();
  if (flags === null || reader.uint16() === null) return null;
  return {
    reserved: (flags & 0x01) !== 0,
    will: (flags & 0x04) !== 0,
    willQoS: (flags >> 3) & 0x03,
    willRetain: (flags & 0x20) !== 0,
    password: (flags & 0x40) !== 0,
    username: (flags & 0x80) !== 0,
  };
}
