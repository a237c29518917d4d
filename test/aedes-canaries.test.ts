/**
 * Canaries: each aedes behaviour edgemqtt corrects, shown to be still there
 * in the installed aedes, used plainly (test/helpers/plain-aedes.ts: no
 * edgemqtt code between the clients and aedes). A canary that fails after an
 * aedes upgrade means aedes fixed that behaviour: remove the correction it
 * names, and then the canary.
 *
 * This file covers the corrections running today (written against aedes
 * 1.2.0); test/aedes-canaries-v5.test.ts covers what aedes 2.0.0-beta.1, the
 * MQTT 5 line, still lacks, and the 1.x security fixes the beta does not have.
 * A few canaries show behaviour edgemqtt relies on rather than corrects; their
 * names say "relied on".
 *
 * Absence is proven by a later marker on the same path, or by a PINGRESP:
 * aedes writes its answer to PINGREQ after everything it wrote before.
 */
import t from 'tap';
import type { Test } from 'tap';
import type { Aedes, Client } from 'aedes';
import { lightenClient, onParseError, onPublishWritten, onTakeover } from '../src/broker/aedes-seam/index.js';
import type { Packet } from 'mqtt-packet';
import { openClient } from './helpers/mqtt.js';
import { floodEmitter } from './helpers/emitter-flood.js';
import { connect, publish, subscribe, unsubscribe, packet, u16 } from './helpers/packets.js';
import {
  connectPacket,
  gate,
  installedAedesVersion,
  interceptPersistence,
  payloads,
  published,
  publishVia,
  rawClient,
  rawConnected,
  startPlainAedes,
  until,
} from './helpers/plain-aedes.js';

const V = installedAedesVersion();

// ---------------------------------------------------------------- delivery

t.test(`aedes ${V} still drops a message overtaken by a later one as a duplicate (corrected in src/broker/delivery-rules.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove correction 1 (the dedupe) in src/broker/delivery-rules.ts.
  // lib/client.js dedupe: a message whose brokerCounter is not above the last
  // one delivered is dropped. A retained message waits for storeRetained
  // (aedes.js publishFuncs); held here until the later plain one is out.
  let plainOut!: () => void;
  const plainPublished = new Promise<void>((resolve) => (plainOut = resolve));
  const { aedes, url, port } = await startPlainAedes(t, {}, (aedes) => {
    interceptPersistence(aedes, { storeRetained: async (original, ...args) => (await plainPublished, original(...args)) });
    aedes.on('publish', (p) => p.topic === 'overtake/event' && plainOut());
  });
  const subscriber = await openClient(t, url);
  await subscriber.client.subscribeAsync('overtake/#', { qos: 1 });
  const retainedOut = new Promise<void>((resolve) => aedes.on('publish', (p) => p.topic === 'overtake/state' && resolve()));
  // Two publishers, so that neither waits for the other's PUBLISH to complete (aedes reads a client's next packets only then).
  const first = await rawConnected(t, port, 'publishes-first');
  first.send(publish('overtake/state', { retain: true, payload: 'retained, published first' }));
  const second = await rawConnected(t, port, 'publishes-second');
  second.send(publish('overtake/event', { payload: 'plain, published second' }));
  await retainedOut;
  const publisher = await openClient(t, url);
  await publisher.client.publishAsync('overtake/marker', 'marker', { qos: 1 });
  const messages = await subscriber.log.waitFor((m) => m.some((x) => x.topic === 'overtake/marker'), 5000, 'the marker');
  t.same(messages.map((m) => m.topic), ['overtake/event', 'overtake/marker'], 'the overtaken retained message never reaches the live subscriber');
});

t.test(`aedes ${V} still delivers QoS 2 to a wildcard subscription granted QoS 1 (corrected in src/broker/delivery-rules.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove correction 2 (delivery QoS) in src/broker/delivery-rules.ts.
  // lib/client.js deliverQoS downgrades only when subscriptions[topic] exists, i.e. the filter equals the topic [MQTT-3.8.4-6].
  const { url } = await startPlainAedes(t);
  const subscriber = await openClient(t, url);
  await subscriber.client.subscribeAsync('grant/#', { qos: 1 });
  const publisher = await openClient(t, url);
  await publisher.client.publishAsync('grant/x', 'qos 2', { qos: 2 });
  const [message] = await subscriber.log.waitForCount(1);
  t.equal(message?.packet.qos, 2, 'delivered at QoS 2 although granted QoS 1');
});

/**
 * On plain aedes: a client subscribes to each of `subscriptions` in turn, a QoS 2 message goes to
 * `topic` (which all of them match), then a marker; the copies of the message it received.
 */
async function overlappingCopies(t: Test, subscriptions: Array<[filter: string, qos: 0 | 1 | 2]>, topic: string) {
  const { url } = await startPlainAedes(t);
  const subscriber = await openClient(t, url);
  for (const [filter, qos] of subscriptions) await subscriber.client.subscribeAsync(filter, { qos });
  const publisher = await openClient(t, url);
  await publisher.client.publishAsync(topic, 'matches both', { qos: 2 });
  const marker = `${topic.split('/')[0]}/marker`;
  await publisher.client.publishAsync(marker, 'marker', { qos: 1 });
  const messages = await subscriber.log.waitFor((m) => m.some((x) => x.topic === marker), 5000, 'the marker');
  return messages.filter((m) => m.topic === topic);
}

