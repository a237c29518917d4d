/**
 * Value encodings. A record is a MessagePack array (msgpackr):
 *
 *   [kind, presentMask, ...values of the present fields in table order, extras?]
 *
 * The field table is fixed per kind, so field names are not repeated in every
 * record (a queued QoS 1 message costs its topic, payload and ~50 bytes). The
 * mask records which fields the object had, so a decoded packet has exactly
 * the keys it was stored with (aedes and its conformance suite compare packets
 * key by key). Properties outside the table (rare: custom fields, MQTT 5
 * additions) go into one trailing map flagged by the bit after the table.
 *
 * Compatibility rule: fields are only ever appended to a table; a new kind
 * gets a new number. A record whose kind or shape is unknown fails to decode,
 * and the caller quarantines it (see stored-packets.ts decodeStored).
 */
import { Packr } from 'msgpackr';
import { packQueued } from './queued-pack.js';
import { packPubrel } from './pubrel-pack.js';
import { unpackQueued } from './queued-unpack.js';

/** A packet as aedes hands it to the persistence: plain data, maybe class instances. */
export type PacketLike = Record<string, unknown>;

export class RecordDecodeError extends Error {
  override name = 'RecordDecodeError';
}

const KIND_PACKET = 1;
const EMPTY = Buffer.alloc(0);
const KIND_SUBSCRIPTION = 2;

// Order follows aedes-packet's constructor so decoded packets read naturally in logs.
const PACKET_FIELDS = [
  'clientId',
  'nl',
  'properties',
  'messageExpiry',
  'cmd',
  'brokerId',
  'brokerCounter',
  'topic',
  'payload',
  'qos',
  'retain',
  'dup',
  'messageId',
] as const;

const SUBSCRIPTION_FIELDS = ['qos', 'rh', 'rap', 'nl', 'subscriptionIdentifier'] as const;

// Keys never copied from stored data onto a fresh object (prototype pollution).
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

// Stateless configuration: maps as plain objects, no msgpackr record extension
// (its structures would have to be stored next to the data).
const packr = new Packr({ useRecords: false, mapsAsObjects: true });

interface RecordCodec {
  encode(value: PacketLike): Buffer;
  decode(buffer: Buffer): PacketLike;
}

function createRecordCodec(kind: number, fields: readonly string[], validate: (value: PacketLike) => void): RecordCodec {
  if (fields.length > 30) throw new RangeError('field table too large for a 31-bit mask');
  const extrasBit = 2 ** fields.length;
  const known = new Set(fields);
  return {
    encode(value) {
      const out: unknown[] = [kind, 0];
      let mask = 0;
      for (let i = 0; i < fields.length; i++) {
        const field = fields[i]!;
        if (!Object.hasOwn(value, field)) continue;
        mask |= 1 << i;
        out.push(value[field]);
      }
      let extras: Record<string, unknown> | undefined;
      for (const key of Object.keys(value)) {
        if (known.has(key) || FORBIDDEN_KEYS.has(key)) continue;
        const item = value[key];
        // A QoSPacket carries its write callback; functions are behaviour, not data.
        if (typeof item === 'function') continue;
        (extras ??= {})[key] = item;
      }
      if (extras) {
        mask += extrasBit;
        out.push(extras);
      }
      out[1] = mask;
      return packr.pack(out);
    },
    decode(buffer) {
      let raw: unknown;
      try {
        raw = packr.unpack(buffer);
      } catch (error) {
        throw new RecordDecodeError(`not MessagePack: ${(error as Error).message}`);
      }
      if (!Array.isArray(raw) || raw[0] !== kind || typeof raw[1] !== 'number') {
        throw new RecordDecodeError(`not a record of kind ${kind}`);
      }
      const mask = raw[1];
      if (!Number.isInteger(mask) || mask < 0 || mask >= extrasBit * 2) {
        throw new RecordDecodeError(`invalid field mask ${mask}`);
      }
      const value: PacketLike = {};
      let index = 2;
      for (let i = 0; i < fields.length; i++) {
        if ((mask & (1 << i)) === 0) continue;
        if (index >= raw.length) throw new RecordDecodeError('record shorter than its field mask');
        value[fields[i]!] = raw[index++];
      }
      if (mask >= extrasBit) {
        const extras: unknown = raw[index++];
        if (extras === null || typeof extras !== 'object' || Array.isArray(extras)) {
          throw new RecordDecodeError('extras slot is not a map');
        }
        for (const [key, item] of Object.entries(extras)) {
          if (!FORBIDDEN_KEYS.has(key)) value[key] = item;
        }
      }
      if (index !== raw.length) throw new RecordDecodeError('record longer than its field mask');
      validate(value);
      return value;
    },
  };
}

function validatePacket(value: PacketLike): void {
  if (value.cmd !== undefined && typeof value.cmd !== 'string') throw new RecordDecodeError('cmd is not a string');
  if (value.topic !== undefined && typeof value.topic !== 'string') throw new RecordDecodeError('topic is not a string');
  const payload = value.payload;
  if (payload !== undefined && typeof payload !== 'string' && !Buffer.isBuffer(payload)) {
    throw new RecordDecodeError('payload is neither bytes nor a string');
  }
  const messageId = value.messageId;
  if (messageId !== undefined && messageId !== null && typeof messageId !== 'number') {
    throw new RecordDecodeError('messageId is not a number');
  }
}

