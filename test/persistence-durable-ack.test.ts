/**
 * Acknowledge after durable, on real aedes over TCP with the LevelDB store:
 * a PUBACK or PUBREC leaves only once the records of its PUBLISH are written
 * (the publish path in src/broker/aedes-seam/index.ts, level-persistence.ts), those records land in
 * one batch, a failed write acknowledges nothing, and wills still publish
 * exactly once. The store's batch() is wrapped so a test can hold a batch
 * (the fsync "takes" as long as the test wants), fail one, or see its keys.
 */
import t, { type Test } from 'tap';
import type { PublishPacket } from 'aedes';
import type { Packet } from 'mqtt-packet';
import { startWithWrappedStore as start } from './helpers/wrapped-store.js';
import { connectRaw, eventually, openClient, type RawClient } from './helpers/mqtt.js';

type Version = 4 | 5;

function connectPacket(clientId: string, clean = false, protocolVersion: Version = 4): Packet {
  return { cmd: 'connect', protocolId: 'MQTT', protocolVersion, clientId, clean, keepalive: 0 };
}

function publishPacket(topic: string, payload: string, qos: 1 | 2, messageId: number, extra: Partial<PublishPacket> = {}): Packet {
  return { cmd: 'publish', topic, payload: Buffer.from(payload), qos, messageId, retain: false, dup: false, ...extra };
}

/** The protocol level each RawClient speaks, for sendThenPing's encoding. */
const levels = new WeakMap<RawClient, Version>();

async function rawSession(t: Test, url: string, clientId: string, protocolVersion: Version = 4): Promise<RawClient> {
  const raw = await connectRaw(t, url, { protocolVersion });
  levels.set(raw, protocolVersion);
  raw.send(connectPacket(clientId, false, protocolVersion));
  await raw.waitForPacket('connack');
  return raw;
}

/** Sends `packets` and a PINGREQ in one write: aedes handles them as one batch, so the PINGRESP shows they were all read. */
async function sendThenPing(raw: RawClient, packets: Packet[]): Promise<void> {
  const pings = raw.packets.filter((p) => p.cmd === 'pingresp').length;
  const { generate } = await import('mqtt-packet');
  const options = { protocolVersion: levels.get(raw) ?? 4 };
  raw.send(Buffer.concat([...packets.map((p) => generate(p, options)), generate({ cmd: 'pingreq' }, options)]));
  await raw.waitFor((all) => all.filter((p) => p.cmd === 'pingresp').length > pings, 5000, 'PINGRESP');
}

const count = (raw: RawClient, cmd: Packet['cmd']) => raw.packets.filter((p) => p.cmd === cmd).length;

/** A persistent session subscribed to `filter` that then goes offline. */
async function offlineSubscriber(t: Test, url: string, clientId: string, filter: string, qos: 1 | 2): Promise<void> {
  const { client } = await openClient(t, url, { clientId, clean: false });
  await client.subscribeAsync(filter, { qos });
  await client.endAsync();
}

t.test('the records of one QoS 2 PUBLISH land in one batch, under every sync policy', async (t) => {
  for (const sync of ['batch', 'always', 'os'] as const) {
    await t.test(sync, async (t) => {
      const h = await start(t, sync);
      await offlineSubscriber(t, h.url, 'offline', 'plant/#', 2);
      const online = await openClient(t, h.url, { clientId: 'online', clean: false });
      await online.client.subscribeAsync('plant/#', { qos: 2 });
      const publisher = await rawSession(t, h.url, 'publisher');

      const from = h.batches.length;
      publisher.send(publishPacket('plant/state', 'running', 2, 1, { retain: true }));
      await publisher.waitForPacket('pubrec');
      const withIncoming = h.batches.slice(from).filter((ops) => ops.includes('I'));
      t.equal(withIncoming.length, 1, 'the QoS 2 packet is written once');
      const batch = withIncoming[0] ?? [];
      t.ok(batch.includes('R'), `its retained message is in the same batch (${batch.join('')})`);
      t.equal(batch.filter((ns) => ns === 'O').length, 2, 'and the queue entries of both persistent sessions');

      publisher.send({ cmd: 'pubrel', messageId: 1 });
      await publisher.waitForPacket('pubcomp');
      await online.log.waitForCount(1);
      t.same(online.log.messages.map((m) => m.payload), ['running']);
    });
  }
});

