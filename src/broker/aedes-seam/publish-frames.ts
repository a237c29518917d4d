/**
 * The bytes of a QoS 0 PUBLISH, read in place and written once per protocol
 * level (fast-publish.ts). Only the simplest form is read here: QoS 0, no
 * DUP, no RETAIN, a topic of printable ASCII not starting with `$`, and for
 * MQTT 5 no properties. Anything else is left to aedes and mqtt-packet.
 */

/** Packet type PUBLISH [MQTT-2.2.1]. */
export const PUBLISH = 3;
/** Fixed header of a PUBLISH with DUP 0, QoS 0, RETAIN 0 [MQTT-3.3.1]. */
export const PLAIN_PUBLISH = 0x30;
/** Fixed header of a PUBACK (flags 0) [MQTT-3.4.1]. */
export const PUBACK_HEADER = 0x40;
/** Fixed headers of a PUBREC and a PUBCOMP (flags 0) [MQTT-3.5.1] [MQTT-3.7.1]. */
export const PUBREC_HEADER = 0x50;
export const PUBCOMP_HEADER = 0x70;

/**
 * The acknowledgements a subscriber sends for QoS 1/2 deliveries, read in
 * place (parsedInPlace): PUBACK, PUBREC, PUBCOMP. A PUBREL (flags 0010) is
 * a publisher's and goes to mqtt-packet.
 */
export function isDeliveryAck(first: number): boolean {
  return first === PUBACK_HEADER || first === PUBREC_HEADER || first === PUBCOMP_HEADER;
}

/** A PUBLISH read in place: offsets into the chunk it came in. */
export interface PublishFrame {
  /** Where the frame starts and ends in the chunk. */
  start: number;
  end: number;
  topic: string;
  /** Where the payload starts; it runs to `end`. */
  payloadStart: number;
}

/**
 * The Remaining Length at `index` (the byte after the first) [MQTT-2.2.3]:
 * its value and the index after it, or undefined when the chunk ends
 * first. The protocol guard below has already refused a malformed one.
 */
export function remainingLength(chunk: Uint8Array, index: number): { length: number; next: number } | undefined {
  let length = 0;
  let multiplier = 1;
  for (let i = 0; i < 4; i++) {
    if (index >= chunk.length) return undefined;
    const byte = chunk[index++] as number;
    length += (byte & 0x7f) * multiplier;
    if ((byte & 0x80) === 0) return { length, next: index };
    multiplier *= 128;
  }
  return undefined;
}

/**
 * The topic of the plain PUBLISH whose variable header starts at `index`
 * (its two length bytes), or undefined when it is not one this path takes:
 * empty (MQTT 5 Topic Alias), `$`-prefixed (the broker's own, [MQTT-4.7.2-1]),
 * or with a byte outside printable ASCII, which would need a UTF-8 decode and
 * the guard's well-formedness rules; aedes takes those.
 *
 * `previous`, the topic of the connection's last PUBLISH, is answered again
 * when the bytes spell it: a device mostly publishes to the same topics, and
 * a new string per message (~100 ns, more than the comparison) was a
 * noticeable part of a QoS 0 message's cost.
 */
export function plainTopic(chunk: Uint8Array, index: number, end: number, previous?: string): string | undefined {
  if (index + 2 > end) return undefined;
  const length = ((chunk[index] as number) << 8) | (chunk[index + 1] as number);
  const from = index + 2;
  const to = from + length;
  if (length === 0 || to > end || chunk[from] === 0x24) return undefined;
  let same = previous !== undefined && previous.length === length;
  for (let i = from; i < to; i++) {
    const byte = chunk[i] as number;
    if (byte < 0x20 || byte > 0x7e) return undefined;
    if (same && previous!.charCodeAt(i - from) !== byte) same = false;
  }
  return same ? previous : (Buffer.prototype.latin1Slice.call(chunk, from, to) as string);
}

