/**
 * What survives a restart of the daemon on the same data directory: retained
 * messages, persistent sessions (subscriptions and queued messages), QoS 2
 * handshakes in flight; what a planned stop does with wills; and how start-up
 * fails on a store it cannot use (as the CLI reports it, exit code included).
 *
 * Each case about sessions, messages and wills runs with MQTT 3.1.1 clients
 * and with MQTT 5.0 clients; a v5 persistent session is Clean Start 0 with a
 * Session Expiry Interval [MQTT-3.1.2-23] (with none, the session would end
 * with the connection), and its PUBLISH properties are kept with a retained
 * message.
 */
import t, { type Test } from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { generate, type Packet } from 'mqtt-packet';
import type { IClientOptions } from 'mqtt';
import { ExitCode } from '../src/cli/io.js';
import { tempDir, testConfig, runDaemon } from './helpers/daemon.js';
import { connectRaw, eventually, openClient, type RawClient } from './helpers/mqtt.js';
import { CliProcess, execCli, repoRoot, writeConfig } from './helpers/process.js';

/** Starts a daemon on `config`; stop it with the returned function (teardown stops it otherwise). */

type Version = 4 | 5;
const VERSIONS = [4, 5] as const;
const versionName = (version: Version): string => (version === 5 ? 'MQTT 5.0' : 'MQTT 3.1.1');
/** Long enough to outlive every restart of a test. */
const SESSION_EXPIRY_SEC = 3600;

/** mqtt.js options for a client of `version`; `persistent` asks for a session that outlives the connection. */
function clientOptions(version: Version, options: { clientId?: string; persistent?: boolean } = {}): IClientOptions {
  return {
    ...(options.clientId === undefined ? {} : { clientId: options.clientId }),
    ...(options.persistent ? { clean: false } : {}),
    ...(version === 5
      ? { protocolVersion: 5 as const, ...(options.persistent ? { properties: { sessionExpiryInterval: SESSION_EXPIRY_SEC } } : {}) }
      : {}),
  };
}

function connectPacket(version: Version, clientId: string, clean: boolean, will?: { topic: string; payload: string }): Packet {
  return {
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: version,
    clientId,
    clean,
    keepalive: 0,
    ...(version === 5 && !clean ? { properties: { sessionExpiryInterval: SESSION_EXPIRY_SEC } } : {}),
    ...(will ? { will: { topic: will.topic, payload: Buffer.from(will.payload), qos: 1 as const, retain: false } } : {}),
  };
}

/** A byte-level client of `version`: its packets are encoded and parsed as that version (a v5 packet has a Property Length). */
async function rawClient(t: Test, url: string, version: Version): Promise<{ raw: RawClient; send(packet: Packet): void }> {
  const raw = await connectRaw(t, url, { protocolVersion: version });
  return { raw, send: (packet) => raw.send(generate(packet, { protocolVersion: version })) };
}

async function rawSession(t: Test, url: string, version: Version, clientId: string): Promise<{ raw: RawClient; send(packet: Packet): void }> {
  const client = await rawClient(t, url, version);
  client.send(connectPacket(version, clientId, false));
  await client.raw.waitForPacket('connack');
  return client;
}

