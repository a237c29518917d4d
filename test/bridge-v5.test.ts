/**
 * MQTT 5.0 messages across sites, end to end: two daemons on one real
 * `nats-server -js`, v5 mqtt.js clients. What a v5 publisher at A sets
 * (payload format, content type, response topic, correlation data, user
 * properties, in order) a v5 subscriber at B gets unchanged, retained too;
 * a message whose expiry interval passes on its way is never delivered, and
 * one that arrives gets what is left of its interval [MQTT-3.3.2-5]
 * [MQTT-3.3.2-6]. These need a broker that speaks MQTT 5 (aedes 2).
 */
import t, { type Test } from 'tap';
import type { IClientPublishOptions } from 'mqtt';
import { startDaemon, tempDir, type RunningDaemon } from './helpers/daemon.js';
import { connectClient, eventually, openClient, type ReceivedMessage } from './helpers/mqtt.js';
import { NatsServer, natsUnavailable } from './helpers/nats.js';

const skip = natsUnavailable();

async function site(t: Test, nats: NatsServer, siteId: string, dataDir?: string): Promise<RunningDaemon> {
  const daemon = await startDaemon(t, {
    ...(dataDir ? { dataDir } : {}),
    bridge: {
      enabled: true,
      siteId,
      nats: { servers: [nats.url] },
      export: [{ filter: 'plant/#' }],
      import: [{ filter: 'plant/#', qos: 1 }],
    },
  });
  await eventually(() => daemon.daemon.bridgeStats().state === 'connected', 10_000, `${siteId} to connect`);
  return daemon;
}

const v5 = { protocolVersion: 5 } as const;

/** Everything a v5 publisher may set on a message, with a user property name repeated among others. */
const properties = {
  payloadFormatIndicator: true,
  messageExpiryInterval: 3600,
  contentType: 'application/json; charset=utf-8',
  responseTopic: 'plant/replies/panel 1',
  correlationData: Buffer.from([0x00, 0xde, 0xad, 0xbe, 0xef, 0x0a]),
  userProperties: { unit: 'celsius', tag: ['b', 'a', 'b'], 'with space': ' both ends ', ключ: 'значение' },
} satisfies IClientPublishOptions['properties'];

/** The properties a subscriber got, apart from the expiry interval (recomputed on the way), as plain data. */
function carried(message: ReceivedMessage | undefined) {
  const { messageExpiryInterval: _, ...rest } = message?.packet.properties ?? {};
  return { ...rest, ...(rest.userProperties ? { userProperties: { ...rest.userProperties } } : {}) };
}

const { messageExpiryInterval: _sent, ...unchanged } = properties;

