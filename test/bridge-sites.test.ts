/**
 * Several sites on one NATS system act as one broker for bridged topics:
 * daemons in-process, each with its own store, one real `nats-server -js`.
 * A message published at one site reaches subscribers at the others exactly
 * once and never loops; the retained state is shared, also with a site that
 * starts later; a retained clear at one site clears it everywhere.
 */
import t, { type Test } from 'tap';
import { jetstreamManager } from '@nats-io/jetstream';
import { startDaemon, tempDir, type RunningDaemon } from './helpers/daemon.js';
import { connectClient, eventually, openClient, type OpenedClient } from './helpers/mqtt.js';
import { NatsServer, natsClient, natsUnavailable } from './helpers/nats.js';

const unavailable = natsUnavailable();

async function site(t: Test, nats: NatsServer | string, siteId: string, dataDir?: string): Promise<RunningDaemon> {
  const daemon = await startDaemon(t, {
    ...(dataDir ? { dataDir } : {}),
    bridge: {
      enabled: true,
      siteId,
      nats: { servers: [typeof nats === 'string' ? nats : nats.url] },
      export: [{ filter: 'plant/#' }],
      import: [{ filter: 'plant/#', qos: 1 }],
    },
  });
  if (typeof nats !== 'string') await eventually(() => daemon.daemon.bridgeStats().state === 'connected', 10_000, `${siteId} to connect`);
  return daemon;
}

/** The retained value of `topic` a new subscriber at `daemon` gets, proven complete by a marker published after. */
async function retainedAt(t: Test, daemon: RunningDaemon, topic: string, name: string): Promise<string | undefined> {
  const probe = await openClient(t, daemon.mqttUrl, { clientId: `probe-${name}` });
  await probe.client.subscribeAsync([topic, 'probe/marker'], { qos: 1 });
  await probe.client.publishAsync('probe/marker', name, { qos: 1 });
  await probe.log.waitFor((m) => m.some((x) => x.topic === 'probe/marker'), 5000, 'the marker');
  return probe.log.messages.find((m) => m.topic === topic && m.packet.retain)?.payload;
}

async function subscriber(t: Test, url: string, clientId: string): Promise<OpenedClient> {
  const opened = await openClient(t, url, { clientId });
  await opened.client.subscribeAsync('plant/#', { qos: 1 });
  return opened;
}

t.test('a sensor at A reaches subscribers at B (WebSocket) and C exactly once; nothing loops', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const [a, b, c] = [await site(t, nats, 'a'), await site(t, nats, 'b'), await site(t, nats, 'c')];
  const atA = await subscriber(t, a.mqttUrl, 'local-a');
  const atB = await subscriber(t, b.wsUrl, 'browser-b');
  const atC = await subscriber(t, c.mqttUrl, 'panel-c');
  const sensor = await connectClient(t, a.mqttUrl, { clientId: 'sensor' });
  const COUNT = 50;
  for (let i = 0; i < COUNT; i++) await sensor.publishAsync('plant/line1/temp', String(i), { qos: 1 });
  const all = Array.from({ length: COUNT }, (_, i) => String(i));
  for (const [name, sub] of [['A', atA], ['B', atB], ['C', atC]] as const) {
    await sub.log.waitForCount(COUNT, 15_000);
  }
  // QoS 0 takes another path through the broker (no store write): imported, it must not be exported again either.
  for (let i = 0; i < 5; i++) await sensor.publishAsync('plant/line1/q0', `q0-${i}`, { qos: 0 });
  // A marker after them proves nothing more is on its way.
  await sensor.publishAsync('plant/marker', 'end', { qos: 1 });
  for (const sub of [atA, atB, atC]) await sub.log.waitFor((m) => m.some((x) => x.payload === 'end'), 15_000, 'the marker');
  for (const [name, sub] of [['A', atA], ['B', atB], ['C', atC]] as const) {
    t.same(sub.log.messages.filter((m) => m.topic === 'plant/line1/temp').map((m) => m.payload), all, `${name}: each once, in order`);
  }
  await eventually(() => a.daemon.bridgeStats().loopSkipped >= COUNT + 5 + 1, 10_000, 'A to see its own messages come back');
  t.equal(a.daemon.bridgeStats().imported, 0, 'A imported nothing of its own');
  for (const [name, sub] of [['B', atB], ['C', atC]] as const) {
    t.same(sub.log.messages.filter((m) => m.topic === 'plant/line1/q0').map((m) => m.payload), ['q0-0', 'q0-1', 'q0-2', 'q0-3', 'q0-4'], `${name}: QoS 0 too, once each`);
  }
  t.equal(b.daemon.bridgeStats().outbox.added, 0, 'B exported nothing it imported');
  t.equal(c.daemon.bridgeStats().outbox.added, 0, 'C exported nothing it imported');
  const jsm = await jetstreamManager(await natsClient(t, nats));
  t.equal((await jsm.streams.info('EDGEMQTT')).state.messages, COUNT + 5 + 1, 'the stream holds each message once');
});

