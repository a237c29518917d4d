/**
 * The bytes mqtt-packet's writeToStream writes for a PUBLISH or a PUBACK in
 * their usual shapes, made as one Buffer (packet-writes.ts writes it with one
 * write()). Byte for byte what mqtt-packet writes (test/packet-encoding.test.ts
 * compares the two over every shape taken here); undefined for any other
 * shape, which mqtt-packet then writes itself.
 *
 * Why: mqtt-packet writes a PUBLISH as six chunks (header, Remaining Length,
 * topic length, topic, packet identifier, payload) and a PUBACK as three,
 * each through the stream's write(), allocates a Buffer per packet
 * identifier, corks the stream and uncorks it in a process.nextTick per
 * packet, and calls `debug()` five to eight times per packet: ~9% of the
 * broker's CPU on the QoS 1 path to a persistent session, where every
 * message costs a PUBLISH to the subscriber and a PUBACK to its publisher.
 * The write coalescer (src/broker/write-coalescer.ts) joins the chunks into
 * one socket write per turn either way, so the cork bought nothing here.
 */
import { variableByteIntegerBytes, writeVariableByteInteger } from './publish-frames.js';

/** Largest Remaining Length, four bytes of a Variable Byte Integer [MQTT-1.5.5]. */
const MAX_REMAINING_LENGTH = 268_435_455;

/** The fields of a PUBLISH or PUBACK as aedes and mqtt.js hand them to writeToStream. */
export interface EncodablePacket {
  cmd?: unknown;
  topic?: unknown;
  payload?: unknown;
  qos?: unknown;
  dup?: unknown;
  retain?: unknown;
  messageId?: unknown;
  properties?: unknown;
  reasonCode?: unknown;
}

function isPacketId(id: unknown): id is number {
  return typeof id === 'number' && Number.isInteger(id) && id >= 0 && id <= 0xffff;
}


/**
 * A PUBLISH as mqtt-packet writes it for `version` (its `opts.protocolVersion`,
 * 4 without one): a string topic, a Buffer or string payload (none: empty),
 * QoS 0–2 with a packet identifier (0–65,535, as mqtt-packet takes it), and at level 5 no properties
 * (mqtt-packet then writes a Property Length of 0). Its header flags as
 * mqtt-packet sets them: DUP and RETAIN as given, truthy or not [MQTT-3.3.1].
 */
export function encodePublish(packet: EncodablePacket, version: number | undefined): Buffer | undefined {
  const { topic, qos = 0, messageId } = packet;
  if (typeof topic !== 'string' || (qos !== 0 && qos !== 1 && qos !== 2)) return undefined;
  if (version === 5 && packet.properties !== undefined) return undefined;
  if (qos > 0 && !isPacketId(messageId)) return undefined;
  const payload = packet.payload || undefined;
  if (payload !== undefined && typeof payload !== 'string' && !Buffer.isBuffer(payload)) return undefined;
  const topicBytes = Buffer.byteLength(topic);
  const payloadBytes = payload === undefined ? 0 : typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  const remaining = 2 + topicBytes + (qos > 0 ? 2 : 0) + (version === 5 ? 1 : 0) + payloadBytes;
  // mqtt-packet refuses these (destroying the stream): its own path keeps that.
  if (topicBytes > 0xffff || remaining > MAX_REMAINING_LENGTH) return undefined;
  const out = Buffer.allocUnsafe(1 + variableByteIntegerBytes(remaining) + remaining);
  out[0] = 0x30 | (packet.dup ? 0x08 : 0) | (qos << 1) | (packet.retain ? 0x01 : 0);
  let index = writeVariableByteInteger(out, 1, remaining);
  out[index++] = topicBytes >> 8;
  out[index++] = topicBytes & 0xff;
  index += out.write(topic, index, topicBytes, 'utf8');
  if (qos > 0) {
    out[index++] = (messageId as number) >> 8;
    out[index++] = (messageId as number) & 0xff;
  }
  if (version === 5) out[index++] = 0;
  if (typeof payload === 'string') out.write(payload, index, payloadBytes, 'utf8');
  else if (payload !== undefined) payload.copy(out, index);
  return out;
}

/**
 * A PUBACK as mqtt-packet writes it: for 3.1.1; for 5 without properties,
 * with Reason Code 0 in the short form without it [MQTT-3.4.2-1], and
 * without a Reason Code (as aedes makes them, lib/handlers/publish.js
 * PubAck) with Reason Code 0 and a Property Length of 0, as mqtt-packet
 * writes that.
 */
export function encodePuback(packet: EncodablePacket, version: number | undefined): Buffer | undefined {
  const { messageId, reasonCode } = packet;
  if (!isPacketId(messageId)) return undefined;
  const long = version === 5 && reasonCode === undefined;
  if (version === 5 && ((reasonCode !== 0 && !long) || packet.properties !== undefined)) return undefined;
  const out = Buffer.allocUnsafe(long ? 6 : 4);
  out[0] = 0x40;
  out[1] = long ? 4 : 2;
  out[2] = messageId >> 8;
  out[3] = messageId & 0xff;
  if (long) {
    out[4] = 0;
    out[5] = 0;
  }
  return out;
}
