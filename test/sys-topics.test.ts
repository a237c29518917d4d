/**
 * $SYS like mosquitto's: the $SYS/broker/... figures match known traffic,
 * are retained (a late subscriber gets them at once), and
 * `mosquitto_sub -t '$SYS/#'` works for an anonymous client without an ACL
 * file, which never sees aedes' $SYS/<id>/new/... messages that list client
 * ids and subscriptions, while a logged-in user does.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { hashPassword } from '../src/auth/password-file.js';
import { startDaemon, tempDir } from './helpers/daemon.js';
import { connectClient, eventually, openClient, type ReceivedMessage } from './helpers/mqtt.js';
import { startSecureDaemon } from './helpers/security.js';

/** The latest payload per topic. */
function latest(messages: ReceivedMessage[]): Map<string, string> {
  return new Map(messages.map((message) => [message.topic, message.payload]));
}

t.test('$SYS/broker figures match the traffic, every sysIntervalSec, retained', async (t) => {
  const { mqttUrl, wsUrl } = await startDaemon(t, { broker: { sysIntervalSec: 1 } });
  const publisher = await connectClient(t, mqttUrl, { clientId: 'publisher' });
  const subscriber = await connectClient(t, wsUrl, { clientId: 'subscriber', protocolVersion: 5 });
  await subscriber.subscribeAsync('plant/#', { qos: 1 });
  await publisher.publishAsync('plant/a', 'abc', { qos: 0 });
  await publisher.publishAsync('plant/b', 'defgh', { qos: 1, retain: true });
  await publisher.publishAsync('plant/c', 'ij', { qos: 1 });

  // A late subscriber: the retained figures come at once, and the next update follows within the interval.
  const { client: monitor, log } = await openClient(t, mqttUrl, { clientId: 'monitor' });
  await monitor.subscribeAsync(['$SYS/broker/#', '$SYS/edgemqtt/store']);
  const expected: Record<string, string> = {
    '$SYS/broker/publish/messages/received': '3',
    '$SYS/broker/messages/received': '3',
    '$SYS/broker/publish/bytes/received': '10',
    '$SYS/broker/clients/connected': '3',
    '$SYS/broker/clients/active': '3',
    '$SYS/broker/subscriptions/count': '3',
    '$SYS/broker/clients/disconnected': '0',
  };
  await log.waitFor(
    (messages) => {
      const now = latest(messages);
      return Object.entries(expected).every(([topic, value]) => now.get(topic) === value);
    },
    5000,
    JSON.stringify(expected),
  );
  const now = latest(log.messages);
  t.match(now.get('$SYS/broker/version'), /^edgemqtt version \d+\.\d+\.\d+/);
  t.match(now.get('$SYS/broker/uptime'), /^\d+ seconds$/);
  t.match(now.get('$SYS/broker/load/publish/received/1min'), /^\d+\.\d\d$/, 'load averages as mosquitto prints them');
  t.match(now.get('$SYS/broker/heap/current'), /^\d+$/);
  t.ok(Number(now.get('$SYS/broker/retained messages/count')) >= 1, 'retained count includes plant/b');
  const store = JSON.parse(now.get('$SYS/edgemqtt/store') ?? '{}') as Record<string, unknown>;
  t.match(store, { sessions: Number, queuedMessages: Number, retainedMessages: Number, sizeBytes: Number, writesFailing: false });
  t.ok((store.sizeBytes as number) > 0, 'the store has a size');
  // Retained: a client subscribing later gets the figure at once, flagged retained [MQTT-3.3.1-8].
  const { client: late, log: lateLog } = await openClient(t, mqttUrl, { clientId: 'late' });
  await late.subscribeAsync('$SYS/broker/clients/total');
  const [total] = await lateLog.waitForCount(1);
  t.equal(total?.packet.retain, true, 'a retained message');
  t.match(total?.payload, /^\d+$/);

  // The uptime moves on: the next update came within the interval (bounded wait, no sleep).
  const firstUptime = now.get('$SYS/broker/uptime');
  await log.waitFor((messages) => latest(messages).get('$SYS/broker/uptime') !== firstUptime, 3000, 'a later uptime');

  // A 1-minute load that saw 3 messages within a few seconds is above zero.
  await eventually(() => Number(latest(log.messages).get('$SYS/broker/load/publish/received/1min')) > 0, 3000, 'a load above 0');
});

