/**
 * MQTT 5 session lifetimes, with the store as their authority: the Session
 * Expiry Interval (clamped by persistence.sessionExpirySec, changed by
 * DISCONNECT), Clean Start 0 resuming a stored session whatever its new
 * Session Expiry [MQTT-3.1.2-5], each across a restart of the daemon on the
 * same data directory. Real daemons, real mqtt.js v5 clients over loopback.
 * Where a test waits out an interval of a second or two, that wait is the
 * condition under test, and it is kept short.
 */
import t, { type Test } from 'tap';
import type { IClientOptions } from 'mqtt';
import * as mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import { testConfig, runDaemon } from './helpers/daemon.js';
import { connectRaw, eventually, openClient, type RawClient } from './helpers/mqtt.js';

/** Starts a daemon on `config`; the teardown stops it unless the test did. */

const v5 = (clientId: string, options: IClientOptions = {}): IClientOptions => ({ protocolVersion: 5, clientId, ...options });

/** Resolves once `ms` have passed: only where the passing of that time is what is tested. */

t.test('a session expires after its own Session Expiry Interval though the daemon restarted meanwhile, and is present until then (aedes #839)', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const device = await openClient(t, first.url, v5('short-lived', { clean: false, properties: { sessionExpiryInterval: 2 } }));
  await device.client.subscribeAsync('short/#', { qos: 1 });
  const steady = await openClient(t, first.url, v5('long-lived', { clean: false, properties: { sessionExpiryInterval: 300 } }));
  await steady.client.subscribeAsync('long/#', { qos: 1 });
  // A 3.1.1 session beside them keeps the configured expiry (a week).
  const legacy = await openClient(t, first.url, { protocolVersion: 4, clientId: 'legacy', clean: false });
  await legacy.client.subscribeAsync('legacy/#', { qos: 1 });
  await Promise.all([legacy.client.endAsync(), steady.client.endAsync(), device.client.endAsync()]);
  const gone = Date.now();
  await first.daemon.stop();

  // Nobody reconnects: nothing in the second run's aedes knows of the session but the store.
  const second = await runDaemon(t, config);
  t.equal(second.daemon.storeStats().sessions, 3, 'right after the restart every session is stored');
  await eventually(() => second.daemon.storeStats().sessions === 2, 5000, 'the 2 s session to expire');
  t.ok(Date.now() - gone >= 1900, `it expired ${Date.now() - gone} ms after the disconnect, not before its 2 s`);
  t.equal(second.daemon.storeStats().sessionsExpired, 1, 'counted as expired');
  const back = await openClient(t, second.url, v5('long-lived', { clean: false, properties: { sessionExpiryInterval: 300 } }));
  t.equal(back.connack.sessionPresent, true, 'the 300 s session is resumed after the restart (Session Present)');
  const again = await openClient(t, second.url, v5('short-lived', { clean: false, properties: { sessionExpiryInterval: 2 } }));
  t.equal(again.connack.sessionPresent, false, 'the expired one is not');
  await second.daemon.stop();

  const third = await runDaemon(t, config);
  const legacyBack = await openClient(t, third.url, { protocolVersion: 4, clientId: 'legacy', clean: false });
  t.equal(legacyBack.connack.sessionPresent, true, 'the 3.1.1 session is untouched');
});

t.test('a DISCONNECT with Session Expiry 0 ends the session at once, and it stays ended after a restart (MQTT 5 §3.14.2.2.2)', async (t) => {
  const config = testConfig(t, { persistence: { sessionExpirySec: 3600 } });
  const first = await runDaemon(t, config);
  const device = await openClient(t, first.url, v5('ends-at-close', { clean: false, properties: { sessionExpiryInterval: 300 } }));
  await device.client.subscribeAsync('e/#', { qos: 1 });
  // A DISCONNECT may shorten it (MQTT 5 §3.14.2.2.2): to 0, the session ends with the connection.
  await device.client.endAsync(false, { reasonCode: 0, properties: { sessionExpiryInterval: 0 } });
  await eventually(() => first.daemon.storeStats().sessions === 0, 5000, 'the session to end');
  t.equal(first.daemon.storeStats().sessionsExpired, 0, 'a session that ends with its connection is not counted as expired');
  await first.daemon.stop();
  const second = await runDaemon(t, config);
  const back = await openClient(t, second.url, v5('ends-at-close', { clean: false, properties: { sessionExpiryInterval: 300 } }));
  t.equal(back.connack.sessionPresent, false, 'it is gone after the restart too');
});

