/**
 * Shared subscriptions `$share/{group}/{filter}` [MQTT-4.8.2] end to end:
 * a real daemon, real mqtt.js clients (MQTT 5 and 3.1.1) over TCP and one
 * over WebSocket (src/broker/shared-subscriptions.ts).
 */
import t, { type Test } from 'tap';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import type { IClientOptions } from 'mqtt';
import { createDaemon } from '../src/index.js';
import { hashPassword } from '../src/auth/password-file.js';
import { startDaemon, tempDir, testConfig } from './helpers/daemon.js';
import { connectRaw, eventually, openClient, type OpenedClient, type RawClient } from './helpers/mqtt.js';
import { connectPacket } from './helpers/plain-aedes.js';
import { startSecureDaemon } from './helpers/security.js';

const v5 = (options: IClientOptions = {}): IClientOptions => ({ protocolVersion: 5, ...options });
const v4 = (options: IClientOptions = {}): IClientOptions => ({ protocolVersion: 4, ...options });

function payloads(member: OpenedClient, topicPrefix = ''): string[] {
  return member.log.messages.filter((m) => m.topic.startsWith(topicPrefix)).map((m) => m.payload);
}

async function publishMany(publisher: OpenedClient, topic: string, count: number, qos: 0 | 1 | 2): Promise<string[]> {
  const sent: string[] = [];
  for (let i = 0; i < count; i++) {
    sent.push(`m${i}`);
    await publisher.client.publishAsync(topic, `m${i}`, { qos });
  }
  return sent;
}

t.test('CONNACK announces shared subscriptions, SUBACK grants them (MQTT 5 and 3.1.1), and messages are balanced across members', async (t) => {
  const { mqttUrl, wsUrl } = await startDaemon(t);
  const a = await openClient(t, mqttUrl, v5({ clientId: 'a' }));
  t.equal(a.connack.properties?.sharedSubscriptionAvailable, true, 'CONNACK: Shared Subscription Available 1 [MQTT-3.2.2-13]');
  const b = await openClient(t, mqttUrl, v4({ clientId: 'b' }));
  const c = await openClient(t, wsUrl, v5({ clientId: 'c' }));
  for (const member of [a, b, c]) {
    const granted = await member.client.subscribeAsync('$share/workers/jobs/+', { qos: 1 });
    t.same(granted.map((g) => g.qos), [1], `${member.client.options.clientId}: SUBACK grants QoS 1, not 0x9E`);
  }
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  const sent = await publishMany(publisher, 'jobs/x', 30, 1);
  await eventually(() => [a, b, c].reduce((n, m) => n + m.log.messages.length, 0) >= 30, 5000, '30 deliveries');
  // A marker after everything: nothing more arrives once it is in.
  await publisher.client.publishAsync('jobs/x', 'marker', { qos: 1 });
  await eventually(() => [a, b, c].some((m) => payloads(m).includes('marker')), 5000, 'the marker');
  const received = [a, b, c].flatMap((m) => payloads(m)).filter((p) => p !== 'marker');
  t.same(received.sort(), [...sent].sort(), 'together the members got each message exactly once');
  for (const member of [a, b, c]) t.ok(payloads(member).length >= 5, `${member.client.options.clientId} (${member === c ? 'WebSocket' : 'TCP'}) got a share: ${payloads(member).length}`);
  t.ok(a.log.messages.every((m) => m.packet.qos === 1), 'at the granted QoS');
});

