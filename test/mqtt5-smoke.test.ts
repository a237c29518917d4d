/**
 * MQTT 5.0 clients (mqtt.js, protocolVersion 5) against the daemon on aedes
 * 2.0.0-beta.1, over TCP and WebSocket: what works end to end today. The
 * protocol guard lets a level-5 CONNECT through and follows only the framing
 * of such a connection (src/broker/protocol-guard.ts, #v5).
 */
import t, { type Test } from 'tap';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import mqtt, { type IClientOptions, type Packet } from 'mqtt';
import { startWithWrappedStore } from './helpers/wrapped-store.js';
import { startDaemon, tempDir, testConfig, runDaemon } from './helpers/daemon.js';
import { eventually, openClient, type OpenedClient } from './helpers/mqtt.js';

const v5 = (options: IClientOptions = {}): IClientOptions => ({ protocolVersion: 5, ...options });


for (const transport of ['TCP', 'WebSocket'] as const) {
  t.test(`${transport}: CONNECT, SUBSCRIBE and PUBLISH at QoS 0, 1 and 2 with MQTT 5 properties`, async (t) => {
    const { mqttUrl, wsUrl } = await startDaemon(t);
    const url = transport === 'TCP' ? mqttUrl : wsUrl;
    const subscriber = await openClient(t, url, v5({ clientId: 'sub5' }));
    t.equal(subscriber.connack.reasonCode, 0, 'CONNACK reason code 0x00 Success');
    t.equal(subscriber.connack.properties?.sharedSubscriptionAvailable, true, 'shared subscriptions are announced as available [MQTT-3.2.2-13] (test/shared-subscriptions.test.ts)');
    const granted = await subscriber.client.subscribeAsync('v5/#', { qos: 2 });
    t.same(granted.map((g) => g.qos), [2], 'SUBACK grants QoS 2');

    const publisher = await openClient(t, url, v5({ clientId: 'pub5' }));
    const userProperties = { origin: 'line1' };
    await publisher.client.publishAsync('v5/q0', 'zero', { qos: 0, properties: { userProperties } });
    const puback = (await publisher.client.publishAsync('v5/q1', 'one', { qos: 1, properties: { contentType: 'text/plain' } })) as { reasonCode?: number } | undefined;
    t.equal(puback?.reasonCode ?? 0, 0, 'PUBACK reason code 0x00');
    await publisher.client.publishAsync('v5/q2', 'two', { qos: 2, properties: { userProperties } });

    const messages = await subscriber.log.waitForCount(3);
    t.same(
      messages.map((m) => [m.topic, m.payload, m.packet.qos]).sort(),
      [['v5/q0', 'zero', 0], ['v5/q1', 'one', 1], ['v5/q2', 'two', 2]],
      'each message once, at its QoS',
    );
    const byTopic = new Map(messages.map((m) => [m.topic, m.packet]));
    t.same(byTopic.get('v5/q0')?.properties?.userProperties, userProperties, 'user properties reach the subscriber [MQTT-3.3.2-17]');
    t.equal(byTopic.get('v5/q1')?.properties?.contentType, 'text/plain', 'content type reaches the subscriber');
  });
}

t.test('a 3.1.1 client and an MQTT 5 client exchange messages both ways', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const old = await openClient(t, mqttUrl, { clientId: 'v4' });
  const fresh = await openClient(t, mqttUrl, v5({ clientId: 'v5' }));
  await old.client.subscribeAsync('to/v4', { qos: 1 });
  await fresh.client.subscribeAsync('to/v5', { qos: 1 });
  await fresh.client.publishAsync('to/v4', 'from v5', { qos: 1, properties: { userProperties: { a: 'b' } } });
  await old.client.publishAsync('to/v5', 'from v4', { qos: 1 });
  const [toOld] = await old.log.waitForCount(1);
  const [toFresh] = await fresh.log.waitForCount(1);
  t.equal(toOld?.payload, 'from v5');
  t.equal(toFresh?.payload, 'from v4');
});