/** Bytes of a Variable Byte Integer [MQTT-1.5.5]: 7 bits a byte. */
export function variableByteIntegerBytes(value: number): number {
  return value < 128 ? 1 : value < 16_384 ? 2 : value < 2_097_152 ? 3 : 4;
}

/** Writes a Variable Byte Integer at `index` [MQTT-1.5.5]; returns the index after it. */
export function writeVariableByteInteger(out: Buffer, index: number, value: number): number {
  let rest = value;
  do {
    let byte = rest % 128;
    rest = Math.floor(rest / 128);
    if (rest > 0) byte |= 0x80;
    out[index++] = byte;
  } while (rest > 0);
  return index;
}

/**
 * A plain QoS 0 PUBLISH for `level` (3 and 4: no properties; 5: a Property
 * Length of 0), as mqtt-packet would write it for the same message.
 */
export function encodePlainPublish(topic: string, payload: Uint8Array, level: number): Buffer {
  const topicBytes = topic.length; // printable ASCII: one byte a character
  const properties = level === 5 ? 1 : 0;
  const remaining = 2 + topicBytes + properties + payload.length;
  const out = Buffer.allocUnsafe(1 + variableByteIntegerBytes(remaining) + remaining);
  out[0] = PLAIN_PUBLISH;
  let index = writeVariableByteInteger(out, 1, remaining);
  out[index++] = topicBytes >> 8;
  out[index++] = topicBytes & 0xff;
  index += out.write(topic, index, 'latin1');
  if (properties) out[index++] = 0;
  out.set(payload, index);
  return out;
}

/**
 * The packet mqtt-packet's parser would emit for the QoS 1/2 PUBLISH, or the
 * PUBACK, PUBREC or PUBCOMP (isDeliveryAck) at `start`..`end` (its body from
 * `bodyStart`), with the fields in the same order, or undefined when it is
 * not one read here: a PUBLISH whose topic is not plain (plainTopic) or, at
 * level 5, that carries properties; an acknowledgement with a Reason Code or
 * properties. The protocol guard has checked the packet identifier and the flags.
 */
export function parsedInPlace(chunk: Buffer, start: number, bodyStart: number, end: number, level5: boolean, previousTopic?: string): object | undefined {
  const first = chunk[start] as number;
  const length = end - bodyStart;
  if (isDeliveryAck(first)) {
    if (length !== 2) return undefined;
    const messageId = ((chunk[bodyStart] as number) << 8) | (chunk[bodyStart + 1] as number);
    const cmd = first === PUBACK_HEADER ? 'puback' : first === PUBREC_HEADER ? 'pubrec' : 'pubcomp';
    const ack: Record<string, unknown> = { cmd, retain: false, qos: 0, dup: false, length, topic: null, payload: null, messageId };
    // mqtt-packet's reading of a 2-byte MQTT 5 acknowledgement: Reason Code 0x00 (Success) [MQTT-3.4.2.1] [MQTT-3.5.2.1] [MQTT-3.7.2.1].
    if (level5) ack.reasonCode = 0;
    return ack;
  }
  const qos = (first >> 1) & 0x03;
  if (qos === 0 || qos === 3) return undefined;
  const topic = plainTopic(chunk, bodyStart, end, previousTopic);
  if (topic === undefined) return undefined;
  const idAt = bodyStart + 2 + topic.length;
  let payloadStart = idAt + 2;
  if (payloadStart > end) return undefined;
  if (level5) {
    if (payloadStart >= end || chunk[payloadStart] !== 0) return undefined;
    payloadStart += 1;
  }
  const messageId = ((chunk[idAt] as number) << 8) | (chunk[idAt + 1] as number);
  return {
    cmd: 'publish',
    retain: (first & 0x01) === 1,
    qos,
    dup: (first & 0x08) === 0x08,
    length,
    topic,
    payload: chunk.subarray(payloadStart, end),
    messageId,
  };
}