t.test('two groups each get one copy; a non-shared subscription gets its own; QoS is the lower of published and granted', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const g1 = [await openClient(t, mqttUrl, v5({ clientId: 'g1a' })), await openClient(t, mqttUrl, v4({ clientId: 'g1b' }))];
  const g2 = [await openClient(t, mqttUrl, v5({ clientId: 'g2a' })), await openClient(t, mqttUrl, v5({ clientId: 'g2b' }))];
  for (const m of g1) await m.client.subscribeAsync('$share/one/s/#', { qos: 2 });
  for (const m of g2) await m.client.subscribeAsync('$share/two/s/+', { qos: 0 });
  const plain = await openClient(t, mqttUrl, v5({ clientId: 'plain' }));
  await plain.client.subscribeAsync('s/#', { qos: 1 });
  // g1a also has a non-shared subscription on another branch.
  await g1[0]!.client.subscribeAsync('other/#', { qos: 1 });

  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  const sent = await publishMany(publisher, 's/t', 10, 2);
  await publisher.client.publishAsync('other/t', 'own', { qos: 1 });
  await plain.log.waitForCount(10);
  await eventually(() => g1.concat(g2).reduce((n, m) => n + payloads(m, 's/').length, 0) >= 20, 5000, 'both groups');
  await eventually(() => payloads(g1[0]!, 'other/').length === 1, 5000, 'the non-shared message');
  t.same(g1.flatMap((m) => payloads(m, 's/')).sort(), [...sent].sort(), 'group one: each message once');
  t.same(g2.flatMap((m) => payloads(m, 's/')).sort(), [...sent].sort(), 'group two: each message once');
  t.same(payloads(plain).sort(), [...sent].sort(), 'the non-shared subscriber: every message');
  t.ok(g2.every((m) => m.log.messages.every((msg) => msg.packet.qos === 0)), 'group two granted QoS 0 gets QoS 0');
  t.ok(g1.every((m) => m.log.messages.filter((msg) => msg.topic.startsWith('s/')).every((msg) => msg.packet.qos === 2)), 'group one gets QoS 2');
});

t.test('UNSUBSCRIBE leaves the group; retained messages are not sent on a shared subscription', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await publisher.client.publishAsync('r/kept', 'retained', { qos: 1, retain: true });
  const a = await openClient(t, mqttUrl, v5({ clientId: 'a' }));
  const b = await openClient(t, mqttUrl, v4({ clientId: 'b' }));
  await a.client.subscribeAsync('$share/g/r/#', { qos: 1 });
  await b.client.subscribeAsync('$share/g/r/#', { qos: 1 });
  // A non-shared subscription made after them does get the retained message: the marker of its absence.
  await a.client.subscribeAsync('r/kept', { qos: 1 });
  await a.log.waitForCount(1);
  t.same(payloads(a), ['retained'], 'a: the retained message once, through its non-shared subscription only');
  t.same(payloads(b), [], 'b: no retained message on its shared subscription');

  const unsuback = (await a.client.unsubscribeAsync('$share/g/r/#')) as { reasonCode?: number; reasonCodes?: number[] } | undefined;
  t.same(unsuback?.reasonCodes ?? [0], [0], 'UNSUBACK 0x00: the subscription existed');
  await a.client.unsubscribeAsync('r/kept');
  const sent = await publishMany(publisher, 'r/live', 6, 1);
  await b.log.waitForCount(6);
  t.same(payloads(b), sent, 'every message goes to the member left');
  t.same(payloads(a), ['retained'], 'none to the one that unsubscribed');
});

t.test('a persistent member keeps its membership across a reconnect and a daemon restart', async (t) => {
  const config = testConfig(t);
  let daemon = await createDaemon(config);
  await daemon.start();
  t.teardown(() => daemon.stop());
  let url = `mqtt://127.0.0.1:${daemon.addresses().mqtt!.port}`;
  const first = await openClient(t, url, v4({ clientId: 'keeper', clean: false }));
  await first.client.subscribeAsync('$share/g/p/#', { qos: 1 });
  const publisher = await openClient(t, url, v5({ clientId: 'pub' }));
  await publisher.client.publishAsync('p/1', 'before', { qos: 1 });
  await first.log.waitForCount(1);
  await first.client.endAsync();
  await publisher.client.endAsync();
  await daemon.stop();

  daemon = await createDaemon({ ...config, mqtt: { ...config.mqtt, port: 0 } });
  await daemon.start();
  url = `mqtt://127.0.0.1:${daemon.addresses().mqtt!.port}`;
  const again = await openClient(t, url, v4({ clientId: 'keeper', clean: false }));
  t.equal(again.connack.sessionPresent, true, 'the session is back');
  const other = await openClient(t, url, v5({ clientId: 'other' }));
  await other.client.subscribeAsync('$share/g/p/#', { qos: 1 });
  const publisher2 = await openClient(t, url, v5({ clientId: 'pub2' }));
  const sent = await publishMany(publisher2, 'p/2', 10, 1);
  await eventually(() => payloads(again, 'p/2').length + payloads(other).length >= 10, 5000, 'ten deliveries');
  t.ok(payloads(again, 'p/2').length > 0, `the restored member gets its share without subscribing again: ${payloads(again, 'p/2').length}`);
  t.same([...payloads(again, 'p/2'), ...payloads(other)].sort(), [...sent].sort(), 'each message once');
});