t.test(`aedes ${V} still lets one of overlapping subscriptions decide the QoS, not the highest grant (corrected in src/broker/delivery-rules.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove correction 2 (delivery QoS) in src/broker/delivery-rules.ts.
  // Each subscription delivers through its own deliver0/deliverQoS (handlers/subscribe.js); the first copy wins the dedupe [MQTT-3.3.5-1].
  const copies = await overlappingCopies(t, [['lap/#', 0], ['lap/hi', 2]], 'lap/hi');
  t.equal(copies.length, 1, 'one copy');
  t.equal(copies[0]?.packet.qos, 0, 'at QoS 0, though a matching subscription was granted QoS 2');
});

t.test(`aedes ${V} still sends at the QoS of a subscription to the topic itself, below an overlapping wildcard's grant (corrected in src/broker/aedes-seam/direct-deliveries.ts)`, async (t) => {
  // When this fails after an aedes upgrade, DirectDeliveries#deliverQoS may again downgrade as aedes does.
  // lib/client.js deliverQoS lowers the copy to subscriptions[topic].qos whatever the other matching grants [MQTT-3.3.5-1].
  const copies = await overlappingCopies(t, [['exact/#', 1], ['exact/x', 0]], 'exact/x');
  t.equal(copies.length, 1, 'one copy');
  t.equal(copies[0]?.packet.qos, 0, 'at QoS 0, though exact/# was granted QoS 1');
});

t.test(`aedes ${V} still sends a persistent session's queued messages at the published QoS, not the granted one (corrected in src/persistence/level-persistence.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove outgoingEnqueueCombi's regrouping in src/persistence/level-persistence.ts.
  // handlers/connect.js emptyQueue writes the stored packet as it is [MQTT-3.8.4-6].
  const { aedes, url } = await startPlainAedes(t);
  const first = await openClient(t, url, { clientId: 'queued-qos', clean: false });
  await first.client.subscribeAsync('queue/topic', { qos: 1 });
  await first.client.endAsync();
  await publishVia(aedes, { topic: 'queue/topic', payload: 'qos 2 while offline', qos: 2 });
  const second = await openClient(t, url, { clientId: 'queued-qos', clean: false });
  const [message] = await second.log.waitForCount(1);
  t.same([message?.payload, message?.packet.qos], ['qos 2 while offline', 2], 'the queued message arrives at QoS 2 although granted QoS 1');
});

t.test(`aedes ${V} still queues one copy per matching subscription for an offline session (corrected in src/persistence/level-persistence.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove the per-client grouping of outgoingEnqueueCombi in src/persistence/level-persistence.ts.
  // aedes.js enqueueOffline passes every matching subscription; the memory persistence queues one packet for each.
  const { aedes, url } = await startPlainAedes(t);
  const first = await openClient(t, url, { clientId: 'overlap-offline', clean: false });
  await first.client.subscribeAsync('overlap/#', { qos: 1 });
  await first.client.subscribeAsync('overlap/x', { qos: 1 });
  await first.client.endAsync();
  await publishVia(aedes, { topic: 'overlap/x', payload: 'one message', qos: 1 });
  const stream = (aedes as unknown as { persistence: { outgoingStream(client: { id: string }): AsyncIterable<{ topic: string }> } }).persistence.outgoingStream({ id: 'overlap-offline' });
  const queued: string[] = [];
  for await (const entry of stream) queued.push(entry.topic);
  t.same(queued, ['overlap/x', 'overlap/x'], 'two queued copies of one message');
});

t.test(`aedes ${V} still drops a persistent session that answers a retained QoS 2 message with PUBREC, aedes #1003 (corrected in src/persistence/level-persistence.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove outgoingUpdate's tolerance of an unstored PUBREC in src/persistence/level-persistence.ts.
  // lib/client.js deliverQoS skips outgoingUpdate for retained packets; the PUBREC then finds nothing (handlers/pubrec.js).
  const { url, port } = await startPlainAedes(t);
  const publisher = await openClient(t, url);
  await publisher.client.publishAsync('retained2/state', 'retained value', { qos: 2, retain: true });
  const raw = await rawConnected(t, port, 'retained-qos2', 4, { clean: false });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'retained2/state', qos: 2 }] });
  const message = await raw.next('publish');
  t.same([message.payload.toString(), message.retain, message.qos], ['retained value', true, 2]);
  raw.send({ cmd: 'pubrec', messageId: message.messageId ?? 0 });
  await raw.waitForClose();
  t.notOk(raw.packets.some((p) => p.cmd === 'pubrel'), 'closed instead of answering with PUBREL [MQTT-4.3.3-1]');
});

t.test(`aedes ${V} still sends a message twice when it arrives while a persistent session resumes (corrected in src/broker/delivery-rules.ts and src/broker/flow-control.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove correction 4 (outgoingStream's resend and claimOutgoing in src/persistence/level-persistence.ts, the resume wait in src/broker/flow-control.ts).
  // handlers/connect.js: restoreSubs delivers live before emptyQueue reads the
  // queue. The read is held here until a message has gone out live: the
  // window a slow store leaves open.
  let holdNextResume = false;
  const { aedes, port } = await startPlainAedes(t, {}, (aedes) =>
    interceptPersistence(aedes, {
      outgoingStream: (original, client) => {
        if (!holdNextResume) return original(client);
        holdNextResume = false;
        return (async function* () {
          await publishVia(aedes, { topic: 'resume/t', payload: 'during resume', qos: 1 });
          yield* original(client) as AsyncIterable<unknown>;
        })();
      },
    }),
  );
  const first = await rawConnected(t, port, 'resuming', 4, { clean: false });
  first.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'resume/t', qos: 1 }] });
  await first.next('suback');
  first.send({ cmd: 'disconnect' });
  await first.waitForClose();
  holdNextResume = true;
  const second = await rawClient(t, port);
  const before = await second.connectAndPing(connectPacket('resuming', 4, { clean: false }));
  const copies = published(before).filter((p) => p.payload.toString() === 'during resume');
  t.equal(copies.length, 2, 'the message went out twice: live, and again from the queue read after it');
});

