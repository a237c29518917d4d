/**
 * ProtocolGuard follows packet boundaries in a raw client byte stream and
 * judges each packet before aedes' parser can see all of it. It must never
 * lose sync whatever the chunking, must reach the same verdict however the
 * bytes are split, must never throw on any input, and anything it lets
 * through must parse cleanly with mqtt-packet (aedes' parser).
 */
import t from 'tap';
import * as mqttPacket from 'mqtt-packet';
import { ProtocolGuard, type Verdict } from '../src/broker/protocol-guard/index.js';
import { random } from './helpers/random.js';
import {
  connect, publish, subscribe, unsubscribe, puback, pubrec, pubrel, pubcomp, pingreq, disconnect,
  connect5, publish5, ack5, subscribe5, unsubscribe5, disconnect5, auth5, property, properties, P, packet, u16, field,
} from './helpers/packets.js';

const limits = { maxPacketBytes: 1_048_576, maxTopicLengthBytes: 0, maxTopicLevels: 100 };

const valid: Buffer[] = [
  connect({ clientId: 'guard-ü', will: { topic: 'w/€', qos: 1, retain: true }, username: 'user', password: Buffer.from([0, 0xff, 0]) }),
  publish('a/b', { qos: 0 }),
  publish('a/ü/𝄞', { qos: 1, id: 7, payload: Buffer.alloc(300, 0x30) }),
  publish('a', { qos: 2, id: 65535, payload: Buffer.alloc(20_000, 0xff) }),
  // A payload that looks like a huge fixed header and like invalid UTF-8: payloads are never judged.
  publish('decoy', { qos: 1, id: 1, payload: Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f, 0xed, 0xa0, 0x80, 0x00]) }),
  subscribe(2, ['a/#', '+/b/+', '#', '+', '$SYS/#', 'x//y'], 2),
  unsubscribe(3, ['a/#', '+']),
  puback(1),
  pubrec(2),
  pubrel(2),
  pubcomp(2),
  pingreq(),
  disconnect(),
];
const stream = Buffer.concat(valid);

function feed(guard: ProtocolGuard, chunks: Uint8Array[]): { at: number; verdict: Verdict } | null {
  for (let i = 0; i < chunks.length; i++) {
    const verdict = guard.inspect(chunks[i] as Uint8Array);
    if (verdict !== null) return { at: i, verdict };
  }
  return null;
}

t.test('a valid stream passes whole, split anywhere in two, and byte by byte', async (t) => {
  const whole = new ProtocolGuard(limits);
  let packets = 0;
  whole.onPacket = () => packets++;
  t.equal(feed(whole, [stream]), null);
  t.equal(packets, valid.length, 'every packet seen once');
  for (let split = 1; split < stream.length; split += split < 400 ? 1 : 97) {
    const guard = new ProtocolGuard(limits);
    const verdict = feed(guard, [stream.subarray(0, split), stream.subarray(split)]);
    if (verdict !== null) {
      t.fail(`split at ${split}: ${JSON.stringify(verdict)}`);
      return;
    }
  }
  const bytewise = new ProtocolGuard(limits);
  let seen = 0;
  bytewise.onPacket = () => seen++;
  t.equal(feed(bytewise, [...stream].map((byte) => Uint8Array.of(byte))), null, 'byte by byte');
  t.equal(seen, valid.length);
});

t.test('a violation is found wherever the stream is split, and the valid packets before it are handed over', async (t) => {
  const prefix = Buffer.concat(valid.slice(0, 4));
  const bad = publish(Buffer.from([0x61, 0xed, 0xa0, 0x80]), { qos: 1, id: 9 });
  const all = Buffer.concat([prefix, bad, pingreq()]);
  for (let split = 0; split <= all.length; split++) {
    const guard = new ProtocolGuard(limits);
    const chunks = split === 0 ? [all] : [all.subarray(0, split), all.subarray(split)];
    const result = feed(guard, chunks);
    if (!result || result.verdict.kind !== 'protocol' || result.verdict.rule !== 'MQTT-1.5.3-1') {
      t.fail(`split at ${split}: ${JSON.stringify(result)}`);
      return;
    }
    // Bytes handed to the parser: earlier chunks in full, plus validBytes of the verdict's chunk.
    const handedOver = chunks.slice(0, result.at).reduce((sum, chunk) => sum + chunk.length, 0) + result.verdict.validBytes;
    if (handedOver > prefix.length + bad.length - 1 || handedOver < Math.min(prefix.length, split || prefix.length)) {
      t.fail(`split at ${split}: handed over ${handedOver} bytes; the bad packet ends at ${prefix.length + bad.length}`);
      return;
    }
  }
  t.pass('same verdict at every split; the bad packet is never handed over whole');
});