t.test('retained state is shared, also with a site started later; a clear at one site clears it everywhere', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const [a, b] = [await site(t, nats, 'a'), await site(t, nats, 'b')];
  const sensor = await connectClient(t, a.mqttUrl, { clientId: 'sensor' });
  await sensor.publishAsync('plant/line1/setpoint', '22', { qos: 1, retain: true });
  await sensor.publishAsync('plant/line1/temp', 'old news', { qos: 1 });
  await eventually(() => b.daemon.bridgeStats().imported >= 2, 10_000, 'B to import both');
  const atB = await subscriber(t, b.mqttUrl, 'late-b');
  await atB.log.waitFor((m) => m.some((x) => x.payload === '22' && x.packet.retain), 5000, 'the retained setpoint at B');

  // C starts after all of that: it gets the retained value, not the old news.
  const c = await site(t, nats, 'c');
  await eventually(() => c.daemon.bridgeStats().imported >= 1, 10_000, 'C to load the retained state');
  const atC = await subscriber(t, c.mqttUrl, 'late-c');
  await atC.log.waitFor((m) => m.some((x) => x.payload === '22' && x.packet.retain), 5000, 'the retained setpoint at C');
  t.notOk(atC.log.messages.some((m) => m.payload === 'old news'), 'a non-retained message from before C existed is not replayed there');

  // A retained clear (empty payload) at B clears it at A and C.
  const operator = await connectClient(t, b.mqttUrl, { clientId: 'operator' });
  await operator.publishAsync('plant/line1/setpoint', '', { qos: 1, retain: true });
  await eventually(() => a.daemon.bridgeStats().imported >= 1 && c.daemon.bridgeStats().imported >= 2, 10_000, 'the clear to arrive');
  for (const [name, daemon] of [['A', a], ['C', c]] as const) {
    const fresh = await subscriber(t, daemon.mqttUrl, `check-${name}`);
    await sensor.publishAsync('plant/marker', name, { qos: 1 });
    await fresh.log.waitFor((m) => m.some((x) => x.payload === name), 10_000, 'the marker');
    t.notOk(fresh.log.messages.some((m) => m.topic === 'plant/line1/setpoint' && m.packet.retain), `${name}: no retained setpoint any more`);
  }
});

t.test('a backlog replayed after an outage does not overwrite a newer retained value set elsewhere', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const b = await site(t, nats, 'b');
  // A is cut off from NATS (a dead address) when it sets the value: it waits in A's outbox.
  const aDir = tempDir(t);
  const dead = new NatsServer(t);
  await dead.start();
  const deadUrl = dead.url;
  await dead.kill();
  const offline = await site(t, deadUrl, 'a', aDir);
  const sensorA = await connectClient(t, offline.mqttUrl, { clientId: 'sensor-a' });
  await sensorA.publishAsync('plant/setpoint', 'old', { qos: 1, retain: true });
  t.equal(offline.daemon.bridgeStats().outbox.depth, 1);
  await sensorA.endAsync();
  await offline.daemon.stop();

  // Meanwhile B sets a newer value.
  const sensorB = await connectClient(t, b.mqttUrl, { clientId: 'sensor-b' });
  await sensorB.publishAsync('plant/setpoint', 'new', { qos: 1, retain: true });
  await eventually(() => b.daemon.bridgeStats().outbox.depth === 0 && b.daemon.bridgeStats().exported === 1, 10_000, 'B to export');

  // A comes back: its old value reaches B after the new one.
  const a = await site(t, nats, 'a', aDir);
  await eventually(() => b.daemon.bridgeStats().staleRetained === 1, 10_000, 'B to see the stale value');
  await eventually(() => a.daemon.bridgeStats().imported >= 1, 10_000, 'A to import the newer value');
  t.equal(await retainedAt(t, b, 'plant/setpoint', 'b'), 'new', 'B keeps the newer value');
  t.equal(await retainedAt(t, a, 'plant/setpoint', 'a'), 'new', 'A takes the newer value: both agree');
});

t.test('a backlog larger than the import pipeline, at a site that was down: each message once, in order', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const a = await site(t, nats, 'a');
  const bDir = tempDir(t);
  const b = await site(t, nats, 'b', bDir);
  // A persistent session at B, away while B is down and while B catches up.
  const panel = await openClient(t, b.mqttUrl, { clientId: 'panel-b', clean: false });
  await panel.client.subscribeAsync('plant/#', { qos: 1 });
  await panel.client.endAsync();
  await b.daemon.stop();

  // More than the importer keeps in flight (PIPELINE, 256), from several publishers at once.
  // Below the default offline queue limit (1,000 per session), which would drop the oldest.
  const COUNT = 900;
  const sensors = await Promise.all([0, 1, 2].map((i) => connectClient(t, a.mqttUrl, { clientId: `sensor-${i}` })));
  await Promise.all(
    sensors.map(async (sensor, i) => {
      for (let n = 0; n < COUNT / 3; n += 50) {
        await Promise.all(Array.from({ length: 50 }, (_, j) => sensor.publishAsync(`plant/s${i}`, String(n + j), { qos: 1 })));
      }
    }),
  );
  await eventually(() => a.daemon.bridgeStats().exported === COUNT, 20_000, 'A to export the backlog');

  const again = await site(t, nats, 'b', bDir);
  await eventually(() => again.daemon.bridgeStats().imported === COUNT, 30_000, 'B to import the backlog');
  const back = await openClient(t, again.mqttUrl, { clientId: 'panel-b', clean: false });
  await back.log.waitForCount(COUNT, 20_000);
  const expected = Array.from({ length: COUNT / 3 }, (_, n) => String(n));
  for (const i of [0, 1, 2]) {
    t.same(back.log.messages.filter((m) => m.topic === `plant/s${i}`).map((m) => m.payload), expected, `plant/s${i}: each once, in order`);
  }
  t.equal(again.daemon.bridgeStats().redeliveries, 0, 'nothing delivered twice by JetStream');
});
