/**
 * What an exported message carries besides its topic and payload, and the
 * MQTT 5.0 metadata of a PUBLISH across sites: from the packet's properties
 * into the outbox record, from there into NATS headers, and back into the
 * properties of the PUBLISH the importing site makes.
 *
 * Carried: Payload Format Indicator, Message Expiry Interval, Content Type,
 * Response Topic, Correlation Data and User Properties, which a server must
 * pass on unaltered [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16]
 * [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20]; the expiry interval is
 * passed on less the time the message waited [MQTT-3.3.2-6]. Not carried:
 * Topic Alias (per connection, aedes resolves and strips it) and
 * Subscription Identifier (per subscriber, set by the server that delivers).
 *
 * NATS header values are single lines, trimmed by nats.js, so strings go
 * percent-encoded where they would not survive (see escape()); binary
 * Correlation Data goes in base64.
 */
import type { MsgHdrs } from '@nats-io/transport-node';
import type { PacketLike } from '../persistence/index.js';

/** Header names of an exported message, one namespace (`Edgemqtt-`); the values are ASCII or UTF-8 text. */
export const HEADER = {
  /** Site id of the site that published it: its own messages come back and are skipped there. */
  origin: 'Edgemqtt-Origin',
  /** QoS it was published with: 0, 1 or 2. */
  qos: 'Edgemqtt-Qos',
  /** Retain flag: 1 or 0. */
  retain: 'Edgemqtt-Retain',
  /** When the broker took it, ms since the epoch (at the publishing site's clock). */
  time: 'Edgemqtt-Time',
  /** Payload Format Indicator: 0 (unspecified bytes) or 1 (UTF-8) [MQTT-3.3.2-4]. */
  payloadFormat: 'Edgemqtt-Payload-Format',
  /** Message Expiry Interval as published, in seconds, counted from Edgemqtt-Time [MQTT-3.3.2-5]. */
  expiry: 'Edgemqtt-Expiry',
  /** Content Type, escaped (see escape()) [MQTT-3.3.2-20]. */
  contentType: 'Edgemqtt-Content-Type',
  /** Response Topic, escaped (see escape()) [MQTT-3.3.2-15]. */
  responseTopic: 'Edgemqtt-Response-Topic',
  /** Correlation Data, binary: standard base64 with padding [MQTT-3.3.2-16]. */
  correlationData: 'Edgemqtt-Correlation-Data',
  /** One per User Property, in order: `name=value`, both escaped, `=` escaped in the name too [MQTT-3.3.2-17/18]. */
  userProperty: 'Edgemqtt-User-Property',
} as const;

/** The MQTT 5.0 metadata of a message the bridge carries; absent fields were not in the PUBLISH. */
export interface MessageMetadata {
  payloadFormat?: 0 | 1;
  /** Message Expiry Interval in seconds, as published (> 0). */
  expiryInterval?: number;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Buffer;
  /** In the order they came; a name may repeat. */
  userProperties?: Array<[string, string]>;
}

/** PUBLISH properties as mqtt-packet (and so aedes) gives and takes them. */
export interface PublishProperties {
  payloadFormatIndicator?: boolean;
  messageExpiryInterval?: number;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Buffer;
  /** A repeated name holds its values in order, as mqtt-packet parses them. */
  userProperties?: Record<string, string | string[]>;
}