t.test('limits: packet size from the header alone, topic length and levels', async (t) => {
  const small = new ProtocolGuard({ maxPacketBytes: 100, maxTopicLengthBytes: 8, maxTopicLevels: 3 });
  t.equal(small.inspect(connect()), null);
  // Header of a 2 MiB PUBLISH, no body: refused at once.
  t.match(small.inspect(Uint8Array.of(0x30, 0x80, 0x80, 0x80, 0x01)), { kind: 'limit', limit: 'maxPacketSize' });
  const topics = new ProtocolGuard({ maxPacketBytes: 100, maxTopicLengthBytes: 8, maxTopicLevels: 3 });
  topics.inspect(connect());
  t.equal(topics.inspect(publish('a/b/c')), null, 'within both limits');
  t.match(topics.inspect(publish('abcdefghi')), { kind: 'limit', limit: 'maxTopicLength' });
  const levels = new ProtocolGuard({ maxPacketBytes: 100, maxTopicLengthBytes: 8, maxTopicLevels: 3 });
  levels.inspect(connect());
  t.match(levels.inspect(publish('a/b/c/d')), { kind: 'limit', limit: 'maxTopicLevels' });
  const will = new ProtocolGuard({ maxPacketBytes: 100, maxTopicLengthBytes: 8, maxTopicLevels: 3 });
  t.match(will.inspect(connect({ will: { topic: 'a/b/c/d' } })), { kind: 'limit', limit: 'maxTopicLevels' }, 'a will topic too');
});

t.test('a CONNECT for another protocol level is left to aedes (CONNACK 0x01), and the bytes after it withheld', async (t) => {
  const guard = new ProtocolGuard(limits);
  const v5 = connect({ protocolLevel: 5 });
  const verdict = guard.inspect(Buffer.concat([v5, Buffer.from([0xf0, 0x00])]));
  t.same(verdict, { kind: 'withhold', validBytes: v5.length });
  const v6 = new ProtocolGuard({ ...limits, mqtt5: true });
  const level6 = connect({ protocolLevel: 6 });
  t.same(v6.inspect(Buffer.concat([level6, pingreq()])), { kind: 'withhold', validBytes: level6.length }, 'level 6 even with mqtt5 on');
});

t.test('3.1.1 verdicts carry no MQTT 5 Reason Code', async (t) => {
  const guard = new ProtocolGuard({ ...limits, mqtt5: true });
  t.equal(guard.inspect(connect()), null);
  const verdict = guard.inspect(publish('a', { qos: 1, id: 0 }));
  t.match(verdict, { kind: 'protocol', rule: 'MQTT-2.3.1-1' });
  t.notOk(verdict && 'reasonCode' in verdict, 'no reasonCode on a level-4 connection');
  t.equal(guard.protocolLevel, 4);
});

t.test('fuzz: never throws, and whatever it lets through parses cleanly with mqtt-packet', async (t) => {
  const next = random(0xed9e);
  const runs = 20_000;
  let accepted = 0;
  let refused = 0;
  for (let run = 0; run < runs; run++) {
    const bytes = Buffer.from(Buffer.concat([valid[0] as Buffer, ...valid.slice(1).filter(() => next() < 0.5)]));
    // Flip, insert or truncate a few bytes.
    const edits = 1 + Math.floor(next() * 4);
    let mutated = bytes;
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(next() * mutated.length);
      const kind = next();
      if (kind < 0.6) mutated[at] = Math.floor(next() * 256);
      else if (kind < 0.8) mutated = Buffer.concat([mutated.subarray(0, at), Buffer.from([Math.floor(next() * 256)]), mutated.subarray(at)]);
      else mutated = mutated.subarray(0, at);
    }
    const guard = new ProtocolGuard(limits);
    const split = Math.floor(next() * mutated.length);
    const chunks = [mutated.subarray(0, split), mutated.subarray(split)];
    let result: ReturnType<typeof feed>;
    try {
      result = feed(guard, chunks);
    } catch (error) {
      t.fail(`run ${run} threw ${String(error)} on ${mutated.toString('hex')}`);
      return;
    }
    // Left to aedes, which answers CONNACK 0x01 or (mqtt-packet) refuses the level.
    if (guard.unsupportedLevel) continue;
    const handedOver = result
      ? Buffer.concat([...chunks.slice(0, result.at), chunks[result.at]!.subarray(0, result.verdict.validBytes)])
      : mutated;
    if (result) refused++;
    else accepted++;
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    const errors: string[] = [];
    parser.on('error', (error: Error) => errors.push(error.message));
    parser.parse(handedOver);
    if (errors.length > 0) {
      t.fail(`run ${run}: guard passed bytes mqtt-packet rejects (${errors.join('; ')}): ${handedOver.toString('hex')}`);
      return;
    }
  }
  t.ok(accepted > runs / 20 && refused > runs / 20, `both outcomes exercised (${accepted} passed, ${refused} refused)`);
});

