/**
 * The bridge exports to a real `nats-server -js` (a child on a port it
 * picks, a temporary store): what matches the export rules arrives in the
 * stream under nats-server's MQTT subject mapping, with the origin site, QoS
 * and retain flag in headers and `Nats-Msg-Id: <site>:<outbox sequence>`;
 * an outage loses nothing and doubles nothing; a NATS that is unreachable or
 * misconfigured never holds up local traffic.
 */
import t, { type Test } from 'tap';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager, type StoredMsg } from '@nats-io/jetstream';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startDaemon, tempDir, type RunningDaemon } from './helpers/daemon.js';
import { connectClient, eventually, openClient } from './helpers/mqtt.js';
import { NatsServer, natsClient, natsUnavailable } from './helpers/nats.js';
import type { ConfigInput } from '../src/config/schema.js';

const unavailable = natsUnavailable();
const STREAM = 'EDGEMQTT';

type BridgeInput = NonNullable<ConfigInput['bridge']>;

function bridgeConfig(server: NatsServer | string, extra: Partial<BridgeInput> = {}): { bridge: BridgeInput } {
  return {
    bridge: {
      enabled: true,
      siteId: 'site-a',
      nats: { servers: [typeof server === 'string' ? server : server.url] },
      stream: { name: STREAM, duplicateWindowSec: 60 },
      export: [{ filter: 'plant/#' }],
      ...extra,
    },
  };
}

async function streamMessages(jsm: JetStreamManager): Promise<StoredMsg[]> {
  const info = await jsm.streams.info(STREAM);
  const messages: StoredMsg[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const message = await jsm.streams.getMessage(STREAM, { seq });
    if (message) messages.push(message);
  }
  return messages;
}

async function exported(t: Test, daemon: RunningDaemon, count: number): Promise<void> {
  await eventually(
    () => daemon.daemon.bridgeStats().exported >= count && daemon.daemon.bridgeStats().outbox.depth === 0,
    20_000,
    `${count} messages exported and the outbox empty (${JSON.stringify(daemon.daemon.bridgeStats())})`,
  );
}

t.test('QoS 0, 1, 2 and retained messages reach the stream with their subjects and headers', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  // $SYS is readable only where an ACL grants it (or by clients with a password).
  const aclFile = path.join(tempDir(t), 'acl');
  await writeFile(aclFile, 'topic readwrite #\ntopic read $SYS/#\n');
  const daemon = await startDaemon(t, { ...bridgeConfig(nats), auth: { aclFile } });
  await eventually(() => daemon.daemon.bridgeStats().state === 'connected', 10_000, 'the bridge to connect');
  const publisher = await connectClient(t, daemon.mqttUrl, { clientId: 'sensor-1' });
  await publisher.publishAsync('plant/line1/temp', '21.5', { qos: 0 });
  await publisher.publishAsync('plant/line1/temp', '21.6', { qos: 1 });
  await publisher.publishAsync('plant/line1/temp', '21.7', { qos: 2 });
  await publisher.publishAsync('plant/line1/setpoint', '22', { qos: 1, retain: true });
  await publisher.publishAsync('office/light', 'on', { qos: 1 });
  await publisher.publishAsync('plant/v1.2/x', 'dotted', { qos: 1 });
  await exported(t, daemon, 5);

  const jsm = await jetstreamManager(await natsClient(t, nats));
  const messages = await streamMessages(jsm);
  t.same(
    messages.map((m) => [m.subject, new TextDecoder().decode(m.data), m.header.get('Edgemqtt-Qos'), m.header.get('Edgemqtt-Retain')]),
    [
      ['mqtt.plant.line1.temp', '21.5', '0', '0'],
      ['mqtt.plant.line1.temp', '21.6', '1', '0'],
      ['mqtt.plant.line1.temp', '21.7', '2', '0'],
      ['mqtt.plant.line1.setpoint', '22', '1', '1'],
      ['mqtt.plant.v1//2.x', 'dotted', '1', '0'],
    ],
    'what matches plant/# arrives in order, under the MQTT mapping; office/light does not',
  );
  t.ok(messages.every((m) => m.header.get('Edgemqtt-Origin') === 'site-a'), 'each names its origin site');
  const ids = messages.map((m) => m.header.get('Nats-Msg-Id'));
  const first = Number(ids[0]?.split(':')[1]);
  t.same(ids, messages.map((_, i) => `site-a:${first + i}`), 'each carries <site>:<outbox sequence> for JetStream duplicate detection');
  t.ok(messages.every((m) => Number(m.header.get('Edgemqtt-Time')) > 0), 'and the time the broker took it');
  const stats = daemon.daemon.bridgeStats();
  t.equal(stats.duplicates, 0);
  t.equal(stats.outbox.added, 5);

  // The state for MQTT dashboards: a retained $SYS message.
  const dashboard = await openClient(t, daemon.mqttUrl, { clientId: 'dashboard' });
  await dashboard.client.subscribeAsync('$SYS/edgemqtt/bridge', { qos: 0 });
  const [status] = await dashboard.log.waitForCount(1);
  t.match(JSON.parse(status!.payload), { state: 'connected' }, 'the bridge status is retained under $SYS/edgemqtt/bridge');
});