t.test('the ACL decides on the filter after the group name', async (t) => {
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwd');
  await writeFile(passwordFile, `alice:${await hashPassword('alice-pw', { N: 1024, r: 8, p: 1 })}\n`);
  const aclFile = path.join(dir, 'acl');
  await writeFile(aclFile, 'user alice\ntopic read plant/#\n');
  const { mqttUrl } = await startSecureDaemon(t, { auth: { passwordFile, aclFile } });
  const alice = await openClient(t, mqttUrl, v5({ clientId: 'alice', username: 'alice', password: 'alice-pw' }));
  const allowed = await alice.client.subscribeAsync('$share/g/plant/+', { qos: 1 });
  t.same(allowed.map((g) => g.qos), [1], 'a readable filter: granted');
  // mqtt.js rejects a SUBSCRIBE whose SUBACK carries an error reason code, with the SUBACK.
  const denied = await alice.client.subscribeAsync('$share/g/office/+', { qos: 1 }).then(
    () => undefined,
    (error: { packet?: { granted?: number[] } }) => error.packet?.granted,
  );
  t.same(denied, [0x87], 'an unreadable filter: 0x87 Not authorized');
  const old = await openClient(t, mqttUrl, v4({ clientId: 'alice-old', username: 'alice', password: 'alice-pw' }));
  const deniedOld = await old.client.subscribeAsync('$share/g/office/+', { qos: 1 }).then(
    (granted) => granted.map((g) => g.qos),
    (error: { packet?: { granted?: number[] } }) => error.packet?.granted,
  );
  t.same(deniedOld, [128], '3.1.1: 0x80 Failure');
});

t.test('a malformed $share filter from an MQTT 5 client is a Protocol Error (the guard)', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  for (const filter of ['$share//a', '$share/g', '$share/g+/a']) {
    const raw = await connectRaw(t, mqttUrl, { protocolVersion: 5 });
    raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: `bad-${filter.length}`, clean: true, keepalive: 30 } as never);
    await eventually(() => raw.packets.some((p) => p.cmd === 'connack'), 5000, 'CONNACK');
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 1 }] } as never);
    await eventually(() => raw.isClosed, 5000, `the connection closed after ${filter}`);
    t.notOk(raw.packets.some((p) => p.cmd === 'suback'), `${filter}: no SUBACK`);
  }
});

/** A 3.1.1 member that never acknowledges: its QoS 1 messages stay in flight. */
async function silentMember(t: Test, url: string, clientId: string, clean: boolean, filter: string, qos: 1 | 2 = 1): Promise<RawClient> {
  const raw = await connectRaw(t, url);
  raw.send(connectPacket(clientId, 4, { clean }));
  await raw.waitForPacket('connack');
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos }] } as never);
  await raw.waitForPacket('suback');
  return raw;
}

function rawPayloads(raw: RawClient): string[] {
  return raw.packets.filter((p) => p.cmd === 'publish').map((p) => String((p as { payload: Buffer }).payload));
}

