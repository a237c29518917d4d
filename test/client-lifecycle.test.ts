/**
 * A client's life as the operator sees it: a `client connected` line, a
 * `client disconnected` line with the reason, and the traffic counters
 * (daemon.trafficStats()) for every way a connected client can leave, over
 * MQTT 3.1.1 and 5, TCP and WebSocket; and PUBLISH packets counted out per
 * QoS where they are really written (live deliveries, resent stored queues).
 */
import t from 'tap';
import type { Test } from 'tap';
import type { Packet } from 'mqtt-packet';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { connectRaw, eventually, openClient, type RawClient } from './helpers/mqtt.js';
import { captureLogs, INFO, type CapturedLogs, type LogLine } from './helpers/logs.js';
import { publish } from './helpers/packets.js';

type Version = 4 | 5;
type Transport = 'tcp' | 'ws';
const urlOf = (daemon: RunningDaemon, transport: Transport) => (transport === 'tcp' ? daemon.mqttUrl : daemon.wsUrl);
const listenerName = (transport: Transport) => (transport === 'tcp' ? 'mqtt' : 'http');
const protocolName = (version: Version) => (version === 5 ? '5' : '3.1.1');
const cases: Array<[Transport, Version]> = [
  ['tcp', 4],
  ['ws', 5],
];

function connectPacket(clientId: string, version: Version, options: { clean?: boolean; keepalive?: number } = {}): Packet {
  const clean = options.clean ?? true;
  const session = version === 5 && !clean ? { properties: { sessionExpiryInterval: 3600 } } : {};
  return { cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clientId, clean, keepalive: options.keepalive ?? 30, ...session };
}

/** A raw client that has its CONNACK. */
async function connected(t: Test, url: string, clientId: string, version: Version, options: { clean?: boolean; keepalive?: number } = {}): Promise<RawClient> {
  const raw = await connectRaw(t, url, { protocolVersion: version });
  raw.send(connectPacket(clientId, version, options));
  const connack = await raw.waitForPacket('connack');
  t.equal(version === 5 ? connack.reasonCode : connack.returnCode, 0, `${clientId} is accepted`);
  return raw;
}

/** Lines of exactly this message (the limits' 'slow client disconnected: ...' is not one) about `clientId`. */
const linesOf = (logs: CapturedLogs, msg: 'client connected' | 'client disconnected', clientId: string): LogLine[] =>
  logs.lines.filter((line) => line.msg === msg && line.clientId === clientId);

/** The one `client disconnected` line of `clientId`, once it is written. */
async function departure(logs: CapturedLogs, clientId: string, timeoutMs = 5000): Promise<LogLine> {
  const lines = () => linesOf(logs, 'client disconnected', clientId);
  await eventually(() => lines().length > 0, timeoutMs, `the disconnect line of ${clientId}`);
  return lines()[0]!;
}

function connectedNow(daemon: RunningDaemon, transport: Transport, version: Version): number {
  const entry = daemon.daemon.trafficStats().connected.find((e) => e.listener === listenerName(transport) && e.protocol === protocolName(version));
  return entry?.count ?? 0;
}

