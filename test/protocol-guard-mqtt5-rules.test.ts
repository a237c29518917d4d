/**
 * One case per MQTT 5.0 rule the protocol guard enforces (mqtt5 option):
 * the bad packet is refused with its clause and the Reason Code a server
 * sends for it (0x81 Malformed Packet, 0x82 Protocol Error), and its valid
 * twin, the nearest packet that keeps the rule, passes.
 */
import t from 'tap';
import { ProtocolGuard } from '../src/broker/protocol-guard/index.js';
import { connect5, publish5, ack5, subscribe5, unsubscribe5, disconnect5, auth5, pingreq, property, properties, P, packet, u16, field } from './helpers/packets.js';

const limits5 = { maxPacketBytes: 1_048_576, maxTopicLengthBytes: 0, maxTopicLevels: 100, mqtt5: true };

const MALFORMED = 0x81;
const PROTOCOL = 0x82;
const BAD_UTF8 = Buffer.from([0x61, 0xed, 0xa0, 0x80]);
const hello5 = connect5();

interface Rule5 {
  name: string;
  rule: string;
  reasonCode: number;
  /** Sent after `before` (a plain level-5 CONNECT unless given; nothing when the packet is the CONNECT). */
  before?: Buffer | null;
  bad: Buffer;
  good: Buffer;
}

