/**
 * MQTT 3.1.1 and 5.0 packets built byte by byte, for tests that need what mqtt.js
 * and mqtt-packet refuse to produce (invalid UTF-8, packet id 0, Will QoS 3).
 */

export const u16 = (value: number): Buffer => Buffer.from([(value >> 8) & 0xff, value & 0xff]);

/** A length-prefixed field [MQTT-1.5.3]: UTF-8 for a string, raw bytes as given. */
export function field(value: string | Uint8Array): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value);
  return Buffer.concat([u16(bytes.length), bytes]);
}

/** Remaining Length encoding [MQTT-2.2.3]. */
export function remainingLength(length: number): Buffer {
  const bytes: number[] = [];
  do {
    let byte = length % 128;
    length = Math.floor(length / 128);
    if (length > 0) byte |= 0x80;
    bytes.push(byte);
  } while (length > 0);
  return Buffer.from(bytes);
}

/** A packet from its first byte (type and flags) and its body parts. */
export function packet(first: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([first]), remainingLength(body.length), body]);
}

export interface ConnectFields {
  clientId?: string | Uint8Array;
  /** Connect flags byte; clean session (0x02) by default. Will, user name and password bits are added from the fields below. */
  flags?: number;
  keepalive?: number;
  will?: { topic: string | Uint8Array; payload?: string; qos?: number; retain?: boolean };
  username?: string | Uint8Array;
  password?: string | Uint8Array;
  protocolName?: string;
  protocolLevel?: number;
}

export function connect(fields: ConnectFields = {}): Buffer {
  return connectOf(fields, fields.protocolLevel ?? 4, 'raw');
}

/**
 * A CONNECT of either version. MQTT 5 (`v5`) adds the CONNECT's properties
 * after the Keep Alive (3.1.2.11) and the Will Properties before the Will
 * Topic (3.1.3.2); the rest is laid out alike.
 */
function connectOf(fields: ConnectFields, level: number, clientId: string, v5?: { properties: Buffer[]; willProperties: Buffer[] }): Buffer {
  let flags = fields.flags ?? 0x02;
  const payload: Buffer[] = [field(fields.clientId ?? clientId)];
  if (fields.will) {
    flags |= 0x04 | ((fields.will.qos ?? 0) << 3) | (fields.will.retain ? 0x20 : 0);
    if (v5) payload.push(properties(...v5.willProperties));
    payload.push(field(fields.will.topic), field(fields.will.payload ?? 'gone'));
  }
  if (fields.username !== undefined) {
    flags |= 0x80;
    payload.push(field(fields.username));
  }
  if (fields.password !== undefined) {
    flags |= 0x40;
    payload.push(field(fields.password));
  }
  return packet(
    0x10,
    field(fields.protocolName ?? 'MQTT'),
    Buffer.from([level, flags]),
    u16(fields.keepalive ?? 60),
    ...(v5 ? [properties(...v5.properties)] : []),
    ...payload,
  );
}

export function publish(topic: string | Uint8Array, options: { qos?: number; id?: number; payload?: string | Uint8Array; retain?: boolean } = {}): Buffer {
  const qos = options.qos ?? 0;
  const payload = options.payload ?? 'x';
  return packet(
    0x30 | (qos << 1) | (options.retain ? 1 : 0),
    field(topic),
    qos > 0 ? u16(options.id ?? 1) : Buffer.alloc(0),
    Buffer.from(payload),
  );
}

export function subscribe(id: number, filters: (string | Uint8Array)[], qos = 0): Buffer {
  return packet(0x82, u16(id), ...filters.map((filter) => Buffer.concat([field(filter), Buffer.from([qos])])));
}

export function unsubscribe(id: number, filters: (string | Uint8Array)[]): Buffer {
  return packet(0xa2, u16(id), ...filters.map((filter) => field(filter)));
}

export const puback = (id: number): Buffer => packet(0x40, u16(id));
export const pubcomp = (id: number): Buffer => packet(0x70, u16(id));
export const pubrec = (id: number): Buffer => packet(0x50, u16(id));
export const pubrel = (id: number): Buffer => packet(0x62, u16(id));
export const pingreq = (): Buffer => Buffer.from([0xc0, 0x00]);
export const disconnect = (): Buffer => Buffer.from([0xe0, 0x00]);

// ---- MQTT 5.0 (protocol level 5): properties and the packets that carry them.

/** A Variable Byte Integer (MQTT 5, 1.5.5) in the fewest bytes. */
export const varint = remainingLength;