t.test('a v5 message crosses with all its properties; a retained one keeps them; a 3.1.1 one crosses as before', { skip }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const [a, b] = [await site(t, nats, 'a'), await site(t, nats, 'b')];
  const atB = await openClient(t, b.mqttUrl, { ...v5, clientId: 'panel-b' });
  await atB.client.subscribeAsync('plant/#', { qos: 1 });
  const legacyAtB = await openClient(t, b.mqttUrl, { clientId: 'legacy-b' });
  await legacyAtB.client.subscribeAsync('plant/#', { qos: 1 });

  const sensor = await connectClient(t, a.mqttUrl, { ...v5, clientId: 'sensor' });
  await sensor.publishAsync('plant/line1/temp', '{"t":21.5}', { qos: 1, properties });
  await sensor.publishAsync('plant/line1/state', 'running', { qos: 1, retain: true, properties });
  // QoS 0 reaches the outbox by another path (the broker's publish event, no store write).
  await sensor.publishAsync('plant/line1/q0', 'zero', { qos: 0, properties });
  const oldSensor = await connectClient(t, a.mqttUrl, { clientId: 'old-sensor' });
  await oldSensor.publishAsync('plant/line1/old', 'plain', { qos: 1 });
  const all = ['plant/line1/temp', 'plant/line1/state', 'plant/line1/q0', 'plant/line1/old'];
  await atB.log.waitFor((m) => all.every((topic) => m.some((x) => x.topic === topic)), 15_000, 'all four');

  const temp = atB.log.messages.find((m) => m.topic === 'plant/line1/temp');
  t.equal(temp?.payload, '{"t":21.5}');
  t.same(carried(temp), unchanged, 'every property as published, user properties in order');
  t.same(Object.keys(temp?.packet.properties?.userProperties ?? {}), ['unit', 'tag', 'with space', 'ключ']);
  const left = temp?.packet.properties?.messageExpiryInterval ?? 0;
  t.ok(left > 3500 && left <= 3600, `the expiry interval, less the time on the way (${left})`);
  t.same(carried(atB.log.messages.find((m) => m.topic === 'plant/line1/q0')), unchanged, 'QoS 0 too');
  const old = atB.log.messages.find((m) => m.topic === 'plant/line1/old');
  t.same([old?.payload, old?.packet.properties], ['plain', undefined], 'a 3.1.1 message has no properties on the other side either');
  // Imports are applied many at once: QoS 0 ones need no store write and may overtake (no order across QoS levels).
  await legacyAtB.log.waitFor((m) => m.length === 4, 5000, 'the 3.1.1 subscriber to get all four');
  t.same(
    legacyAtB.log.messages.map((m) => [m.topic, m.payload]).sort(),
    [['plant/line1/old', 'plain'], ['plant/line1/q0', 'zero'], ['plant/line1/state', 'running'], ['plant/line1/temp', '{"t":21.5}']],
    'a 3.1.1 subscriber gets them all',
  );

  // A subscriber that comes later gets the retained value with its properties [MQTT-3.3.1-9 keeps the flag; MQTT-3.3.2-4/15/16/17/20].
  const late = await openClient(t, b.mqttUrl, { ...v5, clientId: 'late-b' });
  await late.client.subscribeAsync('plant/line1/state', { qos: 1 });
  const [retained] = await late.log.waitForCount(1, 5000);
  t.same([retained?.payload, retained?.packet.retain], ['running', true]);
  t.same(carried(retained), unchanged, 'the retained value keeps its properties');
  t.equal(b.daemon.bridgeStats().expired, 0);
});

t.test('expiry across sites: one that expired on the way never arrives; one that arrives has less of its interval left', { skip }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const a = await site(t, nats, 'a');
  const bDir = tempDir(t);
  const away = await site(t, nats, 'b', bDir);
  // A persistent v5 session at B: what B imports while the panel is offline waits in its queue.
  const session = { ...v5, clientId: 'panel-b', clean: false, properties: { sessionExpiryInterval: 3600 } };
  const first = await openClient(t, away.mqttUrl, session);
  await first.client.subscribeAsync('plant/#', { qos: 1 });
  await first.client.endAsync();
  // B is down (its import consumer waits in the stream) while A publishes.
  await away.daemon.stop();

  const sensor = await connectClient(t, a.mqttUrl, { ...v5, clientId: 'sensor' });
  await sensor.publishAsync('plant/alarm', 'short-lived', { qos: 1, properties: { messageExpiryInterval: 1 } });
  await sensor.publishAsync('plant/report', 'long-lived', { qos: 1, properties: { messageExpiryInterval: 600, contentType: 'text/plain' } });
  await sensor.publishAsync('plant/marker', 'after both', { qos: 1 });
  const published = Date.now();
  await eventually(() => a.daemon.bridgeStats().exported === 3, 10_000, 'A to export all three');
  // The condition itself is the time: more than the short interval, and two seconds off the long one.
  await eventually(() => Date.now() - published > 2100, 5000, 'the short interval to pass');

  const b = await site(t, nats, 'b', bDir);
  await eventually(() => b.daemon.bridgeStats().imported === 2 && b.daemon.bridgeStats().expired === 1, 10_000, 'B to import two and drop one');
  const panel = await openClient(t, b.mqttUrl, session);
  t.ok(panel.connack.sessionPresent, 'the session was kept');
  await panel.log.waitFor((m) => m.some((x) => x.topic === 'plant/marker'), 10_000, 'the marker');
  t.same(panel.log.messages.map((m) => m.topic), ['plant/report', 'plant/marker'], 'the expired message never arrived; the marker after it did');
  const report = panel.log.messages[0]!;
  const left = report.packet.properties?.messageExpiryInterval ?? 0;
  t.ok(left > 500 && left <= 598, `what is left of 600 s after more than 2 s on the way (${left})`);
  t.equal(report.packet.properties?.contentType, 'text/plain', 'with its other properties');
  t.equal(panel.log.messages[1]!.packet.properties?.messageExpiryInterval, undefined, 'a message without an interval gets none');
});