function validateSubscription(value: PacketLike): void {
  if (value.qos !== 0 && value.qos !== 1 && value.qos !== 2) throw new RecordDecodeError('qos is not 0, 1 or 2');
}

const packetCodec = createRecordCodec(KIND_PACKET, PACKET_FIELDS, validatePacket);
const subscriptionCodec = createRecordCodec(KIND_SUBSCRIPTION, SUBSCRIPTION_FIELDS, validateSubscription);

/** A packet's record; a PUBREL's written directly (pubrel-pack.ts), the same bytes. */
export function encodePacket(value: PacketLike): Buffer {
  return packPubrel(value) ?? packetCodec.encode(value);
}
/** The general decode alone (msgpackr): what queued-unpack.ts is held to (test/persistence-units.test.ts). */
export const decodePacketGeneral = packetCodec.decode;

/** A packet's record read back; a queued message's in its usual shape read directly (queued-unpack.ts), the same packet. */
export function decodePacket(buffer: Buffer): PacketLike {
  return unpackQueued(buffer) ?? packetCodec.decode(buffer);
}

export interface SubscriptionRecord {
  qos: 0 | 1 | 2;
  rh?: number | undefined;
  rap?: boolean | undefined;
  nl?: boolean | undefined;
  subscriptionIdentifier?: number;
}

export function encodeSubscription(record: SubscriptionRecord): Buffer {
  return subscriptionCodec.encode(record as unknown as PacketLike);
}

export function decodeSubscription(buffer: Buffer): SubscriptionRecord {
  return subscriptionCodec.decode(buffer) as unknown as SubscriptionRecord;
}

/**
 * The field of a stored will that holds when it falls due (ms since epoch):
 * set once its connection closed with a Will Delay Interval running
 * [MQTT-3.1.3-9], so the delay survives a restart. It travels in the
 * record's extras; aedes never sees it (the persistence strips it).
 */
export const WILL_DUE_AT = 'willDueAt';

/** Own enumerable data properties of a packet, without functions: what gets stored. */
export function packetData(packet: object): PacketLike {
  const data: PacketLike = {};
  const source = packet as PacketLike;
  // for…in with an own-property check: the enumerable own keys Object.entries gives, without an
  // array per key (this runs for every retained message and will stored).
  for (const key in source) {
    if (!Object.hasOwn(source, key)) continue;
    const value = source[key];
    if (typeof value !== 'function' && !FORBIDDEN_KEYS.has(key)) data[key] = value;
  }
  return data;
}

/**
 * The shape aedes-packet's `new Packet(original)` gives a message queued for a
 * subscriber (mirrored here rather than importing a transitive dependency): the
 * packet identifier is cleared for QoS > 0 because each subscriber's session
 * assigns its own [MQTT-2.3.1-2].
 */
export function queuedPacket(original: PacketLike): PacketLike {
  const packet: PacketLike = {};
  for (const key of ['clientId', 'nl', 'properties', 'messageExpiry'] as const) {
    if (Object.hasOwn(original, key)) packet[key] = original[key];
  }
  packet.cmd = original.cmd || 'publish';
  packet.brokerId = original.brokerId;
  packet.brokerCounter = original.brokerCounter || 0;
  packet.topic = original.topic;
  packet.payload = original.payload || Buffer.alloc(0);
  packet.qos = original.qos || 0;
  packet.retain = original.retain || false;
  packet.dup = original.dup || false;
  if ((packet.qos as number) > 0 || packet.cmd !== 'publish') packet.messageId = undefined;
  return packet;
}

/** A message as queued for a subscriber: its record and the fields the queue index keeps. */
export interface QueuedRecord {
  value: Buffer;
  cmd: string;
  brokerId: unknown;
  brokerCounter: unknown;
  messageExpiry: number | undefined;
}

/**
 * encodePacket(queuedPacket(original)), byte for byte, without building the
 * queued packet and searching it for extras (it has none): this runs for
 * every message queued for a persistent session.
 */
export function encodeQueued(original: PacketLike): QueuedRecord {
  if (!Object.hasOwn(original, 'nl') && !Object.hasOwn(original, 'properties') && !Object.hasOwn(original, 'messageExpiry')) {
    // The usual shape (MQTT 3.1.1, or 5 without properties): written directly, see queued-pack.ts.
    const cmd = (original.cmd || 'publish') as string;
    const brokerCounter = original.brokerCounter || 0;
    const qos = original.qos || 0;
    const value = packQueued(
      original,
      cmd,
      brokerCounter,
      original.payload || EMPTY,
      qos,
      original.retain || false,
      original.dup || false,
      (qos as number) > 0 || cmd !== 'publish',
    );
    if (value) return { value, cmd, brokerId: original.brokerId, brokerCounter, messageExpiry: undefined };
  }
  // Any other shape (MQTT 5 properties, an expiry, No Local, types queued-pack.ts does not write): the long way.
  const stored = queuedPacket(original);
  return { value: encodePacket(stored), cmd: stored.cmd as string, brokerId: stored.brokerId, brokerCounter: stored.brokerCounter, messageExpiry: messageExpiryOf(stored) };
}