/** One property, identifier and value as raw bytes (Table 2-4 gives each one's data type). */
export const property = {
  byte: (id: number, value: number): Buffer => Buffer.from([id, value]),
  u16: (id: number, value: number): Buffer => Buffer.concat([Buffer.from([id]), u16(value)]),
  u32: (id: number, value: number): Buffer => {
    const bytes = Buffer.alloc(5);
    bytes[0] = id;
    bytes.writeUInt32BE(value, 1);
    return bytes;
  },
  varint: (id: number, value: number): Buffer => Buffer.concat([Buffer.from([id]), varint(value)]),
  string: (id: number, value: string | Uint8Array): Buffer => Buffer.concat([Buffer.from([id]), field(value)]),
  pair: (name: string | Uint8Array, value: string | Uint8Array): Buffer => Buffer.concat([Buffer.from([0x26]), field(name), field(value)]),
};

/** Property identifiers used by the tests (Table 2-4). */
export const P = {
  payloadFormatIndicator: 0x01,
  messageExpiryInterval: 0x02,
  contentType: 0x03,
  responseTopic: 0x08,
  correlationData: 0x09,
  subscriptionIdentifier: 0x0b,
  sessionExpiryInterval: 0x11,
  authenticationMethod: 0x15,
  authenticationData: 0x16,
  requestProblemInformation: 0x17,
  willDelayInterval: 0x18,
  requestResponseInformation: 0x19,
  reasonString: 0x1f,
  receiveMaximum: 0x21,
  topicAliasMaximum: 0x22,
  topicAlias: 0x23,
  maximumPacketSize: 0x27,
} as const;

/** A property list: its Property Length, then the properties. */
export function properties(...entries: Buffer[]): Buffer {
  const body = Buffer.concat(entries);
  return Buffer.concat([varint(body.length), body]);
}

export interface Connect5Fields extends Omit<ConnectFields, 'protocolLevel'> {
  /** Properties, without their length (properties() adds it). */
  properties?: Buffer[];
  willProperties?: Buffer[];
}

export function connect5(fields: Connect5Fields = {}): Buffer {
  return connectOf(fields, 5, 'raw5', { properties: fields.properties ?? [], willProperties: fields.willProperties ?? [] });
}

export function publish5(
  topic: string | Uint8Array,
  options: { qos?: number; id?: number; payload?: string | Uint8Array; retain?: boolean; dup?: boolean; properties?: Buffer[] } = {},
): Buffer {
  const qos = options.qos ?? 0;
  return packet(
    0x30 | (options.dup ? 0x08 : 0) | (qos << 1) | (options.retain ? 1 : 0),
    field(topic),
    qos > 0 ? u16(options.id ?? 1) : Buffer.alloc(0),
    properties(...(options.properties ?? [])),
    Buffer.from(options.payload ?? 'x'),
  );
}

/**
 * PUBACK (0x40), PUBREC (0x50), PUBREL (0x62) or PUBCOMP (0x70) by its first
 * byte: the short form without a reason code; with one, and with properties.
 */
export function ack5(first: number, id: number, reasonCode?: number, props?: Buffer[]): Buffer {
  return packet(first, u16(id), ...reasonAndProperties(reasonCode, props));
}

/** The optional tail of an MQTT 5 acknowledgement, DISCONNECT or AUTH: a Reason Code, then properties. */
function reasonAndProperties(reasonCode?: number, props?: Buffer[]): Buffer[] {
  const parts: Buffer[] = [];
  if (reasonCode !== undefined) parts.push(Buffer.from([reasonCode]));
  if (props !== undefined) parts.push(properties(...props));
  return parts;
}

/** SUBSCRIBE: each filter with its Subscription Options byte (QoS, No Local 0x04, RAP 0x08, Retain Handling << 4). */
export function subscribe5(id: number, filters: { filter: string | Uint8Array; options?: number }[], props: Buffer[] = []): Buffer {
  return packet(0x82, u16(id), properties(...props), ...filters.map(({ filter, options }) => Buffer.concat([field(filter), Buffer.from([options ?? 0])])));
}

export function unsubscribe5(id: number, filters: (string | Uint8Array)[], props: Buffer[] = []): Buffer {
  return packet(0xa2, u16(id), properties(...props), ...filters.map((filter) => field(filter)));
}

/** DISCONNECT: no body (Reason Code 0x00), a Reason Code alone, or with properties. */
export function disconnect5(reasonCode?: number, props?: Buffer[]): Buffer {
  return packet(0xe0, ...reasonAndProperties(reasonCode, props));
}

/** AUTH (type 15): a Reason Code and properties, or no body at all. */
export function auth5(reasonCode?: number, props?: Buffer[]): Buffer {
  return packet(0xf0, ...reasonAndProperties(reasonCode, props));
}
