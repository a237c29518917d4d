/**
 * MQTT 5 flow limits and what the broker tells a v5 client: the client's
 * Receive Maximum and Maximum Packet Size on delivery, the CONNACK's
 * announcements and Server Keep Alive, the bound on incoming QoS 2 messages
 * awaiting PUBREL, and the Reason Codes of the broker's acknowledgements and
 * DISCONNECTs. Real daemon on loopback, real mqtt.js clients, raw bytes where
 * a client must misbehave.
 */
import t from 'tap';
import type { Test } from 'tap';
import type { Packet } from 'mqtt-packet';
import type { IClientOptions } from 'mqtt';
import { startDaemon } from './helpers/daemon.js';
import { eventually, openClient } from './helpers/mqtt.js';
import { connectPacket, published, rawClient, rawConnected, type Raw } from './helpers/plain-aedes.js';
import { connect5, P, property, publish5 } from './helpers/packets.js';
import { variableByteIntegerBytes } from '../src/broker/aedes-seam/publish-frames.js';

const v5 = (options: IClientOptions = {}): IClientOptions => ({ protocolVersion: 5, ...options });

const portOf = (url: string): number => Number(new URL(url).port);

/**
 * A daemon holding `stored` QoS 1 messages (m0, m1, … on `${prefix}/t`) for
 * the v5 session `clientId`, which subscribed to `${prefix}/#` with Receive
 * Maximum `receiveMaximum` and went away. Returns the CONNECT options that
 * resume the session and the publisher, still connected.
 */
async function storedWhileAway(t: Test, clientId: string, prefix: string, receiveMaximum: number, stored: number) {
  const { mqttUrl } = await startDaemon(t);
  const port = portOf(mqttUrl);
  const session = { clean: false, properties: { sessionExpiryInterval: 300, receiveMaximum } };
  const away = await rawConnected(t, port, clientId, 5, session);
  away.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${prefix}/#`, qos: 1 }] });
  await away.next('suback');
  away.send({ cmd: 'disconnect' });
  await away.waitForClose();
  const publisher = await openClient(t, mqttUrl, v5({ clientId: `${prefix}-publisher` }));
  for (let i = 0; i < stored; i++) await publisher.client.publishAsync(`${prefix}/t`, `m${i}`, { qos: 1 });
  return { port, session, publisher };
}

/** The DISCONNECT the broker sent before closing, if any. */
function serverDisconnect(raw: Raw): Extract<Packet, { cmd: 'disconnect' }> | undefined {
  return raw.packets.find((p): p is Extract<Packet, { cmd: 'disconnect' }> => p.cmd === 'disconnect');
}

t.test("a v5 client's Receive Maximum bounds the QoS 1 messages in flight to it [MQTT-3.3.4-9] (corrects aedes #829)", async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const raw = await rawConnected(t, portOf(mqttUrl), 'receive-max-2', 5, { properties: { receiveMaximum: 2 } });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'rm/#', qos: 1 }] });
  await raw.next('suback');
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'rm-publisher' }));
  for (let i = 0; i < 5; i++) await publisher.client.publishAsync('rm/t', `m${i}`, { qos: 1 });
  // Everything the broker wrote before the PINGRESP has arrived.
  await raw.ping();
  t.same(published(raw.packets).map((p) => p.payload.toString()), ['m0', 'm1'], 'two in flight, no more (limits.maxInflightMessages is 20)');
  const [first, second] = published(raw.packets);
  raw.send({ cmd: 'puback', messageId: first!.messageId! }, { cmd: 'puback', messageId: second!.messageId! });
  await raw.waitFor((p) => published(p).length === 4, 'two more after two PUBACKs');
  await raw.ping();
  t.equal(published(raw.packets).length, 4, 'still only two unacknowledged');
  for (const message of published(raw.packets).slice(2)) raw.send({ cmd: 'puback', messageId: message.messageId! });
  await raw.waitFor((p) => published(p).length === 5, 'the last one');
  t.same(published(raw.packets).map((p) => p.payload.toString()), ['m0', 'm1', 'm2', 'm3', 'm4'], 'all five, in order');
});

