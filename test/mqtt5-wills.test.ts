/**
 * MQTT 5 Will Delay Interval [MQTT-3.1.3-9]: a will is published at
 * min(Will Delay Interval, Session Expiry Interval) after its connection
 * closed without a normal DISCONNECT, never carrying the Will Delay Interval
 * property (aedes #1098); a reconnect before then cancels it; the delay
 * outlives a restart of the daemon. Waiting out a delay of a second or two
 * is the condition under test; absence is shown with a later marker.
 */
import t, { type Test } from 'tap';
import type { IClientOptions } from 'mqtt';
import { testConfig, runDaemon } from './helpers/daemon.js';
import { eventually, openClient, type OpenedClient } from './helpers/mqtt.js';


/** A device whose will says it went offline, after `delaySec`, with a session of `sessionSec`. */
function device(clientId: string, delaySec: number, sessionSec: number): IClientOptions {
  return {
    protocolVersion: 5,
    clientId,
    clean: false,
    properties: { sessionExpiryInterval: sessionSec },
    will: { topic: `status/${clientId}`, payload: Buffer.from('offline'), qos: 1, retain: false, properties: { willDelayInterval: delaySec } },
  };
}

async function watcher(t: Test, url: string): Promise<OpenedClient> {
  const opened = await openClient(t, url, { protocolVersion: 5, clientId: `watcher-${Math.random().toString(16).slice(2)}` });
  await opened.client.subscribeAsync('status/#', { qos: 1 });
  return opened;
}

/** The connection fails: no DISCONNECT, so the will is due. */
function fail(opened: OpenedClient): void {
  opened.client.stream.destroy();
}

/** The received packet's Will Delay Interval, which mqtt.js' PUBLISH typings do not list (it must never be there). */
function willDelayOf(message: { packet: { properties?: object } }): unknown {
  return (message.packet.properties as { willDelayInterval?: unknown } | undefined)?.willDelayInterval;
}

/** Resolves once `ms` have passed since `from`: the delay itself is what is waited for. */
async function after(from: number, ms: number): Promise<void> {
  while (Date.now() < from + ms) await new Promise((resolve) => setTimeout(resolve, from + ms - Date.now()));
}

t.test('a will goes out without its Will Delay Interval property; Session Expiry 0 caps the delay at 0 (aedes #1098)', async (t) => {
  const { url } = await runDaemon(t, testConfig(t));
  const watching = await watcher(t, url);
  fail(await openClient(t, url, device('capped', 30, 0)));
  const [will] = await watching.log.waitForCount(1);
  t.equal(will!.payload, 'offline', 'published at once: the session ends with the connection');
  t.equal(willDelayOf(will!), undefined, 'without the Will Delay Interval');
});

t.test('a delayed will is published once its delay has passed, not before', async (t) => {
  const { daemon, url } = await runDaemon(t, testConfig(t));
  const watching = await watcher(t, url);
  const dying = await openClient(t, url, device('delayed', 1, 60));
  fail(dying);
  const lost = Date.now();
  await watching.log.waitForCount(1, 5000);
  t.ok(Date.now() - lost >= 900, `published ${Date.now() - lost} ms after the connection failed, not before its 1 s`);
  t.equal(willDelayOf(watching.log.messages[0]!), undefined, 'without the Will Delay Interval');
  await eventually(() => daemon.storeStats().wills === 0, 5000, 'the will to be deleted');
});

t.test('a reconnect within the delay cancels the will [MQTT-3.1.3-9]', async (t) => {
  const { url } = await runDaemon(t, testConfig(t));
  const watching = await watcher(t, url);
  fail(await openClient(t, url, device('flaky', 1, 60)));
  const lost = Date.now();
  const back = await openClient(t, url, { protocolVersion: 5, clientId: 'flaky', clean: false, properties: { sessionExpiryInterval: 60 } });
  t.equal(back.connack.sessionPresent, false, 'no subscriptions: nothing to resume, but the will was pending');
  await after(lost, 1500);
  await back.client.publishAsync('status/marker', 'm', { qos: 1 });
  await watching.log.waitFor((m) => m.some((x) => x.topic === 'status/marker'), 5000, 'the marker');
  t.same(watching.log.messages.map((m) => m.topic), ['status/marker'], 'the will never went out');
});

t.test('a will whose delay runs past a restart is published after the restart, without its Will Delay Interval', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  fail(await openClient(t, first.url, device('through-restart', 2, 60)));
  await eventually(() => first.daemon.storeStats().delayedWills === 1, 5000, 'the daemon to see the connection fail');
  // The connection closed, its delay is running: then the daemon stops (its in-memory timer goes).
  await first.daemon.stop();
  const second = await runDaemon(t, config);
  const watching = await watcher(t, second.url);
  t.match(second.daemon.storeStats(), { wills: 1, delayedWills: 1 }, 'the will is still stored after the restart, its delay running');
  const [will] = await watching.log.waitForCount(1, 6000);
  t.equal(will!.topic, 'status/through-restart', 'published once due');
  t.equal(willDelayOf(will!), undefined, 'without the Will Delay Interval');
  await eventually(() => second.daemon.storeStats().wills === 0, 5000, 'the will to be deleted');
});

t.test('a client reconnecting after the restart, within the delay, cancels its will', async (t) => {
  const config = testConfig(t);
  const first = await runDaemon(t, config);
  const lost = Date.now();
  fail(await openClient(t, first.url, device('returns', 2, 60)));
  await eventually(() => first.daemon.storeStats().delayedWills === 1, 5000, 'the daemon to see the connection fail');
  await first.daemon.stop();
  const second = await runDaemon(t, config);
  const watching = await watcher(t, second.url);
  const back = await openClient(t, second.url, { protocolVersion: 5, clientId: 'returns', clean: false, properties: { sessionExpiryInterval: 60 } });
  await after(lost, 3000);
  await back.client.publishAsync('status/marker', 'm', { qos: 1 });
  await watching.log.waitFor((m) => m.some((x) => x.topic === 'status/marker'), 5000, 'the marker');
  t.same(watching.log.messages.map((m) => m.topic), ['status/marker'], 'the will never went out');
  t.equal(second.daemon.storeStats().wills, 0, 'and is gone');
});

t.test('the delayed will of a client connected at a planned stop is withheld, and after the restart not published before its delay', async (t) => {
  // Heartbeats every second: aedes looks for the wills of an earlier run every four.
  const config = testConfig(t, { broker: { heartbeatIntervalSec: 1 } });
  const first = await runDaemon(t, config);
  await openClient(t, first.url, device('at-stop', 6, 60));
  await first.daemon.stop();
  const second = await runDaemon(t, config);
  const started = Date.now();
  const watching = await watcher(t, second.url);
  t.match(second.daemon.storeStats(), { wills: 1, delayedWills: 1 }, 'withheld, held back for its delay');
  const [will] = await watching.log.waitForCount(1, 15000);
  t.equal(will!.topic, 'status/at-stop', 'published: its client did not come back');
  t.ok(Date.now() - started >= 6000, `published ${Date.now() - started} ms after the restart: not before its 6 s delay (the first look, at 4 s, passed it over)`);
  t.equal(willDelayOf(will!), undefined, 'without the Will Delay Interval');
});