/** The metadata of a PUBLISH as the broker hands it to the store (aedes 2 keeps the parsed `properties`); undefined for none (MQTT 3.1.1). */
export function metadataOfPacket(packet: PacketLike): MessageMetadata | undefined {
  const properties = packet.properties;
  if (typeof properties !== 'object' || properties === null) return undefined;
  const p = properties as Record<string, unknown>;
  const metadata: MessageMetadata = {};
  if (p.payloadFormatIndicator === true || p.payloadFormatIndicator === 1) metadata.payloadFormat = 1;
  else if (p.payloadFormatIndicator === false || p.payloadFormatIndicator === 0) metadata.payloadFormat = 0;
  // 0 or absent: no expiry (aedes reads it the same way).
  if (typeof p.messageExpiryInterval === 'number' && p.messageExpiryInterval > 0) metadata.expiryInterval = Math.floor(p.messageExpiryInterval);
  if (typeof p.contentType === 'string') metadata.contentType = p.contentType;
  if (typeof p.responseTopic === 'string') metadata.responseTopic = p.responseTopic;
  if (p.correlationData instanceof Uint8Array) metadata.correlationData = Buffer.from(p.correlationData);
  if (typeof p.userProperties === 'object' && p.userProperties !== null) {
    const pairs: Array<[string, string]> = [];
    for (const [name, value] of Object.entries(p.userProperties as Record<string, unknown>)) {
      for (const one of Array.isArray(value) ? value : [value]) pairs.push([name, String(one)]);
    }
    if (pairs.length > 0) metadata.userProperties = pairs;
  }
  return isEmpty(metadata) ? undefined : metadata;
}

