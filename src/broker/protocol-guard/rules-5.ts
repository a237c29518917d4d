/**
 * The MQTT 5.0 rules for the packets a client sends, judged on the collected
 * bytes of one packet (the framing and PUBLISH's topic are guard.ts's). What
 * a rule needs from earlier packets — the CONNECT's Session Expiry Interval
 * and Authentication Method — is kept in a Session5.
 */
import { CLAUSES_5 } from './clauses.js';
import { readConnectFlags } from './connect-flags.js';
import type { FieldReader } from './field-reader.js';
import { AUTH, CONNECT, DISCONNECT, SUBSCRIBE, UNSUBSCRIBE } from './packet-types.js';
import { checkProperties, WILL, type PropertyFacts } from './properties.js';
import { isSharedFilter, sharedFilterProblem, topicFilterProblem, utf8StringProblem } from './strings.js';
import { malformedAs, protocol, within, type TopicChecks, type Violation } from './verdict.js';

/** What the rules remember of the CONNECT. */
export interface Session5 {
  /** The CONNECT's Session Expiry Interval was 0 (or absent). */
  sessionExpiryZero: boolean;
  /** The CONNECT had an Authentication Method (enhanced authentication, 4.12). */
  authenticationMethod: boolean;
}

const malformed = (reason: string): Violation => malformedAs(CLAUSES_5.malformed, `malformed packet: ${reason}`);

/** The rest of a level-5 CONNECT, from its Connect Flags on (3.1.2.3 onwards). */
export function checkConnect5(reader: FieldReader, facts: PropertyFacts, session: Session5, topics: TopicChecks): Violation | null {
  const flags = readConnectFlags(reader);
  if (flags === null) return malformed('CONNECT too short for its flags and keep-alive');
  const { will, willQoS, willRetain, password, username } = flags;
  // Unlike 3.1.1 [MQTT-3.1.2-22], MQTT 5 allows a password without a user name (3.1.2.9).
  if (flags.reserved) return malformedAs('MQTT-3.1.2-3', 'CONNECT reserved flag set');
  if (!will && willQoS !== 0) return malformedAs('MQTT-3.1.2-11', 'Will QoS set without the Will Flag');
  if (will && willQoS === 3) return malformedAs('MQTT-3.1.2-12', 'Will QoS 3');
  if (!will && willRetain) return malformedAs('MQTT-3.1.2-13', 'Will Retain set without the Will Flag');

  const propertyProblem = checkProperties(reader, CONNECT, facts);
  if (propertyProblem) return propertyProblem;
  if (facts.authenticationData && !facts.authenticationMethod) {
    return protocol('MQTT-3.1.2.11.10', 'Authentication Data without an Authentication Method');
  }
  session.sessionExpiryZero = facts.sessionExpiryInterval === 0;
  session.authenticationMethod = facts.authenticationMethod;

  // Payload: Client Identifier, Will Properties, Will Topic, Will Payload, User Name, Password [MQTT-3.1.3-1].
  const clientId = reader.string();
  if (clientId === null) return malformed('CONNECT too short for its client identifier');
  const idProblem = utf8StringProblem(clientId, CLAUSES_5);
  if (idProblem) return within('client identifier', idProblem);
  if (will) {
    const willProblem = checkProperties(reader, WILL, facts);
    if (willProblem) return willProblem;
    const topic = reader.string();
    if (topic === null || !reader.skipString()) return malformed('CONNECT too short for its will');
    const problem = topics.topicLength(topic.length) ?? topics.topicName(topic);
    if (problem) return within('will topic', problem);
  }
  if (username) {
    const user = reader.string();
    if (user === null) return malformed('CONNECT too short for its user name');
    const userProblem = utf8StringProblem(user, CLAUSES_5);
    if (userProblem) return within('user name', userProblem);
  }
  if (password && !reader.skipString()) return malformed('CONNECT too short for its password');
  if (!reader.done) return malformed(`${reader.left} unexpected bytes at the end of CONNECT`);
  return null;
}

