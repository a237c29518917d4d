/**
 * A client that stops reading (a frozen browser tab, a phone in a tunnel)
 * costs only itself. With aedes 1.2 alone, a few subscribers on `#` that
 * stop reading stall every other subscriber, TCP and WebSocket alike, for up
 * to aedes' 60 s drain timeout (see src/broker/flow-control.ts for why).
 * Here their QoS 0 messages are dropped once their outgoing buffer is full,
 * QoS 1/2 wait in their queue, and everyone else keeps receiving.
 */
import t from 'tap';
import type { Test } from 'tap';
import type { MqttClient } from 'mqtt';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { connectRaw, openClient, eventually, type RawClient } from './helpers/mqtt.js';
import { captureLogs } from './helpers/logs.js';
import type { Packet } from 'mqtt-packet';
import { publish } from './helpers/packets.js';

const transports = ['tcp', 'ws'] as const;
type Transport = (typeof transports)[number];
const urlOf = (daemon: RunningDaemon, transport: Transport) => (transport === 'tcp' ? daemon.mqttUrl : daemon.wsUrl);

/** Subscribers speak MQTT 3.1.1 or 5: aedes 2 writes to them through the same paths, which the flow control wraps. */
const versions = [4, 5] as const;
type Version = (typeof versions)[number];
const levelName = (version: Version) => (version === 5 ? 'MQTT 5' : 'MQTT 3.1.1');

/** A CONNECT; an MQTT 5 persistent session asks for a Session Expiry Interval, else it would end with the connection. */
function connectPacket(clientId: string, clean: boolean, version: Version, keepalive = 60): Packet {
  const session = version === 5 && !clean ? { properties: { sessionExpiryInterval: 3600 } } : {};
  return { cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clientId, clean, keepalive, ...session };
}

const subscribePacket = (filter: string, qos: 0 | 1): Packet => ({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos }] });

/** A subscriber that stops reading right after its SUBACK. */
async function nonReader(t: Test, url: string, clientId: string, qos: 0 | 1, clean = true, version: Version = 4): Promise<RawClient> {
  const raw = await connectRaw(t, url, { protocolVersion: version });
  raw.send(connectPacket(clientId, clean, version, 0));
  raw.send(subscribePacket('#', qos));
  await raw.waitForPacket('suback');
  raw.pauseReading();
  return raw;
}

/** Arrival gaps of a healthy subscriber, in ms. */
interface GapMeter {
  received: number;
  largestGapMs: number;
  outOfOrder: number;
  /** performance.now() of the last message. */
  lastAt: number;
}

function meter(client: MqttClient): GapMeter {
  const state: GapMeter = { received: 0, largestGapMs: 0, outOfOrder: 0, lastAt: performance.now() };
  let last: number | undefined;
  // Order holds per QoS [MQTT-4.6.0-6]: QoS 0 does not wait behind QoS 1.
  const lastSeq = [-1, -1, -1];
  client.on('message', (_topic, payload, packet) => {
    const now = performance.now();
    if (last !== undefined) state.largestGapMs = Math.max(state.largestGapMs, now - last);
    last = now;
    state.lastAt = now;
    const seq = payload.readUInt32BE(0);
    if (seq <= (lastSeq[packet.qos] as number)) state.outOfOrder++;
    lastSeq[packet.qos] = seq;
    state.received++;
  });
  return state;
}