for (const [transport, version] of cases) {
  const name = `${transport}, MQTT ${protocolName(version)}`;

  t.test(`${name}: connect and DISCONNECT are logged with who, where and how, and counted`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    const raw = await connected(t, urlOf(daemon, transport), 'sensor-1', version, { clean: false, keepalive: 45 });
    const [line] = linesOf(logs, 'client connected', 'sensor-1');
    t.match(
      line,
      {
        level: INFO,
        component: 'broker',
        clientId: 'sensor-1',
        user: null,
        remote: /^127\.0\.0\.1:\d+$/,
        listener: listenerName(transport),
        protocol: protocolName(version),
        clean: false,
        keepAliveSec: 45,
      },
      'the connected line',
    );
    t.equal(connectedNow(daemon, transport, version), 1, 'counted as connected on its listener and protocol');
    raw.send({ cmd: 'publish', topic: 'plant/a', payload: Buffer.from('1'), qos: 0, retain: false, dup: false });
    raw.send({ cmd: 'publish', topic: 'plant/b', payload: Buffer.from('22'), qos: 0, retain: false, dup: false });
    raw.send({ cmd: 'disconnect' });
    const gone = await departure(logs, 'sensor-1');
    t.match(
      gone,
      {
        level: INFO,
        clientId: 'sensor-1',
        user: null,
        remote: line?.remote,
        listener: listenerName(transport),
        protocol: protocolName(version),
        reason: 'client_disconnect',
        messagesIn: 2,
        messagesOut: 0,
      },
      'the disconnected line',
    );
    t.type(gone.connectedSec, 'number', 'how long it was connected');
    t.notOk('error' in gone, 'no error on a clean departure');
    const stats = daemon.daemon.trafficStats();
    t.equal(connectedNow(daemon, transport, version), 0, 'no longer counted as connected');
    t.match(stats.connects, [{ listener: listenerName(transport), protocol: protocolName(version), count: 1 }]);
    t.equal(stats.disconnects.client_disconnect, 1);
    t.equal(Object.values(stats.disconnects).reduce((a, b) => a + b, 0), 1, 'one departure, under one reason');
    t.same(stats.messagesIn, [2, 0, 0]);
    t.same(stats.bytesIn, [3, 0, 0]);
  });

  t.test(`${name}: a connection that drops without DISCONNECT is connection_lost`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    const { client } = await openClient(t, urlOf(daemon, transport), { clientId: 'flaky', protocolVersion: version });
    client.stream.destroy();
    t.match(await departure(logs, 'flaky'), { reason: 'connection_lost', listener: listenerName(transport), protocol: protocolName(version) });
    t.equal(daemon.daemon.trafficStats().disconnects.connection_lost, 1);
    t.equal(connectedNow(daemon, transport, version), 0);
  });

  t.test(`${name}: a keep-alive that runs out is keepalive_timeout [MQTT-3.1.2-24]`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    // Keep-alive 1 s and then silence: closed after 1.5 s.
    await connected(t, urlOf(daemon, transport), 'sleepy', version, { keepalive: 1 });
    t.match(await departure(logs, 'sleepy'), { reason: 'keepalive_timeout', error: 'keep alive timeout' });
    t.equal(logs.find('keep-alive timeout').length, 0, 'one line for the event, not a second one');
    t.equal(daemon.daemon.trafficStats().disconnects.keepalive_timeout, 1);
  });

  t.test(`${name}: a protocol violation names its clause`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    const raw = await connected(t, urlOf(daemon, transport), 'rogue', version);
    // A PUBLISH with both QoS bits set [MQTT-3.3.1-4].
    const bad = Buffer.from(publish('a/b', { qos: 1, id: 1, payload: 'x' }));
    bad[0] = 0x36;
    raw.send(bad);
    await raw.waitForClose();
    t.match(await departure(logs, 'rogue'), { reason: 'protocol_violation', rule: 'MQTT-3.3.1-4', error: 'PUBLISH with QoS 3' });
    t.equal(daemon.daemon.trafficStats().disconnects.protocol_violation, 1);
  });

  t.test(`${name}: a new connection with the same client id takes the session over [MQTT-3.1.4-2]`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    const first = await connected(t, urlOf(daemon, transport), 'twin', version);
    await connected(t, urlOf(daemon, transport), 'twin', version);
    await first.waitForClose();
    if (version === 5) t.match(first.packets.at(-1), { cmd: 'disconnect', reasonCode: 0x8e }, 'the first is told: 0x8E Session taken over');
    t.match(await departure(logs, 'twin'), { reason: 'taken_over' });
    const stats = daemon.daemon.trafficStats();
    t.equal(stats.disconnects.taken_over, 1);
    t.equal(connectedNow(daemon, transport, version), 1, 'the second is still connected');
    t.equal(linesOf(logs, 'client connected', 'twin').length, 2, 'both connections logged');
    t.equal(linesOf(logs, 'client disconnected', 'twin').length, 1, 'one departure');
  });

  t.test(`${name}: a client whose socket stays full for broker.drainTimeoutSec is slow_consumer`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, { broker: { drainTimeoutSec: 1 }, limits: { maxOutgoingBufferBytes: 65_536 } }, { logger: logs.logger });
    const stuck = await connected(t, urlOf(daemon, transport), 'stuck', version, { keepalive: 0 });
    stuck.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'fill/#', qos: 0 }] });
    await stuck.waitForPacket('suback');
    stuck.pauseReading();
    const { client: publisher } = await openClient(t, daemon.mqttUrl, { clientId: 'publisher' });
    const payload = Buffer.alloc(16_384, 0x62);
    await eventually(
      async () => {
        for (let i = 0; i < 20; i++) publisher.publish('fill/me', payload, { qos: 0 });
        await publisher.publishAsync('fill/ack', 'x', { qos: 1 });
        return linesOf(logs, 'client disconnected', 'stuck').length > 0;
      },
      20_000,
      'the stuck client to be disconnected',
    );
    t.match(await departure(logs, 'stuck'), { reason: 'slow_consumer' });
    t.equal(daemon.daemon.trafficStats().disconnects.slow_consumer, 1);
  });

  t.test(`${name}: clients connected when the broker stops leave with server_stop`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    await connected(t, urlOf(daemon, transport), 'stays-1', version);
    await connected(t, urlOf(daemon, transport), 'stays-2', version);
    await daemon.daemon.stop();
    t.match(await departure(logs, 'stays-1'), { reason: 'server_stop' });
    t.match(await departure(logs, 'stays-2'), { reason: 'server_stop' });
    const stats = daemon.daemon.trafficStats();
    t.equal(stats.disconnects.server_stop, 2);
    t.equal(connectedNow(daemon, transport, version), 0);
  });

  t.test(`${name}: PUBLISH packets out are counted at the QoS they are sent at, per client too`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    const url = urlOf(daemon, transport);
    const { client: subscriber, log } = await openClient(t, url, { clientId: 'reader', protocolVersion: version });
    await subscriber.subscribeAsync('out/2/#', { qos: 2 });
    // Granted QoS 0: QoS 1 messages go out at QoS 0 [MQTT-3.8.4-6].
    await subscriber.subscribeAsync('out/0/#', { qos: 0 });
    const { client: publisher } = await openClient(t, daemon.mqttUrl, { clientId: 'writer' });
    const sent: Array<[topic: string, qos: 0 | 1 | 2, count: number]> = [
      ['out/2/zero', 0, 3],
      ['out/2/one', 1, 4],
      ['out/2/two', 2, 5],
      ['out/0/downgraded', 1, 2],
    ];
    for (const [topic, qos, count] of sent) for (let i = 0; i < count; i++) await publisher.publishAsync(topic, `p${i}`, { qos });
    await log.waitForCount(14);
    const stats = daemon.daemon.trafficStats();
    t.same(stats.messagesOut, [5, 4, 5], 'QoS 0: 3 + 2 downgraded; QoS 1: 4; QoS 2: 5');
    t.same(stats.bytesOut, [10, 8, 10], 'their payload bytes (2 each)');
    t.same(stats.messagesIn, [3, 6, 5], 'what the publisher sent, at its own QoS');
    await subscriber.endAsync();
    t.match(await departure(logs, 'reader'), { reason: 'client_disconnect', messagesIn: 0, messagesOut: 14 });
    t.equal(linesOf(logs, 'client disconnected', 'writer').length, 0, 'the writer is still connected');
  });

  t.test(`${name}: a persistent session's stored messages resent on reconnect are counted out`, async (t) => {
    const daemon = await startDaemon(t);
    const url = urlOf(daemon, transport);
    const options = { clientId: 'away', protocolVersion: version, clean: false, ...(version === 5 ? { properties: { sessionExpiryInterval: 3600 } } : {}) };
    const first = await openClient(t, url, options);
    await first.client.subscribeAsync('queued/#', { qos: 1 });
    await first.client.endAsync();
    const { client: publisher } = await openClient(t, daemon.mqttUrl, { clientId: 'writer' });
    for (let i = 0; i < 3; i++) await publisher.publishAsync('queued/x', `m${i}`, { qos: 1 });
    t.same(daemon.daemon.trafficStats().messagesOut, [0, 0, 0], 'nothing sent while it was away');
    const { log } = await openClient(t, url, options);
    await log.waitForCount(3);
    t.same(daemon.daemon.trafficStats().messagesOut, [0, 3, 0], 'the three stored messages, sent at QoS 1');
  });
}