t.test('sysIntervalSec 0: no $SYS/broker figures', async (t) => {
  const { mqttUrl } = await startDaemon(t, { broker: { sysIntervalSec: 0 } });
  const { client, log } = await openClient(t, mqttUrl);
  await client.subscribeAsync(['$SYS/broker/#', 'marker']);
  await client.publishAsync('marker', 'm');
  await log.waitFor((messages) => messages.some((m) => m.topic === 'marker'));
  t.same(log.messages.map((m) => m.topic), ['marker'], 'no retained figure came before the marker');
});

t.test("mosquitto_sub -t '$SYS/#' works anonymously; aedes' client listings go only to a logged-in user", async (t) => {
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwords');
  await writeFile(passwordFile, `ops:${await hashPassword('monitor')}\n`, { mode: 0o600 });
  const { mqttUrl } = await startSecureDaemon(t, { auth: { passwordFile }, broker: { sysIntervalSec: 1 } });
  const port = new URL(mqttUrl).port;

  // The real command line a newcomer types.
  const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', port, '-t', '$SYS/#', '-t', 'marker', '-v'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => sub.kill());
  let lines = '';
  sub.stdout.on('data', (chunk: Buffer) => (lines += chunk.toString()));
  await eventually(() => lines.includes('$SYS/broker/version edgemqtt version'), 5000, 'mosquitto_sub to print the version');

  const { client: ops, log: opsLog } = await openClient(t, mqttUrl, { username: 'ops', password: 'monitor' });
  await ops.subscribeAsync('$SYS/#');
  const { client: anonymous, log: anonymousLog } = await openClient(t, mqttUrl);
  const granted = await anonymous.subscribeAsync(['$SYS/#', 'marker']);
  t.same(granted.map((g) => g.qos), [0, 0], 'anonymous: $SYS/# granted');
  await anonymousLog.waitFor((messages) => messages.some((m) => m.topic === '$SYS/broker/clients/connected'), 5000, 'the retained figures');

  const sensor = await connectClient(t, mqttUrl, { clientId: 'sensor-42' });
  await sensor.subscribeAsync('plant/secret/#');
  await opsLog.waitFor((messages) => messages.some((m) => /^\$SYS\/[^/]+\/new\/subscribes$/.test(m.topic) && m.payload.includes('sensor-42')), 5000, 'the listing');
  t.ok(opsLog.messages.some((m) => /^\$SYS\/[^/]+\/new\/clients$/.test(m.topic) && m.payload === 'sensor-42'), 'the logged-in user sees the new client');

  // Published after the listings, on the same broker: once the marker is in, they would have been too.
  await sensor.publishAsync('marker', 'done');
  await anonymousLog.waitFor((messages) => messages.some((m) => m.topic === 'marker'));
  await eventually(() => lines.includes('marker done'), 5000, 'mosquitto_sub to print the marker');
  const listing = (topic: string) => /^\$SYS\/[^/]+\/(new|disconnect)\//.test(topic);
  t.notOk(anonymousLog.messages.some((m) => listing(m.topic)), 'the anonymous client saw no client or subscription listing');
  t.notOk(lines.includes('sensor-42') || lines.includes('plant/secret'), 'mosquitto_sub printed no client id and no subscription');
  t.match(lines, /^\$SYS\/broker\/uptime \d+ seconds$/m, 'mosquitto_sub prints the figures');
});

t.test('the $SYS figures are not written to the store: after a restart without them, none is retained', async (t) => {
  const dataDir = tempDir(t);
  const first = await startDaemon(t, { dataDir, broker: { sysIntervalSec: 1 } });
  const { client: watcher, log: watched } = await openClient(t, first.mqttUrl);
  await watcher.subscribeAsync('$SYS/broker/uptime');
  await watched.waitForCount(1);
  const publisher = await connectClient(t, first.mqttUrl);
  await publisher.publishAsync('plant/kept', 'k', { qos: 1, retain: true });
  await first.daemon.stop();

  const second = await startDaemon(t, { dataDir, broker: { sysIntervalSec: 0 } });
  const { client, log } = await openClient(t, second.mqttUrl);
  await client.subscribeAsync(['$SYS/broker/#', '$SYS/edgemqtt/#', 'plant/kept', 'marker']);
  await client.publishAsync('marker', 'm');
  await log.waitFor((messages) => messages.some((m) => m.topic === 'marker'));
  t.same(log.messages.map((m) => m.topic), ['plant/kept', 'marker'], "a client's retained message survived; no $SYS figure did");
});
