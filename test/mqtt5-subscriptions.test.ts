/**
 * MQTT 5 subscriptions end to end, with real mqtt.js v5 clients: the
 * subscription options (No Local, Retain As Published, Retain Handling),
 * every matching Subscription Identifier on the one delivery, live, queued
 * and retained, and through a daemon restart where the store is involved.
 */
import t, { type Test } from 'tap';
import type { IClientOptions, IPublishPacket } from 'mqtt';
import * as mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import { startDaemon, testConfig, runDaemon } from './helpers/daemon.js';
import { connectRaw, openClient, type OpenedClient, type RawClient } from './helpers/mqtt.js';

const v5 = (options: IClientOptions = {}): IClientOptions => ({ protocolVersion: 5, ...options });


/** The Subscription Identifiers a delivered PUBLISH carries, sorted. */
function identifiers(packet: IPublishPacket | undefined): number[] {
  const id = packet?.properties?.subscriptionIdentifier;
  return (id === undefined ? [] : [id].flat()).sort((a, b) => a - b);
}

/** Publishes a marker on `topic` and waits for it: every message published before it on the same path has been delivered. */
async function marker(publisher: OpenedClient, subscriber: OpenedClient, topic: string): Promise<void> {
  await publisher.client.publishAsync(topic, 'marker', { qos: 1 });
  await subscriber.log.waitFor((m) => m.some((x) => x.topic === topic), 5000, `the marker on ${topic}`);
}

for (const transport of ['TCP', 'WebSocket'] as const) {
  t.test(`${transport}: one delivery carries the identifiers of every matching subscription [MQTT-3.3.4-3/4]`, async (t) => {
    const { mqttUrl, wsUrl } = await startDaemon(t);
    const url = transport === 'TCP' ? mqttUrl : wsUrl;
    const sub = await openClient(t, url, v5({ clientId: 'ids' }));
    await sub.client.subscribeAsync('si/#', { qos: 1, properties: { subscriptionIdentifier: 1 } });
    await sub.client.subscribeAsync('si/+/x', { qos: 0, properties: { subscriptionIdentifier: 2 } });
    await sub.client.subscribeAsync('si/a/x', { qos: 1 });
    await sub.client.subscribeAsync('si/marker', { qos: 1 });
    const pub = await openClient(t, url, v5({ clientId: 'pub' }));
    await pub.client.publishAsync('si/a/x', 'three match', { qos: 1, properties: { userProperties: { k: 'v' } } });
    await pub.client.publishAsync('si/b', 'one matches', { qos: 1 });
    await marker(pub, sub, 'si/marker');
    const byTopic = (topic: string) => sub.log.messages.filter((m) => m.topic === topic);
    t.equal(byTopic('si/a/x').length, 1, 'one copy of a message matching three subscriptions [MQTT-3.3.4-2]');
    t.same(identifiers(byTopic('si/a/x')[0]?.packet), [1, 2], 'carrying both identifiers, the subscription without one adding none');
    t.equal(byTopic('si/a/x')[0]?.packet.qos, 1, 'at the highest granted QoS [MQTT-3.3.5-1]');
    t.same(byTopic('si/a/x')[0]?.packet.properties?.userProperties, { k: 'v' }, 'its user properties kept');
    t.same(identifiers(byTopic('si/b')[0]?.packet), [1], 'one matching subscription: its identifier alone');
    t.same(identifiers(byTopic('si/marker')[0]?.packet), [1], 'si/# matches the marker too; si/marker has no identifier');
  });
}

