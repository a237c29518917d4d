/**
 * A queued message's record read back directly, the mirror of
 * queued-pack.ts: the record in the shape packQueued writes (and msgpackr
 * writes the same bytes for, see there), [kind 1, mask, clientId?, cmd,
 * brokerId, brokerCounter, topic, payload, qos, retain, dup, messageId?],
 * with ASCII strings. The resend of a stored backlog decodes one per message
 * (src/persistence/queue-streams.ts), and msgpackr's general reader (a type
 * dispatch per value, its string extraction) was ~14% of the broker's main
 * thread there (bench/persistence-resend.ts).
 *
 * The answer is what codec.ts's msgpackr decode gives for the same bytes:
 * the same keys in the same order, the payload a view of the record as
 * msgpackr's is (test/persistence-units.test.ts compares the two over the
 * edges of every length class). Any other record, or a string that is not
 * ASCII, answers undefined: the caller decodes it with msgpackr as before.
 */
import { KIND_PACKET } from './queued-pack.js';

/** codec.ts's PacketLike (not imported: codec.ts imports this module). */
type PacketLike = Record<string, unknown>;

/** codec.ts's mask for cmd … dup (bits 4-11 of PACKET_FIELDS); bit 0 clientId, bit 12 messageId. */
const PUBLISH_FIELDS = 0xff0;
const CLIENT_ID = 0x1;
const MESSAGE_ID = 0x1000;

/** Where the reader is in the record: one module-level cursor, no tuple per value. */
let at = 0;

/**
 * The strings of the last record read, by field: a backlog's records mostly
 * repeat them (the broker's id, `publish`, the publisher, the topic), and
 * comparing the bytes with the last one is cheaper than making it anew.
 */
const last = { clientId: '', cmd: 'publish', brokerId: '', topic: '' };
type StringField = keyof typeof last;

/**
 * The length of a str or bin past its fix form (the mirror of
 * queued-pack.ts writeLength): `code8` (str8 0xd9, bin8 0xc4) and a one-byte
 * length, the next code and two bytes, the one after and four; the cursor
 * moved past it. -1 (the cursor kept) for any other code.
 */
function readLength(buf: Buffer, code8: number): number {
  const code = buf[at] as number;
  if (code === code8 && at + 1 < buf.length) {
    at += 2;
    return buf[at - 1] as number;
  }
  if (code === code8 + 1 && at + 2 < buf.length) {
    at += 3;
    return buf.readUInt16BE(at - 2);
  }
  if (code === code8 + 2 && at + 4 < buf.length) {
    at += 5;
    return buf.readUInt32BE(at - 4);
  }
  return -1;
}

/** An ASCII str (fixstr, str8, str16, str32), the last one of `field` again when the bytes spell it; undefined for anything else. */
function readStr(buf: Buffer, field: StringField): string | undefined {
  const code = buf[at] as number;
  let length: number;
  if (code >= 0xa0 && code <= 0xbf) {
    length = code & 0x1f;
    at += 1;
  } else {
    length = readLength(buf, 0xd9);
    if (length < 0) return undefined;
  }
  const from = at;
  at += length;
  if (at > buf.length) return undefined;
  const previous = last[field];
  let same = previous.length === length;
  for (let i = from; i < at; i++) {
    const byte = buf[i] as number;
    if (byte >= 0x80) return undefined;
    if (same && previous.charCodeAt(i - from) !== byte) same = false;
  }
  return same ? previous : (last[field] = buf.toString('latin1', from, at));
}

/** An unsigned integer (positive fixint, uint8, uint16, uint32); -1 for anything else. */
function readUint(buf: Buffer): number {
  const code = buf[at] as number;
  if (code < 0x80) {
    at += 1;
    return code;
  }
  if (code === 0xcc && at + 1 < buf.length) {
    at += 2;
    return buf[at - 1] as number;
  }
  if (code === 0xcd && at + 2 < buf.length) {
    at += 3;
    return buf.readUInt16BE(at - 2);
  }
  if (code === 0xce && at + 4 < buf.length) {
    at += 5;
    return buf.readUInt32BE(at - 4);
  }
  return -1;
}

/** A boolean; undefined for anything else. */
function readBool(buf: Buffer): boolean | undefined {
  const code = buf[at++];
  return code === 0xc3 ? true : code === 0xc2 ? false : undefined;
}

/** A bin (bin8, bin16, bin32) as a view of the record, as msgpackr reads it; undefined for anything else. */
function readBin(buf: Buffer): Buffer | undefined {
  const length = readLength(buf, 0xc4);
  if (length < 0) return undefined;
  const from = at;
  at += length;
  return at > buf.length ? undefined : buf.subarray(from, at);
}

/** See the header: the record as codec.ts decodes it, or undefined when it is not one read here. */
export function unpackQueued(buf: Buffer): PacketLike | undefined {
  if (buf.length < 16 || buf[1] !== KIND_PACKET || buf[2] !== 0xcd) return undefined;
  const mask = buf.readUInt16BE(3);
  if ((mask & ~(CLIENT_ID | MESSAGE_ID)) !== PUBLISH_FIELDS) return undefined;
  const withClientId = (mask & CLIENT_ID) !== 0;
  const withMessageId = (mask & MESSAGE_ID) !== 0;
  if (buf[0] !== (0x90 | (2 + (withClientId ? 1 : 0) + 8 + (withMessageId ? 1 : 0)))) return undefined;
  at = 5;
  const packet: PacketLike = {};
  if (withClientId) {
    const clientId = readStr(buf, 'clientId');
    if (clientId === undefined) return undefined;
    packet.clientId = clientId;
  }
  const cmd = readStr(buf, 'cmd');
  const brokerId = cmd === undefined ? undefined : readStr(buf, 'brokerId');
  const brokerCounter = brokerId === undefined ? -1 : readUint(buf);
  const topic = brokerCounter < 0 ? undefined : readStr(buf, 'topic');
  const payload = topic === undefined ? undefined : readBin(buf);
  const qos = payload === undefined ? -1 : readUint(buf);
  const retain = qos < 0 ? undefined : readBool(buf);
  const dup = retain === undefined ? undefined : readBool(buf);
  if (dup === undefined) return undefined;
  packet.cmd = cmd;
  packet.brokerId = brokerId;
  packet.brokerCounter = brokerCounter;
  packet.topic = topic;
  packet.payload = payload;
  packet.qos = qos;
  packet.retain = retain;
  packet.dup = dup;
  if (withMessageId) {
    if (buf[at] === 0xd4 && buf[at + 1] === 0 && buf[at + 2] === 0) {
      // msgpackr's undefined: fixext 1, type 0, data 0.
      at += 3;
      packet.messageId = undefined;
    } else {
      const messageId = readUint(buf);
      if (messageId < 0) return undefined;
      packet.messageId = messageId;
    }
  }
  return at === buf.length ? packet : undefined;
}
