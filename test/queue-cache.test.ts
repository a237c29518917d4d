/**
 * The queue cache (persistence.queueCacheBytes): messages queued for a
 * persistent subscriber while it is offline are kept in memory as well as
 * on disk, up to the limit, so its resend after it reconnects reads nothing
 * back; what does not fit is read from disk. What a user sees: every
 * message arrives once, in order, whether it came from memory or disk; the
 * memory (`storeStats().queueCacheBytes`, the gauge
 * edgemqtt_session_queue_cache_bytes) stays within the limit and is given
 * back once the messages are delivered, dropped or their session is
 * discarded.
 */
import t from 'tap';
import mqtt, { type MqttClient } from 'mqtt';
import type { Test } from 'tap';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { connectClient, connectRaw, eventually } from './helpers/mqtt.js';
import { connect } from './helpers/packets.js';

const TOPIC = 'cache/t';
/** What the cache counts per record besides its bytes (outgoing-queues.ts QueueCache). */
const OVERHEAD = 128;

function payloadOf(i: number): Buffer {
  const payload = Buffer.alloc(64, 0x61);
  payload.writeUInt32BE(i, 0);
  return payload;
}

/** Subscribes `clientId` with a persistent session at QoS 1, then leaves. */
async function subscribeAndLeave(t: Test, url: string, clientId: string): Promise<void> {
  const client = await connectClient(t, url, { clientId, clean: false });
  await client.subscribeAsync(TOPIC, { qos: 1 });
  await client.endAsync();
}

async function publishBacklog(t: Test, url: string, count: number): Promise<void> {
  const publisher = await connectClient(t, url, { clientId: 'cache-publisher' });
  for (let i = 0; i < count; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, j) => publisher.publishAsync(TOPIC, payloadOf(i + j), { qos: 1 })));
  }
  await publisher.endAsync();
}

/** A daemon with `overrides` whose persistent subscriber 'cache-sub' has `count` messages queued while it is away. */
async function offlineBacklog(t: Test, overrides: Parameters<typeof startDaemon>[1], count: number): Promise<RunningDaemon> {
  const running = await startDaemon(t, overrides);
  await subscribeAndLeave(t, running.mqttUrl, 'cache-sub');
  await publishBacklog(t, running.mqttUrl, count);
  return running;
}

/** Reconnects `clientId` (clean = false) with a listener in place before its CONNACK, so the first resent message is not missed. */
async function comeBack(t: Test, url: string, clientId: string): Promise<{ client: MqttClient; received: number[] }> {
  const received: number[] = [];
  const client = mqtt.connect(url, { clientId, clean: false, reconnectPeriod: 0, connectTimeout: 5000 });
  t.teardown(() => client.endAsync(true));
  client.on('message', (_topic, payload) => received.push(payload.readUInt32BE(0)));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return { client, received };
}

const inOrder = (count: number) => Array.from({ length: count }, (_, i) => i);

t.test('a backlog larger than the cache arrives whole and in order, from memory and disk alike, and the memory is given back', async (t) => {
  const MESSAGES = 600;
  // Room for about a quarter of the backlog: the resend's chunks (256 messages) mix cached and read records.
  const limit = 150 * (64 + 60 + OVERHEAD);
  const { daemon, mqttUrl } = await offlineBacklog(t, { persistence: { queueCacheBytes: limit } }, MESSAGES);

  const queued = daemon.storeStats();
  t.equal(queued.queuedEntries, MESSAGES, 'the whole backlog is queued (on disk)');
  t.ok(queued.queueCacheBytes > 0, `part of it is held in memory (${queued.queueCacheBytes} bytes)`);
  t.ok(queued.queueCacheBytes <= limit, `within queueCacheBytes (${queued.queueCacheBytes} ≤ ${limit})`);
  const perRecord = queued.queuedBytes / queued.queuedEntries + OVERHEAD;
  t.ok(queued.queueCacheBytes < MESSAGES * perRecord, 'not all of it: the rest is read from disk');

  const { received } = await comeBack(t, mqttUrl, 'cache-sub');
  await eventually(() => received.length >= MESSAGES, 10_000, 'the backlog');
  t.same(received, inOrder(MESSAGES), 'every message once, in the order published');
  await eventually(() => daemon.storeStats().queuedEntries === 0, 5000, 'the acknowledgements');
  t.equal(daemon.storeStats().queueCacheBytes, 0, 'the memory is given back once the messages are sent');
});

t.test('the cache counts each record it holds, and lets go of those the queue limit drops', async (t) => {
  const LIMIT = 40;
  const { daemon, mqttUrl } = await offlineBacklog(t, { persistence: { maxQueuedMessagesPerClient: LIMIT } }, 100);

  const stats = daemon.storeStats();
  t.equal(stats.queuedEntries, LIMIT, 'the oldest 60 were dropped');
  t.equal(stats.queueCacheBytes, stats.queuedBytes + LIMIT * OVERHEAD, 'the kept messages are all cached, each counted once, the dropped ones not at all');

  const { received } = await comeBack(t, mqttUrl, 'cache-sub');
  await eventually(() => received.length >= LIMIT, 5000, 'the kept backlog');
  t.same(received, inOrder(LIMIT).map((i) => 100 - LIMIT + i), 'the newest 40, in order');
  await eventually(() => daemon.storeStats().queueCacheBytes === 0, 5000, 'the memory to be given back');
});