t.test('No Local is judged per subscription: another matching subscription still delivers the own message [MQTT-3.8.3-3]', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const self = await openClient(t, mqttUrl, v5({ clientId: 'self' }));
  // The No Local subscription is made first, so its copy comes first.
  await self.client.subscribeAsync('nl/#', { qos: 1, nl: true, properties: { subscriptionIdentifier: 5 } });
  await self.client.subscribeAsync('nl/both', { qos: 1, properties: { subscriptionIdentifier: 6 } });
  await self.client.subscribeAsync('nl/marker', { qos: 1 });
  await self.client.publishAsync('nl/only', 'own, No Local only', { qos: 1 });
  await self.client.publishAsync('nl/both', 'own, also without No Local', { qos: 1 });
  const other = await openClient(t, mqttUrl, v5({ clientId: 'other' }));
  await other.client.publishAsync('nl/only', 'from another client', { qos: 1 });
  await marker(self, self, 'nl/marker');
  const got = self.log.messages.filter((m) => m.topic !== 'nl/marker');
  t.same(
    got.map((m) => m.payload),
    ['own, also without No Local', 'from another client'],
    'its own message only through the subscription without No Local; others through both',
  );
  t.same(identifiers(got[0]?.packet), [6], 'the own message carries only the identifier of the subscription that counts');
  t.same(identifiers(got[1]?.packet), [5], "another client's message: the No Local subscription counts");
});

t.test('Retain As Published with overlapping subscriptions: RETAIN kept when one of them asks [MQTT-3.3.1-12/13]', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const sub = await openClient(t, mqttUrl, v5({ clientId: 'rap' }));
  await sub.client.subscribeAsync('rap/x', { qos: 1, rap: false });
  await sub.client.subscribeAsync('rap/#', { qos: 1, rap: true });
  await sub.client.subscribeAsync('plain/#', { qos: 1 });
  const pub = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await pub.client.publishAsync('rap/x', 'kept', { qos: 1, retain: true });
  await pub.client.publishAsync('plain/x', 'cleared', { qos: 1, retain: true });
  await pub.client.publishAsync('rap/y', 'not retained', { qos: 1 });
  const messages = await sub.log.waitForCount(3);
  t.same(
    messages.map((m) => [m.topic, m.packet.retain]),
    [
      ['rap/x', true],
      ['plain/x', false],
      ['rap/y', false],
    ],
    'RETAIN as published where one matching subscription has Retain As Published, cleared where none has',
  );
});

t.test('Retain Handling 0, 1 and 2 on SUBSCRIBE [MQTT-3.3.1-9/10/11]', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const pub = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await pub.client.publishAsync('rh/state', 'retained', { qos: 1, retain: true });
  const sub = await openClient(t, mqttUrl, v5({ clientId: 'rh' }));
  const retainedFor = async (topic: string, rh: 0 | 1 | 2) => {
    const before = sub.log.messages.length;
    await sub.client.subscribeAsync(topic, { qos: 1, rh });
    // A marker published after the SUBACK arrives after any retained message of this SUBSCRIBE.
    await sub.client.subscribeAsync('rh/marker', { qos: 1 });
    await marker(pub, sub, 'rh/marker');
    const got = sub.log.messages.slice(before).filter((m) => m.topic === 'rh/state').length;
    sub.log.messages.splice(before);
    return got;
  };
  t.equal(await retainedFor('rh/state', 2), 0, 'rh 2: no retained message');
  t.equal(await retainedFor('rh/+', 1), 1, 'rh 1, a new subscription: sent');
  t.equal(await retainedFor('rh/+', 1), 0, 'rh 1, the subscription existed: not sent');
  t.equal(await retainedFor('rh/+', 0), 1, 'rh 0: sent on every SUBSCRIBE');
});

