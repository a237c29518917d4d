/**
 * The LevelDB key layout. Every key is binary and starts with one namespace
 * byte, so each kind of record is one contiguous, ordered range:
 *
 *   0x00 name                       meta (format version, last-alive time)
 *   'S' client topic                subscription → record (codec.ts)
 *   'R' topic                       retained message → packet
 *   'O' client seq(u64 BE)          outgoing queue entry → packet; seq orders the queue
 *   'I' client messageId(u16 BE)    incoming QoS 2 packet awaiting PUBREL → packet
 *   'W' client                      will → packet
 *   'L' client                      session last seen → ms since epoch (u48 BE), then for
 *                                   an MQTT 5 session its Session Expiry Interval (u32 BE, s)
 *   'Q' original key                quarantined record that failed to decode (raw bytes)
 *   'X' component 0x00 ...          owned by another component (e.g. the bridge outbox)
 *
 * `client` is the client id as UTF-8 behind a u16 BE length. The length prefix
 * makes one client's range exact: "abc" never shares a prefix with "abcd", so a
 * range delete or scan for one client cannot touch another (a plain separator
 * would need a byte that client ids cannot contain).
 */

export const NS = {
  meta: 0x00,
  incoming: 0x49, // I
  session: 0x4c, // L
  outgoing: 0x4f, // O
  quarantine: 0x51, // Q
  retained: 0x52, // R
  subscription: 0x53, // S
  will: 0x57, // W
  component: 0x58, // X
} as const;

export type Namespace = keyof typeof NS;

/** Longest client id a key can hold: MQTT strings carry a u16 length too [MQTT-1.5.3]. */
const MAX_CLIENT_ID_BYTES = 0xffff;

/** Thrown for a key that does not follow the layout; such a record is quarantined. */
export class KeyFormatError extends Error {
  override name = 'KeyFormatError';
}

function clientPart(clientId: string): Buffer {
  const id = Buffer.from(clientId, 'utf8');
  if (id.length > MAX_CLIENT_ID_BYTES) throw new RangeError(`client id longer than ${MAX_CLIENT_ID_BYTES} bytes`);
  const part = Buffer.allocUnsafe(2 + id.length);
  part.writeUInt16BE(id.length, 0);
  id.copy(part, 2);
  return part;
}

/** Reads `[u16 len][id]` at offset 1 (after the namespace byte). */
function readClient(key: Buffer): { clientId: string; end: number } {
  if (key.length < 3) throw new KeyFormatError('key too short for a client id');
  const length = key.readUInt16BE(1);
  const end = 3 + length;
  if (end > key.length) throw new KeyFormatError('client id length runs past the key');
  return { clientId: key.toString('utf8', 3, end), end };
}

function withNamespace(ns: number, ...parts: Buffer[]): Buffer {
  return Buffer.concat([Buffer.of(ns), ...parts]);
}

export function metaKey(name: string): Buffer {
  return withNamespace(NS.meta, Buffer.from(name, 'latin1'));
}

export function subscriptionKey(clientId: string, topic: string): Buffer {
  return withNamespace(NS.subscription, clientPart(clientId), Buffer.from(topic, 'utf8'));
}

export function parseSubscriptionKey(key: Buffer): { clientId: string; topic: string } {
  const { clientId, end } = readClient(key);
  return { clientId, topic: key.toString('utf8', end) };
}

export function retainedKey(topic: string): Buffer {
  return withNamespace(NS.retained, Buffer.from(topic, 'utf8'));
}

export function parseRetainedKey(key: Buffer): string {
  return key.toString('utf8', 1);
}

/** Largest queue sequence number: seq is a JS number, exact up to 2^53. */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;

/**
 * Built in one buffer, not joined from parts: it is made for every queued
 * message and again for its acknowledgement (the persistent-session QoS 1
 * path; there ClientQueue.keyOf builds it from a prefix made once per queue).
 */
export function outgoingKey(clientId: string, seq: number): Buffer {
  return outgoingKeyAfter(outgoingKeyPrefix(clientId), seq);
}

/**
 * The part of an outgoing key before the sequence number: namespace, client
 * id length and id. `kept`: in memory of its own, for a prefix kept as long
 * as its queue (a small Buffer from Node's shared pool would keep that
 * pool's whole 8 KiB slab alive).
 */
export function outgoingKeyPrefix(clientId: string, kept = false): Buffer {
  const idBytes = Buffer.byteLength(clientId, 'utf8');
  if (idBytes > MAX_CLIENT_ID_BYTES) throw new RangeError(`client id longer than ${MAX_CLIENT_ID_BYTES} bytes`);
  const prefix = kept ? Buffer.allocUnsafeSlow(3 + idBytes) : Buffer.allocUnsafe(3 + idBytes);
  prefix[0] = NS.outgoing;
  prefix[1] = idBytes >> 8;
  prefix[2] = idBytes & 0xff;
  prefix.write(clientId, 3, idBytes, 'utf8');
  return prefix;
}