// Reason Codes a client may send (Tables 3-4 to 3-7, 3-10, 3-13).
const PUBACK_PUBREC_CODES = new Set([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]);
const PUBREL_PUBCOMP_CODES = new Set([0x00, 0x92]);
const DISCONNECT_CODES = new Set([0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99]);
/** 0x00 Success is the server's alone; a client continues (0x18) or re-authenticates (0x19). */
const CLIENT_AUTH_CODES = new Set([0x18, 0x19]);

const ACKS: Record<number, { name: string; rule: string; codes: Set<number> }> = {
  4: { name: 'PUBACK', rule: 'MQTT-3.4.2-1', codes: PUBACK_PUBREC_CODES },
  5: { name: 'PUBREC', rule: 'MQTT-3.5.2-1', codes: PUBACK_PUBREC_CODES },
  6: { name: 'PUBREL', rule: 'MQTT-3.6.2-1', codes: PUBREL_PUBCOMP_CODES },
  7: { name: 'PUBCOMP', rule: 'MQTT-3.7.2-1', codes: PUBREL_PUBCOMP_CODES },
};

/**
 * A PUBACK, PUBREC, PUBREL or PUBCOMP longer than its short form (Remaining
 * Length 2, Reason Code 0x00 implied): a Reason Code valid for the packet,
 * then, from Remaining Length 4, properties (3.4.2.1 and the like).
 */
export function checkAck5(type: number, reader: FieldReader, facts: PropertyFacts): Violation | null {
  const ack = ACKS[type] as { name: string; rule: string; codes: Set<number> };
  reader.uint16();
  const code = reader.byte() as number;
  if (!ack.codes.has(code)) return protocol(ack.rule, `${ack.name} with Reason Code 0x${code.toString(16)}`);
  if (reader.done) return null;
  const problem = checkProperties(reader, type, facts);
  if (problem) return problem;
  return reader.done ? null : malformed(`${reader.left} unexpected bytes at the end of ${ack.name}`);
}

/**
 * What SUBSCRIBE and UNSUBSCRIBE begin with: a non-zero packet identifier
 * [MQTT-2.2.1-3], properties, and at least one topic filter after them —
 * [MQTT-3.8.3-2] for SUBSCRIBE, [MQTT-3.10.3-2] for UNSUBSCRIBE.
 */
function checkFilterListHead(reader: FieldReader, facts: PropertyFacts, type: typeof SUBSCRIBE | typeof UNSUBSCRIBE): Violation | null {
  const name = type === SUBSCRIBE ? 'SUBSCRIBE' : 'UNSUBSCRIBE';
  const packetId = reader.uint16();
  if (packetId === null) return malformed(`${name} too short for its packet identifier`);
  if (packetId === 0) return protocol(CLAUSES_5.packetId, `${name} with packet identifier 0`);
  const propertyProblem = checkProperties(reader, type, facts);
  if (propertyProblem) return propertyProblem;
  if (!reader.done) return null;
  return type === SUBSCRIBE
    ? protocol(CLAUSES_5.noFilter, 'SUBSCRIBE without a topic filter')
    : protocol('MQTT-3.10.3-2', 'UNSUBSCRIBE without a topic filter');
}