t.test('a persistent session keeps its subscription options and identifiers through a restart, live and queued', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const session = v5({ clientId: 'keeper', clean: false, properties: { sessionExpiryInterval: 3600 } });
  const keeper = await openClient(t, first.url, session);
  await keeper.client.subscribeAsync('k/#', { qos: 1, properties: { subscriptionIdentifier: 11 } });
  await keeper.client.subscribeAsync('k/+/own', { qos: 1, nl: true, rap: true, properties: { subscriptionIdentifier: 12 } });
  await keeper.client.subscribeAsync('k/state', { qos: 1, rap: true, rh: 1, properties: { subscriptionIdentifier: 13 } });
  await keeper.client.subscribeAsync('self/#', { qos: 1, nl: true, properties: { subscriptionIdentifier: 14 } });
  // Its own message on a No Local topic, sent while online: neither delivered nor queued for later.
  await keeper.client.publishAsync('self/a', 'own', { qos: 1 });
  await keeper.client.publishAsync('k/marker', 'm', { qos: 1 });
  await keeper.log.waitFor((m) => m.some((x) => x.topic === 'k/marker'), 5000, 'the marker');
  t.same(keeper.log.messages.map((m) => m.topic), ['k/marker'], 'its own message is not delivered live');
  t.same(identifiers(keeper.log.messages[0]?.packet), [11]);
  await keeper.client.endAsync();

  const pub = await openClient(t, first.url, v5({ clientId: 'pub' }));
  const properties = {
    userProperties: { a: ['1', '2'], b: '3' },
    contentType: 'text/plain',
    payloadFormatIndicator: true,
    responseTopic: 'k/reply',
    correlationData: Buffer.from([1, 2, 3]),
    messageExpiryInterval: 3600,
  };
  await pub.client.publishAsync('k/b/own', 'queued, two identifiers', { qos: 1, retain: true, properties });
  await pub.client.publishAsync('k/state', 'queued, retained kept', { qos: 1, retain: true });
  await pub.client.publishAsync('k/other', 'queued, retain cleared', { qos: 1, retain: true });
  await pub.client.endAsync();
  await first.daemon.stop();

  const second = await runDaemon(t, config);
  const back = await openClient(t, second.url, session);
  t.equal(back.connack.sessionPresent, true, 'the session is back');
  const queued = await back.log.waitForCount(3);
  t.equal(queued.length, 3, 'its own message was not queued for it [MQTT-3.8.3-3]');
  const byPayload = (payload: string) => queued.find((m) => m.payload === payload)?.packet;
  t.same(identifiers(byPayload('queued, two identifiers')), [11, 12], 'a queued copy carries the identifiers of all its matching subscriptions [MQTT-3.3.4-3]');
  t.equal(byPayload('queued, two identifiers')?.retain, true, 'and RETAIN, one of them having Retain As Published');
  t.same(identifiers(byPayload('queued, retained kept')), [11, 13]);
  t.equal(byPayload('queued, retained kept')?.retain, true, 'Retain As Published on k/state');
  t.same(identifiers(byPayload('queued, retain cleared')), [11]);
  t.equal(byPayload('queued, retain cleared')?.retain, false, 'no subscription with Retain As Published: RETAIN cleared [MQTT-3.3.1-12]');
  const kept = byPayload('queued, two identifiers')?.properties;
  t.same(kept?.userProperties, { a: ['1', '2'], b: '3' }, 'user properties, repeats in order, kept through the store [MQTT-3.3.2-17/18]');
  t.equal(kept?.contentType, 'text/plain', 'content type');
  t.equal(kept?.payloadFormatIndicator, true, 'payload format indicator');
  t.equal(kept?.responseTopic, 'k/reply', 'response topic');
  t.same(kept?.correlationData, Buffer.from([1, 2, 3]), 'correlation data');
  const expiry = kept?.messageExpiryInterval ?? 0;
  t.ok(expiry > 0 && expiry <= 3600, `the remaining message expiry (${expiry} s) [MQTT-3.3.2-6]`);

  // The restored subscriptions, live: options and identifiers as subscribed.
  back.log.messages.splice(0);
  const pub2 = await openClient(t, second.url, v5({ clientId: 'pub' }));
  await back.client.publishAsync('self/b', 'own again', { qos: 1 });
  await pub2.client.publishAsync('k/c/own', 'live, two identifiers', { qos: 1, retain: true });
  await marker(pub2, back, 'k/marker');
  const live = back.log.messages.filter((m) => m.topic !== 'k/marker');
  t.same(live.map((m) => m.payload), ['live, two identifiers'], 'No Local still applies after the restart');
  t.same(identifiers(live[0]?.packet), [11, 12], 'with both identifiers');
  t.equal(live[0]?.packet.retain, true, 'and RETAIN as published');

  // Retain Handling 1: the restored subscription exists, so no retained message is sent.
  back.log.messages.splice(0);
  await back.client.subscribeAsync('k/state', { qos: 1, rap: true, rh: 1, properties: { subscriptionIdentifier: 13 } });
  await marker(pub2, back, 'k/marker');
  t.same(back.log.messages.map((m) => m.topic), ['k/marker'], 'rh 1 on a restored subscription sends no retained message [MQTT-3.3.1-10]');
});

