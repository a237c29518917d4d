/**
 * ProtocolGuard follows packet boundaries in a raw client byte stream and
 * judges each packet before aedes' parser can see all of it. It must never
 * lose sync whatever the chunking, must reach the same verdict however the
 * bytes are split, must never throw on any input, and anything it lets
 * through must parse cleanly with mqtt-packet (aedes' parser). MQTT 5.0
 * (the mqtt5 option) is in protocol-guard-mqtt5.test.ts.
 */
import t from 'tap';
import { ProtocolGuard } from '../src/broker/protocol-guard/index.js';
import { connect, publish, subscribe, unsubscribe, puback, pubrec, pubrel, pubcomp, pingreq, disconnect } from './helpers/packets.js';
import { fuzzAgainstParser, passesHoweverSplit, refusedHoweverSplit } from './helpers/guard.js';

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


t.test('a valid stream passes whole, split anywhere in two, and byte by byte', async (t) => {
  passesHoweverSplit(t, limits, stream, valid.length, { denseUpTo: 400, step: 97 });
});

t.test('a violation is found wherever the stream is split, and the valid packets before it are handed over', async (t) => {
  const bad = publish(Buffer.from([0x61, 0xed, 0xa0, 0x80]), { qos: 1, id: 9 });
  refusedHoweverSplit(t, limits, Buffer.concat(valid.slice(0, 4)), bad, 'MQTT-1.5.3-1');
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

t.test('a PUBLISH topic name: a wildcard, U+0000 or ill-formed UTF-8 is refused, well-formed UTF-8 passes, levels counted either way', async (t) => {
  const judge = (topic: string | Buffer, levels = 100) => {
    const guard = new ProtocolGuard({ ...limits, maxTopicLevels: levels });
    guard.inspect(connect());
    return guard.inspect(publish(topic, { qos: 1, id: 3 }));
  };
  t.match(judge('a/+/c'), { kind: 'protocol', rule: 'MQTT-3.3.2-2' }, "'+'");
  t.match(judge('a/#'), { kind: 'protocol', rule: 'MQTT-3.3.2-2' }, "'#'");
  t.match(judge(Buffer.from([0x61, 0x00, 0x62])), { kind: 'protocol', rule: 'MQTT-1.5.3-2' }, 'U+0000');
  t.match(judge(Buffer.from([0x61, 0xc3])), { kind: 'protocol', rule: 'MQTT-1.5.3-1' }, 'a truncated UTF-8 sequence');
  t.equal(judge('a/ü/b'), null, 'well-formed UTF-8');
  t.equal(judge('a/ü/b', 3), null, '3 levels with a non-ASCII one, within 3');
  t.match(judge('a/ü/b/c', 3), { kind: 'limit', limit: 'maxTopicLevels' }, '4 levels with a non-ASCII one');
  t.equal(judge('a/b/c', 3), null, '3 ASCII levels, within 3');
  t.match(judge('a/b/c/', 3), { kind: 'limit', limit: 'maxTopicLevels' }, 'an empty last level counts');
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
  fuzzAgainstParser(t, {
    seed: 0xed9e,
    runs: 20_000,
    options: limits,
    // The CONNECT first, then any of the others.
    stream: (next) => Buffer.concat([valid[0] as Buffer, ...valid.slice(1).filter(() => next() < 0.5)]),
    parseAs: () => 4,
  });
});