t.test('a v5 PUBREC with an error Reason Code ends the QoS 2 flow and frees its place in the window (4.9)', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const raw = await rawConnected(t, portOf(mqttUrl), 'pubrec-error', 5, { properties: { receiveMaximum: 1 } });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'q2/#', qos: 2 }] });
  await raw.next('suback');
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'q2-publisher' }));
  await publisher.client.publishAsync('q2/t', 'refused', { qos: 2 });
  await publisher.client.publishAsync('q2/t', 'next', { qos: 2 });
  const refused = await raw.next('publish');
  await raw.ping();
  t.equal(published(raw.packets).length, 1, 'one in flight with Receive Maximum 1');
  // 0x80 Unspecified error: no PUBREL follows, no PUBCOMP is due.
  raw.send({ cmd: 'pubrec', messageId: refused.messageId!, reasonCode: 0x80 });
  const next = await raw.next('publish', 1);
  t.equal(next.payload.toString(), 'next', 'the next message goes once the first flow ended without PUBCOMP');
  t.notOk(raw.packets.some((p) => p.cmd === 'pubrel'), 'and no PUBREL for the refused one');
});

t.test("nothing larger than a v5 client's Maximum Packet Size is sent to it, others get it, and it is counted [MQTT-3.1.2-24] [MQTT-3.1.2-25]", async (t) => {
  const { mqttUrl, daemon } = await startDaemon(t);
  const small = await openClient(t, mqttUrl, v5({ clientId: 'small', properties: { maximumPacketSize: 100 } }));
  await small.client.subscribeAsync('big/#', { qos: 1 });
  let closed = false;
  small.client.on('close', () => (closed = true));
  const large = await openClient(t, mqttUrl, v5({ clientId: 'large' }));
  await large.client.subscribeAsync('big/#', { qos: 1 });
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'publisher' }));
  await publisher.client.publishAsync('big/x', Buffer.alloc(1000), { qos: 1 });
  // Near the bound: a User Property makes a small payload too large, so properties count.
  await publisher.client.publishAsync('big/props', 'p', { qos: 0, properties: { userProperties: { k: 'v'.repeat(80) } } });
  await publisher.client.publishAsync('big/marker', 'm', { qos: 1 });
  await small.log.waitFor((m) => m.some((x) => x.topic === 'big/marker'), 5000, 'the marker');
  await large.log.waitFor((m) => m.some((x) => x.topic === 'big/marker'), 5000, 'the marker, large');
  t.equal(closed, false, 'the small client stays connected');
  t.same(small.log.messages.map((m) => m.topic), ['big/marker'], 'the oversized messages are discarded for it, the next one delivered');
  t.same(large.log.messages.map((m) => m.topic), ['big/x', 'big/props', 'big/marker'], 'the other subscriber gets everything');
  const stats = daemon.limitsStats();
  t.equal(stats.flow.oversizeDrops, 2, 'both drops counted');
  t.equal(stats.limitHits.clientMaxPacketSize, 2, 'as limit hits too');
});

t.test("a persistent session's message too large for the client leaves its queue: never resent", async (t) => {
  const { mqttUrl, daemon } = await startDaemon(t);
  const session = v5({ clientId: 'small-keeper', clean: false, properties: { sessionExpiryInterval: 3600, maximumPacketSize: 100 } });
  const first = await openClient(t, mqttUrl, session);
  await first.client.subscribeAsync('keep/#', { qos: 1 });
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'keep-publisher' }));
  await publisher.client.publishAsync('keep/big', Buffer.alloc(500), { qos: 1 });
  await publisher.client.publishAsync('keep/marker', 'm1', { qos: 1 });
  await first.log.waitFor((m) => m.some((x) => x.topic === 'keep/marker'), 5000, 'the first marker');
  await eventually(() => daemon.storeStats().queuedEntries === 0, 5000, 'the queue to empty');
  await first.client.endAsync();
  const back = await openClient(t, mqttUrl, session);
  t.equal(back.connack.sessionPresent, true, 'the session resumed');
  await publisher.client.publishAsync('keep/marker', 'm2', { qos: 1 });
  await back.log.waitFor((m) => m.some((x) => x.payload === 'm2'), 5000, 'the second marker');
  t.same(back.log.messages.map((m) => m.payload), ['m2'], 'the oversized message was not kept for the next connection');
});