t.test('subscribers that stop reading do not delay healthy TCP and WebSocket subscribers', async (t) => {
  // Generous on a loaded 2-core machine (daemon, load and clients share one
  // event loop here), yet far below the 60 s stall it replaces.
  const GAP_BOUND_MS = 1000;
  const RATE_PER_SEC = 1000;
  const LOAD_MS = 6000;
  const PAYLOAD_BYTES = 4096;
  const logs = captureLogs();
  const daemon = await startDaemon(t, {}, { logger: logs.logger });

  // Four non-readers on each transport, on `#`: half QoS 0, half QoS 1, one of those a persistent session;
  // half MQTT 3.1.1, half MQTT 5 (one of each QoS).
  const slow: RawClient[] = [];
  for (const transport of transports) {
    for (let i = 0; i < 4; i++) {
      slow.push(await nonReader(t, urlOf(daemon, transport), `slow-${transport}-${i}`, i < 2 ? 0 : 1, i !== 3, i % 2 === 0 ? 4 : 5));
    }
  }
  const healthy = new Map<Transport, GapMeter>();
  for (const transport of transports) {
    const { client } = await openClient(t, urlOf(daemon, transport), { clientId: `healthy-${transport}` });
    await client.subscribeAsync('load/#', { qos: 1 });
    healthy.set(transport, meter(client));
  }
  const { client: publisher } = await openClient(t, daemon.mqttUrl, { clientId: 'publisher' });

  // Steady load: RATE_PER_SEC messages a second, every tenth at QoS 1.
  const payload = Buffer.alloc(PAYLOAD_BYTES, 0x61);
  let sent = 0;
  let largestPublishGapMs = 0;
  const started = performance.now();
  let lastTick = started;
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      largestPublishGapMs = Math.max(largestPublishGapMs, now - lastTick);
      lastTick = now;
      const due = Math.min(Math.floor(((now - started) / 1000) * RATE_PER_SEC), (LOAD_MS / 1000) * RATE_PER_SEC);
      for (; sent < due; sent++) {
        payload.writeUInt32BE(sent, 0);
        publisher.publish(`load/${sent % 10}`, Buffer.from(payload), { qos: sent % 10 === 9 ? 1 : 0 });
      }
      if (now - started >= LOAD_MS) {
        clearInterval(timer);
        resolve();
      }
    }, 5);
  });
  // A stalled subscriber shows as a gap that is still growing: waited for, then measured either way.
  await eventually(() => [...healthy.values()].every((m) => m.received === sent), 10_000, 'the healthy subscribers to receive everything').catch(
    () => undefined,
  );
  for (const gaps of healthy.values()) {
    if (gaps.received < sent) gaps.largestGapMs = Math.max(gaps.largestGapMs, performance.now() - gaps.lastAt);
  }

  const stats = daemon.daemon.limitsStats();
  for (const [transport, gaps] of healthy) {
    t.equal(gaps.received, sent, `healthy ${transport} subscriber received all ${sent} messages`);
    t.equal(gaps.outOfOrder, 0, `healthy ${transport} subscriber received them in order (per QoS)`);
    t.ok(gaps.largestGapMs < GAP_BOUND_MS, `healthy ${transport} subscriber's largest gap ${gaps.largestGapMs.toFixed(0)} ms < ${GAP_BOUND_MS} ms`);
    t.comment(`healthy ${transport}: largest gap between messages ${gaps.largestGapMs.toFixed(1)} ms`);
  }
  t.comment(`load generator's own largest timer gap: ${largestPublishGapMs.toFixed(1)} ms; ${sent} messages of ${PAYLOAD_BYTES} B in ${LOAD_MS} ms`);
  t.comment(`flow stats: ${JSON.stringify(stats.flow)}`);
  // The scenario must really have filled the non-readers, or it proves nothing.
  t.ok(stats.flow.droppedQos0Messages > 0, `QoS 0 messages for the non-readers were dropped (${stats.flow.droppedQos0Messages})`);
  t.ok(stats.flow.bufferFullWaits > 0, `QoS 1 messages for the non-readers waited in their queues (${stats.flow.bufferFullWaits})`);
  t.ok(stats.limitHits.outgoingBufferFull > 0, 'counted as limit hits');
  t.equal(logs.find('outgoing buffer (limits.maxOutgoingBufferBytes) full').length, 1, 'logged once in the window, not once per message');
  t.equal(stats.flow.slowClientDisconnects, 0, 'the non-readers are still connected (drain timeout 60 s)');
  t.equal(stats.openConnections, slow.length + 3, 'every connection still open');
});

for (const version of versions) t.test(`${levelName(version)}: a client stuck longer than broker.drainTimeoutSec is disconnected, counted and logged`, async (t) => {
  const logs = captureLogs();
  const daemon = await startDaemon(t, { broker: { drainTimeoutSec: 1 }, limits: { maxOutgoingBufferBytes: 65_536 } }, { logger: logs.logger });
  const stuck = await Promise.all(transports.map((transport) => nonReader(t, urlOf(daemon, transport), `stuck-${transport}`, 0, true, version)));
  const { client: healthy } = await openClient(t, daemon.wsUrl, { clientId: 'healthy' });
  let healthyCloses = 0;
  healthy.on('close', () => healthyCloses++);
  const { client: publisher } = await openClient(t, daemon.mqttUrl, { clientId: 'publisher' });
  // Publish until both stuck clients are cut off; each publish also proves the daemon still serves.
  const payload = Buffer.alloc(16_384, 0x62);
  const cutAt = performance.now();
  await eventually(
    async () => {
      for (let i = 0; i < 20; i++) publisher.publish('fill/me', payload, { qos: 0 });
      await publisher.publishAsync('fill/ack', 'x', { qos: 1 });
      return daemon.daemon.limitsStats().flow.slowClientDisconnects === 2;
    },
    20_000,
    'both stuck clients to be disconnected',
  );
  t.comment(`stuck clients cut off after ${((performance.now() - cutAt) / 1000).toFixed(1)} s (drainTimeoutSec 1; kernel buffers fill first)`);
  // A paused socket does not notice its close: read again, and see it.
  for (const client of stuck) client.resumeReading();
  await Promise.all(stuck.map((client) => client.waitForClose()));
  t.pass('the stuck clients see their connection closed once they read again');
  t.equal(healthyCloses, 0, 'the healthy client was never disconnected');
  t.equal(daemon.daemon.limitsStats().flow.slowClientDisconnects, 2, 'counted once per stuck client');
  t.equal(daemon.daemon.limitsStats().limitHits.slowClient, 2);
  t.equal(logs.find('slow client disconnected').length, 1, 'logged (rate-limited: once in 10 s)');
});

