/**
 * MQTT 5.0 properties (2.2.2): which may appear in which packet (Table 2-4),
 * at most once unless they may repeat, with values of their data type and
 * in their range. The checks read the collected bytes in place; what later
 * rules need of them (a Topic Alias, the Session Expiry Interval, an
 * Authentication Method) is noted in a PropertyFacts the guard reuses.
 */
import { PUBLISH as PUBLISH_PACKET } from './packet-types.js';
import { CLAUSES_5 } from './clauses.js';
import { VARINT_NOT_MINIMAL, VARINT_TRUNCATED, type FieldReader } from './field-reader.js';
import { hasWildcard, utf8StringProblem } from './strings.js';
import { malformedAs, protocol, within, type Violation } from './verdict.js';

/** The Will Properties of a CONNECT (3.1.3.2), an owner of their own in Table 2-4. */
export const WILL = 16;

const BYTE = 0;
const TWO_BYTE = 1;
const FOUR_BYTE = 2;
const VARIABLE = 3;
const UTF8 = 4;
const BINARY = 5;
const PAIR = 6;

// Owners as bits: 1 << control packet type, and 1 << WILL.
const CONNECT = 1 << 1;
const CONNACK = 1 << 2;
const PUBLISH = 1 << 3;
const ACKS = (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7);
const SUBSCRIBE = 1 << 8;
const SUBACK = 1 << 9;
const UNSUBSCRIBE = 1 << 10;
const UNSUBACK = 1 << 11;
const DISCONNECT = 1 << 14;
const AUTH = 1 << 15;
const WILL_PROPERTIES = 1 << WILL;

const PAYLOAD_FORMAT_INDICATOR = 0x01;
const SUBSCRIPTION_IDENTIFIER = 0x0b;
const SESSION_EXPIRY_INTERVAL = 0x11;
const AUTHENTICATION_METHOD = 0x15;
const AUTHENTICATION_DATA = 0x16;
const TOPIC_ALIAS = 0x23;
const USER_PROPERTY = 0x26;

interface Definition {
  name: string;
  type: number;
  owners: number;
}

/** Table 2-4, by identifier. */
const DEFINITIONS: (Definition | undefined)[] = [];
const define = (id: number, name: string, type: number, owners: number) => {
  DEFINITIONS[id] = { name, type, owners };
};
define(0x01, 'Payload Format Indicator', BYTE, PUBLISH | WILL_PROPERTIES);
define(0x02, 'Message Expiry Interval', FOUR_BYTE, PUBLISH | WILL_PROPERTIES);
define(0x03, 'Content Type', UTF8, PUBLISH | WILL_PROPERTIES);
define(0x08, 'Response Topic', UTF8, PUBLISH | WILL_PROPERTIES);
define(0x09, 'Correlation Data', BINARY, PUBLISH | WILL_PROPERTIES);
define(0x0b, 'Subscription Identifier', VARIABLE, PUBLISH | SUBSCRIBE);
define(0x11, 'Session Expiry Interval', FOUR_BYTE, CONNECT | CONNACK | DISCONNECT);
define(0x12, 'Assigned Client Identifier', UTF8, CONNACK);
define(0x13, 'Server Keep Alive', TWO_BYTE, CONNACK);
define(0x15, 'Authentication Method', UTF8, CONNECT | CONNACK | AUTH);
define(0x16, 'Authentication Data', BINARY, CONNECT | CONNACK | AUTH);
define(0x17, 'Request Problem Information', BYTE, CONNECT);
define(0x18, 'Will Delay Interval', FOUR_BYTE, WILL_PROPERTIES);
define(0x19, 'Request Response Information', BYTE, CONNECT);
define(0x1a, 'Response Information', UTF8, CONNACK);
define(0x1c, 'Server Reference', UTF8, CONNACK | DISCONNECT);
define(0x1f, 'Reason String', UTF8, CONNACK | ACKS | SUBACK | UNSUBACK | DISCONNECT | AUTH);
define(0x21, 'Receive Maximum', TWO_BYTE, CONNECT | CONNACK);
define(0x22, 'Topic Alias Maximum', TWO_BYTE, CONNECT | CONNACK);
define(0x23, 'Topic Alias', TWO_BYTE, PUBLISH);
define(0x24, 'Maximum QoS', BYTE, CONNACK);
define(0x25, 'Retain Available', BYTE, CONNACK);
define(0x26, 'User Property', PAIR, ~0);
define(0x27, 'Maximum Packet Size', FOUR_BYTE, CONNECT | CONNACK);
define(0x28, 'Wildcard Subscription Available', BYTE, CONNACK);
define(0x29, 'Subscription Identifier Available', BYTE, CONNACK);
define(0x2a, 'Shared Subscription Available', BYTE, CONNACK);