t.test("a message queued while a v5 client was away and too large for it is not resent when it comes back: it leaves the queue [MQTT-3.1.2-25]", async (t) => {
  const { mqttUrl, daemon } = await startDaemon(t);
  const port = portOf(mqttUrl);
  const maximumPacketSize = 200;
  const session = { clean: false, properties: { sessionExpiryInterval: 300, maximumPacketSize } };
  const away = await rawConnected(t, port, 'mps-away', 5, session);
  away.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'mps/#', qos: 2 }] });
  await away.next('suback');
  away.send({ cmd: 'disconnect' });
  await away.waitForClose();
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'mps-publisher' }));
  await publisher.client.publishAsync('mps/t', 'a', { qos: 1 });
  await publisher.client.publishAsync('mps/t', Buffer.alloc(1000), { qos: 1 });
  await publisher.client.publishAsync('mps/t', Buffer.alloc(1000), { qos: 2 });
  // Small payload, too large with its properties: they count, as on delivery.
  await publisher.client.publishAsync('mps/t', 'p', { qos: 1, properties: { userProperties: { k: 'v'.repeat(maximumPacketSize) } } });
  await publisher.client.publishAsync('mps/t', 'b', { qos: 1 });
  await eventually(() => daemon.storeStats().queuedEntries === 5, 5000, 'five messages queued for the session');

  const back = await rawConnected(t, port, 'mps-away', 5, session);
  await back.waitFor((p) => published(p).some((m) => m.payload.toString() === 'b'), 'the last small message');
  // Everything the broker wrote before the PINGRESP has arrived.
  await back.ping();
  const resent = published(back.packets);
  t.same(resent.map((m) => m.payload.toString()), ['a', 'b'], 'the two that fit, in order; the three that do not are discarded');
  t.ok(
    back.packets.every((p) => p.length === undefined || 1 + variableByteIntegerBytes(p.length) + p.length <= maximumPacketSize),
    'no packet larger than the Maximum Packet Size',
  );
  const stats = daemon.limitsStats();
  t.equal(stats.flow.oversizeDrops, 3, 'each discard counted');
  t.equal(stats.limitHits.clientMaxPacketSize, 3, 'as limit hits too');
  for (const message of resent) back.send({ cmd: 'puback', messageId: message.messageId! });
  await eventually(() => daemon.storeStats().queuedEntries === 0, 5000, 'the queue to empty: the discarded messages are not kept');
  back.send({ cmd: 'disconnect' });
  await back.waitForClose();

  const again = await rawConnected(t, port, 'mps-away', 5, session);
  await publisher.client.publishAsync('mps/t', 'marker', { qos: 1 });
  await again.waitFor((p) => published(p).some((m) => m.payload.toString() === 'marker'), 'the marker');
  t.same(published(again.packets).map((m) => m.payload.toString()), ['marker'], 'nothing resent on the next connection');
});

t.test('CONNACK tells a v5 client the broker limits (3.2.2.3)', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { maxPacketSizeBytes: 65536 }, limits: { maxIncomingAwaitingRelease: 50 } });
  const { connack } = await openClient(t, mqttUrl, v5({ clientId: 'curious' }));
  const announced = connack.properties ?? {};
  t.equal(announced.topicAliasMaximum, 10, 'Topic Alias Maximum: broker.topicAliasMaximum, 10 by default');
  t.equal(announced.maximumPacketSize, 65536, 'Maximum Packet Size: broker.maxPacketSizeBytes');
  t.equal(announced.receiveMaximum, 50, 'Receive Maximum: limits.maxIncomingAwaitingRelease');
  t.equal(announced.sharedSubscriptionAvailable, true, 'shared subscriptions available (src/broker/shared-subscriptions.ts)');
  for (const unsaid of ['maximumQoS', 'retainAvailable', 'wildcardSubscriptionAvailable', 'subscriptionIdentifiersAvailable'] as const) {
    t.equal(announced[unsaid], undefined, `${unsaid} not announced: available, the default`);
  }
  t.equal(announced.serverKeepAlive, undefined, "no Server Keep Alive: the client's own stands");
  const other = await startDaemon(t, { broker: { topicAliasMaximum: 0 } });
  const none = await openClient(t, other.mqttUrl, v5({ clientId: 'curious' }));
  t.equal(none.connack.properties?.topicAliasMaximum, undefined, 'topicAliasMaximum 0: none announced');
});