t.test(`aedes ${V} still renumbers a stored PUBREL on the next PUBREC and resends the other PUBLISH (corrected in src/persistence/outgoing-queues.ts)`, async (t) => {
  // When this fails after an aedes upgrade, the PUBREL lookup of findForUpdate in src/persistence/outgoing-queues.ts no longer departs from the reference persistence.
  // aedes-persistence outgoingUpdate: a PUBREL (no brokerId, no brokerCounter) matches any stored PUBREL.
  const { aedes, port } = await startPlainAedes(t);
  const first = await rawConnected(t, port, 'two-flows', 4, { clean: false });
  first.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'flows/#', qos: 2 }] });
  await first.next('suback');
  await publishVia(aedes, { topic: 'flows/a', payload: 'a', qos: 2 });
  await publishVia(aedes, { topic: 'flows/b', payload: 'b', qos: 2 });
  await first.waitFor((p) => published(p).length === 2, 'both messages');
  const [a, b] = published(first.packets);
  first.send({ cmd: 'pubrec', messageId: a?.messageId ?? 0 }, { cmd: 'pubrec', messageId: b?.messageId ?? 0 });
  await first.next('pubrel', 1);
  first.send({ cmd: 'disconnect' });
  await first.waitForClose();
  const second = await rawClient(t, port);
  const resent = await second.connectAndPing(connectPacket('two-flows', 4, { clean: false }));
  t.same(payloads(resent), ['b'], 'the PUBLISH of b goes out again, though its PUBREC was received [MQTT-4.3.3-1]');
  t.notOk(resent.some((p) => p.cmd === 'pubrel' && p.messageId === a?.messageId), "and a's PUBREL is lost");
});

// ---------------------------------------------------------------- acknowledgement, stop, flow

t.test(`aedes ${V} still writes the QoS 1 PUBACK before the message is stored for subscribers (corrected in src/broker/aedes-seam/seam.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove the publish inside authorizePublish in src/broker/aedes-seam/seam.ts.
  // handlers/publish.js enqueuePublish, case 1: write(PubAck), then broker.publish.
  const held = gate();
  let enqueueCalled = false;
  const { port } = await startPlainAedes(t, {}, (aedes) =>
    interceptPersistence(aedes, {
      outgoingEnqueueCombi: async (original, ...args) => {
        enqueueCalled = true;
        await held.promise;
        return original(...args);
      },
    }),
  );
  const raw = await rawConnected(t, port, 'early-ack');
  raw.send({ cmd: 'publish', topic: 'ack/t', payload: Buffer.from('x'), qos: 1, messageId: 7, dup: false, retain: false });
  const puback = await raw.next('puback');
  t.equal(puback.messageId, 7);
  t.ok(enqueueCalled && !held.opened, 'the PUBACK arrived while the store still held the write');
  held.open();
});

t.test(`aedes ${V} still publishes the wills of connected clients when it closes (corrected in src/broker/planned-stop.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove src/broker/planned-stop.ts.
  // aedes.js close → lib/client.js close → finish publishes `will`.
  const { aedes, port } = await startPlainAedes(t);
  const storedRetained: string[] = [];
  interceptPersistence(aedes, {
    storeRetained: (original, p) => (storedRetained.push((p as { topic: string }).topic), original(p)),
  });
  await rawConnected(t, port, 'will-on-stop', 4, { will: { topic: 'status/device', payload: Buffer.from('offline'), qos: 1, retain: true } });
  await new Promise<void>((resolve) => aedes.close(() => resolve()));
  await until(() => storedRetained.includes('status/device'), 5000, 'the will to be published');
  t.pass('the will was published (and stored as retained) by a planned close');
});

