/**
 * MQTT 3.1.1 packets built byte by byte, for tests that need what mqtt.js
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
  let flags = fields.flags ?? 0x02;
  const payload: Buffer[] = [field(fields.clientId ?? 'raw')];
  if (fields.will) {
    flags |= 0x04 | ((fields.will.qos ?? 0) << 3) | (fields.will.retain ? 0x20 : 0);
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
    Buffer.from([fields.protocolLevel ?? 4, flags]),
    u16(fields.keepalive ?? 60),
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