t.test('a topic alias within broker.topicAliasMaximum is accepted, one above it refused', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { topicAliasMaximum: 2 } });
  const watcher = await openClient(t, mqttUrl, v5({ clientId: 'alias-watcher' }));
  await watcher.client.subscribeAsync('alias/#', { qos: 0 });
  const raw = await rawConnected(t, portOf(mqttUrl), 'aliaser', 5);
  raw.send(publish5('alias/long/topic', { qos: 0, payload: 'first', properties: [property.u16(P.topicAlias, 2)] }));
  raw.send(publish5('', { qos: 0, payload: 'second', properties: [property.u16(P.topicAlias, 2)] }));
  await watcher.log.waitFor((m) => m.length === 2, 5000, 'both messages');
  t.same(watcher.log.messages.map((m) => `${m.topic} ${m.payload}`), ['alias/long/topic first', 'alias/long/topic second'], 'the alias stands for its topic');
  raw.send(publish5('alias/x', { qos: 0, payload: 'third', properties: [property.u16(P.topicAlias, 3)] }));
  await raw.waitForClose();
  t.equal(serverDisconnect(raw)?.reasonCode, 0x94, 'alias 3 over the maximum of 2: DISCONNECT 0x94 Topic Alias invalid');
});

t.test('a v5 keep-alive outside broker.min/maxKeepaliveSec is answered with Server Keep Alive, not refused [MQTT-3.2.2-21]', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { maxKeepaliveSec: 120, minKeepaliveSec: 10 } });
  const sleepy = await openClient(t, mqttUrl, v5({ clientId: 'sleepy', keepalive: 600 }));
  t.equal(sleepy.connack.properties?.serverKeepAlive, 120, 'too long: the maximum');
  const none = await openClient(t, mqttUrl, v5({ clientId: 'none', keepalive: 0 }));
  t.equal(none.connack.properties?.serverKeepAlive, 120, 'none: the maximum');
  const eager = await openClient(t, mqttUrl, v5({ clientId: 'eager', keepalive: 2 }));
  t.equal(eager.connack.properties?.serverKeepAlive, 10, 'too short: the minimum');
  const fine = await openClient(t, mqttUrl, v5({ clientId: 'fine', keepalive: 60 }));
  t.equal(fine.connack.properties?.serverKeepAlive, undefined, 'within: the client keeps its own');
  const old = await openClient(t, mqttUrl, { clientId: 'old', keepalive: 600, reconnectPeriod: 0 }).then(
    () => 'accepted',
    (error: Error) => error.message,
  );
  t.match(old, /Identifier rejected/, 'a 3.1.1 client is still refused with return code 2');
});

t.test('a v5 client silent past its keep-alive is sent DISCONNECT 0x8D Keep Alive timeout', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { maxKeepaliveSec: 1 } });
  const raw = await rawClient(t, portOf(mqttUrl), 5);
  raw.send(connectPacket('silent', 5, { keepalive: 0 }));
  const connack = await raw.next('connack');
  t.equal(connack.properties?.serverKeepAlive, 1, 'told to ping every second');
  await raw.waitForClose(5000);
  t.equal(serverDisconnect(raw)?.reasonCode, 0x8d, 'then told why it was dropped');
});