t.test(`aedes ${V} still sends QoS 1 messages without limit to a client that acknowledges none (corrected in src/broker/flow-control.ts)`, async (t) => {
  // When this fails after an aedes upgrade, the inflight window in src/broker/flow-control.ts may be aedes' own.
  const { aedes, port } = await startPlainAedes(t);
  const raw = await rawConnected(t, port, 'never-acks');
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'window/#', qos: 1 }] });
  await raw.next('suback');
  for (let i = 0; i < 50; i++) void publishVia(aedes, { topic: 'window/t', payload: `m${i}`, qos: 1 });
  await raw.waitFor((p) => published(p).length === 50, '50 messages');
  t.equal(new Set(published(raw.packets).map((p) => p.messageId)).size, 50, '50 QoS 1 messages in flight, none acknowledged');
});

t.test(`aedes ${V} still lets a subscriber that stops reading hold up delivery to everyone (corrected in src/broker/flow-control.ts)`, async (t) => {
  // When this fails after an aedes upgrade, the decoupling of delivery callbacks in src/broker/flow-control.ts may go.
  // mqemitter holds one of `concurrency` slots per message until every
  // delivery callback has returned, which lib/write.js delays until 'drain'.
  // A small concurrency only makes the slots run out sooner.
  const concurrency = 4;
  const { aedes, port } = await startPlainAedes(t, { concurrency });
  const mq = (aedes as unknown as { mq: { current: number; length: number } }).mq;
  const slow = await rawConnected(t, port, 'slow');
  slow.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'slow/#', qos: 0 }] });
  await slow.next('suback');
  const healthy = await rawConnected(t, port, 'healthy');
  healthy.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'healthy/#', qos: 0 }] });
  await healthy.next('suback');
  slow.pause();
  const big = Buffer.alloc(512 * 1024, 0x61);
  for (let sent = 0; mq.current < concurrency; sent++) {
    if (sent > 400) throw new Error('the slow subscriber never filled the emitter');
    aedes.publish({ cmd: 'publish', topic: 'slow/t', payload: big, qos: 0, retain: false, dup: false } as never, () => undefined);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  aedes.publish({ cmd: 'publish', topic: 'healthy/t', payload: Buffer.from('for the healthy one'), qos: 0, retain: false, dup: false } as never, () => undefined);
  t.ok(mq.length >= 1, "the healthy subscriber's message waits in the emitter's queue behind the slow subscriber");
  t.notOk(published(healthy.packets).length, 'and has not been delivered');
  slow.resume();
  await healthy.waitFor((p) => payloads(p).includes('for the healthy one'), 'the message once the slow one reads again', 20_000);
  t.pass('it is delivered once the slow subscriber reads again');
});

t.test(`aedes ${V} still writes one PUBLISH as several chunks (corrected in src/broker/write-coalescer.ts)`, async (t) => {
  // When this fails after an aedes upgrade, src/broker/write-coalescer.ts saves less; measure before removing it.
  // mqtt-packet writeToStream writes header, length, topic and payload separately.
  const { aedes, port } = await startPlainAedes(t);
  const writes: number[] = [];
  aedes.on('client', (client) => {
    if (client.id !== 'counted') return;
    const conn = (client as unknown as { conn: { write: (...args: unknown[]) => boolean } }).conn;
    const write = conn.write.bind(conn);
    conn.write = (...args: unknown[]) => (writes.push(1), write(...args));
  });
  const raw = await rawConnected(t, port, 'counted');
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'chunks/t', qos: 0 }] });
  await raw.next('suback');
  writes.length = 0;
  await publishVia(aedes, { topic: 'chunks/t', payload: 'one message', qos: 0 });
  await raw.next('publish');
  t.ok(writes.length >= 3, `one QoS 0 PUBLISH took ${writes.length} write() calls`);
});

// ---------------------------------------------------------------- CONNECT, limits

t.test(`aedes ${V} still refuses a keep-alive over keepaliveLimit with return code 6, which 3.1.1 reserves (corrected in src/broker/connect-rules.ts)`, async (t) => {
  // When this fails after an aedes upgrade, connect-rules.ts' maxKeepaliveSec may use aedes' keepaliveLimit.
  const { port } = await startPlainAedes(t, { keepaliveLimit: 30 });
  const raw = await rawClient(t, port);
  raw.send(connect({ clientId: 'long-keepalive', keepalive: 120 }));
  t.equal((await raw.next('connack')).returnCode, 6, 'CONNACK 6 [MQTT-3.2.2-6, table 3.1]');
});

// ---------------------------------------------------------------- protocol guard

const NUL = Buffer.from('a\u0000b');
const INVALID_UTF8 = Buffer.from([0x61, 0xff, 0x62]);
const SURROGATE = Buffer.from([0x61, 0xed, 0xa0, 0x80]);

/**
 * Packets MQTT 3.1.1 says must close the connection; `answer` is what aedes
 * replies instead. (A SUBSCRIBE without a topic filter [MQTT-3.8.3-3], also
 * checked by the guard, is already refused by mqtt-packet: no canary.)
 */