/** SUBSCRIBE (3.8): packet identifier, properties, then topic filters with their Subscription Options. */
export function checkSubscribe5(reader: FieldReader, facts: PropertyFacts): Violation | null {
  const headProblem = checkFilterListHead(reader, facts, SUBSCRIBE);
  if (headProblem) return headProblem;
  while (!reader.done) {
    const filter = reader.string();
    if (filter === null) return malformed('SUBSCRIBE topic filter runs past the packet');
    const shared = isSharedFilter(filter);
    const problem = shared ? sharedFilterProblem(filter, CLAUSES_5) : topicFilterProblem(filter, CLAUSES_5);
    if (problem) return within('topic filter', problem);
    const options = reader.byte();
    if (options === null) return malformed('SUBSCRIBE topic filter without its Subscription Options');
    // Subscription Options (3.8.3.1): QoS bits 0-1, No Local 2, Retain As Published 3, Retain Handling 4-5.
    if (options & 0xc0) return malformedAs('MQTT-3.8.3-5', `Subscription Options 0x${options.toString(16)} with reserved bits set`);
    if ((options & 0x03) === 3) return protocol('MQTT-3.8.3.1', 'SUBSCRIBE with Maximum QoS 3');
    if (((options >> 4) & 0x03) === 3) return protocol('MQTT-3.8.3.1', 'SUBSCRIBE with Retain Handling 3');
    if (shared && options & 0x04) return protocol('MQTT-3.8.3-4', 'No Local on a Shared Subscription');
  }
  return null;
}

/** UNSUBSCRIBE (3.10): packet identifier, properties, at least one topic filter [MQTT-3.10.3-2]. */
export function checkUnsubscribe5(reader: FieldReader, facts: PropertyFacts): Violation | null {
  const headProblem = checkFilterListHead(reader, facts, UNSUBSCRIBE);
  if (headProblem) return headProblem;
  while (!reader.done) {
    const filter = reader.string();
    if (filter === null) return malformed('UNSUBSCRIBE topic filter runs past the packet');
    const problem = isSharedFilter(filter) ? sharedFilterProblem(filter, CLAUSES_5) : topicFilterProblem(filter, CLAUSES_5);
    if (problem) return within('topic filter', problem);
  }
  return null;
}

/**
 * A DISCONNECT with a body (Remaining Length 0 means Reason Code 0x00): a
 * Reason Code a client may send [MQTT-3.14.2-1], then (from Remaining Length
 * 2) properties. A non-zero Session Expiry Interval after a CONNECT that
 * gave 0 is a Protocol Error (3.14.2.2.2).
 */
export function checkDisconnect5(reader: FieldReader, facts: PropertyFacts, session: Session5): Violation | null {
  const code = reader.byte() as number;
  if (!DISCONNECT_CODES.has(code)) return protocol('MQTT-3.14.2-1', `DISCONNECT with Reason Code 0x${code.toString(16)}`);
  if (reader.done) return null;
  const problem = checkProperties(reader, DISCONNECT, facts);
  if (problem) return problem;
  if (facts.sessionExpiryInterval !== 0 && session.sessionExpiryZero) {
    return protocol('MQTT-3.14.2.2.2', 'a non-zero Session Expiry Interval on DISCONNECT after a CONNECT with 0');
  }
  return reader.done ? null : malformed(`${reader.left} unexpected bytes at the end of DISCONNECT`);
}

/**
 * AUTH (3.15): only after a CONNECT with an Authentication Method
 * [MQTT-4.12.0-7]; from a client, Reason Code 0x18 or 0x19 [MQTT-3.15.2-1]
 * (so never the short form, which means 0x00) and an Authentication Method
 * (3.15.2.2.2).
 */
export function checkAuth5(reader: FieldReader, facts: PropertyFacts, session: Session5): Violation | null {
  if (!session.authenticationMethod) return protocol('MQTT-4.12.0-7', 'AUTH without an Authentication Method in CONNECT');
  const code = reader.byte();
  if (code === null || !CLIENT_AUTH_CODES.has(code)) {
    return protocol('MQTT-3.15.2-1', `AUTH from a client with Reason Code 0x${(code ?? 0).toString(16)}`);
  }
  if (reader.done) return protocol('MQTT-3.15.2.2.2', 'AUTH without an Authentication Method');
  const problem = checkProperties(reader, AUTH, facts);
  if (problem) return problem;
  if (!facts.authenticationMethod) return protocol('MQTT-3.15.2.2.2', 'AUTH without an Authentication Method');
  return reader.done ? null : malformed(`${reader.left} unexpected bytes at the end of AUTH`);
}