t.test('retained messages keep their properties through a restart, and carry the SUBSCRIBE identifier', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const pub = await openClient(t, first.url, v5({ clientId: 'pub' }));
  await pub.client.publishAsync('r/door', 'open', {
    qos: 1,
    retain: true,
    properties: { userProperties: { z: '1', a: ['2', '3'] }, contentType: 'application/json', correlationData: Buffer.from('c'), responseTopic: 'r/ack' },
  });
  await pub.client.endAsync();
  await first.daemon.stop();
  const second = await runDaemon(t, config);
  const sub = await openClient(t, second.url, v5({ clientId: 'sub' }));
  await sub.client.subscribeAsync('r/#', { qos: 1, properties: { subscriptionIdentifier: 42 } });
  const [retained] = await sub.log.waitForCount(1);
  t.equal(retained?.packet.retain, true);
  t.same(retained?.packet.properties?.userProperties, { z: '1', a: ['2', '3'] }, 'user properties');
  t.equal(retained?.packet.properties?.contentType, 'application/json', 'content type');
  t.same(retained?.packet.properties?.correlationData, Buffer.from('c'), 'correlation data');
  t.equal(retained?.packet.properties?.responseTopic, 'r/ack', 'response topic');
  t.same(identifiers(retained?.packet), [42], 'the identifier of the SUBSCRIBE that sent it');
});

t.test('properties between MQTT 5 and 3.1.1 clients: none reach a 3.1.1 subscriber, none appear for a 3.1.1 publisher', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const old = await openClient(t, mqttUrl, { clientId: 'v4', protocolVersion: 4 });
  const fresh = await openClient(t, mqttUrl, v5({ clientId: 'v5' }));
  await old.client.subscribeAsync('mix/#', { qos: 1 });
  await fresh.client.subscribeAsync('mix/#', { qos: 1 });
  await fresh.client.publishAsync('mix/from5', 'a', { qos: 1, properties: { userProperties: { k: 'v' }, contentType: 'text/plain' } });
  await old.client.publishAsync('mix/from4', 'b', { qos: 1 });
  const toOld = await old.log.waitForCount(2);
  const toFresh = await fresh.log.waitForCount(2);
  t.same(toOld.map((m) => [m.topic, m.packet.properties]), [['mix/from5', undefined], ['mix/from4', undefined]], 'the 3.1.1 subscriber gets no properties');
  const fromOld = toFresh.find((m) => m.topic === 'mix/from4');
  t.same(fromOld?.packet.properties ?? {}, {}, "the 3.1.1 client's message reaches the MQTT 5 subscriber with no properties");
  t.same(toFresh.find((m) => m.topic === 'mix/from5')?.packet.properties?.userProperties, { k: 'v' }, 'and the MQTT 5 one with its own');
});

// ------------------------------------------------------------ Topic Aliases

const LONG = 'alias/a/rather/long/topic/name';