/** The own keys a retained message in its usual shape has (aedes-packet's, no MQTT 5 fields); the first two may be absent. */
const USUAL_RETAINED_KEYS = new Set(['clientId', 'messageId', 'cmd', 'brokerId', 'brokerCounter', 'topic', 'payload', 'qos', 'retain', 'dup']);
/** cmd … dup: present in every aedes-packet. */
const REQUIRED_RETAINED_KEYS = USUAL_RETAINED_KEYS.size - 2;

/**
 * encodePacket(packetData(packet)), byte for byte for well-formed strings (a
 * lone surrogate, which no client can send since MQTT strings are UTF-8, is
 * written as U+FFFD here, as encodeQueued writes it): a retained message's
 * record. One in its usual shape (MQTT 3.1.1, or 5 without properties) is
 * written directly (packRetained) without the copy of the packet and
 * msgpackr's walk, which were ~10% of the broker's CPU while retained
 * messages were stored (bench/persistence-retained.ts).
 */
export function encodeRetained(packet: PacketLike): Buffer {
  return packRetained(packet) ?? encodePacket(packetData(packet));
}

/** encodeRetained's direct path (queued-pack.ts): undefined for a packet not in the usual shape. */
export function packRetained(packet: PacketLike): Buffer | undefined {
  if (packet.cmd !== 'publish' || packet.messageId !== undefined) return undefined;
  let required = 0;
  for (const key in packet) {
    if (!Object.hasOwn(packet, key)) continue;
    if (!USUAL_RETAINED_KEYS.has(key)) return undefined;
    if (key !== 'clientId' && key !== 'messageId') required++;
  }
  if (required !== REQUIRED_RETAINED_KEYS) return undefined;
  // packQueued checks each field's type and answers undefined for anything it does not write.
  return packQueued(packet, 'publish', packet.brokerCounter, packet.payload, packet.qos, packet.retain, packet.dup, Object.hasOwn(packet, 'messageId'));
}

/** A kept record (keptRecord): a small one as a string, a large one as a buffer of its own. */
export type KeptRecord = string | Buffer;

/** Records up to this size are kept as strings; larger ones as buffers, which are sent without a copy. */
const KEPT_AS_STRING_MAX_BYTES = 4096;

/**
 * A record kept in memory for long (a retained message). A small one is a
 * one-byte string holding its bytes (latin1: one char a byte, so the string's
 * length is the record's): one object on V8's heap, ~16 bytes more than its
 * data, with nothing for the collector to trace inside it. A Buffer of its
 * own is a view, an ArrayBuffer, its backing store and the allocator's and
 * V8's bookkeeping for that store, ~250 bytes more than the data for a record
 * of ~70; and a slice of a shared slab keeps the whole slab alive (owned()).
 * A large one is a buffer of its own: the overhead is nothing beside it, and
 * each delivery reads it in place where a string would be copied out first.
 */
export function keptRecord(record: Buffer): KeptRecord {
  return record.length <= KEPT_AS_STRING_MAX_BYTES ? record.toString('latin1') : owned(record);
}

/** The bytes of a kept record (keptRecord), for decoding or writing: a fresh buffer for a small one, used briefly. */
export function keptRecordBytes(kept: KeptRecord): Buffer {
  return typeof kept === 'string' ? Buffer.from(kept, 'latin1') : kept;
}

/**
 * A buffer that owns its memory. msgpackr packs into a shared 8 KiB slab, so
 * keeping one small record alive would keep the whole slab alive.
 */
export function detached(value: Buffer): Buffer {
  return ownsItsMemory(value) ? value : Buffer.from(value);
}

/** Whether `value` spans the whole of its ArrayBuffer: keeping it keeps nothing else alive. */
function ownsItsMemory(value: Buffer): boolean {
  return value.byteOffset === 0 && value.byteLength === value.buffer.byteLength;
}

/**
 * A copy in memory of its own, for a record kept long while others around it
 * come and go (an outbox entry the bridge keeps in memory). detached() copies a small record into
 * Node's shared 8 KiB pool (Buffer.from), and one record kept there keeps the
 * pool slab alive after everything else in it is gone: 100,000 retained
 * topics of which every hundredth stays while the rest are updated kept 7.8
 * MiB of slabs for 0.07 MiB of records.
 */
export function owned(value: Buffer): Buffer {
  if (ownsItsMemory(value)) return value;
  const copy = Buffer.allocUnsafeSlow(value.length);
  value.copy(copy);
  return copy;
}

/** A stored message's absolute expiry (epoch ms, MQTT 5 Message Expiry Interval); undefined = none. */
export function messageExpiryOf(packet: PacketLike): number | undefined {
  return typeof packet.messageExpiry === 'number' ? packet.messageExpiry : undefined;
}