// Publishers at both protocol levels: aedes 2 has its own MQTT 5 publish path (lib/handlers/publish.js).
for (const version of [4, 5] as const) {
  const level = version === 5 ? 'MQTT 5' : 'MQTT 3.1.1';
  t.test(`${level}: a QoS 1 PUBACK waits for the batch holding its records`, async (t) => {
    const h = await start(t);
    await offlineSubscriber(t, h.url, 'offline', 'hold/#', 1);
    const publisher = await rawSession(t, h.url, 'publisher', version);
    const from = h.batches.length;
    h.hold();
    await sendThenPing(publisher, [publishPacket('hold/a', 'one', 1, 1)]);
    await eventually(() => h.batches.slice(from).some((ops) => ops.includes('O')), 5000, 'the queue write to reach LevelDB');
    // aedes as shipped writes the PUBACK before it publishes: it would be here by now.
    t.equal(count(publisher, 'puback'), 0, 'no PUBACK while the write is in flight');
    h.release();
    const puback = await publisher.waitForPacket('puback');
    t.equal(puback.messageId, 1, 'the PUBACK follows the durable write');

    const { log } = await openClient(t, h.url, { clientId: 'offline', clean: false });
    await log.waitForCount(1);
    t.same(log.messages.map((m) => m.payload), ['one'], 'and the message was queued exactly once');
  });

  t.test(`${level}: a QoS 1 message reaches live subscribers while its write is in flight; the PUBACK waits for the write`, async (t) => {
    const h = await start(t);
    const persistent = await openClient(t, h.url, { clientId: 'live-persistent', clean: false });
    await persistent.client.subscribeAsync('early/#', { qos: 1 });
    const clean = await openClient(t, h.url, { clientId: 'live-clean', clean: true });
    await clean.client.subscribeAsync('early/#', { qos: 1 });
    const publisher = await rawSession(t, h.url, 'publisher', version);
    const from = h.batches.length;
    h.hold();
    publisher.send(publishPacket('early/a', 'one', 1, 1));
    await persistent.log.waitForCount(1);
    await clean.log.waitForCount(1);
    await eventually(() => h.batches.slice(from).some((ops) => ops.includes('O')), 5000, 'the queue write to reach LevelDB');
    t.equal(count(publisher, 'puback'), 0, 'delivered to both, and no PUBACK while the write is in flight');
    h.release();
    const puback = await publisher.waitForPacket('puback');
    t.equal(puback.messageId, 1, 'the PUBACK follows the durable write');

    // The persistent subscriber acknowledged the message (mqtt.js does on
    // receipt) while its record was still being written: it stays acknowledged.
    await persistent.client.endAsync();
    const again = await openClient(t, h.url, { clientId: 'live-persistent', clean: false });
    publisher.send(publishPacket('early/marker', 'marker', 1, 2));
    await again.log.waitFor((m) => m.some((x) => x.topic === 'early/marker'), 5000, 'the marker');
    t.same(again.log.messages.map((m) => m.payload), ['marker'], 'the acknowledged message is not sent again');
  });

  t.test(`${level}: a QoS 2 PUBREC waits for the batch, also for a resend on a new connection`, async (t) => {
    const h = await start(t);
    await offlineSubscriber(t, h.url, 'offline', 'hold/#', 2);
    const first = await rawSession(t, h.url, 'publisher', version);
    const from = h.batches.length;
    h.hold();
    await sendThenPing(first, [publishPacket('hold/b', 'two', 2, 7)]);
    await eventually(() => h.batches.slice(from).some((ops) => ops.includes('I')), 5000, 'the QoS 2 records to reach LevelDB');
    t.equal(count(first, 'pubrec'), 0, 'no PUBREC while the write is in flight');

    // The publisher gives up on that connection and resends on a new one
    // [MQTT-4.4.0-1] (the new CONNECT closes the old connection [MQTT-3.1.4-2]).
    // The packet is known, but not durable yet: no early PUBREC.
    const second = await rawSession(t, h.url, 'publisher', version);
    await first.waitForClose();
    await sendThenPing(second, [publishPacket('hold/b', 'two', 2, 7, { dup: true })]);
    t.equal(count(second, 'pubrec'), 0, 'the resend gets no PUBREC before the original is durable');
    h.release();
    const pubrec = await second.waitForPacket('pubrec');
    t.equal(pubrec.messageId, 7);
    second.send({ cmd: 'pubrel', messageId: 7 });
    await second.waitForPacket('pubcomp');

    const { client, log } = await openClient(t, h.url, { clientId: 'offline', clean: false });
    await log.waitForCount(1);
    await client.publishAsync('hold/marker', 'marker', { qos: 1 });
    await log.waitFor((m) => m.some((x) => x.topic === 'hold/marker'), 5000, 'the marker');
    t.same(log.messages.map((m) => m.payload), ['two', 'marker'], 'delivered once');
  });

  t.test(`${level}: a failed write acknowledges nothing (MQTT 5: no PUBACK 0x87 either); the resend is stored and delivered once`, async (t) => {
    const h = await start(t);
    await offlineSubscriber(t, h.url, 'offline', 'fail/#', 2);
    for (const qos of [1, 2] as const) {
      const first = await rawSession(t, h.url, `publisher-${qos}`, version);
      h.failNext();
      first.send(publishPacket(`fail/${qos}`, `qos${qos}`, qos, 3));
      await first.waitForClose();
      t.equal(count(first, qos === 1 ? 'puback' : 'pubrec'), 0, `QoS ${qos}: no acknowledgement, the connection is closed`);
      // A failed write stops all writes until the store reopens (src/persistence/write-failures.ts).
      await h.writable();
      const second = await rawSession(t, h.url, `publisher-${qos}`, version);
      second.send(publishPacket(`fail/${qos}`, `qos${qos}`, qos, 3, { dup: true }));
      await second.waitForPacket(qos === 1 ? 'puback' : 'pubrec');
      if (qos === 2) {
        second.send({ cmd: 'pubrel', messageId: 3 });
        await second.waitForPacket('pubcomp');
      }
    }
    const { client, log } = await openClient(t, h.url, { clientId: 'offline', clean: false });
    await log.waitFor((m) => m.some((x) => x.payload === 'qos2'), 5000, 'the QoS 2 message');
    // A QoS 2 marker: mqtt.js hands QoS 2 messages over at PUBREL, in order.
    await client.publishAsync('fail/marker', 'marker', { qos: 2 });
    await log.waitFor((m) => m.some((x) => x.topic === 'fail/marker'), 5000, 'the marker');
    t.same(log.messages.map((m) => m.payload).sort(), ['marker', 'qos1', 'qos2'], 'each message once, the failed attempts nowhere');
  });
}