/** The properties for the PUBLISH into the local broker; `expiryInterval` replaces the published one (what is left of it). */
export function toPublishProperties(metadata: MessageMetadata, expiryInterval?: number): PublishProperties {
  const properties: PublishProperties = {};
  if (metadata.payloadFormat !== undefined) properties.payloadFormatIndicator = metadata.payloadFormat === 1;
  if (expiryInterval !== undefined) properties.messageExpiryInterval = expiryInterval;
  if (metadata.contentType !== undefined) properties.contentType = metadata.contentType;
  if (metadata.responseTopic !== undefined) properties.responseTopic = metadata.responseTopic;
  if (metadata.correlationData !== undefined) properties.correlationData = metadata.correlationData;
  if (metadata.userProperties) {
    // No prototype: a property named `__proto__` is data like any other.
    const user = Object.create(null) as Record<string, string | string[]>;
    for (const [name, value] of metadata.userProperties) {
      const had = user[name];
      user[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [had, value];
    }
    properties.userProperties = user;
  }
  return properties;
}

/**
 * What is left of a message's expiry interval at `now` (ms since the epoch),
 * in whole seconds rounded up as aedes does; 0 when it has expired; undefined
 * when it never expires. `time` is when its site took it: the site clocks
 * must be in step (NTP), as for the retained versions.
 */
export function remainingExpiry(expiryInterval: number | undefined, time: number, now: number): number | undefined {
  if (expiryInterval === undefined) return undefined;
  const leftMs = expiryInterval * 1000 - Math.max(0, now - time);
  return leftMs <= 0 ? 0 : Math.ceil(leftMs / 1000);
}

/** The headers that carry metadata (writeMetadataHeaders). */
const METADATA_HEADERS: ReadonlySet<string> = new Set([
  HEADER.payloadFormat,
  HEADER.expiry,
  HEADER.contentType,
  HEADER.responseTopic,
  HEADER.correlationData,
  HEADER.userProperty,
]);

/** Writes the metadata into an exported message's headers. */
export function writeMetadataHeaders(headers: MsgHdrs, metadata: MessageMetadata): void {
  if (metadata.payloadFormat !== undefined) headers.set(HEADER.payloadFormat, String(metadata.payloadFormat));
  if (metadata.expiryInterval !== undefined) headers.set(HEADER.expiry, String(metadata.expiryInterval));
  if (metadata.contentType !== undefined) headers.set(HEADER.contentType, escape(metadata.contentType));
  if (metadata.responseTopic !== undefined) headers.set(HEADER.responseTopic, escape(metadata.responseTopic));
  if (metadata.correlationData !== undefined) headers.set(HEADER.correlationData, metadata.correlationData.toString('base64'));
  for (const [name, value] of metadata.userProperties ?? []) {
    headers.append(HEADER.userProperty, `${escape(name, true)}=${escape(value)}`);
  }
}

/**
 * The metadata of an imported message; undefined for none (a message from
 * an MQTT 3.1.1 client, or from a site before this format). A header that
 * cannot be read (not written by this code) is left out, the rest kept.
 */
export function readMetadataHeaders(headers: MsgHdrs | undefined): MessageMetadata | undefined {
  if (!headers) return undefined;
  // Most messages (every MQTT 3.1.1 one) carry none of them: one look at the names, not six lookups.
  if (!headers.keys().some((name) => METADATA_HEADERS.has(name))) return undefined;
  const metadata: MessageMetadata = {};
  const format = headers.get(HEADER.payloadFormat);
  if (format === '0' || format === '1') metadata.payloadFormat = format === '1' ? 1 : 0;
  const expiry = Number(headers.get(HEADER.expiry) || NaN);
  if (Number.isInteger(expiry) && expiry > 0) metadata.expiryInterval = expiry;
  if (headers.has(HEADER.contentType)) {
    const contentType = unescape(headers.get(HEADER.contentType));
    if (contentType !== undefined) metadata.contentType = contentType;
  }
  if (headers.has(HEADER.responseTopic)) {
    const responseTopic = unescape(headers.get(HEADER.responseTopic));
    if (responseTopic !== undefined) metadata.responseTopic = responseTopic;
  }
  if (headers.has(HEADER.correlationData)) metadata.correlationData = Buffer.from(headers.get(HEADER.correlationData), 'base64');
  if (headers.has(HEADER.userProperty)) {
    const pairs: Array<[string, string]> = [];
    for (const line of headers.values(HEADER.userProperty)) {
      const split = line.indexOf('=');
      const name = split < 0 ? undefined : unescape(line.slice(0, split));
      const value = split < 0 ? undefined : unescape(line.slice(split + 1));
      if (name !== undefined && value !== undefined) pairs.push([name, value]);
    }
    if (pairs.length > 0) metadata.userProperties = pairs;
  }
  return isEmpty(metadata) ? undefined : metadata;
}

/**
 * The metadata as the outbox stores it: a fixed array (fields only ever
 * appended; null = absent), compact and free of field names.
 */
export function packMetadata(metadata: MessageMetadata): unknown[] {
  return [
    metadata.payloadFormat ?? null,
    metadata.expiryInterval ?? null,
    metadata.contentType ?? null,
    metadata.responseTopic ?? null,
    metadata.correlationData ?? null,
    metadata.userProperties ? metadata.userProperties.flat() : null,
  ];
}

export function unpackMetadata(value: unknown): MessageMetadata | undefined {
  if (!Array.isArray(value)) return undefined;
  const [payloadFormat, expiryInterval, contentType, responseTopic, correlationData, userProperties] = value as unknown[];
  const metadata: MessageMetadata = {};
  if (payloadFormat === 0 || payloadFormat === 1) metadata.payloadFormat = payloadFormat;
  if (typeof expiryInterval === 'number') metadata.expiryInterval = expiryInterval;
  if (typeof contentType === 'string') metadata.contentType = contentType;
  if (typeof responseTopic === 'string') metadata.responseTopic = responseTopic;
  if (correlationData instanceof Uint8Array) metadata.correlationData = Buffer.from(correlationData.buffer, correlationData.byteOffset, correlationData.byteLength);
  if (Array.isArray(userProperties)) {
    const pairs: Array<[string, string]> = [];
    for (let i = 0; i + 1 < userProperties.length; i += 2) pairs.push([String(userProperties[i]), String(userProperties[i + 1])]);
    if (pairs.length > 0) metadata.userProperties = pairs;
  }
  return isEmpty(metadata) ? undefined : metadata;
}

function isEmpty(metadata: MessageMetadata): boolean {
  return Object.keys(metadata).length === 0;
}

/**
 * Percent-encodes (RFC 3986, UTF-8) what a header value would not carry
 * unchanged: `%` itself, whitespace (nats.js trims values) and control
 * characters (CR and LF end a header line); in a user property's name `=`
 * too, the separator. Everything else, UTF-8 included, stays as it is, so
 * `application/json` reads as itself; any URL decoder reverses it.
 */
export function escape(text: string, name = false): string {
  return text.replace(name ? /[%=\p{White_Space}\p{Cc}]/gu : /[%\p{White_Space}\p{Cc}]/gu, (c) => encodeURIComponent(c));
}

/** escape() reversed; undefined for a malformed escape. */
export function unescape(text: string): string | undefined {
  try {
    return decodeURIComponent(text);
  } catch {
    return undefined;
  }
}
