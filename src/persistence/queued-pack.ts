/**
 * The MessagePack bytes of a queued message's record in its usual shape, written
 * directly instead of through msgpackr: one record per message queued for a
 * persistent session, where msgpackr's general walk (an array of the fields
 * built first, a type dispatch per value, a shared slab to manage) was about
 * 3–4% of the broker's CPU on the persistent-session QoS 1 path (bench/persistence-qos1.ts).
 *
 * The output is byte for byte what msgpackr's `pack` gives for the same array
 * (test/persistence-units.test.ts compares them over the edges of every
 * length class): the shortest header per MessagePack's spec for strings
 * (fixstr, str8, str16, str32), binaries (bin8, bin16, bin32) and unsigned
 * integers (fixint, uint8, uint16, uint32), `undefined` as msgpackr writes it
 * (fixext 1 of type 0). Anything else (MQTT 5 properties, an expiry, a
 * counter past 32 bits, a payload that is not a Buffer) answers undefined:
 * the caller then packs with msgpackr as before.
 */

/** codec.ts's record kind of a packet, the first element of its array. */
export const KIND_PACKET = 1;
const UINT32_LIMIT = 0x1_0000_0000;
/** Strings up to this many chars are measured and, when ASCII, written in JavaScript. */
const SHORT_STRING = 64;

/** Bytes of an unsigned integer below 2^32 as MessagePack writes it (fixint, uint8, uint16, uint32). */
export function uintSize(value: number): number {
  return value < 0x80 ? 1 : value < 0x100 ? 2 : value < 0x1_0000 ? 3 : 5;
}

function strHeaderSize(bytes: number): number {
  return bytes < 0x20 ? 1 : bytes < 0x100 ? 2 : bytes < 0x1_0000 ? 3 : 5;
}

function binHeaderSize(bytes: number): number {
  return bytes < 0x100 ? 2 : bytes < 0x1_0000 ? 3 : 5;
}

/** Writes an unsigned integer below 2^32 in the shortest form (see uintSize); returns the index after it. */
export function writeUint(buf: Buffer, at: number, value: number): number {
  if (value < 0x80) {
    buf[at] = value;
    return at + 1;
  }
  if (value < 0x100) {
    buf[at] = 0xcc;
    buf[at + 1] = value;
    return at + 2;
  }
  if (value < 0x1_0000) {
    buf[at] = 0xcd;
    buf.writeUInt16BE(value, at + 1);
    return at + 3;
  }
  buf[at] = 0xce;
  buf.writeUInt32BE(value, at + 1);
  return at + 5;
}

/**
 * A str or bin header past its fix form: `code8` (str8 0xd9, bin8 0xc4) with
 * a one-byte length, the next code with two bytes, the one after with four.
 */
function writeLength(buf: Buffer, at: number, bytes: number, code8: number): number {
  if (bytes < 0x100) {
    buf[at] = code8;
    buf[at + 1] = bytes;
    return at + 2;
  }
  if (bytes < 0x1_0000) {
    buf[at] = code8 + 1;
    buf.writeUInt16BE(bytes, at + 1);
    return at + 3;
  }
  buf[at] = code8 + 2;
  buf.writeUInt32BE(bytes, at + 1);
  return at + 5;
}

function writeStr(buf: Buffer, at: number, value: string, bytes: number): number {
  if (bytes < 0x20) buf[at++] = 0xa0 | bytes;
  else at = writeLength(buf, at, bytes, 0xd9);
  if (bytes === value.length && bytes <= SHORT_STRING) {
    // ASCII (one byte per char): a loop beats the native write at this size.
    for (let i = 0; i < bytes; i++) buf[at + i] = value.charCodeAt(i);
    return at + bytes;
  }
  return at + (bytes > 0 ? buf.write(value, at, bytes, 'utf8') : 0);
}

