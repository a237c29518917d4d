/**
 * The encoded size of a PUBLISH as the broker will write it to one
 * subscriber, computed from its fields without encoding it: the flow control
 * needs it for every delivery (the outgoing byte budget, and an MQTT 5
 * client's Maximum Packet Size [MQTT-3.1.2-24]), so it must cost no more than
 * a few additions.
 */
import { variableByteIntegerBytes, type DeliveredPacket } from './aedes-seam/index.js';

function byteLength(value: unknown): number {
  if (typeof value === 'string') return Buffer.byteLength(value);
  if (value instanceof Uint8Array) return value.length;
  return Buffer.byteLength(String(value));
}

/**
 * Bytes of a PUBLISH's properties as mqtt-packet encodes them (MQTT 5,
 * 3.3.2.3): an identifier byte each, then the value. Undefined ones are left
 * out (aedes clears a Topic Alias by setting it undefined). User Properties
 * repeat the identifier per pair, an array value being one pair per element;
 * several Subscription Identifiers likewise [MQTT-3.3.4-3].
 */
function publishPropertiesBytes(properties: Readonly<Record<string, unknown>> | undefined): number {
  if (properties === undefined) return 0;
  let bytes = 0;
  for (const name in properties) {
    const value = properties[name];
    if (value === undefined || value === null) continue;
    switch (name) {
      case 'payloadFormatIndicator':
        bytes += 2;
        break;
      case 'messageExpiryInterval':
        bytes += 5;
        break;
      case 'topicAlias':
        bytes += 3;
        break;
      case 'responseTopic':
      case 'correlationData':
      case 'contentType':
        bytes += 3 + byteLength(value);
        break;
      case 'subscriptionIdentifier':
        for (const id of Array.isArray(value) ? (value as unknown[]) : [value]) bytes += 1 + variableByteIntegerBytes(Number(id));
        break;
      case 'userProperties':
        for (const key in value as Record<string, unknown>) {
          const entry = (value as Record<string, unknown>)[key];
          const keyBytes = Buffer.byteLength(key);
          for (const item of Array.isArray(entry) ? (entry as unknown[]) : [entry]) bytes += 5 + keyBytes + byteLength(item);
        }
        break;
      default:
        // Not a PUBLISH property: mqtt-packet does not write it.
        break;
    }
  }
  return bytes;
}

/**
 * Encoded size of a PUBLISH [MQTT-3.3]: fixed header, topic, packet
 * identifier, for MQTT 5 the properties and their length, payload.
 */
export function publishBytes(packet: DeliveredPacket, mqtt5 = false): number {
  const payload = packet.payload === undefined ? 0 : byteLength(packet.payload);
  let remaining = 2 + Buffer.byteLength(packet.topic) + (packet.qos > 0 ? 2 : 0) + payload;
  if (mqtt5) {
    const properties = publishPropertiesBytes(packet.properties);
    remaining += variableByteIntegerBytes(properties) + properties;
  }
  return 1 + variableByteIntegerBytes(remaining) + remaining;
}