t.test('a DISCONNECT that lengthens or shortens the Session Expiry Interval decides when the session expires', async (t) => {
  const { daemon, url } = await runDaemon(t, testConfig(t));
  const device = await openClient(t, url, v5('changes-mind', { clean: false, properties: { sessionExpiryInterval: 3600 } }));
  await device.client.subscribeAsync('c/#', { qos: 1 });
  await device.client.endAsync(false, { reasonCode: 0, properties: { sessionExpiryInterval: 1 } });
  const gone = Date.now();
  await eventually(() => daemon.storeStats().sessions === 0, 5000, 'the session to expire after 1 s');
  t.ok(Date.now() - gone >= 900, 'not before the 1 s the DISCONNECT set');
  const back = await openClient(t, url, v5('changes-mind', { clean: false, properties: { sessionExpiryInterval: 3600 } }));
  t.equal(back.connack.sessionPresent, false, 'expired after the interval the DISCONNECT set, not the CONNECT\'s hour');
});

t.test('CONNACK echoes a Session Expiry Interval clamped to persistence.sessionExpirySec (MQTT 5 §3.2.2.3.2)', async (t) => {
  const { url } = await runDaemon(t, testConfig(t, { persistence: { sessionExpirySec: 60 } }));
  const longer = await openClient(t, url, v5('asks-an-hour', { clean: false, properties: { sessionExpiryInterval: 3600 } }));
  t.equal(longer.connack.properties?.sessionExpiryInterval, 60, 'an hour is clamped to the configured minute');
  const never = await openClient(t, url, v5('asks-forever', { clean: false, properties: { sessionExpiryInterval: 0xffffffff } }));
  t.equal(never.connack.properties?.sessionExpiryInterval, 60, '"never" is the configured maximum too');
  const shorter = await openClient(t, url, v5('asks-half', { clean: false, properties: { sessionExpiryInterval: 30 } }));
  t.equal(shorter.connack.properties?.sessionExpiryInterval, undefined, 'a shorter one is kept, and not echoed');
});

t.test('Clean Start 0 with no Session Expiry resumes the stored session and its queue, across a restart; the session then ends with that connection [MQTT-3.1.2-5]', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const device = await openClient(t, first.url, v5('ha-like', { clean: false, properties: { sessionExpiryInterval: 300 } }));
  await device.client.subscribeAsync('ha/#', { qos: 1 });
  await device.client.endAsync();
  const publisher = await openClient(t, first.url, v5('publisher'));
  await publisher.client.publishAsync('ha/one', 'queued while away', { qos: 1 });
  await first.daemon.stop();

  const second = await runDaemon(t, config);
  // Home Assistant's CONNECT: MQTT 5, Clean Start 0, no Session Expiry Interval.
  const resumed = await openClient(t, second.url, v5('ha-like', { clean: false }));
  t.equal(resumed.connack.sessionPresent, true, 'the session is resumed');
  await resumed.log.waitFor((m) => m.some((x) => x.payload === 'queued while away'), 5000, 'the queued message');
  const live = await openClient(t, second.url, v5('publisher-2'));
  await live.client.publishAsync('ha/two', 'live', { qos: 1 });
  await resumed.log.waitFor((m) => m.some((x) => x.payload === 'live'), 5000, 'a live message on the resumed subscription');
  t.same(resumed.log.messages.map((m) => m.payload), ['queued while away', 'live'], 'each once');
  await eventually(() => second.daemon.storeStats().queuedEntries === 0, 5000, 'both acknowledged');

  await resumed.client.endAsync();
  await eventually(() => second.daemon.storeStats().sessions === 0, 5000, 'the session to end with the connection');
  const after = await openClient(t, second.url, v5('ha-like', { clean: false }));
  t.equal(after.connack.sessionPresent, false, 'Session Expiry 0: nothing is left once that connection closed');
});