t.test('retained messages keep their MQTT 5 properties; No Local and Retain As Published apply', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await publisher.client.publishAsync('state/door', 'open', {
    qos: 1,
    retain: true,
    properties: { messageExpiryInterval: 3600, userProperties: { unit: 'none' } },
  });
  const subscriber = await openClient(t, mqttUrl, v5({ clientId: 'sub' }));
  await subscriber.client.subscribeAsync('state/#', { qos: 1, rap: true });
  const [retained] = await subscriber.log.waitForCount(1);
  t.equal(retained?.payload, 'open');
  t.equal(retained?.packet.retain, true, 'RETAIN set on a retained message sent on SUBSCRIBE');
  t.same(retained?.packet.properties?.userProperties, { unit: 'none' }, 'user properties kept in the retained store');
  const expiry = retained?.packet.properties?.messageExpiryInterval ?? 0;
  t.ok(expiry > 0 && expiry <= 3600, `the remaining Message Expiry Interval is sent (${expiry} s) [MQTT-3.3.2-6]`);

  // Retain As Published: a live retained message keeps RETAIN for this subscription [MQTT-3.3.1-12].
  await publisher.client.publishAsync('state/door', 'closed', { qos: 1, retain: true });
  await subscriber.log.waitForCount(2);
  t.equal(subscriber.log.messages[1]?.packet.retain, true, 'rap: RETAIN kept on live delivery');

  // No Local: a client's own message is not sent back to it [MQTT-3.8.3-3].
  await publisher.client.subscribeAsync('echo/#', { qos: 1, nl: true });
  await publisher.client.subscribeAsync('marker', { qos: 1 });
  const echo = new Array<string>();
  publisher.client.on('message', (topic) => echo.push(topic));
  await publisher.client.publishAsync('echo/self', 'me', { qos: 1 });
  await publisher.client.publishAsync('marker', 'm', { qos: 1 });
  await eventually(() => echo.includes('marker'), 5000, 'the marker');
  t.same(echo, ['marker'], 'nl: its own message on echo/self was not delivered to it');
});

t.test('a persistent MQTT 5 session (Clean Start 0, Session Expiry) survives a restart', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const session = v5({ clientId: 'device5', clean: false, properties: { sessionExpiryInterval: 3600 } });
  const device = await openClient(t, first.url, session);
  t.equal(device.connack.sessionPresent, false, 'no session the first time');
  await device.client.subscribeAsync('cmd/#', { qos: 1, properties: { subscriptionIdentifier: 7 } });
  await device.client.endAsync();
  const publisher = await openClient(t, first.url, v5({ clientId: 'pub' }));
  await publisher.client.publishAsync('cmd/queued', 'while offline', { qos: 1 });
  await first.daemon.stop();

  const second = await runDaemon(t, config);
  const back = await openClient(t, second.url, session);
  t.equal(back.connack.sessionPresent, true, 'the session is present after the restart [MQTT-3.2.2-2]');
  const [queued] = await back.log.waitForCount(1);
  t.equal(queued?.payload, 'while offline', 'the message queued before the restart is delivered');
  const publisher2 = await openClient(t, second.url, v5({ clientId: 'pub' }));
  await publisher2.client.publishAsync('cmd/live', 'live', { qos: 1 });
  const messages = await back.log.waitForCount(2);
  t.equal(messages[1]?.payload, 'live', 'the restored subscription receives live messages');
  t.same(messages[1]?.packet.properties?.subscriptionIdentifier, 7, 'the restored subscription still carries its Subscription Identifier [MQTT-3.3.4-3]');
  // aedes 2 adds it only on live delivery (handlers/subscribe.js); the store adds it to queued copies (src/persistence/recipients.ts recipientsOf).
  t.same(queued?.packet.properties?.subscriptionIdentifier, 7, 'the queued message carries the Subscription Identifier too');
});