for (const clean of [true, false]) {
  t.test(`a ${clean ? 'clean' : 'persistent'} member that leaves with unacknowledged QoS 1 messages: another member gets them, once`, async (t) => {
    const { mqttUrl } = await startDaemon(t);
    const lazy = await silentMember(t, mqttUrl, 'lazy', clean, '$share/w/jobs');
    const busy = await openClient(t, mqttUrl, v5({ clientId: 'busy' }));
    await busy.client.subscribeAsync('$share/w/jobs', { qos: 1 });
    const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
    const sent = await publishMany(publisher, 'jobs', 6, 1);
    await eventually(() => rawPayloads(lazy).length + payloads(busy).length >= 6, 5000, 'six deliveries');
    const stranded = rawPayloads(lazy);
    t.ok(stranded.length > 0, `the silent member holds ${stranded.length} unacknowledged`);
    lazy.send({ cmd: 'disconnect' } as never);
    await lazy.waitForClose();
    await eventually(() => payloads(busy).length >= 6, 5000, 'the stranded messages at the other member');
    t.same(payloads(busy).sort(), [...sent].sort(), 'the other member has every message exactly once');
    if (clean) return;
    // Back again: what moved is not sent to it a second time. A non-shared
    // marker after the resend (which goes first [MQTT-4.6.0-2]) proves it.
    const back = await openClient(t, mqttUrl, v4({ clientId: 'lazy', clean: false }));
    await back.client.subscribeAsync('marker', { qos: 1 });
    await publisher.client.publishAsync('marker', 'm', { qos: 1 });
    await back.log.waitFor((messages) => messages.some((m) => m.topic === 'marker'));
    t.same(payloads(back, 'jobs'), [], 'nothing resent to the member that left');
  });
}

t.test('no member connected: QoS 1 messages are queued for a persistent member, across a restart, and delivered when it returns', async (t) => {
  const config = testConfig(t);
  let daemon = await createDaemon(config);
  await daemon.start();
  t.teardown(() => daemon.stop());
  const urlOf = () => `mqtt://127.0.0.1:${daemon.addresses().mqtt!.port}`;
  const member = await openClient(t, urlOf(), v4({ clientId: 'away', clean: false }));
  await member.client.subscribeAsync('$share/g/q/#', { qos: 1 });
  await member.client.endAsync();
  const publisher = await openClient(t, urlOf(), v5({ clientId: 'pub' }));
  const before = await publishMany(publisher, 'q/1', 3, 1);
  const dropped = await publishMany(publisher, 'q/0', 2, 0);
  await publisher.client.endAsync();
  await daemon.stop();

  daemon = await createDaemon(config);
  await daemon.start();
  const publisher2 = await openClient(t, urlOf(), v5({ clientId: 'pub2' }));
  const after = (await publishMany(publisher2, 'q/2', 2, 1)).map((p) => `${p}`);
  const back = await openClient(t, urlOf(), v4({ clientId: 'away', clean: false }));
  await back.log.waitForCount(5);
  t.same(back.log.messages.map((m) => `${m.topic}:${m.payload}`), [...before.map((p) => `q/1:${p}`), ...after.map((p) => `q/2:${p}`)], 'every QoS 1 message, in order');
  t.same(payloads(back, 'q/0'), [], `QoS 0 messages with nobody connected are not kept (${dropped.length} published)`);
});