const violations: { name: string; rule: string; afterConnect: boolean; bad: Buffer; answer: Packet['cmd'] }[] = [
  { name: 'a PUBLISH topic containing U+0000', rule: 'MQTT-1.5.3-2', afterConnect: true, bad: publish(NUL, { qos: 1, id: 1 }), answer: 'puback' },
  { name: 'a PUBLISH topic with invalid UTF-8', rule: 'MQTT-1.5.3-1', afterConnect: true, bad: publish(INVALID_UTF8, { qos: 1, id: 1 }), answer: 'puback' },
  { name: 'a PUBLISH topic with an encoded surrogate', rule: 'MQTT-1.5.3-1', afterConnect: true, bad: publish(SURROGATE, { qos: 1, id: 1 }), answer: 'puback' },
  { name: 'a SUBSCRIBE filter with invalid UTF-8', rule: 'MQTT-1.5.3-1', afterConnect: true, bad: subscribe(1, [Buffer.concat([Buffer.from('a/'), INVALID_UTF8])]), answer: 'suback' },
  { name: 'an UNSUBSCRIBE filter containing U+0000', rule: 'MQTT-1.5.3-2', afterConnect: true, bad: unsubscribe(1, [NUL]), answer: 'unsuback' },
  { name: 'a QoS 1 PUBLISH with packet identifier 0', rule: 'MQTT-2.3.1-1', afterConnect: true, bad: publish('a', { qos: 1, id: 0 }), answer: 'puback' },
  { name: 'a QoS 2 PUBLISH with packet identifier 0', rule: 'MQTT-2.3.1-1', afterConnect: true, bad: publish('a', { qos: 2, id: 0 }), answer: 'pubrec' },
  { name: 'a SUBSCRIBE with packet identifier 0', rule: 'MQTT-2.3.1-1', afterConnect: true, bad: subscribe(0, ['a']), answer: 'suback' },
  { name: 'an UNSUBSCRIBE with packet identifier 0', rule: 'MQTT-2.3.1-1', afterConnect: true, bad: unsubscribe(0, ['a']), answer: 'unsuback' },
  { name: 'an UNSUBSCRIBE without a topic filter', rule: 'MQTT-3.10.3-2', afterConnect: true, bad: packet(0xa2, u16(1)), answer: 'unsuback' },
  { name: "a SUBSCRIBE filter with '+' inside a level", rule: 'MQTT-4.7.1-3', afterConnect: true, bad: subscribe(1, ['a+']), answer: 'suback' },
  { name: 'a CONNECT with Will QoS 3', rule: 'MQTT-3.1.2-14', afterConnect: false, bad: connect({ clientId: 'will-qos-3', will: { topic: 'w', qos: 3 } }), answer: 'connack' },
  { name: 'a CONNECT with a password but no user name', rule: 'MQTT-3.1.2-22', afterConnect: false, bad: connect({ clientId: 'password-only', password: 'secret' }), answer: 'connack' },
  { name: 'a CONNECT with U+0000 in the client id', rule: 'MQTT-1.5.3-2', afterConnect: false, bad: connect({ clientId: NUL }), answer: 'connack' },
  { name: 'a CONNECT with invalid UTF-8 in the client id', rule: 'MQTT-1.5.3-1', afterConnect: false, bad: connect({ clientId: INVALID_UTF8 }), answer: 'connack' },
  { name: 'a CONNECT with a wildcard in the will topic', rule: 'MQTT-3.3.2-2', afterConnect: false, bad: connect({ clientId: 'will-wildcard', will: { topic: 'w/#' } }), answer: 'connack' },
];

t.test(`aedes ${V} still accepts packets MQTT 3.1.1 says must close the connection (corrected in src/broker/protocol-guard.ts)`, async (t) => {
  // When one of these fails after an aedes upgrade, that check in src/broker/protocol-guard.ts duplicates aedes'.
  const { port } = await startPlainAedes(t);
  for (const violation of violations) {
    await t.test(`aedes ${V} still accepts ${violation.name} [${violation.rule}] (corrected in src/broker/protocol-guard.ts)`, async (t) => {
      const raw = violation.afterConnect ? await rawConnected(t, port, `guard-${violations.indexOf(violation)}`) : await rawClient(t, port);
      raw.send(violation.bad);
      const answer = await raw.next(violation.answer);
      if (answer.cmd === 'connack') t.equal(answer.returnCode, 0, 'CONNACK 0');
      else t.pass(`answered with ${violation.answer}`);
      await raw.ping();
      t.notOk(raw.closed, 'and the connection stays open');
    });
  }
});

// ---------------------------------------------------------------- authorization

t.test(`aedes ${V} still disconnects a client whose PUBLISH the publish hook denies (corrected in src/auth/authorizer.ts)`, async (t) => {
  // When this fails after an aedes upgrade, the authorizer can answer deny instead of marking and wrapping publish (src/auth/authorizer.ts install).
  const { port } = await startPlainAedes(t, {
    authorizePublish: (_client: unknown, p: { topic: string }, done: (error?: Error | null) => void) => done(p.topic.startsWith('denied/') ? new Error('denied') : null),
  });
  const raw = await rawConnected(t, port, 'denied-publisher');
  raw.send(publish('denied/t', { qos: 1, id: 3 }));
  await raw.waitForClose();
  t.notOk(raw.packets.some((p) => p.cmd === 'puback'), 'closed without a PUBACK');
});