t.test('Session Expiry Interval 0 (the MQTT 5 default): the session ends with the connection', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const first = await openClient(t, mqttUrl, v5({ clientId: 'brief', clean: false }));
  await first.client.subscribeAsync('x/#', { qos: 1 });
  await first.client.endAsync();
  const again = await openClient(t, mqttUrl, v5({ clientId: 'brief', clean: false }));
  t.equal(again.connack.sessionPresent, false, 'no session kept [MQTT-3.1.2-23]');
});

t.test('a finite Session Expiry Interval ends the session and its queue once it runs out', async (t) => {
  const { mqttUrl, daemon } = await startDaemon(t);
  const session = v5({ clientId: 'short', clean: false, properties: { sessionExpiryInterval: 1 } });
  const first = await openClient(t, mqttUrl, session);
  await first.client.subscribeAsync('w/#', { qos: 1 });
  await first.client.endAsync();
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await publisher.client.publishAsync('w/1', 'queued', { qos: 1 });
  t.equal(daemon.storeStats().queuedEntries, 1, 'queued while the session lasts');
  await eventually(() => daemon.storeStats().sessions === 0, 5000, 'the session to expire');
  t.same([daemon.storeStats().queuedEntries, daemon.storeStats().subscriptions], [0, 0], 'its queue and subscriptions are gone from the store');
  const again = await openClient(t, mqttUrl, session);
  t.equal(again.connack.sessionPresent, false, 'no session to resume [MQTT-3.1.2-23]');
});

t.test('Message Expiry Interval: an expired queued message is dropped, a live one goes with its remaining lifetime', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const session = v5({ clientId: 'exp', clean: false, properties: { sessionExpiryInterval: 600 } });
  const first = await openClient(t, mqttUrl, session);
  await first.client.subscribeAsync('e/#', { qos: 1 });
  await first.client.endAsync();
  const publisher = await openClient(t, mqttUrl, v5({ clientId: 'pub' }));
  await publisher.client.publishAsync('e/short', 'short', { qos: 1, properties: { messageExpiryInterval: 1 } });
  await publisher.client.publishAsync('e/long', 'long', { qos: 1, properties: { messageExpiryInterval: 100 } });
  // Past the short one's lifetime; nothing to poll for, the expiry is a point in time.
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const back = await openClient(t, mqttUrl, session);
  await publisher.client.publishAsync('e/marker', 'marker', { qos: 1 });
  await back.log.waitFor((m) => m.some((x) => x.topic === 'e/marker'), 5000, 'the marker');
  t.same(back.log.messages.map((m) => m.topic), ['e/long', 'e/marker'], 'the expired message was not sent [MQTT-3.3.2-5]');
  const remaining = back.log.messages[0]?.packet.properties?.messageExpiryInterval ?? 0;
  t.ok(remaining > 0 && remaining < 100, `sent with its remaining lifetime (${remaining} s) [MQTT-3.3.2-6]`);
});

t.test('reason codes aedes 2 gives: 0x8E on takeover, a shared subscription granted (no 0x9E), 0x87 for a denied SUBSCRIBE', async (t) => {
  // Anonymous clients may read and write `a` only.
  const aclFile = path.join(tempDir(t), 'acl');
  writeFileSync(aclFile, 'topic readwrite a\n');
  const { mqttUrl } = await startDaemon(t, { auth: { aclFile } });
  const old = await openClient(t, mqttUrl, v5({ clientId: 'twin' }));
  const reasons: number[] = [];
  old.client.on('disconnect', (packet) => reasons.push(packet.reasonCode ?? -1));
  await openClient(t, mqttUrl, v5({ clientId: 'twin' }));
  await eventually(() => reasons.length > 0, 5000, 'the DISCONNECT of the old connection');
  t.same(reasons, [0x8e], 'Session taken over [MQTT-3.1.4-3]');
  const client = await openClient(t, mqttUrl, v5({ clientId: 'subscriber' }));
  t.same((await client.client.subscribeAsync('$share/group/a', { qos: 1 })).map((g) => g.qos), [1], 'a shared subscription is granted (src/broker/shared-subscriptions.ts)');
  // A filter no read rule of the ACL covers (src/auth/authorizer.ts).
  await t.rejects(client.client.subscribeAsync('b/#', { qos: 0 }), /Not authorized/);
});