for (const version of [4, 5] as const) {
  const level = version === 5 ? 'MQTT 5' : 'MQTT 3.1.1';
  t.test(`${level}: more incoming QoS 2 messages awaiting PUBREL than limits.maxIncomingAwaitingRelease close the connection (GHSA-5jvp)`, async (t) => {
    const { mqttUrl, daemon } = await startDaemon(t, { limits: { maxIncomingAwaitingRelease: 3 } });
    const raw = await rawConnected(t, portOf(mqttUrl), 'qos2-flood', version);
    const send = (id: number) => raw.send({ cmd: 'publish', topic: 'flood/t', qos: 2, messageId: id, payload: `m${id}`, retain: false, dup: false });
    for (const id of [1, 2, 3]) send(id);
    await raw.waitFor((p) => p.filter((x) => x.cmd === 'pubrec').length === 3, 'three PUBRECs');
    // A resend of one awaiting its PUBREL is the same message, not a fourth.
    send(3);
    raw.send({ cmd: 'pubrel', messageId: 1 });
    await raw.next('pubcomp');
    send(4);
    await raw.waitFor((p) => p.filter((x) => x.cmd === 'pubrec').length === 5, 'a PUBREC for the fourth, one having been released');
    await raw.ping();
    t.notOk(raw.closed, 'three awaiting PUBREL: still connected');
    send(5);
    await raw.waitForClose();
    t.equal(raw.packets.filter((x) => x.cmd === 'pubrec').length, 5, 'no PUBREC for the one over the bound');
    if (version === 5) t.equal(serverDisconnect(raw)?.reasonCode, 0x93, 'DISCONNECT 0x93 Receive Maximum exceeded');
    else t.equal(serverDisconnect(raw), undefined, 'just closed: 3.1.1 has no server DISCONNECT');
    t.equal(daemon.limitsStats().limitHits.maxAwaitingRelease, 1, 'counted');
  });
}

t.test('protocol violations of a v5 client are answered with a Reason Code before the close [MQTT-4.13.1-1]', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { maxPacketSizeBytes: 1024 }, limits: { maxTopicLevels: 3 } });
  const port = portOf(mqttUrl);

  const tooLarge = await rawConnected(t, port, 'too-large', 5);
  tooLarge.send({ cmd: 'publish', topic: 'big', qos: 0, payload: Buffer.alloc(2000), retain: false, dup: false });
  await tooLarge.waitForClose();
  t.equal(serverDisconnect(tooLarge)?.reasonCode, 0x95, 'over broker.maxPacketSizeBytes: 0x95 Packet too large');

  const deep = await rawConnected(t, port, 'deep', 5);
  deep.send({ cmd: 'publish', topic: 'a/b/c/d', qos: 0, payload: 'x', retain: false, dup: false });
  await deep.waitForClose();
  t.equal(serverDisconnect(deep)?.reasonCode, 0x90, 'over limits.maxTopicLevels: 0x90 Topic Name invalid');

  const zero = await rawConnected(t, port, 'zero-id', 5);
  // QoS 1 PUBLISH with packet identifier 0 [MQTT-2.2.1-3]: a Protocol Error.
  zero.send(publish5('z/t', { qos: 1, id: 0, payload: 'x' }));
  await zero.waitForClose();
  t.equal(serverDisconnect(zero)?.reasonCode, 0x82, 'packet identifier 0: 0x82 Protocol Error');

  const malformed = await rawConnected(t, port, 'reserved-flags', 5);
  malformed.send(Buffer.from([0xc1, 0x00]));
  await malformed.waitForClose();
  t.equal(serverDisconnect(malformed)?.reasonCode, 0x81, 'PINGREQ with reserved flags: 0x81 Malformed Packet');

  const badConnect = await rawClient(t, port, 5);
  // A Receive Maximum property given twice (3.1.2.11.3): the CONNECT itself is at fault.
  badConnect.send(connect5({ clientId: 'twice', properties: [property.u16(P.receiveMaximum, 5), property.u16(P.receiveMaximum, 6)] }));
  await badConnect.waitForClose();
  const connack = badConnect.packets.find((p) => p.cmd === 'connack');
  t.equal(connack?.reasonCode, 0x82, 'a fault in the CONNECT: CONNACK 0x82 Protocol Error');
  t.equal(serverDisconnect(badConnect), undefined, 'and no DISCONNECT');
});

