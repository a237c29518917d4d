/**
 * The resend after CONNECT (src/broker/aedes-seam/resend.ts) against aedes'
 * own (handlers/connect.js emptyQueue), on plain aedes with its memory
 * persistence: the same messages in the same order, the ACL and the Message
 * Expiry Interval applied as aedes applies them, a Clean Start queue cleared;
 * and the backlog written back to back, not one message per turn. The
 * daemon's resend (identifiers, DUP, races with live messages, restarts) is
 * covered by test/persistence-resend.test.ts and test/reconnect-race.test.ts;
 * here, on the daemon, only the frames the resend writes itself.
 */
import t from 'tap';
import type { Test } from 'tap';
import type { Client } from 'aedes';
import type { Packet } from 'mqtt-packet';
import { installBatchResend } from '../src/broker/aedes-seam/index.js';
import { connectPacket, payloads, published, publishesInFirstTurn, publishVia, rawClient, rawConnected, startPlainAedes, subscribedAndGone } from './helpers/plain-aedes.js';
import { startDaemon } from './helpers/daemon.js';
import { openClient } from './helpers/mqtt.js';

type Forward = (client: Client, packet: { topic: string; payload: Buffer }) => unknown;

interface Resent {
  packets: Packet[];
  /** PUBLISH packets written by the end of the turn the first one was written in. */
  inFirstTurn: number;
}

/** A persistent subscriber gets `stored` QoS 1 messages queued while away, then reconnects; what it is sent. */
async function resendBacklog(t: Test, batched: boolean, stored: number, options: { forward?: Forward; expiring?: number[]; version?: 4 | 5 } = {}): Promise<Resent> {
  const version = options.version ?? 4;
  const broker = await startPlainAedes(t, options.forward ? { authorizeForward: options.forward } : {});
  const firstTurn = publishesInFirstTurn(broker.aedes);
  if (batched) await installBatchResend(broker.aedes);
  const session = version === 5 ? { clean: false, properties: { sessionExpiryInterval: 300 } } : { clean: false };
  await subscribedAndGone(t, broker, 'backlog', 'backlog/t', version, session);
  for (let i = 0; i < stored; i++) {
    const expiring = options.expiring?.includes(i) === true;
    const properties = options.expiring ? { properties: { messageExpiryInterval: expiring ? 1 : 60 } } : {};
    await publishVia(broker.aedes, { topic: 'backlog/t', payload: `m${i}`, qos: 1, ...properties });
  }
  if (options.expiring?.length) await new Promise((resolve) => setTimeout(resolve, 1100));
  const again = await rawClient(t, broker.port, version);
  const packets = await again.connectAndPing(connectPacket('backlog', version, session));
  return { packets, inFirstTurn: firstTurn.count };
}

function identifiers(packets: Packet[]): number[] {
  return packets.flatMap((p) => (p.cmd === 'publish' ? [p.messageId ?? -1] : []));
}

t.test('a backlog is written back to back, the same messages in the same order as aedes sends them', async (t) => {
  const stored = 20;
  const reference = await resendBacklog(t, false, stored);
  const batched = await resendBacklog(t, true, stored);
  const expected = Array.from({ length: stored }, (_, i) => `m${i}`);
  t.same(payloads(reference.packets), expected, 'aedes: every stored message, in order');
  t.same(payloads(batched.packets), expected, 'here: the same, in the same order [MQTT-4.6.0-2]');
  t.equal(new Set(identifiers(batched.packets)).size, stored, 'each under its own packet identifier');
  t.ok(batched.packets.filter((p) => p.cmd === 'publish').every((p) => p.qos === 1 && !p.retain), 'at QoS 1');
  t.equal(reference.inFirstTurn, 1, 'aedes writes one per turn');
  t.equal(batched.inFirstTurn, stored, 'here the whole backlog goes in the turn of the first');
});

t.test('authorizeForward is asked for each resent message, and a refused one is not sent, as by aedes', async (t) => {
  const forward: Forward = (_client, packet) => (String(packet.payload) === 'm2' ? null : packet);
  const reference = await resendBacklog(t, false, 5, { forward });
  const batched = await resendBacklog(t, true, 5, { forward });
  t.same(payloads(reference.packets), ['m0', 'm1', 'm3', 'm4'], 'aedes skips the refused one');
  t.same(payloads(batched.packets), payloads(reference.packets), 'so does this');
});