/** A v5 client whose socket is cut (no DISCONNECT), so the broker publishes its will. */
async function dropWithWill(t: Test, url: string, clientId: string, will: IClientOptions['will'], properties: IClientOptions['properties'] = {}): Promise<OpenedClient> {
  const opened = await openClient(t, url, v5({ clientId, will, properties }));
  opened.client.stream.destroy();
  return opened;
}

t.test('wills: published on a dropped connection, after the Will Delay Interval when one is set', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const watcher = await openClient(t, mqttUrl, v5({ clientId: 'watcher' }));
  await watcher.client.subscribeAsync('will/#', { qos: 1 });
  await dropWithWill(t, mqttUrl, 'plain', { topic: 'will/plain', payload: Buffer.from('gone'), qos: 1, retain: false });
  await watcher.log.waitFor((m) => m.some((x) => x.topic === 'will/plain'), 5000, 'the will');

  const dropped = performance.now();
  await dropWithWill(
    t,
    mqttUrl,
    'delayed',
    { topic: 'will/delayed', payload: Buffer.from('late'), qos: 1, retain: false, properties: { willDelayInterval: 1 } },
    { sessionExpiryInterval: 10 },
  );
  await watcher.log.waitFor((m) => m.some((x) => x.topic === 'will/delayed'), 5000, 'the delayed will');
  t.ok(performance.now() - dropped >= 950, 'the delayed will waited for its Will Delay Interval [MQTT-3.1.3-9]');
});

t.test('a planned stop tells MQTT 5 clients why: DISCONNECT 0x8B Server shutting down', async (t) => {
  const { daemon, mqttUrl } = await startDaemon(t);
  const client = await openClient(t, mqttUrl, v5({ clientId: 'told' }));
  const reasons: number[] = [];
  client.client.on('disconnect', (packet) => reasons.push(packet.reasonCode ?? -1));
  await daemon.stop();
  await eventually(() => reasons.length > 0, 5000, 'a DISCONNECT');
  t.same(reasons, [0x8b]);
});

t.test('a failed durable write closes an MQTT 5 publisher without any acknowledgement (never a 0x87 that says drop it)', async (t) => {
  const store = await startWithWrappedStore(t);
  const url = store.url;
  // A persistent subscriber offline, so each PUBLISH has a record to write.
  const offline = await openClient(t, url, v5({ clientId: 'offline', clean: false, properties: { sessionExpiryInterval: 600 } }));
  await offline.client.subscribeAsync('fail/#', { qos: 2 });
  await offline.client.endAsync();

  for (const qos of [1, 2] as const) {
    const publisher = mqtt.connect(url, v5({ clientId: `pub-${qos}`, reconnectPeriod: 0 }));
    t.teardown(() => publisher.endAsync(true));
    await new Promise<void>((resolve, reject) => {
      publisher.once('connect', () => resolve());
      publisher.once('error', reject);
    });
    const acks: Array<number | undefined> = [];
    publisher.on('packetreceive', (packet: Packet) => {
      if (packet.cmd === 'puback' || packet.cmd === 'pubrec') acks.push(packet.reasonCode);
    });
    let closed = false;
    publisher.once('close', () => (closed = true));
    store.failNext();
    publisher.publish(`fail/${qos}`, 'must not be dropped', { qos });
    await eventually(() => closed || acks.length > 0, 5000, 'the connection to close or an acknowledgement');
    t.same(acks, [], `QoS ${qos}: no ${qos === 1 ? 'PUBACK' : 'PUBREC'} at all (aedes 2 alone answers a QoS 1 with 0x87), so the publisher keeps the message`);
    await eventually(() => closed, 5000, 'the connection to close');
    // A failed write stops all writes until the store reopens (write-failures.ts).
    await store.writable();
  }
});