/** UTF-8 length of a string; short ASCII strings are counted in JavaScript (see writeStr). */
function utf8Length(value: string): number {
  const length = value.length;
  if (length > SHORT_STRING) return Buffer.byteLength(value, 'utf8');
  for (let i = 0; i < length; i++) {
    if (value.charCodeAt(i) >= 0x80) return Buffer.byteLength(value, 'utf8');
  }
  return length;
}

function writeBin(buf: Buffer, at: number, value: Buffer): number {
  at = writeLength(buf, at, value.length, 0xc4);
  return at + value.copy(buf, at);
}

function isUint32(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < UINT32_LIMIT;
}

/**
 * See the header; undefined when the record is not in the shape written
 * here. `original` is the published packet; the other arguments are its
 * fields as codec.ts's encodeQueued settled them (defaults applied). The
 * record is [kind, mask, clientId?, cmd, brokerId, brokerCounter, topic,
 * payload, qos, retain, dup, messageId?] (codec.ts's PACKET_FIELDS; no nl,
 * properties or messageExpiry: the caller checked they are absent).
 */
export function packQueued(
  original: Record<string, unknown>,
  cmd: string,
  brokerCounter: unknown,
  payload: unknown,
  qos: unknown,
  retain: unknown,
  dup: unknown,
  withMessageId: boolean,
): Buffer | undefined {
  const hasClientId = Object.hasOwn(original, 'clientId');
  const { clientId, brokerId, topic } = original;
  if (hasClientId && typeof clientId !== 'string') return undefined;
  if (typeof brokerId !== 'string' || typeof topic !== 'string' || !Buffer.isBuffer(payload)) return undefined;
  if (!isUint32(brokerCounter) || !isUint32(qos)) return undefined;
  if (typeof retain !== 'boolean' || typeof dup !== 'boolean') return undefined;
  // clientId (bit 0) when present, cmd … dup (bits 4-11), messageId (bit 12) when present.
  const mask = (hasClientId ? 1 : 0) | 0xff0 | (withMessageId ? 0x1000 : 0);
  const clientIdBytes = hasClientId ? utf8Length(clientId as string) : 0;
  const cmdBytes = utf8Length(cmd);
  const brokerIdBytes = utf8Length(brokerId);
  const topicBytes = utf8Length(topic);
  const count = 2 + (hasClientId ? 1 : 0) + 8 + (withMessageId ? 1 : 0);
  const size =
    1 + // fixarray: at most 11 elements
    1 + // the kind, a fixint
    uintSize(mask) +
    (hasClientId ? strHeaderSize(clientIdBytes) + clientIdBytes : 0) +
    strHeaderSize(cmdBytes) +
    cmdBytes +
    strHeaderSize(brokerIdBytes) +
    brokerIdBytes +
    uintSize(brokerCounter) +
    strHeaderSize(topicBytes) +
    topicBytes +
    binHeaderSize(payload.length) +
    payload.length +
    uintSize(qos) +
    2 + // retain, dup
    (withMessageId ? 3 : 0);
  const buf = Buffer.allocUnsafe(size);
  let at = 0;
  buf[at++] = 0x90 | count;
  buf[at++] = KIND_PACKET;
  at = writeUint(buf, at, mask);
  if (hasClientId) at = writeStr(buf, at, clientId as string, clientIdBytes);
  at = writeStr(buf, at, cmd, cmdBytes);
  at = writeStr(buf, at, brokerId, brokerIdBytes);
  at = writeUint(buf, at, brokerCounter);
  at = writeStr(buf, at, topic, topicBytes);
  at = writeBin(buf, at, payload);
  at = writeUint(buf, at, qos);
  buf[at++] = retain ? 0xc3 : 0xc2;
  buf[at++] = dup ? 0xc3 : 0xc2;
  if (withMessageId) {
    // msgpackr's undefined: fixext 1, type 0, data 0.
    buf[at++] = 0xd4;
    buf[at++] = 0;
    buf[at++] = 0;
  }
  return buf;
}