for (const clean of [true, false]) {
  t.test(`QoS 2, ${clean ? 'clean' : 'persistent'} member: a message the leaving member answered with PUBREC is its own; the others go to another member`, async (t) => {
    const { mqttUrl } = await startDaemon(t);
    const lazy = await silentMember(t, mqttUrl, 'lazy2', clean, '$share/w/q2', 2);
    const busy = await openClient(t, mqttUrl, v5({ clientId: 'busy2' }));
    await busy.client.subscribeAsync('$share/w/q2', { qos: 2 });
    const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub2' }));
    const sent = await publishMany(publisher, 'q2', 6, 2);
    await eventually(() => rawPayloads(lazy).length + payloads(busy).length >= 6, 5000, 'six deliveries');
    const first = lazy.packets.find((p) => p.cmd === 'publish') as { messageId: number; payload: Buffer; qos: number };
    t.equal(first.qos, 2, 'the silent member got QoS 2');
    // The receiver owns the message once it sent PUBREC [MQTT-4.3.3]: it must not go elsewhere.
    lazy.send({ cmd: 'pubrec', messageId: first.messageId } as never);
    await lazy.waitForPacket('pubrel');
    const kept = String(first.payload);
    lazy.send({ cmd: 'disconnect' } as never);
    await lazy.waitForClose();
    const expected = sent.filter((p) => p !== kept).sort();
    await eventually(() => payloads(busy).length >= expected.length, 5000, 'the unanswered messages at the other member');
    // A marker on a non-shared subscription, published after, proves nothing more comes.
    await busy.client.subscribeAsync('marker2', { qos: 1 });
    await publisher.client.publishAsync('marker2', 'm', { qos: 1 });
    await busy.log.waitFor((messages) => messages.some((m) => m.topic === 'marker2'));
    t.same(payloads(busy, 'q2').sort(), expected, `every message but the one answered with PUBREC (${kept}), once`);
  });
}

/** Two persistent members of `$share/g/work/#` that are away, `own` also subscribed to work/own/# for itself. */
async function twoAway(t: Test, url: string): Promise<void> {
  const first = await openClient(t, url, v4({ clientId: 'own', clean: false }));
  await first.client.subscribeAsync('$share/g/work/#', { qos: 1 });
  await first.client.subscribeAsync('work/own/#', { qos: 1 });
  await first.client.endAsync();
  const second = await openClient(t, url, v5({ clientId: 'other', clean: false, properties: { sessionExpiryInterval: 300 } }));
  await second.client.subscribeAsync('$share/g/work/#', { qos: 1 });
  await second.client.endAsync();
}

/** Subscribes `member` to its own marker topic and waits for a marker published after everything before: what it got by then is all it gets. */
async function caughtUp(member: OpenedClient, clientId: string, publisher: OpenedClient): Promise<void> {
  await member.client.subscribeAsync(`marker/${clientId}`, { qos: 1 });
  await publisher.client.publishAsync(`marker/${clientId}`, 'm', { qos: 1 });
  await member.log.waitFor((messages) => messages.some((m) => m.topic === `marker/${clientId}`));
}

/** Reconnects a persistent session and shows, with a non-shared marker after its resend [MQTT-4.6.0-2], what it got. */
async function resumed(t: Test, url: string, clientId: string, publisher: OpenedClient): Promise<OpenedClient> {
  const back = await openClient(t, url, v4({ clientId, clean: false }));
  await caughtUp(back, clientId, publisher);
  return back;
}

t.test('a persistent member that subscribes takes the messages waiting for members that are away, a clean one does not; what a session gets for itself stays', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  await twoAway(t, mqttUrl);
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  // Queued round-robin for the two absent sessions (no member connected).
  const jobs = await publishMany(publisher, 'work/jobs', 6, 1);
  await publisher.client.publishAsync('work/own/x', 'for own itself', { qos: 1 });
  const clean = await openClient(t, mqttUrl, v5({ clientId: 'clean-newcomer' }));
  await clean.client.subscribeAsync('$share/g/work/#', { qos: 1 });
  const newcomer = await openClient(t, mqttUrl, v5({ clientId: 'newcomer', clean: false, properties: { sessionExpiryInterval: 300 } }));
  await newcomer.client.subscribeAsync('$share/g/work/#', { qos: 1 });
  await eventually(() => payloads(newcomer, 'work/jobs').length >= jobs.length, 5000, 'the waiting jobs at the newcomer');
  await caughtUp(newcomer, 'newcomer', publisher);
  await caughtUp(clean, 'clean-newcomer', publisher);
  t.same(payloads(newcomer, 'work/jobs').sort(), [...jobs].sort(), 'every job, once, to the member with a persistent session');
  t.same(payloads(clean, 'work/jobs'), [], 'none to the clean member: stored messages are not moved into a queue kept in memory');
  const own = await resumed(t, mqttUrl, 'own', publisher);
  t.same(payloads(own, 'work/'), ['for own itself'], 'own keeps the message it has through its own subscription, and no job');
  const other = await resumed(t, mqttUrl, 'other', publisher);
  t.same(payloads(other, 'work/jobs'), [], 'nothing is sent again to the other member');
});