t.test('wills still publish exactly once, live and into offline queues', async (t) => {
  const h = await start(t);
  await offlineSubscriber(t, h.url, 'offline', 'will/#', 1);
  const watcher = await openClient(t, h.url, { clientId: 'watcher' });
  await watcher.client.subscribeAsync('will/#', { qos: 1 });
  const dropped = await openClient(t, h.url, {
    clientId: 'dropped',
    will: { topic: 'will/dropped', payload: Buffer.from('offline'), qos: 1, retain: false },
  });
  dropped.client.stream.destroy();
  await watcher.log.waitForCount(1);
  await watcher.client.publishAsync('will/marker', 'marker', { qos: 1 });
  await watcher.log.waitFor((m) => m.some((x) => x.topic === 'will/marker'), 5000, 'the marker');
  t.same(watcher.log.messages.map((m) => m.topic), ['will/dropped', 'will/marker'], 'live: once');

  const offline = await openClient(t, h.url, { clientId: 'offline', clean: false });
  await offline.log.waitForCount(2);
  await offline.client.publishAsync('will/marker', 'second marker', { qos: 1 });
  await offline.log.waitFor((m) => m.some((x) => x.payload === 'second marker'), 5000, 'the second marker');
  t.same(
    offline.log.messages.map((m) => m.payload),
    ['offline', 'marker', 'second marker'],
    'queued: once',
  );
});
