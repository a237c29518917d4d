/**
 * ProtocolGuard with the mqtt5 option: a level-5 CONNECT is followed and
 * every MQTT 5.0 packet and property judged (one case per rule in
 * protocol-guard-mqtt5-rules.test.ts). Here: the limits' Reason Codes, and the
 * properties protocol-guard.test.ts proves for 3.1.1 — same verdict however
 * the bytes are split, never a throw, nothing let through that mqtt-packet
 * (protocol version 5) rejects.
 */
import t from 'tap';
import * as mqttPacket from 'mqtt-packet';
import { ProtocolGuard } from '../src/broker/protocol-guard/index.js';
import { fuzzAgainstParser, passesHoweverSplit, refusedHoweverSplit } from './helpers/guard.js';
import { connect5, publish5, ack5, auth5, pingreq, property, P } from './helpers/packets.js';

const limits5 = { maxPacketBytes: 1_048_576, maxTopicLengthBytes: 0, maxTopicLevels: 100, mqtt5: true };


const generate5 = (packet: object): Buffer => mqttPacket.generate(packet as mqttPacket.Packet, { protocolVersion: 5 });

/** Valid MQTT 5 packets, most from mqtt-packet's own generator, the rest from the raw builders. */
const valid5: Buffer[] = [
  generate5({
    cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 30, clientId: 'guard5-ü',
    properties: { sessionExpiryInterval: 300, receiveMaximum: 10, maximumPacketSize: 100_000, topicAliasMaximum: 5,
      requestResponseInformation: true, requestProblemInformation: false, userProperties: { a: 'b', c: ['d', 'e'] },
      authenticationMethod: 'scram', authenticationData: Buffer.from([1, 2]) },
    will: { topic: 'w/€', payload: Buffer.from('bye'), qos: 1, retain: true,
      properties: { willDelayInterval: 5, payloadFormatIndicator: true, messageExpiryInterval: 60, contentType: 'text/plain',
        responseTopic: 'w/reply', correlationData: Buffer.from([9]), userProperties: { x: 'y' } } },
    username: 'user',
    password: Buffer.from([0, 0xff]),
  }),
  auth5(0x18, [property.string(P.authenticationMethod, 'scram'), property.string(P.authenticationData, Buffer.from([0xff, 0]))]),
  generate5({ cmd: 'publish', topic: 'a/b', qos: 0, dup: false, retain: false, payload: Buffer.from('x') }),
  generate5({
    cmd: 'publish', topic: 'a/ü/𝄞', qos: 1, messageId: 7, dup: false, retain: false, payload: Buffer.alloc(300, 0x30),
    properties: { payloadFormatIndicator: true, messageExpiryInterval: 9, topicAlias: 3, responseTopic: 'r/1',
      correlationData: Buffer.from('id'), userProperties: { k: 'v' }, contentType: 'application/json' },
  }),
  // An empty topic with a Topic Alias (3.3.2.1), and a payload that looks like framing and invalid UTF-8.
  publish5('', { qos: 2, id: 65535, properties: [property.u16(P.topicAlias, 3)], payload: Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f, 0xed, 0xa0, 0x80, 0x00]) }),
  // A Property Length of two bytes (128 bytes of user properties).
  publish5('long/props', { qos: 1, id: 2, properties: [property.pair('k', 'v'.repeat(122))] }),
  generate5({
    cmd: 'subscribe', messageId: 2, properties: { subscriptionIdentifier: 268_435_455, userProperties: { s: 't' } },
    subscriptions: [
      { topic: 'a/#', qos: 2, nl: true, rap: true, rh: 2 },
      { topic: '$share/group/+/b/+', qos: 1, nl: false, rap: false, rh: 1 },
      { topic: '#', qos: 0, nl: false, rap: false, rh: 0 },
    ],
  }),
  generate5({ cmd: 'unsubscribe', messageId: 3, unsubscriptions: ['a/#', '$share/group/+/b/+'], properties: { userProperties: { u: 'v' } } }),
  ack5(0x40, 1),
  ack5(0x40, 1, 0x10),
  generate5({ cmd: 'puback', messageId: 1, reasonCode: 0x97, properties: { reasonString: 'quota', userProperties: { q: 'r' } } }),
  ack5(0x50, 2, 0x00, []),
  ack5(0x62, 2, 0x92, [property.string(P.reasonString, 'gone')]),
  ack5(0x70, 2, 0x00),
  pingreq(),
  generate5({ cmd: 'disconnect', reasonCode: 0x04, properties: { sessionExpiryInterval: 0, reasonString: 'bye' } }),
];
const stream5 = Buffer.concat(valid5);

t.test('MQTT 5: a valid stream passes whole, split anywhere in two, and byte by byte; mqtt-packet agrees', async (t) => {
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  const parsed: string[] = [];
  parser.on('packet', (packet: mqttPacket.Packet) => parsed.push(packet.cmd));
  parser.on('error', (error: Error) => t.fail(`mqtt-packet: ${error.message}`));
  parser.parse(stream5);
  t.equal(parsed.length, valid5.length, 'the stream is valid as mqtt-packet sees it');

  const whole = passesHoweverSplit(t, limits5, stream5, valid5.length, { denseUpTo: 600, step: 37 });
  t.equal(whole.protocolLevel, 5);
});

t.test('MQTT 5: limits carry their Reason Codes (0x95 Packet too large, 0x90 Topic Name invalid)', async (t) => {
  const small = { maxPacketBytes: 100, maxTopicLengthBytes: 8, maxTopicLevels: 3, mqtt5: true };
  const size = new ProtocolGuard(small);
  t.equal(size.inspect(connect5()), null);
  t.match(size.inspect(Uint8Array.of(0x30, 0x80, 0x80, 0x80, 0x01)), { kind: 'limit', limit: 'maxPacketSize', reasonCode: 0x95 });
  const topics = new ProtocolGuard(small);
  topics.inspect(connect5());
  t.equal(topics.inspect(publish5('a/b/c')), null);
  t.match(topics.inspect(publish5('abcdefghi')), { kind: 'limit', limit: 'maxTopicLength', reasonCode: 0x90 });
  const levels = new ProtocolGuard(small);
  levels.inspect(connect5());
  t.match(levels.inspect(publish5('a/b/c/d')), { kind: 'limit', limit: 'maxTopicLevels', reasonCode: 0x90 });
});

t.test('MQTT 5: a violation is found wherever the stream is split, the packets before it handed over', async (t) => {
  const bad = publish5('a', { qos: 1, id: 9, properties: [property.pair('k', 'v'), property.u16(P.topicAlias, 0)] });
  refusedHoweverSplit(t, limits5, Buffer.concat(valid5.slice(0, 6)), bad, 'MQTT-3.3.2-8');
});

t.test('MQTT 5 fuzz: never throws, and whatever it lets through parses cleanly with mqtt-packet (protocol version 5)', async (t) => {
  fuzzAgainstParser(t, {
    seed: 0x5e5e,
    runs: 20_000,
    options: limits5,
    // The CONNECT first (it may carry the Authentication Method AUTH needs), DISCONNECT last if at all.
    stream: (next) => {
      const middle = valid5.slice(1, -1).filter(() => next() < 0.5);
      return Buffer.concat([valid5[0] as Buffer, ...middle, ...(next() < 0.3 ? [valid5.at(-1) as Buffer] : [])]);
    },
    // A mutated level byte may make it a 3.1.1 connection: parse as the guard followed it.
    parseAs: (guard) => (guard.protocolLevel === 5 ? 5 : 4),
  });
});