t.test('a message whose Message Expiry Interval passed while queued is not sent; the others carry what remains [MQTT-3.3.2-5] [MQTT-3.3.2-6]', async (t) => {
  const reference = await resendBacklog(t, false, 3, { expiring: [1], version: 5 });
  const batched = await resendBacklog(t, true, 3, { expiring: [1], version: 5 });
  t.same(payloads(reference.packets), ['m0', 'm2'], 'aedes drops the expired one');
  t.same(payloads(batched.packets), ['m0', 'm2'], 'so does this');
  const intervals = (packets: Packet[]) => packets.flatMap((p) => (p.cmd === 'publish' ? [p.properties?.messageExpiryInterval] : []));
  t.ok(intervals(reference.packets).every((s) => s !== undefined && s < 60), `aedes: the others with what remains of their 60 s (${intervals(reference.packets).join(', ')})`);
  t.ok(intervals(batched.packets).every((s) => s !== undefined && s < 60), `here too (${intervals(batched.packets).join(', ')})`);
});

t.test('Clean Start drops the stored queue, as aedes does [MQTT-3.1.2-4]', async (t) => {
  const broker = await startPlainAedes(t);
  const { aedes, port } = broker;
  await installBatchResend(aedes);
  await subscribedAndGone(t, broker, 'dropped', 'dropped/t');
  await publishVia(aedes, { topic: 'dropped/t', payload: 'queued', qos: 1 });
  const again = await rawClient(t, port);
  const packets = await again.connectAndPing(connectPacket('dropped', 4, { clean: true }));
  t.same(payloads(packets), [], 'nothing of the old session is sent');
  const third = await rawClient(t, port);
  const later = await third.connectAndPing(connectPacket('dropped', 4, { clean: false }));
  t.same(payloads(later), [], 'nor on a later connection');
});

for (const [version, aliases] of [[4, false], [5, false], [5, true]] as const) {
  t.test(`on the daemon's store, stored QoS 1 messages written by the resend itself arrive as published, DUP once resent, each counted (MQTT ${version}${aliases ? ', Topic Aliases' : ''})`, async (t) => {
    const { mqttUrl, daemon } = await startDaemon(t);
    const port = Number(new URL(mqttUrl).port);
    const properties = version === 5 ? { sessionExpiryInterval: 300, ...(aliases ? { topicAliasMaximum: 4 } : {}) } : undefined;
    const session = properties ? { clean: false, properties } : { clean: false };
    const away = await rawConnected(t, port, 'frames', version, session);
    away.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'fr/#', qos: 1 }] });
    await away.next('suback');
    away.send({ cmd: 'disconnect' });
    await away.waitForClose();
    const publisher = await openClient(t, mqttUrl, { clientId: 'frames-publisher' });
    // A non-ASCII topic, an empty payload, one past a 1-byte Remaining Length.
    const sent: Array<[string, string]> = [['fr/t', 'm0'], ['fr/gerät/€', 'm1'], ['fr/t', ''], ['fr/t', 'x'.repeat(200)]];
    for (const [topic, payload] of sent) await publisher.client.publishAsync(topic, payload, { qos: 1 });
    const before = daemon.trafficStats().messagesOut[1] ?? 0;

    const first = await rawConnected(t, port, 'frames', version, session);
    await first.waitFor((packets) => published(packets).length === sent.length, 'the stored messages');
    const arrived = published(first.packets);
    t.same(arrived.map((p) => [p.topic, p.payload.toString()]), sent, 'topic and payload as published, in order');
    t.ok(arrived.every((p) => p.qos === 1 && p.dup !== true && p.retain !== true), 'QoS 1, no DUP (never sent before), no RETAIN');
    first.drop();
    await first.waitForClose();

    const second = await rawConnected(t, port, 'frames', version, session);
    await second.waitFor((packets) => published(packets).length === sent.length, 'the stored messages again');
    const again = published(second.packets);
    t.same(again.map((p) => [p.topic, p.payload.toString(), p.messageId]), arrived.map((p) => [p.topic, p.payload.toString(), p.messageId]), 'the same messages under the same identifiers');
    t.ok(again.every((p) => p.dup === true), 'DUP set, as sent before [MQTT-3.3.1-1]');
    t.equal((daemon.trafficStats().messagesOut[1] ?? 0) - before, 2 * sent.length, 'each counted as sent at QoS 1');
  });
}