// ---- MQTT 5.0 (the mqtt5 option) ----

const limits5 = { ...limits, mqtt5: true };
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

  const whole = new ProtocolGuard(limits5);
  let packets = 0;
  whole.onPacket = () => packets++;
  t.equal(feed(whole, [stream5]), null);
  t.equal(packets, valid5.length, 'every packet seen once');
  t.equal(whole.protocolLevel, 5);
  for (let split = 1; split < stream5.length; split += split < 600 ? 1 : 37) {
    const verdict = feed(new ProtocolGuard(limits5), [stream5.subarray(0, split), stream5.subarray(split)]);
    if (verdict !== null) {
      t.fail(`split at ${split}: ${JSON.stringify(verdict)}`);
      return;
    }
  }
  const bytewise = new ProtocolGuard(limits5);
  let seen = 0;
  bytewise.onPacket = () => seen++;
  t.equal(feed(bytewise, [...stream5].map((byte) => Uint8Array.of(byte))), null, 'byte by byte');
  t.equal(seen, valid5.length);
});

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
  const prefix = Buffer.concat(valid5.slice(0, 6));
  const bad = publish5('a', { qos: 1, id: 9, properties: [property.pair('k', 'v'), property.u16(P.topicAlias, 0)] });
  const all = Buffer.concat([prefix, bad, pingreq()]);
  for (let split = 0; split <= all.length; split++) {
    const guard = new ProtocolGuard(limits5);
    const chunks = split === 0 ? [all] : [all.subarray(0, split), all.subarray(split)];
    const result = feed(guard, chunks);
    if (!result || result.verdict.kind !== 'protocol' || result.verdict.rule !== 'MQTT-3.3.2-8') {
      t.fail(`split at ${split}: ${JSON.stringify(result)}`);
      return;
    }
    const handedOver = chunks.slice(0, result.at).reduce((sum, chunk) => sum + chunk.length, 0) + result.verdict.validBytes;
    if (handedOver > prefix.length + bad.length - 1 || handedOver < Math.min(prefix.length, split || prefix.length)) {
      t.fail(`split at ${split}: handed over ${handedOver} bytes; the bad packet ends at ${prefix.length + bad.length}`);
      return;
    }
  }
  t.pass('same verdict at every split; the bad packet is never handed over whole');
});

t.test('MQTT 5 fuzz: never throws, and whatever it lets through parses cleanly with mqtt-packet (protocol version 5)', async (t) => {
  const next = random(0x5e5e);
  const runs = 20_000;
  let accepted = 0;
  let refused = 0;
  for (let run = 0; run < runs; run++) {
    // The CONNECT first (it may carry the Authentication Method AUTH needs), DISCONNECT last if at all.
    const middle = valid5.slice(1, -1).filter(() => next() < 0.5);
    const bytes = Buffer.from(Buffer.concat([valid5[0] as Buffer, ...middle, ...(next() < 0.3 ? [valid5.at(-1) as Buffer] : [])]));
    const edits = 1 + Math.floor(next() * 4);
    let mutated = bytes;
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(next() * mutated.length);
      const kind = next();
      if (kind < 0.6) mutated[at] = Math.floor(next() * 256);
      else if (kind < 0.8) mutated = Buffer.concat([mutated.subarray(0, at), Buffer.from([Math.floor(next() * 256)]), mutated.subarray(at)]);
      else mutated = mutated.subarray(0, at);
    }
    const guard = new ProtocolGuard(limits5);
    const split = Math.floor(next() * mutated.length);
    const chunks = [mutated.subarray(0, split), mutated.subarray(split)];
    let result: ReturnType<typeof feed>;
    try {
      result = feed(guard, chunks);
    } catch (error) {
      t.fail(`run ${run} threw ${String(error)} on ${mutated.toString('hex')}`);
      return;
    }
    if (guard.unsupportedLevel) continue;
    const handedOver = result
      ? Buffer.concat([...chunks.slice(0, result.at), chunks[result.at]!.subarray(0, result.verdict.validBytes)])
      : mutated;
    if (result) refused++;
    else accepted++;
    // A mutated level byte may make it a 3.1.1 connection: parse as the guard followed it.
    const parser = mqttPacket.parser({ protocolVersion: guard.protocolLevel === 5 ? 5 : 4 });
    const errors: string[] = [];
    parser.on('error', (error: Error) => errors.push(error.message));
    parser.parse(handedOver);
    if (errors.length > 0) {
      t.fail(`run ${run}: guard passed bytes mqtt-packet rejects (${errors.join('; ')}): ${handedOver.toString('hex')}`);
      return;
    }
  }
  t.ok(accepted > runs / 20 && refused > runs / 20, `both outcomes exercised (${accepted} passed, ${refused} refused)`);
});