t.test(`aedes ${V} still acts on a PUBLISH read after a CONNECT it then refuses [MQTT-3.1.4-5] (corrected in src/broker/connect-hold.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove src/broker/connect-hold.ts.
  // lib/client.js queues the packets parsed with the CONNECT, but a packet
  // completed by a later read in the same turn (here: after a 96 KiB
  // payload, more than one 64 KiB read) goes to the handlers at once.
  const { port } = await startPlainAedes(t, {
    authenticate: (_client: unknown, _user: unknown, _password: unknown, done: (error: Error | null, ok: boolean) => void) =>
      done(Object.assign(new Error('bad password'), { returnCode: 4 }), false),
  });
  const raw = await rawClient(t, port);
  raw.send(
    connect({ clientId: 'refused', username: 'alice', password: 'wrong' }),
    publish('early/publish', { qos: 1, id: 7, payload: Buffer.alloc(96 * 1024, 0x61) }),
  );
  await raw.waitForClose();
  const commands = raw.packets.map((p) => p.cmd);
  t.ok(commands.includes('puback'), `a PUBACK came back before the connection closed (${commands.join(', ')})`);
  t.ok(commands.includes('connack'), 'and the CONNACK refused it');
});

t.test(`aedes ${V} still accepts a CONNECT whose will the client may not publish (corrected in src/auth/authorizer.ts)`, async (t) => {
  // When this fails after an aedes upgrade, remove the will check at CONNECT in src/auth/authorizer.ts.
  const { port } = await startPlainAedes(t, {
    authorizePublish: (_client: unknown, p: { topic: string }, done: (error?: Error | null) => void) => done(p.topic.startsWith('denied/') ? new Error('denied') : null),
  });
  const raw = await rawClient(t, port);
  raw.send(connect({ clientId: 'denied-will', will: { topic: 'denied/will' } }));
  t.equal((await raw.next('connack')).returnCode, 0, 'CONNACK 0 for a will on a denied topic');
});

t.test(`aedes ${V} still shows every client id on $SYS to any subscriber (corrected in src/auth/authorizer.ts)`, async (t) => {
  // When this fails after an aedes upgrade, the anonymous $SYS rule in src/auth/authorizer.ts may go.
  const { port } = await startPlainAedes(t);
  const watcher = await rawConnected(t, port, 'watcher');
  watcher.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$SYS/+/new/clients', qos: 0 }] });
  await watcher.next('suback');
  await rawConnected(t, port, 'someone-else');
  await watcher.waitFor((p) => payloads(p).includes('someone-else'), "another client's id");
  t.pass("an anonymous subscriber reads another client's id");
});

// ---------------------------------------------------------------- store and counters

t.test(`aedes ${V} still asks the persistence nothing for a QoS 0 PUBLISH (relied on by the bridge's QoS 0 tap in src/daemon.ts)`, async (t) => {
  // When this fails after an aedes upgrade, the 'publish' tap for QoS 0 in src/daemon.ts would see QoS 0 messages twice.
  const enqueued: string[] = [];
  const { aedes } = await startPlainAedes(t, {}, (aedes) =>
    interceptPersistence(aedes, { outgoingEnqueueCombi: (original, subs, p) => (enqueued.push((p as { topic: string }).topic), original(subs, p)) }),
  );
  await publishVia(aedes, { topic: 'tap/qos0', payload: 'q0', qos: 0 });
  await publishVia(aedes, { topic: 'tap/qos1', payload: 'q1', qos: 1 });
  t.same(enqueued, ['tap/qos1'], 'only the QoS 1 message reached outgoingEnqueueCombi');
});

t.test(`aedes ${V} still publishes a QoS 1 message in the steps src/broker/aedes-seam/qos-publish.ts repeats (relied on)`, async (t) => {
  // When this fails after an aedes upgrade, bring qos-publish.ts' steps in line with aedes.js publish (publishFuncsQoS).
  const steps: string[] = [];
  const { aedes } = await startPlainAedes(
    t,
    { published: (packet: { topic: string }, _client: unknown, done: () => void) => (packet.topic === 'steps/t' && steps.push('published'), done()) },
    (aedes) =>
      interceptPersistence(aedes, {
        subscriptionsByTopic: (original, ...args) => (steps.push('subscriptionsByTopic'), original(...args)),
        outgoingEnqueueCombi: (original, ...args) => (steps.push('outgoingEnqueueCombi'), original(...args)),
      }),
  );
  const delivered = (packet: { topic: string; brokerCounter?: number }, done: () => void) => {
    steps.push(`delivered #${packet.brokerCounter}`);
    done();
  };
  await new Promise<void>((resolve) => aedes.subscribe('steps/t', delivered as never, () => resolve()));
  aedes.on('publish', (packet) => packet.topic === 'steps/t' && steps.push('publish event'));
  const counter = (aedes as unknown as { counter: number }).counter;
  await publishVia(aedes, { topic: 'steps/t', payload: 'x', qos: 1 });
  t.same(steps, ['subscriptionsByTopic', 'outgoingEnqueueCombi', `delivered #${counter + 1}`, 'published', 'publish event'], 'matched, queued, delivered (numbered from aedes.counter), then published and told');
});