t.test('an outage of NATS loses nothing and doubles nothing; order per publisher holds', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const daemon = await startDaemon(t, bridgeConfig(nats, { sender: { window: 32, publishTimeoutMs: 1000 } }));
  await eventually(() => daemon.daemon.bridgeStats().state === 'connected', 10_000, 'the bridge to connect');
  const publishers = await Promise.all([0, 1].map((i) => connectClient(t, daemon.mqttUrl, { clientId: `pub-${i}` })));
  const PER_PHASE = 200;
  const publishPhase = (phase: number) =>
    Promise.all(
      publishers.map(async (publisher, i) => {
        for (let n = 0; n < PER_PHASE; n++) await publisher.publishAsync(`plant/p${i}`, `${phase * PER_PHASE + n}`, { qos: 1 });
      }),
    );
  await publishPhase(0);
  // NATS dies while messages flow: the second phase is acknowledged locally and waits on disk.
  const during = publishPhase(1);
  await nats.kill();
  await during;
  await publishPhase(2);
  await eventually(() => daemon.daemon.bridgeStats().state === 'disconnected', 10_000, 'the bridge to notice');
  t.ok(daemon.daemon.bridgeStats().outbox.depth > 0, `messages wait in the outbox (${daemon.daemon.bridgeStats().outbox.depth})`);
  // Local traffic is untouched by the outage.
  const local = await openClient(t, daemon.mqttUrl, { clientId: 'local-sub' });
  await local.client.subscribeAsync('plant/#', { qos: 1 });
  await publishers[0]!.publishAsync('plant/p0', String(3 * PER_PHASE), { qos: 1 });
  await local.log.waitForCount(1);

  await nats.start();
  await exported(t, daemon, 2 * 3 * PER_PHASE + 1);
  const jsm = await jetstreamManager(await natsClient(t, nats));
  const messages = await streamMessages(jsm);
  for (const i of [0, 1]) {
    const seqs = messages.filter((m) => m.subject === `mqtt.plant.p${i}`).map((m) => Number(new TextDecoder().decode(m.data)));
    const expected = Array.from({ length: 3 * PER_PHASE + (i === 0 ? 1 : 0) }, (_, n) => n);
    t.same(seqs, expected, `publisher ${i}: every message once, in order`);
  }
  const ids = messages.map((m) => m.header.get('Nats-Msg-Id'));
  t.equal(new Set(ids).size, ids.length, 'no message id twice in the stream');
});

t.test('an unreachable NATS at start: the daemon is ready, local traffic flows, the state says why', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const url = nats.url;
  await nats.kill();
  const daemon = await startDaemon(t, bridgeConfig(url));
  t.equal(daemon.daemon.readiness().ready, true, 'ready without NATS');
  await eventually(() => daemon.daemon.bridgeStats().state === 'disconnected', 10_000, 'the bridge to report the outage');
  t.match(daemon.daemon.bridgeStats().problem, /NATS unreachable/);
  const sub = await openClient(t, daemon.mqttUrl, { clientId: 'local' });
  await sub.client.subscribeAsync('plant/#', { qos: 1 });
  const publisher = await connectClient(t, daemon.mqttUrl, { clientId: 'sensor' });
  await publisher.publishAsync('plant/a', 'x', { qos: 1 });
  await sub.log.waitForCount(1);
  t.equal(daemon.daemon.bridgeStats().outbox.depth, 1, 'the message waits in the outbox');
  await nats.start();
  await exported(t, daemon, 1);
});

t.test('a stream that exists with other subjects: one clear error, nothing sent, local traffic flows', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const jsm = await jetstreamManager(await natsClient(t, nats));
  await jsm.streams.add({ name: STREAM, subjects: ['orders.>'] });
  const daemon = await startDaemon(t, bridgeConfig(nats));
  await eventually(() => daemon.daemon.bridgeStats().state === 'misconfigured', 10_000, 'the bridge to refuse the stream');
  t.match(daemon.daemon.bridgeStats().problem, /exists with subjects \["orders\.>"\]; it must take mqtt\.>/);
  const publisher = await connectClient(t, daemon.mqttUrl, { clientId: 'sensor' });
  await publisher.publishAsync('plant/a', 'x', { qos: 1 });
  t.equal(daemon.daemon.bridgeStats().exported, 0);
  t.equal(daemon.daemon.bridgeStats().outbox.depth, 1, 'kept for when the stream is fixed');
});