const rules5: Rule5[] = [
  // Properties in general (2.2.2).
  {
    name: 'Property Length running past the packet',
    rule: 'MQTT-4.13.1-1', reasonCode: MALFORMED, before: null,
    bad: packet(0x10, field('MQTT'), Buffer.from([5, 0x02]), u16(60), Buffer.from([0x7f]), field('x')),
    good: connect5({ clientId: 'x' }),
  },
  {
    name: 'Property Length not in the fewest bytes',
    rule: 'MQTT-1.5.5-1', reasonCode: MALFORMED,
    bad: packet(0x30, field('a'), Buffer.from([0x80, 0x00]), Buffer.from('x')),
    good: packet(0x30, field('a'), Buffer.from([0x00]), Buffer.from('x')),
  },
  {
    name: 'Remaining Length not in the fewest bytes',
    rule: 'MQTT-1.5.5-1', reasonCode: MALFORMED,
    bad: Buffer.from([0xc0, 0x80, 0x00]),
    good: pingreq(),
  },
  {
    name: 'an unknown property identifier',
    rule: 'MQTT-2.2.2.2', reasonCode: MALFORMED,
    bad: publish5('a', { properties: [property.byte(0x05, 0)] }),
    good: publish5('a', { properties: [property.byte(P.payloadFormatIndicator, 0)] }),
  },
  {
    name: 'a property not valid for the packet (Topic Alias in CONNECT)',
    rule: 'MQTT-2.2.2.2', reasonCode: MALFORMED, before: null,
    bad: connect5({ properties: [property.u16(P.topicAlias, 1)] }),
    good: connect5({ properties: [property.u16(P.topicAliasMaximum, 1)] }),
  },
  {
    name: 'a property not valid for the packet (Topic Alias in the Will Properties)',
    rule: 'MQTT-2.2.2.2', reasonCode: MALFORMED, before: null,
    bad: connect5({ will: { topic: 'w' }, willProperties: [property.u16(P.topicAlias, 1)] }),
    good: connect5({ will: { topic: 'w' }, willProperties: [property.u32(P.willDelayInterval, 1)] }),
  },
  {
    name: 'a property given twice that may appear once (Session Expiry Interval)',
    rule: 'MQTT-2.2.2.2', reasonCode: PROTOCOL, before: null,
    bad: connect5({ properties: [property.u32(P.sessionExpiryInterval, 1), property.u32(P.sessionExpiryInterval, 2)] }),
    good: connect5({ properties: [property.u32(P.sessionExpiryInterval, 1), property.pair('a', '1'), property.pair('a', '2')] }),
  },
  {
    name: 'a property value running past the properties',
    rule: 'MQTT-4.13.1-1', reasonCode: MALFORMED,
    bad: packet(0x30, field('a'), Buffer.from([3, P.messageExpiryInterval, 0, 0]), Buffer.from('xy')),
    good: packet(0x30, field('a'), Buffer.from([5, P.messageExpiryInterval, 0, 0, 0, 1]), Buffer.from('xy')),
  },
  // Property values.
  {
    name: 'Payload Format Indicator 2 in PUBLISH',
    rule: 'MQTT-3.3.2.3.2', reasonCode: PROTOCOL,
    bad: publish5('a', { properties: [property.byte(P.payloadFormatIndicator, 2)] }),
    good: publish5('a', { properties: [property.byte(P.payloadFormatIndicator, 1)] }),
  },
  {
    name: 'Payload Format Indicator 2 in the Will Properties',
    rule: 'MQTT-3.1.3.2.3', reasonCode: PROTOCOL, before: null,
    bad: connect5({ will: { topic: 'w' }, willProperties: [property.byte(P.payloadFormatIndicator, 2)] }),
    good: connect5({ will: { topic: 'w' }, willProperties: [property.byte(P.payloadFormatIndicator, 0)] }),
  },
  {
    name: 'Receive Maximum 0',
    rule: 'MQTT-3.1.2.11.3', reasonCode: PROTOCOL, before: null,
    bad: connect5({ properties: [property.u16(P.receiveMaximum, 0)] }),
    good: connect5({ properties: [property.u16(P.receiveMaximum, 1)] }),
  },
  {
    name: 'Maximum Packet Size 0',
    rule: 'MQTT-3.1.2.11.4', reasonCode: PROTOCOL, before: null,
    bad: connect5({ properties: [property.u32(P.maximumPacketSize, 0)] }),
    good: connect5({ properties: [property.u32(P.maximumPacketSize, 1)] }),
  },
  {
    name: 'Request Response Information 2',
    rule: 'MQTT-3.1.2.11.6', reasonCode: PROTOCOL, before: null,
    bad: connect5({ properties: [property.byte(P.requestResponseInformation, 2)] }),
    good: connect5({ properties: [property.byte(P.requestResponseInformation, 1)] }),
  },
  {
    name: 'Request Problem Information 2',
    rule: 'MQTT-3.1.2.11.7', reasonCode: PROTOCOL, before: null,
    bad: connect5({ properties: [property.byte(P.requestProblemInformation, 2)] }),
    good: connect5({ properties: [property.byte(P.requestProblemInformation, 0)] }),
  },
  {
    name: 'Topic Alias 0',
    rule: 'MQTT-3.3.2-8', reasonCode: PROTOCOL,
    bad: publish5('a', { properties: [property.u16(P.topicAlias, 0)] }),
    good: publish5('a', { properties: [property.u16(P.topicAlias, 1)] }),
  },
  {
    name: 'a Subscription Identifier in a PUBLISH from the client',
    rule: 'MQTT-3.3.4-6', reasonCode: PROTOCOL,
    bad: publish5('a', { properties: [property.varint(P.subscriptionIdentifier, 1)] }),
    good: publish5('a', { properties: [property.u32(P.messageExpiryInterval, 1)] }),
  },
  {
    name: 'Subscription Identifier 0',
    rule: 'MQTT-3.8.2.1.2', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: 'a' }], [property.varint(P.subscriptionIdentifier, 0)]),
    good: subscribe5(1, [{ filter: 'a' }], [property.varint(P.subscriptionIdentifier, 1)]),
  },
  {
    name: 'Subscription Identifier not in the fewest bytes',
    rule: 'MQTT-1.5.5-1', reasonCode: MALFORMED,
    bad: subscribe5(1, [{ filter: 'a' }], [Buffer.from([P.subscriptionIdentifier, 0x81, 0x00])]),
    good: subscribe5(1, [{ filter: 'a' }], [Buffer.from([P.subscriptionIdentifier, 0x81, 0x01])]),
  },
  {
    name: 'a User Property with an encoded surrogate',
    rule: 'MQTT-1.5.4-1', reasonCode: MALFORMED,
    bad: publish5('a', { properties: [property.pair('k', BAD_UTF8)] }),
    good: publish5('a', { properties: [property.pair('k', 'a€')] }),
  },
  {
    name: 'a Content Type containing U+0000',
    rule: 'MQTT-1.5.4-2', reasonCode: MALFORMED,
    bad: publish5('a', { properties: [property.string(P.contentType, 'a\u0000b')] }),
    good: publish5('a', { properties: [property.string(P.contentType, 'ab')] }),
  },
  {
    name: 'a Reason String with invalid UTF-8 (PUBACK)',
    rule: 'MQTT-1.5.4-1', reasonCode: MALFORMED,
    bad: ack5(0x40, 1, 0x80, [property.string(P.reasonString, Buffer.from([0xff]))]),
    good: ack5(0x40, 1, 0x80, [property.string(P.reasonString, 'no')]),
  },
  {
    name: 'an Authentication Method with invalid UTF-8',
    rule: 'MQTT-1.5.4-1', reasonCode: MALFORMED, before: null,
    bad: connect5({ properties: [property.string(P.authenticationMethod, Buffer.from([0xc0, 0x80]))] }),
    good: connect5({ properties: [property.string(P.authenticationMethod, 'scram')] }),
  },
  {
    name: 'a wildcard in a Response Topic',
    rule: 'MQTT-3.3.2-14', reasonCode: PROTOCOL,
    bad: publish5('a', { properties: [property.string(P.responseTopic, 'reply/+')] }),
    good: publish5('a', { properties: [property.string(P.responseTopic, 'reply/x')] }),
  },
  // CONNECT.
  {
    name: 'CONNECT reserved flag set',
    rule: 'MQTT-3.1.2-3', reasonCode: MALFORMED, before: null,
    bad: connect5({ flags: 0x03 }),
    good: connect5({ flags: 0x02 }),
  },
  {
    name: 'Will QoS without the Will Flag',
    rule: 'MQTT-3.1.2-11', reasonCode: MALFORMED, before: null,
    bad: connect5({ flags: 0x0a }),
    good: connect5({ will: { topic: 'w', qos: 1 } }),
  },
  {
    name: 'Will QoS 3',
    rule: 'MQTT-3.1.2-12', reasonCode: MALFORMED, before: null,
    bad: connect5({ will: { topic: 'w', qos: 3 } }),
    good: connect5({ will: { topic: 'w', qos: 2 } }),
  },
  {
    name: 'Will Retain without the Will Flag',
    rule: 'MQTT-3.1.2-13', reasonCode: MALFORMED, before: null,
    bad: connect5({ flags: 0x22 }),
    good: connect5({ will: { topic: 'w', retain: true } }),
  },
  {
    name: 'Authentication Data without an Authentication Method',
    rule: 'MQTT-3.1.2.11.10', reasonCode: PROTOCOL, before: null,
    bad: connect5({ properties: [property.string(P.authenticationData, Buffer.from([1]))] }),
    good: connect5({ properties: [property.string(P.authenticationMethod, 'm'), property.string(P.authenticationData, Buffer.from([1]))] }),
  },
  {
    name: 'a wildcard in the will topic',
    rule: 'MQTT-3.3.2-2', reasonCode: MALFORMED, before: null,
    bad: connect5({ will: { topic: 'w/#' } }),
    good: connect5({ will: { topic: 'w/x' }, password: 'a password without a user name is MQTT 5' }),
  },
  {
    name: 'bytes after the end of CONNECT',
    rule: 'MQTT-4.13.1-1', reasonCode: MALFORMED, before: null,
    bad: Buffer.concat([connect5().subarray(0, 1), Buffer.from([connect5()[1]! + 1]), connect5().subarray(2), Buffer.from([0])]),
    good: connect5(),
  },
  // PUBLISH.
  {
    name: 'an empty Topic Name without a Topic Alias',
    rule: 'MQTT-3.3.2.1', reasonCode: PROTOCOL,
    bad: publish5(''),
    good: publish5('', { properties: [property.u16(P.topicAlias, 1)] }),
  },
  {
    name: 'a wildcard in a PUBLISH topic',
    rule: 'MQTT-3.3.2-2', reasonCode: MALFORMED,
    bad: publish5('a/+'),
    good: publish5('a/b'),
  },
  {
    name: 'a PUBLISH topic with an encoded surrogate',
    rule: 'MQTT-1.5.4-1', reasonCode: MALFORMED,
    bad: publish5(BAD_UTF8, { qos: 1, id: 1 }),
    good: publish5('a€', { qos: 1, id: 1 }),
  },
  {
    name: 'QoS 1 PUBLISH with packet identifier 0',
    rule: 'MQTT-2.2.1-3', reasonCode: PROTOCOL,
    bad: publish5('a', { qos: 1, id: 0 }),
    good: publish5('a', { qos: 1, id: 1 }),
  },
  {
    name: 'QoS 0 PUBLISH with the DUP flag',
    rule: 'MQTT-3.3.1-2', reasonCode: MALFORMED,
    bad: publish5('a', { qos: 0, dup: true }),
    good: publish5('a', { qos: 1, dup: true }),
  },
  {
    name: 'PUBLISH with QoS 3',
    rule: 'MQTT-3.3.1-4', reasonCode: MALFORMED,
    bad: packet(0x36, field('a'), u16(1), properties()),
    good: packet(0x34, field('a'), u16(1), properties()),
  },
  {
    name: 'PUBLISH too short for its Property Length',
    rule: 'MQTT-4.13.1-1', reasonCode: MALFORMED,
    bad: packet(0x30, field('a')),
    good: packet(0x30, field('a'), properties()),
  },
  // PUBACK, PUBREC, PUBREL, PUBCOMP.
  {
    name: 'PUBACK with a PUBREL Reason Code',
    rule: 'MQTT-3.4.2-1', reasonCode: PROTOCOL,
    bad: ack5(0x40, 1, 0x92),
    good: ack5(0x40, 1, 0x99),
  },
  {
    name: 'PUBREC with an unknown Reason Code',
    rule: 'MQTT-3.5.2-1', reasonCode: PROTOCOL,
    bad: ack5(0x50, 1, 0x01, []),
    good: ack5(0x50, 1, 0x10, []),
  },
  {
    name: 'PUBREL with a PUBACK Reason Code',
    rule: 'MQTT-3.6.2-1', reasonCode: PROTOCOL,
    bad: ack5(0x62, 1, 0x10),
    good: ack5(0x62, 1, 0x92),
  },
  {
    name: 'PUBCOMP with Reason Code 0x80',
    rule: 'MQTT-3.7.2-1', reasonCode: PROTOCOL,
    bad: ack5(0x70, 1, 0x80),
    good: ack5(0x70, 1, 0x00),
  },
  {
    name: 'PUBACK shorter than its packet identifier',
    rule: 'MQTT-4.13.1-1', reasonCode: MALFORMED,
    bad: packet(0x40, Buffer.from([1])),
    good: packet(0x40, u16(1)),
  },
  {
    name: 'PUBACK with bytes after its properties',
    rule: 'MQTT-4.13.1-1', reasonCode: MALFORMED,
    bad: packet(0x40, u16(1), Buffer.from([0x00]), properties(), Buffer.from([0])),
    good: packet(0x40, u16(1), Buffer.from([0x00]), properties()),
  },
  {
    name: 'PUBREL with reserved flags 0',
    rule: 'MQTT-2.1.3-1', reasonCode: MALFORMED,
    bad: ack5(0x60, 1),
    good: ack5(0x62, 1),
  },
  // SUBSCRIBE.
  {
    name: 'Subscription Options with reserved bits set',
    rule: 'MQTT-3.8.3-5', reasonCode: MALFORMED,
    bad: subscribe5(1, [{ filter: 'a', options: 0x41 }]),
    good: subscribe5(1, [{ filter: 'a', options: 0x2d }]),
  },
  {
    name: 'SUBSCRIBE with Maximum QoS 3',
    rule: 'MQTT-3.8.3.1', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: 'a', options: 0x03 }]),
    good: subscribe5(1, [{ filter: 'a', options: 0x02 }]),
  },
  {
    name: 'SUBSCRIBE with Retain Handling 3',
    rule: 'MQTT-3.8.3.1', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: 'a', options: 0x30 }]),
    good: subscribe5(1, [{ filter: 'a', options: 0x20 }]),
  },
  {
    name: 'No Local on a Shared Subscription',
    rule: 'MQTT-3.8.3-4', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: '$share/g/a', options: 0x04 }]),
    good: subscribe5(1, [{ filter: '$share/g/a' }, { filter: 'a', options: 0x04 }]),
  },
  {
    name: 'a Shared Subscription with an empty ShareName',
    rule: 'MQTT-4.8.2-1', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: '$share//a' }]),
    good: subscribe5(1, [{ filter: '$share/g/a' }]),
  },
  {
    name: "a ShareName containing '+'",
    rule: 'MQTT-4.8.2-2', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: '$share/g+/a' }]),
    good: subscribe5(1, [{ filter: '$share/g/+' }]),
  },
  {
    name: 'a ShareName without a topic filter after it',
    rule: 'MQTT-4.8.2-2', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: '$share/g' }]),
    good: subscribe5(1, [{ filter: '$share/g/#' }]),
  },
  {
    name: "a Shared Subscription whose filter misplaces '#'",
    rule: 'MQTT-4.7.1-1', reasonCode: MALFORMED,
    bad: subscribe5(1, [{ filter: '$share/g/a/#/b' }]),
    good: subscribe5(1, [{ filter: '$share/g/a/+/b' }]),
  },
  {
    name: "'+' inside a level",
    rule: 'MQTT-4.7.1-2', reasonCode: MALFORMED,
    bad: subscribe5(1, [{ filter: 'a+' }]),
    good: subscribe5(1, [{ filter: 'a/+' }]),
  },
  {
    name: 'SUBSCRIBE without a topic filter',
    rule: 'MQTT-3.8.3-2', reasonCode: PROTOCOL,
    bad: subscribe5(1, [], [property.pair('k', 'v')]),
    good: subscribe5(1, [{ filter: 'a' }], [property.pair('k', 'v')]),
  },
  {
    name: 'SUBSCRIBE with packet identifier 0',
    rule: 'MQTT-2.2.1-3', reasonCode: PROTOCOL,
    bad: subscribe5(0, [{ filter: 'a' }]),
    good: subscribe5(1, [{ filter: 'a' }]),
  },
  {
    name: 'a Subscription Identifier twice',
    rule: 'MQTT-2.2.2.2', reasonCode: PROTOCOL,
    bad: subscribe5(1, [{ filter: 'a' }], [property.varint(P.subscriptionIdentifier, 1), property.varint(P.subscriptionIdentifier, 2)]),
    good: subscribe5(1, [{ filter: 'a' }], [property.varint(P.subscriptionIdentifier, 268_435_455)]),
  },
  // UNSUBSCRIBE.
  {
    name: 'UNSUBSCRIBE with a property other than User Property',
    rule: 'MQTT-2.2.2.2', reasonCode: MALFORMED,
    bad: unsubscribe5(1, ['a'], [property.string(P.reasonString, 'why')]),
    good: unsubscribe5(1, ['a'], [property.pair('why', 'because')]),
  },
  {
    name: 'UNSUBSCRIBE without a topic filter',
    rule: 'MQTT-3.10.3-2', reasonCode: PROTOCOL,
    bad: unsubscribe5(1, []),
    good: unsubscribe5(1, ['a']),
  },
  // DISCONNECT.
  {
    name: 'DISCONNECT with a Reason Code only the server sends (0x8E)',
    rule: 'MQTT-3.14.2-1', reasonCode: PROTOCOL,
    bad: disconnect5(0x8e),
    good: disconnect5(0x04),
  },
  {
    name: 'a non-zero Session Expiry Interval on DISCONNECT after a CONNECT with 0',
    rule: 'MQTT-3.14.2.2.2', reasonCode: PROTOCOL,
    bad: disconnect5(0x00, [property.u32(P.sessionExpiryInterval, 60)]),
    good: disconnect5(0x00, [property.u32(P.sessionExpiryInterval, 0)]),
  },
  {
    name: 'a packet after DISCONNECT',
    rule: 'MQTT-3.14.4-1', reasonCode: PROTOCOL,
    bad: Buffer.concat([disconnect5(), pingreq()]),
    good: Buffer.concat([pingreq(), disconnect5()]),
  },
  {
    name: 'DISCONNECT with reserved flags',
    rule: 'MQTT-2.1.3-1', reasonCode: MALFORMED,
    bad: Buffer.from([0xe1, 0x00]),
    good: Buffer.from([0xe0, 0x00]),
  },
  // AUTH.
  {
    name: 'AUTH without an Authentication Method in CONNECT',
    rule: 'MQTT-4.12.0-7', reasonCode: PROTOCOL,
    bad: auth5(0x18, [property.string(P.authenticationMethod, 'm')]),
    good: pingreq(),
  },
  {
    name: 'AUTH from a client with Reason Code 0x00 (the short form)',
    rule: 'MQTT-3.15.2-1', reasonCode: PROTOCOL,
    before: connect5({ properties: [property.string(P.authenticationMethod, 'm')] }),
    bad: auth5(),
    good: auth5(0x19, [property.string(P.authenticationMethod, 'm')]),
  },
  {
    name: 'AUTH without an Authentication Method',
    rule: 'MQTT-3.15.2.2.2', reasonCode: PROTOCOL,
    before: connect5({ properties: [property.string(P.authenticationMethod, 'm')] }),
    bad: auth5(0x18, [property.string(P.authenticationData, Buffer.from([1]))]),
    good: auth5(0x18, [property.string(P.authenticationMethod, 'm'), property.string(P.authenticationData, Buffer.from([1]))]),
  },
  {
    name: 'AUTH with reserved flags',
    rule: 'MQTT-2.1.3-1', reasonCode: MALFORMED,
    before: connect5({ properties: [property.string(P.authenticationMethod, 'm')] }),
    bad: packet(0xf1, Buffer.from([0x18]), properties(property.string(P.authenticationMethod, 'm'))),
    good: packet(0xf0, Buffer.from([0x18]), properties(property.string(P.authenticationMethod, 'm'))),
  },
  // Packet order.
  {
    name: 'a second CONNECT',
    rule: 'MQTT-3.1.0-2', reasonCode: PROTOCOL,
    bad: connect5(),
    good: pingreq(),
  },
  {
    name: 'a packet only the server sends (SUBACK)',
    rule: 'MQTT-2.1.2', reasonCode: PROTOCOL,
    bad: packet(0x90, u16(1), properties(), Buffer.from([0])),
    good: pingreq(),
  },
];

t.test('MQTT 5: each rule refuses its bad packet with its clause and Reason Code; its valid twin passes', async (t) => {
  for (const rule of rules5) {
    const before = rule.before === undefined ? hello5 : rule.before;
    const verdictFor = (bytes: Buffer) => {
      const guard = new ProtocolGuard(limits5);
      if (before) {
        const first = guard.inspect(before);
        if (first !== null) return { before: first };
      }
      return guard.inspect(bytes);
    };
    t.equal(verdictFor(rule.good), null, `${rule.name}: the valid twin passes`);
    t.match(verdictFor(rule.bad), { kind: 'protocol', rule: rule.rule, reasonCode: rule.reasonCode }, `${rule.name} [${rule.rule}] 0x${rule.reasonCode.toString(16)}`);
  }
});