t.test('Clean Start 0 with a new, shorter Session Expiry resumes the session; its lifetime after this connection follows the new value', async (t) => {
  const { daemon, url } = await runDaemon(t, testConfig(t));
  const device = await openClient(t, url, v5('shortens', { clean: false, properties: { sessionExpiryInterval: 3600 } }));
  await device.client.subscribeAsync('s/#', { qos: 1 });
  await device.client.endAsync();
  const resumed = await openClient(t, url, v5('shortens', { clean: false, properties: { sessionExpiryInterval: 1 } }));
  t.equal(resumed.connack.sessionPresent, true, 'resumed');
  await resumed.client.endAsync();
  await eventually(() => daemon.storeStats().sessions === 0, 5000, 'the session to expire after the new 1 s');
  t.equal(daemon.storeStats().sessionsExpired, 1, 'counted as expired');
});

t.test('Clean Start 1 discards the stored session and its queue, whatever Session Expiry it sets [MQTT-3.1.2-4]', async (t) => {
  const { daemon, url } = await runDaemon(t, testConfig(t));
  const device = await openClient(t, url, v5('starts-over', { clean: false, properties: { sessionExpiryInterval: 300 } }));
  await device.client.subscribeAsync('so/#', { qos: 1 });
  await device.client.endAsync();
  const publisher = await openClient(t, url, v5('publisher'));
  await publisher.client.publishAsync('so/old', 'from the old session', { qos: 1 });
  t.equal(daemon.storeStats().queuedEntries, 1, 'queued for the old session');
  const fresh = await openClient(t, url, v5('starts-over', { clean: true, properties: { sessionExpiryInterval: 300 } }));
  t.equal(fresh.connack.sessionPresent, false, 'a new session');
  await fresh.client.subscribeAsync('so/#', { qos: 1 });
  await publisher.client.publishAsync('so/new', 'marker', { qos: 1 });
  await fresh.log.waitFor((m) => m.some((x) => x.payload === 'marker'), 5000, 'the marker');
  t.same(fresh.log.messages.map((m) => m.payload), ['marker'], 'the old queue is not delivered');
  await eventually(() => daemon.storeStats().queuedEntries === 0, 5000, 'nothing left queued');
  t.equal(daemon.storeStats().sessionsExpired, 0, 'discarded, not expired');
});

/** Encodes as MQTT 5 (the raw client's send encodes as 3.1.1 unless the packet is a CONNECT). */
const v5Bytes = (packet: Packet) => mqttPacket.generate(packet, { protocolVersion: 5 });

async function rawV5(t: Test, url: string, clientId: string, properties?: { sessionExpiryInterval: number }): Promise<{ raw: RawClient; sessionPresent: boolean }> {
  const raw = await connectRaw(t, url, { protocolVersion: 5 });
  raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId, clean: false, keepalive: 0, ...(properties ? { properties } : {}) });
  const connack = await raw.waitForPacket('connack');
  return { raw, sessionPresent: connack.sessionPresent };
}

t.test('Clean Start 0 with no Session Expiry completes a QoS 1 message in flight at a restart, under the same packet identifier [MQTT-3.1.2-5] [MQTT-4.4.0-1]', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const { raw } = await rawV5(t, first.url, 'inflight', { sessionExpiryInterval: 300 });
  raw.send(v5Bytes({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'inf/#', qos: 1 }] }));
  await raw.waitForPacket('suback');
  const publisher = await openClient(t, first.url, v5('publisher'));
  await publisher.client.publishAsync('inf/x', 'in flight', { qos: 1 });
  const sent = await raw.waitForPacket('publish');
  // No PUBACK: the daemon stops with the message in flight.
  await eventually(() => first.daemon.storeStats().queuedEntries === 1, 5000, 'the message to stay queued');
  await first.daemon.stop();

  const second = await runDaemon(t, config);
  const back = await rawV5(t, second.url, 'inflight');
  t.equal(back.sessionPresent, true, 'resumed with no Session Expiry Interval');
  const again = await back.raw.waitForPacket('publish');
  t.match(again, { topic: 'inf/x', messageId: sent.messageId, dup: true }, 'sent again under its identifier, DUP set');
  t.equal(again.payload.toString(), 'in flight');
  back.raw.send(v5Bytes({ cmd: 'puback', messageId: sent.messageId! }));
  await eventually(() => second.daemon.storeStats().queuedEntries === 0, 5000, 'the PUBACK to complete it');
  back.raw.send(v5Bytes({ cmd: 'disconnect' }));
  await eventually(() => second.daemon.storeStats().sessions === 0, 5000, 'the session to end with this connection');
});