for (const version of VERSIONS) {
  const name = versionName(version);

  t.test(`${name}: retained messages survive a restart; a cleared one stays cleared`, async (t) => {
    const config = testConfig(t);
    const first = await runDaemon(t, config);
    const publisher = await openClient(t, first.url, clientOptions(version));
    // A v5 message's properties are part of it, and are kept with it (MQTT 5.0 §3.3.2.3).
    const properties = version === 5 ? { properties: { userProperties: { unit: 'C' }, contentType: 'text/plain' } } : {};
    await publisher.client.publishAsync('site/line1/temp', '21.5', { qos: 1, retain: true, ...properties });
    await publisher.client.publishAsync('site/line2/temp', '19.0', { qos: 0, retain: true });
    await publisher.client.publishAsync('site/old', 'gone soon', { qos: 1, retain: true });
    await publisher.client.publishAsync('site/old', '', { qos: 1, retain: true });
    // A QoS 0 retained message is written behind; a QoS 1 one after it lands in the same or a later batch.
    await publisher.client.publishAsync('site/marker', 'm', { qos: 1, retain: true });
    await first.daemon.stop();

    const second = await runDaemon(t, config);
    const subscriber = await openClient(t, second.url, clientOptions(version));
    await subscriber.client.subscribeAsync('site/#', { qos: 1 });
    const messages = await subscriber.log.waitForCount(3);
    t.same(
      messages.map((m) => [m.topic, m.payload, m.packet.retain]).sort(),
      [
        ['site/line1/temp', '21.5', true],
        ['site/line2/temp', '19.0', true],
        ['site/marker', 'm', true],
      ],
      'every retained message, RETAIN set, the cleared one absent',
    );
    if (version === 5) {
      const line1 = messages.find((m) => m.topic === 'site/line1/temp')?.packet.properties;
      t.same(
        [line1?.userProperties, line1?.contentType],
        [{ unit: 'C' }, 'text/plain'],
        'its User Property and Content Type survive the restart with it [MQTT-3.3.2-17] [MQTT-3.3.2-20]',
      );
    }
  });

  t.test(`${name}: persistent sessions keep subscriptions and queued messages across a restart`, async (t) => {
    const config = testConfig(t);
    const first = await runDaemon(t, config);
    const device = await openClient(t, first.url, clientOptions(version, { clientId: 'device', persistent: true }));
    await device.client.subscribeAsync({ 'cmd/q1': { qos: 1 }, 'cmd/q2': { qos: 2 } });
    await device.client.endAsync();
    const publisher = await openClient(t, first.url, clientOptions(version));
    await publisher.client.publishAsync('cmd/q1', 'one', { qos: 1 });
    await publisher.client.publishAsync('cmd/q2', 'two', { qos: 2 });
    await first.daemon.stop();

    const second = await runDaemon(t, config);
    const back = await openClient(t, second.url, clientOptions(version, { clientId: 'device', persistent: true }));
    t.equal(back.connack.sessionPresent, true, 'the session is present [MQTT-3.2.2-2]');
    await back.log.waitForCount(2);
    t.same(back.log.messages.map((m) => [m.topic, m.payload, m.packet.qos]).sort(), [
      ['cmd/q1', 'one', 1],
      ['cmd/q2', 'two', 2],
    ], 'messages queued before the restart are delivered after it');
    const publisher2 = await openClient(t, second.url, clientOptions(version));
    await publisher2.client.publishAsync('cmd/q1', 'live', { qos: 1 });
    await back.log.waitForCount(3);
    t.equal(back.log.messages[2]?.payload, 'live', 'the restored subscription receives live messages without a new SUBSCRIBE');
  });

  t.test(`${name}: a QoS 2 handshake in flight completes after a restart`, async (t) => {
    const config = testConfig(t);
    const first = await runDaemon(t, config);
    const subscriber = await openClient(t, first.url, clientOptions(version, { clientId: 'sub', persistent: true }));
    await subscriber.client.subscribeAsync('flow/#', { qos: 2 });
    const publish: Packet = { cmd: 'publish', topic: 'flow/x', payload: Buffer.from('exactly once'), qos: 2, messageId: 9, retain: false, dup: false };
    const before = await rawSession(t, first.url, version, 'publisher');
    before.send(publish);
    await before.raw.waitForPacket('pubrec');
    await subscriber.log.waitForCount(1);
    await subscriber.client.endAsync();
    await first.daemon.stop();

    const second = await runDaemon(t, config);
    const after = await rawSession(t, second.url, version, 'publisher');
    // The PUBREC may have been lost with the connection: the publisher resends.
    after.send({ ...publish, dup: true });
    const pubrec = await after.raw.waitForPacket('pubrec');
    if (version === 5) t.ok((pubrec.reasonCode ?? 0) < 0x80, `PUBREC Reason Code 0x${(pubrec.reasonCode ?? 0).toString(16)}: accepted`);
    after.send({ cmd: 'pubrel', messageId: 9 });
    const pubcomp = await after.raw.waitForPacket('pubcomp');
    t.equal(pubcomp.messageId, 9, 'the PUBREL after the restart completes the flow');
    if (version === 5) t.equal(pubcomp.reasonCode ?? 0, 0, 'PUBCOMP 0x00, not 0x92 Packet Identifier not found: the flow was kept (MQTT 5.0 §4.3.3)');

    const back = await openClient(t, second.url, clientOptions(version, { clientId: 'sub', persistent: true }));
    await back.client.publishAsync('flow/marker', 'marker', { qos: 2 });
    await back.log.waitFor((m) => m.some((x) => x.topic === 'flow/marker'), 5000, 'the marker');
    t.same(back.log.messages.map((m) => m.payload), ['marker'], 'the message was not delivered again after the restart');
  });

  t.test(`${name}: a planned stop publishes no wills; after the restart only a client that stays away has its will published`, async (t) => {
    // Wills of earlier runs are published every 4 heartbeat intervals: 4 s here.
    const config = testConfig(t, { broker: { heartbeatIntervalSec: 1 } });
    const first = await runDaemon(t, config);
    const watcher = await openClient(t, first.url, clientOptions(version, { clientId: 'watcher', persistent: true }));
    await watcher.client.subscribeAsync('will/#', { qos: 1 });
    for (const id of ['returns', 'stays-away']) {
      const { raw, send } = await rawClient(t, first.url, version);
      send(connectPacket(version, id, true, { topic: `will/${id}`, payload: `${id} is offline` }));
      await raw.waitForPacket('connack');
    }
    const started = performance.now();
    await first.daemon.stop();

    const second = await runDaemon(t, config);
    const watching = await openClient(t, second.url, clientOptions(version, { clientId: 'watcher', persistent: true }));
    t.equal(watching.connack.sessionPresent, true);
    const returning = await rawClient(t, second.url, version);
    returning.send(connectPacket(version, 'returns', true));
    await returning.raw.waitForPacket('connack');
    // A will queued for the watcher during the stop would be delivered on its
    // reconnect, long before the will sweep of the new run.
    await watching.log.waitFor((m) => m.length > 0, 15_000, 'a will');
    t.same(
      watching.log.messages.map((m) => [m.topic, m.payload]),
      [['will/stays-away', 'stays-away is offline']],
      'only the will of the client that did not come back, none from the stop',
    );
    t.ok(performance.now() - started >= 4000, 'published by the sweep after four heartbeat intervals, not at the stop');
    await watching.client.publishAsync('will/marker', 'marker', { qos: 1 });
    await watching.log.waitFor((m) => m.some((x) => x.topic === 'will/marker'), 5000, 'the marker');
    t.equal(watching.log.messages.length, 2, 'and only once');
  });

  t.test(`${name}: a will from an earlier run is checked against the ACL in force now, as its owner`, async (t) => {
    // Wills of earlier runs are published every 4 heartbeat intervals: 4 s here.
    const aclFile = path.join(tempDir(t), 'acl');
    await writeFile(aclFile, 'topic readwrite will/#\n');
    const config = testConfig(t, { broker: { heartbeatIntervalSec: 1 }, auth: { aclFile } });
    const first = await runDaemon(t, config);
    const ghost = await rawClient(t, first.url, version);
    ghost.send(connectPacket(version, 'ghost', true, { topic: 'will/ghost', payload: 'ghost is offline' }));
    await ghost.raw.waitForPacket('connack');
    await first.daemon.stop();

    // The device is revoked while the gateway is down: it may read, not write.
    await writeFile(aclFile, 'topic read will/#\n');
    const second = await runDaemon(t, config);
    const watcher = await openClient(t, second.url, clientOptions(version, { clientId: 'watcher' }));
    await watcher.client.subscribeAsync('will/#', { qos: 1 });
    await eventually(() => second.daemon.authStats().publishesDenied >= 1, 15_000, 'the will sweep to refuse the stored will');
    t.same(watcher.log.messages, [], 'the revoked client\'s will is not published');
  });

  t.test(`${name}: the offline queue limit applies across a restart (the oldest are dropped)`, async (t) => {
    const config = testConfig(t, { persistence: { maxQueuedMessagesPerClient: 3 } });
    const first = await runDaemon(t, config);
    const device = await openClient(t, first.url, clientOptions(version, { clientId: 'device', persistent: true }));
    await device.client.subscribeAsync('limit/#', { qos: 1 });
    await device.client.endAsync();
    const publisher = await openClient(t, first.url, clientOptions(version));
    for (let i = 1; i <= 5; i++) await publisher.client.publishAsync('limit/x', `m${i}`, { qos: 1 });
    await first.daemon.stop();

    const second = await runDaemon(t, config);
    const back = await openClient(t, second.url, clientOptions(version, { clientId: 'device', persistent: true }));
    await back.log.waitForCount(3);
    const publisher2 = await openClient(t, second.url, clientOptions(version));
    await publisher2.client.publishAsync('limit/x', 'marker', { qos: 1 });
    await back.log.waitFor((m) => m.some((x) => x.payload === 'marker'), 5000, 'the marker');
    t.same(back.log.messages.map((m) => m.payload), ['m3', 'm4', 'm5', 'marker']);
  });
}