/** A raw MQTT 5 connection (to see the wire), CONNECTed with the given properties and subscribed to `filter`. */
async function rawSubscriber(t: Test, url: string, clientId: string, properties: Record<string, unknown>, filter: string, extra: Partial<{ clean: boolean }> = {}): Promise<RawClient> {
  const raw = await connectRaw(t, url, { protocolVersion: 5 });
  raw.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId, clean: extra.clean ?? true, keepalive: 60, properties }, { protocolVersion: 5 }));
  await raw.waitForPacket('connack');
  raw.send(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 1 }] }, { protocolVersion: 5 }));
  await raw.waitForPacket('suback');
  return raw;
}

type Publish = Extract<Packet, { cmd: 'publish' }>;
const publishes = (raw: RawClient): Publish[] => raw.packets.filter((p): p is Publish => p.cmd === 'publish');

t.test('outgoing Topic Aliases: the topic once, then the alias alone; one not used recently reassigned [MQTT-3.3.2-8/9]', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { outgoingTopicAliases: 5 } });
  const raw = await rawSubscriber(t, mqttUrl, 'aliased', { topicAliasMaximum: 2 }, 'alias/#');
  const pub = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  for (const suffix of ['a', 'a', 'b', 'c', 'a']) await pub.client.publishAsync(`${LONG}/${suffix}`, suffix, { qos: 0 });
  await raw.waitFor((p) => p.filter((x) => x.cmd === 'publish').length === 5, 5000, 'five messages');
  t.same(
    publishes(raw).map((p) => [p.topic, p.properties?.topicAlias, p.payload.toString()]),
    [
      [`${LONG}/a`, 1, 'a'],
      ['', 1, 'a'],
      [`${LONG}/b`, 2, 'b'],
      [`${LONG}/c`, 2, 'c'],
      ['', 1, 'a'],
    ],
    "aliases 1..2 (the client's maximum, below the broker's 5); a new topic takes one not used since (b's), the reused one (a's) stays",
  );
  t.same(raw.parseErrors, [], 'every packet well formed');

  const plain = await rawSubscriber(t, mqttUrl, 'no-aliases', {}, 'alias/#');
  await pub.client.publishAsync(`${LONG}/a`, 'x', { qos: 0 });
  await plain.waitForPacket('publish');
  t.same(publishes(plain).map((p) => [p.topic, p.properties?.topicAlias]), [[`${LONG}/a`, undefined]], 'a client that announced no Topic Alias Maximum gets none [MQTT-3.3.2-8]');
});

t.test('outgoing Topic Aliases are off by default', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const raw = await rawSubscriber(t, mqttUrl, 'willing', { topicAliasMaximum: 10 }, 'alias/#');
  const pub = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await pub.client.publishAsync(LONG, '1', { qos: 0 });
  await pub.client.publishAsync(LONG, '2', { qos: 0 });
  await raw.waitFor((p) => p.filter((x) => x.cmd === 'publish').length === 2, 5000, 'two messages');
  t.same(publishes(raw).map((p) => [p.topic, p.properties?.topicAlias]), [[LONG, undefined], [LONG, undefined]], 'every PUBLISH carries its topic');
});

for (const transport of ['TCP', 'WebSocket'] as const) {
  t.test(`${transport}: an mqtt.js v5 client resolves the broker's aliases to the right topics`, async (t) => {
    const { mqttUrl, wsUrl } = await startDaemon(t, { broker: { outgoingTopicAliases: 10 } });
    const url = transport === 'TCP' ? mqttUrl : wsUrl;
    const sub = await openClient(t, url, v5({ clientId: 'resolver', properties: { topicAliasMaximum: 3 } }));
    await sub.client.subscribeAsync('alias/#', { qos: 1, properties: { subscriptionIdentifier: 3 } });
    const pub = await openClient(t, url, v5({ clientId: 'pub' }));
    const sent = ['x', 'y', 'x', 'z', 'w', 'x', 'y'].map((suffix, i) => [`${LONG}/${suffix}`, String(i)] as const);
    for (const [topic, payload] of sent) await pub.client.publishAsync(topic, payload, { qos: 1, properties: { userProperties: { n: payload } } });
    const got = await sub.log.waitForCount(sent.length);
    t.same(got.map((m) => [m.topic, m.payload]), sent, 'every message under its own topic');
    t.same(got.map((m) => m.packet.properties?.userProperties?.['n']), sent.map(([, payload]) => payload), 'with its own properties');
    t.ok(got.every((m) => identifiers(m.packet).join() === '3'), 'and its Subscription Identifier');
  });
}