/** The outgoing key of `seq` after `prefix` (outgoingKeyPrefix). */
export function outgoingKeyAfter(prefix: Buffer, seq: number): Buffer {
  const at = prefix.length;
  const key = Buffer.allocUnsafe(at + 8);
  prefix.copy(key, 0);
  // Big-endian so byte order is numeric order: the queue iterates oldest first.
  // seq is an integer below 2^53 (MAX_SEQ): its high and low 32 bits, byte by byte.
  const high = Math.floor(seq / 0x1_0000_0000);
  const low = seq >>> 0;
  key[at] = high >>> 24;
  key[at + 1] = (high >>> 16) & 0xff;
  key[at + 2] = (high >>> 8) & 0xff;
  key[at + 3] = high & 0xff;
  key[at + 4] = low >>> 24;
  key[at + 5] = (low >>> 16) & 0xff;
  key[at + 6] = (low >>> 8) & 0xff;
  key[at + 7] = low & 0xff;
  return key;
}

export function parseOutgoingKey(key: Buffer): { clientId: string; seq: number } {
  const { clientId, end } = readClient(key);
  if (key.length !== end + 8) throw new KeyFormatError('outgoing key without an 8-byte sequence');
  const seq = key.readUInt32BE(end) * 0x1_0000_0000 + key.readUInt32BE(end + 4);
  if (seq > MAX_SEQ) throw new KeyFormatError('outgoing sequence beyond 2^53');
  return { clientId, seq };
}

export function incomingKey(clientId: string, messageId: number): Buffer {
  if (!Number.isInteger(messageId) || messageId < 0 || messageId > 0xffff) {
    throw new RangeError(`invalid packet identifier ${String(messageId)}`);
  }
  const id = Buffer.allocUnsafe(2);
  id.writeUInt16BE(messageId, 0);
  return withNamespace(NS.incoming, clientPart(clientId), id);
}

export function parseIncomingKey(key: Buffer): { clientId: string; messageId: number } {
  const { clientId, end } = readClient(key);
  if (key.length !== end + 2) throw new KeyFormatError('incoming key without a 2-byte packet identifier');
  return { clientId, messageId: key.readUInt16BE(end) };
}

export function willKey(clientId: string): Buffer {
  return withNamespace(NS.will, clientPart(clientId));
}

export function sessionKey(clientId: string): Buffer {
  return withNamespace(NS.session, clientPart(clientId));
}

/** For keys that are exactly `[ns][client]` (wills, sessions). */
export function parseClientOnlyKey(key: Buffer): string {
  const { clientId, end } = readClient(key);
  if (key.length !== end) throw new KeyFormatError('unexpected bytes after the client id');
  return clientId;
}

export function quarantineKey(original: Buffer): Buffer {
  return withNamespace(NS.quarantine, original);
}

/**
 * The key prefix another component owns, e.g. `componentPrefix('bridge')` for
 * the NATS bridge outbox. The persistence never reads or writes below it; the
 * component adds its records to the same group commit (see group-commit.ts).
 */
export function componentPrefix(component: string): Buffer {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(component)) {
    throw new RangeError(`component name must match [a-z][a-z0-9-]{0,31}: ${component}`);
  }
  return Buffer.concat([Buffer.of(NS.component), Buffer.from(component, 'latin1'), Buffer.of(0)]);
}

/** The range `[gte, lt)` of all keys that start with `prefix`. */
export function prefixRange(prefix: Buffer): { gte: Buffer; lt: Buffer } {
  return { gte: prefix, lt: successor(prefix) };
}

export function namespaceRange(ns: Namespace): { gte: Buffer; lt: Buffer } {
  return prefixRange(Buffer.of(NS[ns]));
}

/** Smallest buffer greater than every buffer starting with `prefix`. */
function successor(prefix: Buffer): Buffer {
  const next = Buffer.from(prefix);
  for (let i = next.length - 1; i >= 0; i--) {
    const byte = next[i]!;
    if (byte < 0xff) {
      next[i] = byte + 1;
      return next.subarray(0, i + 1);
    }
  }
  throw new RangeError('a prefix of only 0xff bytes has no successor');
}

/** ms since epoch as 6 bytes (u48 BE): enough until the year 10889. */
export function encodeTime(ms: number): Buffer {
  const value = Buffer.allocUnsafe(6);
  value.writeUIntBE(Math.max(0, Math.floor(ms)), 0, 6);
  return value;
}

export function decodeTime(value: Buffer): number {
  if (value.length !== 6) throw new KeyFormatError(`time value of ${value.length} bytes, expected 6`);
  return value.readUIntBE(0, 6);
}

/**
 * A session record: when its client was last seen and, for an MQTT 5
 * session, the Session Expiry Interval it keeps after its connection
 * [MQTT-3.1.2-23]. A 3.1.1 session (and every record written before MQTT 5
 * sessions had their own expiry) is the time alone: 6 bytes; its expiry is
 * the configured one.
 */
export interface SessionTimes {
  lastSeen: number;
  /** Seconds, as the client set it (clamped to the configured maximum); absent for 3.1.1. */
  expirySec?: number | undefined;
}

export function encodeSession({ lastSeen, expirySec }: SessionTimes): Buffer {
  const time = encodeTime(lastSeen);
  if (expirySec === undefined) return time;
  const value = Buffer.allocUnsafe(10);
  time.copy(value, 0);
  value.writeUInt32BE(Math.min(0xffff_ffff, Math.max(0, Math.floor(expirySec))), 6);
  return value;
}

export function decodeSession(value: Buffer): SessionTimes {
  if (value.length === 6) return { lastSeen: decodeTime(value) };
  if (value.length !== 10) throw new KeyFormatError(`session value of ${value.length} bytes, expected 6 or 10`);
  return { lastSeen: value.readUIntBE(0, 6), expirySec: value.readUInt32BE(6) };
}
