/**
 * MQTT 5 Message Expiry Interval [MQTT-3.3.2-5] [MQTT-3.3.2-6] on what the
 * store keeps: queued (offline) messages and retained messages. One whose
 * interval has passed is not delivered, removed and counted; one still valid
 * is delivered with the interval that remains. The interval is wall-clock
 * time: time the daemon was stopped counts. Each case across a restart.
 * Waiting out a one-second interval is the condition under test.
 */
import t from 'tap';
import { testConfig, runDaemon } from './helpers/daemon.js';
import { eventually, openClient } from './helpers/mqtt.js';


/** Resolves once the wall clock has passed `at` (ms since epoch): the expiry itself is what is waited for. */
async function until(at: number): Promise<void> {
  while (Date.now() <= at) await new Promise((resolve) => setTimeout(resolve, Math.max(1, at + 1 - Date.now())));
}

t.test('a queued message whose interval passed while the daemon was stopped is dropped and counted; a valid one arrives with the interval that remains', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const subscriber = await openClient(t, first.url, { protocolVersion: 5, clientId: 'away', clean: false, properties: { sessionExpiryInterval: 300 } });
  await subscriber.client.subscribeAsync('x/#', { qos: 1 });
  await subscriber.client.endAsync();
  const publisher = await openClient(t, first.url, { protocolVersion: 5, clientId: 'pub' });
  await publisher.client.publishAsync('x/short', 'stale soon', { qos: 1, properties: { messageExpiryInterval: 1 } });
  await publisher.client.publishAsync('x/long', 'still good', { qos: 1, properties: { messageExpiryInterval: 60 } });
  // Taken after the PUBACK: the broker received both messages before this.
  const receivedBy = Date.now();
  await publisher.client.publishAsync('x/plain', 'no expiry', { qos: 1 });
  t.equal(first.daemon.storeStats().queuedEntries, 3, 'all three are queued');
  await first.daemon.stop();
  await until(receivedBy + 1000);

  const second = await runDaemon(t, config);
  const back = await openClient(t, second.url, { protocolVersion: 5, clientId: 'away', clean: false, properties: { sessionExpiryInterval: 300 } });
  await back.log.waitFor((m) => m.some((x) => x.payload === 'no expiry'), 5000, 'the queued messages');
  t.same(back.log.messages.map((m) => m.payload), ['still good', 'no expiry'], 'the expired message is not delivered');
  const long = back.log.messages[0]!.packet.properties?.messageExpiryInterval;
  t.ok(long !== undefined && long <= 59 && long >= 50, `the valid one carries the interval that remains (${long} s of 60)`);
  t.equal(back.log.messages[1]!.packet.properties?.messageExpiryInterval, undefined, 'a message without one gets none');
  t.equal(second.daemon.storeStats().expiredMessages, 1, 'the expired one is counted');
  await eventually(() => second.daemon.storeStats().queuedEntries === 0, 5000, 'the queue to empty');
});

t.test('a retained message whose interval passed is not sent and is removed; a valid one is sent with the interval that remains, across a restart', async (t) => {
  // No $SYS figures: they are retained messages too, and would be counted below.
  const config = testConfig(t, { broker: { sysIntervalSec: 0 } });
  const first = await runDaemon(t, config);
  const publisher = await openClient(t, first.url, { protocolVersion: 5, clientId: 'pub' });
  await publisher.client.publishAsync('r/short', 'stale soon', { qos: 1, retain: true, properties: { messageExpiryInterval: 1 } });
  await publisher.client.publishAsync('r/long', 'still good', { qos: 1, retain: true, properties: { messageExpiryInterval: 60 } });
  // Taken after the PUBACK: the broker received both messages before this.
  const receivedBy = Date.now();
  t.equal(first.daemon.storeStats().retainedMessages, 2, 'both are retained');
  await first.daemon.stop();
  await until(receivedBy + 1000);

  const second = await runDaemon(t, config);
  const subscriber = await openClient(t, second.url, { protocolVersion: 5, clientId: 'late' });
  await subscriber.client.subscribeAsync('r/#', { qos: 1 });
  // A marker published after the SUBACK arrives after every retained message [MQTT-4.6.0-6].
  const marker = await openClient(t, second.url, { protocolVersion: 5, clientId: 'marker' });
  await marker.client.publishAsync('r/marker', 'm', { qos: 1 });
  await subscriber.log.waitFor((m) => m.some((x) => x.topic === 'r/marker'), 5000, 'the marker');
  t.same(subscriber.log.messages.map((m) => m.topic), ['r/long', 'r/marker'], 'the expired retained message is not sent');
  const long = subscriber.log.messages[0]!.packet.properties?.messageExpiryInterval;
  t.ok(long !== undefined && long <= 59 && long >= 50, `the valid one carries the interval that remains (${long} s of 60)`);
  t.equal(second.daemon.storeStats().expiredRetained, 1, 'the expired one is counted');
  t.equal(second.daemon.storeStats().retainedMessages, 1, 'and removed');
});