t.test('a full outbox (drop-new): the message is acknowledged locally, not exported, and counted', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const url = nats.url;
  await nats.kill();
  const daemon = await startDaemon(t, bridgeConfig(url, { outbox: { maxMessages: 3, overflow: 'drop-new' } }));
  const publisher = await connectClient(t, daemon.mqttUrl, { clientId: 'sensor' });
  for (let i = 0; i < 5; i++) await publisher.publishAsync('plant/a', String(i), { qos: 1 });
  const { outbox } = daemon.daemon.bridgeStats();
  t.equal(outbox.depth, 3, 'the outbox holds its limit');
  t.equal(outbox.droppedNew, 2, 'the two beyond it were counted');
  await nats.start();
  await exported(t, daemon, 3);
  const jsm = await jetstreamManager(await natsClient(t, nats));
  t.same((await streamMessages(jsm)).map((m) => new TextDecoder().decode(m.data)), ['0', '1', '2'], 'the oldest three went');
});

t.test('wrong NATS credentials: one clear error, the state says so, local traffic flows; right ones connect', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t, ['--user', 'bridge', '--pass', 'right-secret']);
  await nats.start();
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'nats-password');
  await writeFile(passwordFile, 'wrong-secret\n');
  const wrong = await startDaemon(t, bridgeConfig(nats, { nats: { servers: [nats.url], user: 'bridge', passwordFile } }));
  await eventually(() => wrong.daemon.bridgeStats().state === 'misconfigured', 10_000, 'the bridge to report the refusal');
  t.match(wrong.daemon.bridgeStats().problem, /NATS refused the credentials/);
  t.notMatch(wrong.daemon.bridgeStats().problem, /wrong-secret/, 'the password is not shown');
  const publisher = await connectClient(t, wrong.mqttUrl, { clientId: 'sensor' });
  await publisher.publishAsync('plant/a', 'kept', { qos: 1 });
  t.equal(wrong.daemon.bridgeStats().outbox.depth, 1, 'the message waits in the outbox');
  await wrong.daemon.stop();

  await writeFile(passwordFile, 'right-secret\n');
  const right = await startDaemon(t, { dataDir: wrong.daemon.config.dataDir, ...bridgeConfig(nats, { nats: { servers: [nats.url], user: 'bridge', passwordFile } }) });
  await exported(t, right, 1);
  const nc = await connect({ servers: nats.url, user: 'bridge', pass: 'right-secret' });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  t.same((await streamMessages(jsm)).map((m) => new TextDecoder().decode(m.data)), ['kept'], 'what waited went once the credentials were fixed');
});

t.test("a message larger than the NATS server's max_payload: dropped and counted, and it holds up nothing behind it", { skip: unavailable }, async (t) => {
  const dir = tempDir(t);
  const configFile = path.join(dir, 'nats.conf');
  await writeFile(configFile, 'max_payload: 4096\n');
  const nats = new NatsServer(t, ['-c', configFile]);
  await nats.start();
  const daemon = await startDaemon(t, bridgeConfig(nats));
  await eventually(() => daemon.daemon.bridgeStats().state === 'connected', 10_000, 'the bridge to connect');
  const publisher = await connectClient(t, daemon.mqttUrl, { clientId: 'sensor' });
  await publisher.publishAsync('plant/a', 'before', { qos: 1 });
  await publisher.publishAsync('plant/a', Buffer.alloc(8192, 0x61), { qos: 1 });
  for (const payload of ['after-1', 'after-2']) await publisher.publishAsync('plant/a', payload, { qos: 1 });
  await exported(t, daemon, 3);
  const stats = daemon.daemon.bridgeStats();
  t.equal(stats.refused, 1, 'the oversized one is counted');
  t.equal(stats.outbox.depth, 0, 'and gone from the outbox');
  const jsm = await jetstreamManager(await natsClient(t, nats));
  t.same((await streamMessages(jsm)).map((m) => new TextDecoder().decode(m.data)), ['before', 'after-1', 'after-2'], 'the others went, in order');
  const metrics = await (await fetch(`${daemon.httpUrl}/metrics`)).text();
  t.match(metrics, /^edgemqtt_bridge_refused_messages_total 1$/m, 'the metric says so');
});