t.test('the broker tells v5 clients why it closes them: session taken over 0x8E, server shutting down 0x8B', async (t) => {
  const { mqttUrl, daemon } = await startDaemon(t);
  const port = portOf(mqttUrl);
  const first = await rawConnected(t, port, 'twin', 5);
  await rawConnected(t, port, 'twin', 5);
  await first.waitForClose();
  t.equal(serverDisconnect(first)?.reasonCode, 0x8e, 'the earlier connection: 0x8E Session taken over');

  const stays = await rawConnected(t, port, 'until-the-end', 5);
  await daemon.stop();
  await stays.waitForClose();
  t.equal(serverDisconnect(stays)?.reasonCode, 0x8b, 'a planned stop: 0x8B Server shutting down');
});

t.test('SUBACK and UNSUBACK carry MQTT 5 Reason Codes', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const raw = await rawConnected(t, portOf(mqttUrl), 'codes', 5);
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'ok/#', qos: 1 }, { topic: '$share/g/t', qos: 0 }] });
  const suback = await raw.next('suback');
  t.same(suback.granted, [1, 0], 'granted QoS 1, and QoS 0 for the shared subscription');
  raw.send({ cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['ok/#', 'never/#'] });
  const unsuback = await raw.next('unsuback');
  t.same(unsuback.granted, [0, 0x11], 'Success; 0x11 No subscription existed');
});

t.test("a v5 client's Receive Maximum bounds the stored messages resent after CONNECT, and the live ones behind them [MQTT-3.3.4-9]", async (t) => {
  const { port, session, publisher } = await storedWhileAway(t, 'resend-rm', 'rr', 2, 6);
  const back = await rawConnected(t, port, 'resend-rm', 5, session);
  await back.waitFor((p) => published(p).length >= 2, 'the first two stored messages');
  // Published while the backlog is still going out: it waits behind it, in order [MQTT-4.6.0-2].
  await publisher.client.publishAsync('rr/t', 'live', { qos: 1 });
  await back.ping();
  t.equal(published(back.packets).length, 2, 'two stored messages in flight, no more');
  for (let acked = 0; acked < 7; acked += 2) {
    const due = Math.min(acked + 4, 7);
    for (const message of published(back.packets).slice(acked, acked + 2)) back.send({ cmd: 'puback', messageId: message.messageId! });
    await back.waitFor((p) => published(p).length >= due, `${due} after ${acked + 2} PUBACKs`);
    await back.ping();
    t.equal(published(back.packets).length, due, `no more than two unacknowledged after ${acked + 2} PUBACKs`);
  }
  t.same(published(back.packets).map((p) => p.payload.toString()), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'live'], 'the backlog in order, then the live message');
  t.ok(published(back.packets).slice(0, 6).every((p) => p.dup !== true), 'stored messages never sent before go without DUP');
});

t.test('a client that goes while the resend after CONNECT waits for room in its window leaves the broker serving, and gets the rest next time', async (t) => {
  const { port, session, publisher } = await storedWhileAway(t, 'resend-gone', 'rg', 1, 3);
  // One in flight, unacknowledged: the resend waits for room; the client goes meanwhile. (Its
  // wait must end with the connection even while aedes still reads the client as connecting,
  // which lasts until aedes' close has run its unsubscribe step: under load, test/reconnect-soak
  // hung the process when it did not.)
  const dropped = await rawConnected(t, port, 'resend-gone', 5, session);
  await dropped.waitFor((p) => published(p).length === 1, 'the first stored message');
  dropped.drop();
  await dropped.waitForClose();
  // The broker still answers (its resend for the closed connection ended) ...
  await publisher.client.publishAsync('rg/t', 'm3', { qos: 1 });
  // ... and the session resumes with everything still unacknowledged, one at a time.
  const back = await rawConnected(t, port, 'resend-gone', 5, session);
  for (let i = 0; i < 4; i++) {
    await back.waitFor((p) => published(p).length === i + 1, `message ${i + 1}`);
    back.send({ cmd: 'puback', messageId: published(back.packets)[i]!.messageId! });
  }
  t.same(published(back.packets).map((p) => p.payload.toString()), ['m0', 'm1', 'm2', 'm3'], 'all four, in order');
  t.equal(published(back.packets)[0]!.dup, true, 'the one in flight at the drop goes again with DUP');
});
