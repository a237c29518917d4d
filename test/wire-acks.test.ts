/**
 * PUBACKs and PUBCOMPs taken past aedes' handler chain
 * (src/broker/aedes-seam/wire-acks.ts), against aedes' own handling as the
 * reference (broker.fastPublish: false): a persistent session that
 * acknowledges part of what it got, many acknowledgements to a read, finds
 * exactly the rest again when it resumes, and nothing once it has
 * acknowledged that too.
 */
import t from 'tap';
import type { Test } from 'tap';
import { generate, type Packet } from 'mqtt-packet';
import { connectRaw, openClient, type RawClient } from './helpers/mqtt.js';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';

const QOS1 = 40;
const QOS2 = 10;
/** Left unacknowledged on the first connection: the last QoS 1 messages, and the last QoS 2 flows before their PUBCOMP. */
const OPEN_QOS1 = 5;
const OPEN_QOS2 = 2;

interface Outcome {
  /** What the session got again on its second connection: QoS 1 PUBLISHes (payload, DUP) and the PUBRELs, by payload. */
  resent: string[];
  /** Whether the connection that acknowledged an identifier it was never sent stayed open (PINGRESP after it). */
  unknownAckKept: boolean;
  /** What the third connection got first: the marker published after it connected, nothing before it. */
  third: string[];
}

const many = (packets: Packet[]) => Buffer.concat(packets.map((packet) => generate(packet)));
const publishes = (raw: RawClient) => raw.packets.filter((p): p is Extract<Packet, { cmd: 'publish' }> => p.cmd === 'publish');

async function session(t: Test, daemon: RunningDaemon): Promise<RawClient> {
  const raw = await connectRaw(t, daemon.mqttUrl);
  raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: false, clientId: 'acker', keepalive: 0 });
  await raw.waitForPacket('connack');
  return raw;
}

async function script(t: Test, fastPublish: boolean): Promise<Outcome> {
  const daemon = await startDaemon(t, { broker: { fastPublish }, limits: { maxInflightMessages: 0 } });
  const first = await session(t, daemon);
  first.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'k/#', qos: 2 }] });
  await first.waitForPacket('suback');
  const publisher = await openClient(t, daemon.mqttUrl, { clientId: 'pub' });
  for (let i = 0; i < QOS1; i++) await publisher.client.publishAsync('k/one', `one-${i}`, { qos: 1 });
  for (let i = 0; i < QOS2; i++) await publisher.client.publishAsync('k/two', `two-${i}`, { qos: 2 });
  await first.waitFor((packets) => publishes({ packets } as RawClient).length === QOS1 + QOS2, 10_000, 'every message');
  const sent = publishes(first);
  const idOf = (payload: string) => sent.find((p) => p.payload.toString() === payload)!.messageId!;
  // Every acknowledgement of a kind in one write, so that they arrive many to a read; one for an identifier never sent among them.
  const pubacks = sent.filter((p) => p.qos === 1).slice(0, QOS1 - OPEN_QOS1).map((p): Packet => ({ cmd: 'puback', messageId: p.messageId! }));
  first.send(many([...pubacks, { cmd: 'puback', messageId: 65_000 }]));
  first.send(many(sent.filter((p) => p.qos === 2).map((p): Packet => ({ cmd: 'pubrec', messageId: p.messageId! }))));
  await first.waitFor((packets) => packets.filter((p) => p.cmd === 'pubrel').length === QOS2, 10_000, 'every PUBREL');
  const completed = Array.from({ length: QOS2 - OPEN_QOS2 }, (_, i) => idOf(`two-${i}`));
  first.send(many(completed.map((messageId): Packet => ({ cmd: 'pubcomp', messageId }))));
  first.send({ cmd: 'pingreq' });
  await first.waitForPacket('pingresp');
  const unknownAckKept = !first.isClosed;
  first.send({ cmd: 'disconnect' });
  await first.waitForClose();

  const payloadOf = new Map(sent.map((p) => [p.messageId!, p.payload.toString()]));
  const second = await session(t, daemon);
  const expected = OPEN_QOS1 + OPEN_QOS2;
  await second.waitFor((packets) => packets.filter((p) => p.cmd === 'publish' || p.cmd === 'pubrel').length >= expected, 10_000, 'the resend');
  const resent = second.packets
    .filter((p) => p.cmd === 'publish' || p.cmd === 'pubrel')
    .map((p) => (p.cmd === 'publish' ? `publish ${p.payload.toString()}${p.dup ? ' dup' : ''}` : `pubrel ${payloadOf.get(p.messageId!)}`));
  second.send(
    many(second.packets.flatMap((p): Packet[] => (p.cmd === 'publish' ? [{ cmd: 'puback', messageId: p.messageId! }] : p.cmd === 'pubrel' ? [{ cmd: 'pubcomp', messageId: p.messageId! }] : []))),
  );
  second.send({ cmd: 'pingreq' });
  await second.waitForPacket('pingresp');
  second.send({ cmd: 'disconnect' });
  await second.waitForClose();

  const third = await session(t, daemon);
  await publisher.client.publishAsync('k/one', 'marker', { qos: 1 });
  await third.waitFor((packets) => packets.some((p) => p.cmd === 'publish'), 10_000, 'the marker');
  return { resent, unknownAckKept, third: publishes(third).map((p) => p.payload.toString()) };
}

t.test('PUBACKs and PUBCOMPs many to a read clear what they acknowledge, and only that, as through aedes', async (t) => {
  const reference = await script(t, false);
  const taken = await script(t, true);
  t.same(taken, reference, 'the same resend, the same connection, the same queue as aedes leaves them');
  // What a user would check by hand, so that both paths being wrong the same way fails too.
  const open1 = Array.from({ length: OPEN_QOS1 }, (_, i) => `publish one-${QOS1 - OPEN_QOS1 + i} dup`);
  const open2 = Array.from({ length: OPEN_QOS2 }, (_, i) => `pubrel two-${QOS2 - OPEN_QOS2 + i}`);
  t.same([...taken.resent].sort(), [...open1, ...open2].sort(), 'the unacknowledged QoS 1 messages and the uncompleted PUBRELs are resent, nothing else');
  t.ok(taken.unknownAckKept, 'a PUBACK for an identifier never sent leaves the connection open');
  t.same(taken.third, ['marker'], 'once all is acknowledged the session holds nothing: the marker comes first');
});