t.test('QoS 2: a message sent to a member now away stays its own [MQTT-4.8.2-4]; one never sent moves to a member that connects', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const lazy = await silentMember(t, mqttUrl, 'lazy-q2', false, '$share/g/q2', 2);
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await publisher.client.publishAsync('q2', 'sent', { qos: 2 });
  await lazy.waitFor(() => rawPayloads(lazy).includes('sent'), 5000, 'the PUBLISH at the silent member');
  lazy.send({ cmd: 'disconnect' } as never);
  await lazy.waitForClose();
  // No member connected: queued in the one session of the group.
  await publisher.client.publishAsync('q2', 'never sent', { qos: 2 });
  const newcomer = await openClient(t, mqttUrl, v5({ clientId: 'newcomer-q2', clean: false, properties: { sessionExpiryInterval: 300 } }));
  await newcomer.client.subscribeAsync('$share/g/q2', { qos: 2 });
  await eventually(() => payloads(newcomer, 'q2').includes('never sent'), 5000, 'the message never sent at the newcomer');
  await caughtUp(newcomer, 'newcomer-q2', publisher);
  t.same(payloads(newcomer, 'q2'), ['never sent'], 'the newcomer gets the message never sent, not the one in flight');
  const back = await openClient(t, mqttUrl, v4({ clientId: 'lazy-q2', clean: false }));
  // mqtt.js hands a QoS 2 message on at PUBREL, which may come after a marker.
  await eventually(() => payloads(back, 'q2').length > 0, 5000, 'the resent message');
  await caughtUp(back, 'lazy-q2', publisher);
  t.same(payloads(back, 'q2'), ['sent'], 'the member that was away gets its QoS 2 message again, to complete it');
});

t.test('a persistent member whose session resumes takes the messages waiting for another member that is away', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  await twoAway(t, mqttUrl);
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  const jobs = await publishMany(publisher, 'work/jobs', 4, 1);
  const back = await openClient(t, mqttUrl, v4({ clientId: 'other', clean: false }));
  await eventually(() => payloads(back, 'work/jobs').length >= jobs.length, 5000, "its own jobs and the other member's");
  t.same(payloads(back, 'work/jobs').sort(), [...jobs].sort(), 'every job, once');
  const own = await resumed(t, mqttUrl, 'own', publisher);
  t.same(payloads(own, 'work/jobs'), [], 'nothing is sent again to the member that was away');
});

t.test('a member whose session expires hands the messages waiting in it to another member, away or connected [MQTT-4.8.2]', async (t) => {
  const { daemon, mqttUrl } = await startDaemon(t);
  for (const [clientId, sessionExpiryInterval] of [['short', 1], ['long', 300]] as const) {
    const member = await openClient(t, mqttUrl, v5({ clientId, clean: false, properties: { sessionExpiryInterval } }));
    await member.client.subscribeAsync('$share/g/exp/#', { qos: 1 });
    await member.client.endAsync();
  }
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  // With no member connected, queued round-robin: two for each session.
  const jobs = await publishMany(publisher, 'exp/jobs', 4, 1);
  await eventually(() => daemon.storeStats().sessionsExpired === 1, 5000, "short's session to expire");
  const back = await openClient(t, mqttUrl, v5({ clientId: 'long', clean: false, properties: { sessionExpiryInterval: 300 } }));
  await caughtUp(back, 'long', publisher);
  t.same(payloads(back, 'exp/jobs').sort(), [...jobs].sort(), 'every job, once: its own two and the two of the expired session');
});