t.test(`aedes ${V} still keeps the brokerId and brokerCounter a published packet carries (relied on in src/daemon.ts)`, async (t) => {
  // When this fails after an aedes upgrade, src/daemon.ts' numbering of bridge imports no longer reaches the store's taps.
  const { aedes } = await startPlainAedes(t);
  const seen = new Promise<{ brokerId?: string; brokerCounter?: number }>((resolve) => aedes.on('publish', (p) => p.topic === 'counter/t' && resolve(p as never)));
  await publishVia(aedes, { topic: 'counter/t', payload: 'x', qos: 1, brokerId: aedes.id, brokerCounter: 1_000_000 });
  const p = await seen;
  t.same([p.brokerId, p.brokerCounter], [aedes.id, 1_000_000]);
});

t.test(`aedes ${V} still restarts brokerCounter with a fixed id below the counters of queued messages, which then get mixed up (corrected in src/persistence/level-persistence.ts setup)`, async (t) => {
  // When this fails after an aedes upgrade, remove the raise of broker.counter in LevelPersistence.setup (src/persistence/level-persistence.ts).
  // aedes.js constructor: counter = 0 whatever the persistence holds; aedes-persistence
  // outgoingUpdate finds a queued message by brokerId and brokerCounter.
  const first = await startPlainAedes(t, { id: 'fixed-id' });
  const session = await rawConnected(t, first.port, 'restarted', 4, { clean: false });
  session.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'restart/t', qos: 1 }] });
  await session.next('suback');
  session.send({ cmd: 'disconnect' });
  await session.waitForClose();
  for (let i = 0; i < 5; i++) await publishVia(first.aedes, { topic: 'restart/t', payload: `old ${i}`, qos: 1 });
  const persistence = (first.aedes as unknown as { persistence: { outgoingStream(client: { id: string }): AsyncIterable<{ brokerCounter: number }> } }).persistence;
  await new Promise<void>((resolve) => first.aedes.close(() => resolve()));

  const second = await startPlainAedes(t, { id: 'fixed-id', persistence });
  const queuedCounters: number[] = [];
  for await (const entry of persistence.outgoingStream({ id: 'restarted' })) queuedCounters.push(entry.brokerCounter);
  const counter = (second.aedes as unknown as { counter: number }).counter;
  t.ok(counter < Math.min(...queuedCounters), `the counter starts over at ${counter}, below the queued ${queuedCounters.join(', ')}`);
  for (let i = 0; i < 10; i++) await publishVia(second.aedes, { topic: 'restart/t', payload: `new ${i}`, qos: 1 });

  // Receive and acknowledge all fifteen, leave, come back: nothing should be left.
  const resumed = await rawClient(t, second.port);
  const delivered = published(await resumed.connectAndPing(connectPacket('restarted', 4, { clean: false })));
  t.equal(delivered.length, 15, 'all fifteen arrive');
  resumed.send(...delivered.map((p) => ({ cmd: 'puback' as const, messageId: p.messageId ?? 0 })));
  await resumed.ping();
  resumed.send({ cmd: 'disconnect' });
  await resumed.waitForClose();
  const again = await rawClient(t, second.port);
  const resent = payloads(await again.connectAndPing(connectPacket('restarted', 4, { clean: false })));
  t.ok(resent.length > 0, `acknowledged messages are sent again on the next connection: ${resent.join(', ')}`);
});

// ---------------------------------------------------------------- departures and writes (relied on)

t.test(`aedes ${V} still registers a taken-over client's successor only after closing it, through registerClient (relied on by onTakeover, src/broker/aedes-seam/departures.ts)`, async (t) => {
  // When this fails after an aedes upgrade, a takeover is counted as connection_lost: find where aedes now replaces the client.
  const events: string[] = [];
  const { port } = await startPlainAedes(t, {}, (aedes) => {
    onTakeover(aedes, (taken) => events.push(`takeover of ${taken.id} (${taken === firstClient ? 'the first' : 'another'} client)`));
    aedes.on('client', (client) => {
      firstClient ??= client;
      events.push('client');
    });
    aedes.on('clientDisconnect', (client) => events.push(`clientDisconnect (${client === firstClient ? 'the first' : 'another'} client)`));
  });
  let firstClient: Client | undefined;
  const first = await rawConnected(t, port, 'twin');
  await rawConnected(t, port, 'twin');
  await first.waitForClose();
  t.same(events, ['client', 'takeover of twin (the first client)', 'clientDisconnect (the first client)', 'client'], 'takeover seen before the old client leaves');
});

t.test(`aedes ${V} still closes a client whose bytes mqtt-packet refuses through the parser's 'error', before 'clientError' (relied on by onParseError, src/broker/aedes-seam/departures.ts)`, async (t) => {
  // When this fails after an aedes upgrade, a parse error is counted as connection_lost: find where aedes now reports it.
  const events: string[] = [];
  const { port } = await startPlainAedes(t, {}, (aedes) => {
    const handle = aedes.handle.bind(aedes);
    aedes.handle = (conn, request) => {
      const client = handle(conn, request);
      // onParseError is told by the parser listener lightenClient puts in place of aedes' own.
      lightenClient(client);
      return client;
    };
    onParseError(aedes, (_client, error) => events.push(`parse error: ${error.message}`));
    aedes.on('clientError', () => events.push('clientError'));
    aedes.on('clientDisconnect', () => events.push('clientDisconnect'));
  });
  const raw = await rawConnected(t, port, 'garbled');
  // A PUBLISH with both QoS bits set, which mqtt-packet refuses [MQTT-3.3.1-4].
  const bad = Buffer.from(publish('a/b', { qos: 1, id: 1, payload: 'x' }));
  bad[0] = 0x36;
  raw.send(bad);
  await raw.waitForClose();
  await until(() => events.includes('clientDisconnect'), 5000, 'the client to be gone');
  t.match(events, [/^parse error: ./, 'clientError', 'clientDisconnect'], 'the parse error is heard first');
});