const OWNER_NAMES: Record<number, string> = {
  1: 'CONNECT', 3: 'PUBLISH', 4: 'PUBACK', 5: 'PUBREC', 6: 'PUBREL', 7: 'PUBCOMP', 8: 'SUBSCRIBE',
  10: 'UNSUBSCRIBE', 14: 'DISCONNECT', 15: 'AUTH', [WILL]: 'the Will Properties',
};

const malformed = (reason: string): Violation => malformedAs(CLAUSES_5.malformed, `malformed packet: ${reason}`);

/** What the rules after the properties need to know of them; one per guard, reset per property list. */
export class PropertyFacts {
  topicAlias = false;
  sessionExpiryInterval = 0;
  authenticationMethod = false;
  authenticationData = false;
  readonly #seen = new Uint8Array(DEFINITIONS.length);

  reset(): void {
    this.topicAlias = false;
    this.sessionExpiryInterval = 0;
    this.authenticationMethod = false;
    this.authenticationData = false;
    this.#seen.fill(0);
  }

  /** Marks `id` seen; false when it was already. */
  see(id: number): boolean {
    if (this.#seen[id]) return false;
    this.#seen[id] = 1;
    return true;
  }
}

/**
 * Reads a Property Length and the properties it covers, from where `reader`
 * stands, for a packet of type `owner` (or WILL). The Property Length must be
 * a well-formed Variable Byte Integer [MQTT-1.5.5-1] within the packet; an
 * identifier not valid for the packet, or a value not of its data type, is a
 * Malformed Packet; a property given twice that may appear once is a Protocol
 * Error (2.2.2.2). Leaves the reader after the properties.
 */
export function checkProperties(reader: FieldReader, owner: number, facts: PropertyFacts): Violation | null {
  const ownerName = OWNER_NAMES[owner] ?? String(owner);
  const length = reader.varint();
  if (length === VARINT_NOT_MINIMAL) return malformedAs('MQTT-1.5.5-1', `Property Length of ${ownerName} not in the fewest bytes`);
  if (length === VARINT_TRUNCATED) return malformed(`Property Length of ${ownerName} runs past the packet or past four bytes`);
  if (length > reader.left) return malformed(`Property Length ${length} of ${ownerName} runs past the packet`);
  const outer = reader.narrow(reader.position + length);
  const problem = checkPropertyList(reader, owner, facts);
  reader.narrow(outer);
  return problem;
}

/** The properties from where `reader` stands to its end (the Property Length already read). */
export function checkPropertyList(reader: FieldReader, owner: number, facts: PropertyFacts): Violation | null {
  facts.reset();
  const ownerName = OWNER_NAMES[owner] ?? String(owner);
  while (!reader.done) {
    const id = reader.byte() as number;
    const definition = DEFINITIONS[id];
    if (!definition) return malformedAs('MQTT-2.2.2.2', `unknown property identifier 0x${id.toString(16)} in ${ownerName}`);
    const { name } = definition;
    if ((definition.owners & (1 << owner)) === 0) return malformedAs('MQTT-2.2.2.2', `${name} is not a property of ${ownerName}`);
    if (id !== USER_PROPERTY && !facts.see(id)) return protocol('MQTT-2.2.2.2', `${name} more than once in ${ownerName}`);
    if (id === SUBSCRIPTION_IDENTIFIER && owner === PUBLISH_PACKET) {
      return protocol('MQTT-3.3.4-6', 'a Subscription Identifier in a PUBLISH from a client');
    }
    const problem = checkValue(reader, id, definition, owner, facts);
    if (problem) return problem;
  }
  return null;
}

function checkValue(reader: FieldReader, id: number, definition: Definition, owner: number, facts: PropertyFacts): Violation | null {
  const { name } = definition;
  const short = () => malformed(`${name} runs past the properties`);
  switch (definition.type) {
    case BYTE: {
      const value = reader.byte();
      if (value === null) return short();
      if (value > 1) {
        // 0 or 1 only: 3.3.2.3.2 / 3.1.3.2.3 (Payload Format Indicator), 3.1.2.11.6, 3.1.2.11.7.
        const section = id === PAYLOAD_FORMAT_INDICATOR ? (owner === WILL ? 'MQTT-3.1.3.2.3' : 'MQTT-3.3.2.3.2') : id === 0x19 ? 'MQTT-3.1.2.11.6' : 'MQTT-3.1.2.11.7';
        return protocol(section, `${name} ${value}, not 0 or 1`);
      }
      return null;
    }
    case TWO_BYTE: {
      const value = reader.uint16();
      if (value === null) return short();
      if (id === TOPIC_ALIAS) {
        if (value === 0) return protocol('MQTT-3.3.2-8', 'Topic Alias 0');
        facts.topicAlias = true;
      } else if (id === 0x21 && value === 0) {
        return protocol('MQTT-3.1.2.11.3', 'Receive Maximum 0');
      }
      return null;
    }
    case FOUR_BYTE: {
      const value = reader.uint32();
      if (value === null) return short();
      if (id === SESSION_EXPIRY_INTERVAL) facts.sessionExpiryInterval = value;
      else if (id === 0x27 && value === 0) return protocol('MQTT-3.1.2.11.4', 'Maximum Packet Size 0');
      return null;
    }
    case VARIABLE: {
      // Only the Subscription Identifier: 1..268,435,455 (3.8.2.1.2).
      const value = reader.varint();
      if (value === VARINT_NOT_MINIMAL) return malformedAs('MQTT-1.5.5-1', `${name} not in the fewest bytes`);
      if (value === VARINT_TRUNCATED) return short();
      if (value === 0) return protocol('MQTT-3.8.2.1.2', 'Subscription Identifier 0');
      return null;
    }
    case BINARY:
      if (!reader.skipString()) return short();
      if (id === AUTHENTICATION_DATA) facts.authenticationData = true;
      return null;
    case UTF8: {
      const value = reader.string();
      if (value === null) return short();
      const problem = utf8StringProblem(value, CLAUSES_5);
      if (problem) return within(name, problem);
      if (id === AUTHENTICATION_METHOD) facts.authenticationMethod = true;
      if (id === 0x08) {
        // The Response Topic is a Topic Name (3.3.2.3.5, 3.1.3.2.6).
        if (value.length === 0) return protocol(CLAUSES_5.empty, 'empty Response Topic');
        if (hasWildcard(value)) return protocol('MQTT-3.3.2-14', 'wildcard in a Response Topic');
      }
      return null;
    }
    default: {
      // User Property: a UTF-8 string pair, both strings valid [MQTT-1.5.7-1].
      const key = reader.string();
      if (key === null) return short();
      const keyProblem = utf8StringProblem(key, CLAUSES_5);
      if (keyProblem) return within('User Property name', keyProblem);
      const value = reader.string();
      if (value === null) return short();
      const valueProblem = utf8StringProblem(value, CLAUSES_5);
      return valueProblem ? within('User Property value', valueProblem) : null;
    }
  }
}