for (const version of versions) for (const transport of transports) {
  for (const clean of [false, true]) {
    const session = clean ? 'clean' : 'persistent';
    t.test(`${levelName(version)}, ${transport}, ${session} session: QoS 1 beyond the inflight window waits in a bounded queue`, async (t) => {
      const daemon = await startDaemon(t, { limits: { maxInflightMessages: 5 }, persistence: { maxQueuedMessagesPerClient: 10 } });
      const url = urlOf(daemon, transport);
      // Reads everything, acknowledges nothing (yet).
      const consumer = await connectRaw(t, url, { protocolVersion: version });
      consumer.send(connectPacket(`window-${session}`, clean, version));
      consumer.send(subscribePacket('q/#', 1));
      await consumer.waitForPacket('suback');
      const publisher = await connectRaw(t, daemon.mqttUrl);
      publisher.send(connectPacket('publisher', true, 4));
      await publisher.waitForPacket('connack');
      // One at a time: a burst is handled concurrently by aedes, and the
      // session store would drop its oldest before any of it is sent.
      for (let n = 1; n <= 30; n++) {
        publisher.send(publish(`q/${n}`, { qos: 1, id: n }));
        await publisher.waitFor((packets) => packets.filter((p) => p.cmd === 'puback').length === n, 5000, `${n} PUBACKs`);
      }
      // QoS 0 never waits behind the window: a marker proves the rest did not arrive.
      publisher.send(publish('q/marker', { qos: 0 }));
      const topics = () => consumer.packets.flatMap((p) => (p.cmd === 'publish' ? [p.topic] : []));
      await consumer.waitFor(() => topics().includes('q/marker'), 5000, 'the QoS 0 marker');
      t.same(topics(), ['q/1', 'q/2', 'q/3', 'q/4', 'q/5', 'q/marker'], 'exactly the window (5) went out; the marker overtook the queue');
      const flow = daemon.daemon.limitsStats().flow;
      t.equal(flow.queuedMessages, 10, 'the queue holds its limit, the newest 10');
      t.equal(flow.inflightWaits, 25, 'every message past the window counted as waiting');
      t.equal(daemon.daemon.limitsStats().limitHits.maxInflight, 25, 'and as limit hits');
      t.equal(clean ? flow.droppedQueuedMessages : flow.deferredQueuedMessages, 15, clean ? '15 oldest dropped (lost: clean session)' : '15 oldest deferred to the session store');
      if (!clean) {
        // The session store has the same limit, the window in flight included:
        // it kept q/1-q/5 (sent) and the newest 5, and dropped the 20 others.
        const store = daemon.daemon.storeStats();
        t.equal(store.queuedEntries, 10, 'the session store holds its limit');
        t.equal(store.queueDroppedMessages, 20, 'the oldest messages not sent yet dropped there, counted');
      }

      // Acknowledging opens the window: the queue drains in order.
      const sentIds = () => consumer.packets.flatMap((p) => (p.cmd === 'publish' && p.qos === 1 ? [p.messageId as number] : []));
      let acked = 0;
      await eventually(() => {
        for (const id of sentIds().slice(acked)) consumer.send({ cmd: 'puback', messageId: id });
        acked = sentIds().length;
        return topics().length === (clean ? 16 : 11);
      }, 5000, 'the queued messages');
      const newest = clean ? 10 : 5;
      t.same(topics().slice(6), Array.from({ length: newest }, (_, i) => `q/${31 - newest + i}`), 'then the newest queued, in order');
      for (const id of sentIds().slice(acked)) consumer.send({ cmd: 'puback', messageId: id });
      await eventually(() => daemon.daemon.limitsStats().flow.queuedMessages === 0, 5000, 'an empty queue');

      // A persistent session's store had dropped what the full queue dropped: nothing is left for a reconnect.
      if (!clean) await eventually(() => daemon.daemon.storeStats().queuedEntries === 0, 5000, 'an empty session store');
      const again = await connectRaw(t, url, { protocolVersion: version });
      again.send(connectPacket(`window-${session}`, clean, version));
      const connack = await again.waitForPacket('connack');
      if (clean) {
        t.equal(connack.sessionPresent, false);
        return;
      }
      t.equal(connack.sessionPresent, true);
      await new Promise((resolve) => setTimeout(resolve, 200));
      t.same(again.packets.filter((p) => p.cmd === 'publish'), [], 'nothing replayed: everything kept was delivered on the first connection');
    });
  }
}