t.test('a discarded session gives its cached messages back', async (t) => {
  const { daemon, mqttUrl } = await offlineBacklog(t, {}, 50);
  t.ok(daemon.storeStats().queueCacheBytes > 0, 'the backlog is cached');

  // Clean session: the stored one, its queue included, is discarded [MQTT-3.1.2-6].
  const client = await connectClient(t, mqttUrl, { clientId: 'cache-sub', clean: true });
  await eventually(() => daemon.storeStats().queuedEntries === 0, 5000, 'the session to be discarded');
  t.equal(daemon.storeStats().queueCacheBytes, 0, 'no memory left for it');
  await client.endAsync();
});

t.test('queueCacheBytes 0 keeps nothing in memory; the backlog comes from disk', async (t) => {
  const { daemon, mqttUrl } = await offlineBacklog(t, { persistence: { queueCacheBytes: 0 } }, 300);
  t.equal(daemon.storeStats().queuedEntries, 300);
  t.equal(daemon.storeStats().queueCacheBytes, 0, 'nothing cached');

  const { received } = await comeBack(t, mqttUrl, 'cache-sub');
  await eventually(() => received.length >= 300, 10_000, 'the backlog');
  t.same(received, inOrder(300), 'every message once, in order');
});

t.test('messages queued while the client is connected are not cached (its flow control holds them)', async (t) => {
  const { daemon, mqttUrl } = await startDaemon(t);
  const subscriber = await connectClient(t, mqttUrl, { clientId: 'cache-online', clean: false });
  await subscriber.subscribeAsync(TOPIC, { qos: 1 });
  let received = 0;
  subscriber.on('message', () => received++);
  await publishBacklog(t, mqttUrl, 200);
  t.equal(daemon.storeStats().queueCacheBytes, 0, 'nothing cached for a connected client');
  await eventually(() => received >= 200, 5000, 'the messages');
});

t.test('the resend takes the messages out of the cache before they are acknowledged', async (t) => {
  const WINDOW = 10;
  const { daemon, mqttUrl } = await offlineBacklog(t, { limits: { maxInflightMessages: WINDOW } }, 50);
  const before = daemon.storeStats();
  const perRecord = before.queuedBytes / before.queuedEntries + OVERHEAD;
  t.equal(before.queueCacheBytes, 50 * perRecord, 'all 50 cached');

  // Comes back and acknowledges nothing: only the inflight window is sent.
  const raw = await connectRaw(t, mqttUrl);
  raw.send(connect({ clientId: 'cache-sub', flags: 0x00, keepalive: 0 }));
  await raw.waitForPacket('connack');
  const publishes = () => raw.packets.filter((packet) => packet.cmd === 'publish');
  await eventually(() => publishes().length >= WINDOW, 5000, 'the inflight window');
  t.equal(publishes().length, WINDOW, 'the window, no more');
  // The resend decides a chunk (256 messages) at once: each gets its packet identifier, and the
  // record on disk is then no longer the cached one; the resend holds the messages until sent.
  t.equal(daemon.storeStats().queueCacheBytes, 0, 'nothing cached once the resend has numbered them');
  t.equal(daemon.storeStats().queuedEntries, 50, 'all still queued until acknowledged');
});

t.test('two sessions away with the same messages: each message is cached once, and held until both have it', async (t) => {
  const COUNT = 60;
  const running = await startDaemon(t);
  const { daemon, mqttUrl } = running;
  await subscribeAndLeave(t, mqttUrl, 'cache-a');
  await subscribeAndLeave(t, mqttUrl, 'cache-b');
  await publishBacklog(t, mqttUrl, COUNT);
  const queued = daemon.storeStats();
  t.equal(queued.queuedEntries, 2 * COUNT, 'a copy queued (on disk) for each session');
  const perRecord = queued.queuedBytes / queued.queuedEntries;
  t.equal(queued.queueCacheBytes, COUNT * (perRecord + OVERHEAD), 'in memory once per message, not once per session');

  const a = await comeBack(t, mqttUrl, 'cache-a');
  await eventually(() => a.received.length >= COUNT, 5000, "the first session's backlog");
  await eventually(() => daemon.storeStats().queuedEntries === COUNT, 5000, 'its acknowledgements');
  t.equal(daemon.storeStats().queueCacheBytes, COUNT * (perRecord + OVERHEAD), 'still held for the session still away');

  const b = await comeBack(t, mqttUrl, 'cache-b');
  await eventually(() => b.received.length >= COUNT, 5000, "the second session's backlog");
  t.same(b.received, inOrder(COUNT), 'which arrives whole and in order');
  await eventually(() => daemon.storeStats().queueCacheBytes === 0, 5000, 'the memory to be given back');
});
