/**
 * A connected persistent session's queue is bounded like an offline one
 * (persistence.maxQueuedMessagesPerClient): a subscriber with clean=false
 * that reads its socket but never acknowledges (a stalled browser tab) must
 * not grow the store, or the heap, without limit. The oldest messages not
 * sent yet are dropped and counted; those in flight stay; once the client
 * acknowledges, it gets the newest messages, in order, on the same connection.
 */
import t from 'tap';
import type { Packet } from 'mqtt-packet';
import { startDaemon } from './helpers/daemon.js';
import { connectRaw, connectClient, eventually } from './helpers/mqtt.js';
import { connect, subscribe } from './helpers/packets.js';

const LIMIT = 100;
const INFLIGHT = 20;
const MESSAGES = 3000;
const PAYLOAD_BYTES = 10_000;

function seqOf(packet: Packet): number {
  return (packet as { payload: Buffer }).payload.readUInt32BE(0);
}

t.test('a connected persistent subscriber that never acknowledges is bounded by the queue limits', async (t) => {
  const { daemon, mqttUrl } = await startDaemon(t, {
    persistence: { maxQueuedMessagesPerClient: LIMIT },
    limits: { maxInflightMessages: INFLIGHT },
  });

  const raw = await connectRaw(t, mqttUrl);
  raw.send(connect({ clientId: 'stalled-tab', flags: 0x00, keepalive: 0 }));
  await raw.waitForPacket('connack');
  raw.send(subscribe(1, ['t/#'], 1));
  await raw.waitForPacket('suback');

  let maxQueued = 0;
  const sampler = setInterval(() => (maxQueued = Math.max(maxQueued, daemon.storeStats().queuedEntries)), 5);
  t.teardown(() => clearInterval(sampler));

  const publisher = await connectClient(t, mqttUrl, { clientId: 'producer' });
  const payload = Buffer.alloc(PAYLOAD_BYTES, 0x61);
  await Promise.all(
    Array.from({ length: MESSAGES }, (_, i) => {
      const body = Buffer.from(payload);
      body.writeUInt32BE(i, 0);
      return publisher.publishAsync(`t/${i % 10}`, body, { qos: 1 });
    }),
  );
  clearInterval(sampler);
  const publishes = () => raw.packets.filter((packet) => packet.cmd === 'publish');
  await eventually(() => publishes().length >= INFLIGHT, 5000, 'the inflight window to be sent');

  const stats = daemon.storeStats();
  maxQueued = Math.max(maxQueued, stats.queuedEntries);
  t.ok(maxQueued <= LIMIT, `store queue stayed within the limit (max ${maxQueued} ≤ ${LIMIT})`);
  t.ok(stats.queuedBytes <= LIMIT * (PAYLOAD_BYTES + 200), `queued bytes bounded (${stats.queuedBytes})`);
  t.equal(stats.queueDroppedMessages, MESSAGES - LIMIT, 'every message dropped was counted');
  t.ok(stats.queueOverflows > 0, 'overflows counted');
  t.equal(publishes().length, INFLIGHT, 'only the inflight window was sent while nothing was acknowledged');
  t.notOk(raw.isClosed, 'the subscriber is still connected');

  // The client comes back to life: acknowledge everything it receives.
  let acked = 0;
  const ackAll = () => {
    const received = publishes();
    for (; acked < received.length; acked++) {
      raw.send({ cmd: 'puback', messageId: (received[acked] as { messageId: number }).messageId });
    }
  };
  const acker = setInterval(ackAll, 5);
  t.teardown(() => clearInterval(acker));
  ackAll();
  await eventually(() => publishes().some((packet) => seqOf(packet) === MESSAGES - 1), 10_000, 'the newest message');
  await eventually(() => daemon.storeStats().queuedEntries === 0, 5000, 'the store queue to empty');
  clearInterval(acker);

  const sequence = publishes().map(seqOf);
  const expected = [
    ...Array.from({ length: INFLIGHT }, (_, i) => i),
    ...Array.from({ length: LIMIT - INFLIGHT }, (_, i) => MESSAGES - (LIMIT - INFLIGHT) + i),
  ];
  t.same(sequence, expected, 'the window sent first, then the newest messages, in order, without gaps among them');
  t.notOk(raw.isClosed, 'still the same connection');
  t.equal(daemon.storeStats().queueDroppedMessages, MESSAGES - LIMIT, 'no further drops');
  await publisher.endAsync();
});