t.test(`aedes ${V} still writes every PUBLISH through mqtt-packet's writeToStream, live and resent (relied on by onPublishWritten, src/broker/aedes-seam/packet-writes.ts)`, async (t) => {
  // When this fails after an aedes upgrade, trafficStats().messagesOut misses what aedes now writes another way.
  const written: number[] = [];
  const { aedes, port } = await startPlainAedes(t, {}, (aedes) => {
    onPublishWritten(aedes, (_client, qos) => written.push(qos));
  });
  const reader = await rawConnected(t, port, 'reader', 4, { clean: false });
  reader.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'w/#', qos: 1 }] });
  await reader.next('suback');
  await publishVia(aedes, { topic: 'w/live', payload: 'a', qos: 1 });
  await reader.next('publish');
  const gone = new Promise<void>((resolve) => aedes.once('clientDisconnect', () => resolve()));
  // Not acknowledged: resent on the next connection.
  reader.drop();
  await gone;
  await publishVia(aedes, { topic: 'w/stored', payload: 'b', qos: 1 });
  const again = await rawClient(t, port);
  const before = await again.connectAndPing(connectPacket('reader', 4, { clean: false }));
  t.same(payloads(before), ['a', 'b'], 'the unacknowledged live message and the stored one, resent');
  t.same(written, [1, 1, 1], 'the live message, then both resent, each seen at QoS 1');
});

t.test(`aedes ${V} still drains its message bus queue recursively, a long one exhausting the stack, mcollina/mqemitter#204 (corrected in src/broker/aedes-seam/emitter-depth.ts)`, async (t) => {
  const { Aedes } = await import('aedes');
  const aedes = new Aedes();
  t.teardown(() => new Promise<void>((resolve) => aedes.close(() => resolve())));
  const { completed, total, error } = await floodEmitter(aedes);
  t.type(error, RangeError, 'the drain threw RangeError (call stack size exceeded)');
  t.ok(completed < total, `and left messages undone (${completed} of ${total})`);
});

t.test(`aedes ${V}'s message bus removes a handler only in a later setImmediate, and its matcher may answer with a list it keeps (relied on by the remembered matches in src/broker/aedes-seam/fast-publish.ts)`, async (t) => {
  const { Aedes } = await import('aedes');
  const aedes = new Aedes();
  t.teardown(() => new Promise<void>((resolve) => aedes.close(() => resolve())));
  type Handler = (packet: object, done: () => void) => void;
  const mq = (aedes as unknown as { mq: { on(topic: string, h: Handler): void; removeListener(topic: string, h: Handler, done: () => void): void; _matcher: { match(topic: string): Handler[] } } }).mq;
  const handler: Handler = (_packet, done) => done();
  mq.on('canary/t', handler);
  t.equal(mq._matcher.match('canary/t'), mq._matcher.match('canary/t'), 'the same list twice: a copy is what can be kept and frozen');
  const removed = new Promise<void>((resolve) => mq.removeListener('canary/t', handler, resolve));
  t.same(mq._matcher.match('canary/t'), [handler], 'still matched right after removeListener: a change is counted where the matcher changes');
  await removed;
  t.same(mq._matcher.match('canary/t'), [], 'gone once its setImmediate ran');
});

t.test(`aedes ${V} still writes each QoS 0 and QoS 1 delivery in a setImmediate, not in the call (corrected in src/broker/aedes-seam/direct-deliveries.ts)`, async (t) => {
  const { aedes, port } = await startPlainAedes(t);
  await rawConnected(t, port, 'reader', 4);
  const client = (aedes as unknown as { clients: Record<string, Client> }).clients.reader as unknown as {
    conn: { write(...args: unknown[]): boolean };
    deliver0(packet: object, done: () => void): void;
    deliverQoS(packet: object, done: () => void): void;
  };
  let writes = 0;
  const write = client.conn.write;
  client.conn.write = function counted(this: unknown, ...args: unknown[]) {
    writes++;
    return write.apply(this, args);
  };
  const delivered = (deliver: 'deliver0' | 'deliverQoS', qos: number, counter: number) =>
    new Promise<number>((resolve) => {
      client[deliver]({ cmd: 'publish', topic: 'd/x', payload: Buffer.from('x'), qos, retain: false, brokerId: aedes.id, brokerCounter: counter }, () => resolve(writes));
      t.equal(writes, 0, `${deliver} at QoS ${qos}: nothing written in the call`);
    });
  t.ok((await delivered('deliver0', 0, 1)) > 0, 'written by the time its callback comes');
  writes = 0;
  t.ok((await delivered('deliverQoS', 1, 2)) > 0, 'written by the time its callback comes');
});