t.test('a message resent on a new connection carries its topic again: aliases never cross connections [MQTT-3.3.2-10]', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { outgoingTopicAliases: 10 } });
  const session = { topicAliasMaximum: 10, sessionExpiryInterval: 600 };
  const first = await rawSubscriber(t, mqttUrl, 'resumer', session, 'alias/#', { clean: false });
  const pub = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await pub.client.publishAsync(LONG, 'one', { qos: 1 });
  await pub.client.publishAsync(LONG, 'two', { qos: 1 });
  await first.waitFor((p) => p.filter((x) => x.cmd === 'publish').length === 2, 5000, 'two messages');
  t.same(publishes(first).map((p) => [p.topic, p.properties?.topicAlias]), [[LONG, 1], ['', 1]], 'the first connection: topic, then alias');
  // Never acknowledged: both are resent on the next connection.
  first.send(mqttPacket.generate({ cmd: 'disconnect', reasonCode: 0 }, { protocolVersion: 5 }));
  await first.waitForClose();
  const second = await connectRaw(t, mqttUrl, { protocolVersion: 5 });
  second.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'resumer', clean: false, keepalive: 60, properties: session }, { protocolVersion: 5 }));
  await second.waitFor((p) => p.filter((x) => x.cmd === 'publish').length === 2, 5000, 'the two resent messages');
  t.same(
    publishes(second).map((p) => [p.topic, p.properties?.topicAlias, p.dup, p.payload.toString()]),
    [
      [LONG, 1, true, 'one'],
      ['', 1, true, 'two'],
    ],
    'the resend sets the alias up anew on this connection before using it',
  );
});

t.test('incoming Topic Aliases: announced in CONNACK, resolved before delivery [MQTT-3.3.2-12]', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { topicAliasMaximum: 4 } });
  const sub = await openClient(t, mqttUrl, v5({ clientId: 'sub' }));
  await sub.client.subscribeAsync('alias/#', { qos: 1 });
  const pub = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  t.equal(pub.connack.properties?.topicAliasMaximum, 4, 'CONNACK Topic Alias Maximum [MQTT-3.2.2-17]');
  await pub.client.publishAsync(LONG, 'set', { qos: 1, properties: { topicAlias: 4 } });
  await pub.client.publishAsync('', 'used', { qos: 1, properties: { topicAlias: 4 } });
  const got = await sub.log.waitForCount(2);
  t.same(got.map((m) => [m.topic, m.payload, m.packet.properties?.topicAlias]), [[LONG, 'set', undefined], [LONG, 'used', undefined]], "the subscriber sees the topic, never the publisher's alias");
});

t.test('Response Information in CONNACK, only when configured and asked for [MQTT-3.1.2.11.6]', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { responseInformation: 'reply/{clientId}' } });
  const asking = await openClient(t, mqttUrl, v5({ clientId: 'asker', properties: { requestResponseInformation: true } }));
  t.equal(asking.connack.properties?.responseInformation, 'reply/asker', 'the pattern with its client id');
  const silent = await openClient(t, mqttUrl, v5({ clientId: 'quiet' }));
  t.equal(silent.connack.properties?.responseInformation, undefined, 'none for a client that did not ask');

  const off = await startDaemon(t);
  const unanswered = await openClient(t, off.mqttUrl, v5({ clientId: 'asker', properties: { requestResponseInformation: true } }));
  t.equal(unanswered.connack.properties?.responseInformation, undefined, 'none when not configured (the default)');
});