t.test('the CLI refuses a store it cannot use, with one clear line and a distinct exit code', async (t) => {
  const dir = tempDir(t, 'edgemqtt-store-');
  const configPath = await writeConfig(dir, {
    dataDir: path.join(dir, 'data'),
    log: { level: 'info' },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { enabled: false },
  });
  const store = path.join(dir, 'data', 'store');

  await t.test('locked by a running instance: exit 75 (EX_TEMPFAIL), retried by systemd', async (t) => {
    const running = new CliProcess(t, ['start', '--config', configPath], { cwd: dir });
    await running.waitForLog('edgemqtt ready');
    const second = await execCli(t, ['start', '--config', configPath], { cwd: dir });
    t.equal(second.code, ExitCode.tempFail);
    t.same(second.stderrLines, [`edgemqtt: store ${store} is locked: another edgemqtt instance is using this data directory`]);
    t.match(second.logs.at(-1), { msg: 'start failed', code: 'EDGEMQTT_STORE_LOCKED' });
    running.signal('SIGTERM');
    t.equal((await running.waitForExit()).code, 0, 'the first instance is unaffected');
  });

  await t.test('corrupt: exit 65 (EX_DATAERR), not restarted by systemd', async (t) => {
    // No trailing newline: LevelDB reports corruption (with one, a missing manifest: EX_IOERR).
    await writeFile(path.join(store, 'CURRENT'), 'not a manifest name');
    const result = await execCli(t, ['start', '--config', configPath], { cwd: dir });
    t.equal(result.code, ExitCode.dataError);
    t.equal(result.stderrLines.length, 1, 'one line');
    t.match(result.stderrLines[0], new RegExp(`^edgemqtt: store ${store} is corrupt \\(.+\\); restore it from a backup or move it aside to start empty$`));
  });

  await t.test('the unit file does not restart on a corrupt store', async (t) => {
    const unit = await readFile(path.join(repoRoot, 'systemd', 'edgemqtt.service'), 'utf8');
    const prevent = /^RestartPreventExitStatus=(.*)$/m.exec(unit)?.[1]?.split(/\s+/) ?? [];
    t.ok(prevent.includes(String(ExitCode.dataError)), `RestartPreventExitStatus lists 65: ${prevent.join(' ')}`);
    t.notOk(prevent.includes(String(ExitCode.tempFail)), 'a locked store is retried: the other instance may be on its way out');
  });
});
