/**
 * Canaries for aedes 2.0.0-beta.1, the MQTT 5 line edgemqtt moves to next:
 * the MQTT 5 behaviour it still lacks, and three security fixes of aedes
 * 1.1.2–1.2.0 it does not have. Each asserts the gap IS there in the
 * installed aedes, used plainly (test/helpers/plain-aedes.ts); when one fails
 * after an upgrade, aedes closed that gap and edgemqtt's correction for it
 * (to be written on the move) can go. The 1.x line has no MQTT 5 and has the
 * security fixes, so on 1.x all of these are skipped. The canaries of what
 * edgemqtt corrects today are in test/aedes-canaries.test.ts.
 */
import t from 'tap';
import type { Packet } from 'mqtt-packet';
import { connect, publish } from './helpers/packets.js';
import {
  connectPacket,
  installedAedesVersion,
  interceptPersistence,
  payloads,
  published,
  publishesInFirstTurn,
  publishVia,
  rawClient,
  rawConnected,
  startPlainAedes,
  subscribedAndGone,
  until,
} from './helpers/plain-aedes.js';

const V = installedAedesVersion();
const major = Number(V.split('.')[0]);
const v5 = major >= 2 ? false : `aedes ${V} speaks no MQTT 5; this gap is one of the 2.0 line`;
const regression = major >= 2 ? false : `aedes ${V} has this fix (1.1.2–1.2.0); only the 2.0 beta lacks it`;


// ---------------------------------------------------------------- resend

t.test(`aedes ${V} still resends a persistent session's stored messages one per event-loop turn (corrected in src/broker/aedes-seam/resend.ts)`, async (t) => {
  // When this fails after an aedes upgrade, aedes' own emptyQueue writes a backlog back to back: remove installBatchResend (aedes-seam/resend.ts).
  // handlers/connect.js emptyQueue: a transform that takes the next stored message when lib/write.js calls back, in setImmediate.
  const stored = 10;
  const broker = await startPlainAedes(t);
  const firstTurn = publishesInFirstTurn(broker.aedes);
  await subscribedAndGone(t, broker, 'backlog', 'backlog/t');
  for (let i = 0; i < stored; i++) await publishVia(broker.aedes, { topic: 'backlog/t', payload: `m${i}`, qos: 1 });
  const again = await rawClient(t, broker.port);
  const resent = await again.connectAndPing(connectPacket('backlog', 4, { clean: false }));
  t.equal(payloads(resent).length, stored, 'the whole backlog is resent');
  t.equal(firstTurn.count, 1, 'but only one stored message was written in the turn of the first');
});

// ---------------------------------------------------------------- MQTT 5 gaps

t.test(`aedes ${V} still ignores the client's Receive Maximum, aedes #829 (corrected in src/broker/flow-control.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt's flow control need not cap a v5 client's inflight window at its Receive Maximum [MQTT-3.3.4-9].
  const { aedes, port } = await startPlainAedes(t);
  const raw = await rawConnected(t, port, 'receive-max-2', 5, { properties: { receiveMaximum: 2 } });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'rm/#', qos: 1 }] });
  await raw.next('suback');
  for (let i = 0; i < 5; i++) void publishVia(aedes, { topic: 'rm/t', payload: `m${i}`, qos: 1 });
  await raw.waitFor((p) => published(p).length === 5, 'five unacknowledged messages');
  t.pass('five QoS 1 messages in flight to a client whose Receive Maximum is 2');
});

t.test(`aedes ${V} still sends a client packets over its Maximum Packet Size (corrected in src/broker/flow-control.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not drop deliveries over a v5 client's Maximum Packet Size [MQTT-3.1.2-24].
  const { aedes, port } = await startPlainAedes(t);
  const raw = await rawConnected(t, port, 'max-packet-256', 5, { properties: { maximumPacketSize: 256 } });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'mps/#', qos: 0 }] });
  await raw.next('suback');
  await publishVia(aedes, { topic: 'mps/t', payload: Buffer.alloc(1024, 0x61), qos: 0 });
  const message = await raw.next('publish');
  t.equal(message.payload.length, 1024, 'a PUBLISH of more than 1 KiB reached a client that allows 256 bytes');
});

t.test(`aedes ${V} still carries one Subscription Identifier when several subscriptions match, aedes #1090 (corrected: delivery-rules.ts rule 5)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not add the identifiers of every matching subscription [MQTT-3.3.4-3]
  // (src/broker/delivery-rules.ts rule 5; queued copies: src/persistence/recipients.ts recipientsOf).
  const { aedes, port } = await startPlainAedes(t);
  const raw = await rawConnected(t, port, 'two-identifiers', 5);
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'si/#', qos: 0 }], properties: { subscriptionIdentifier: 1 } });
  raw.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'si/x', qos: 0 }], properties: { subscriptionIdentifier: 2 } });
  await raw.next('suback', 1);
  await publishVia(aedes, { topic: 'si/x', payload: 'matches both', qos: 0 });
  await publishVia(aedes, { topic: 'si/marker', payload: 'marker', qos: 0 });
  await raw.waitFor((p) => payloads(p).includes('marker'), 'the marker');
  const copies = published(raw.packets).filter((p) => p.topic === 'si/x');
  const identifiers = copies.flatMap((p) => [p.properties?.subscriptionIdentifier ?? []].flat());
  t.equal(copies.length, 1, 'one copy');
  t.equal(identifiers.length, 1, `carrying one identifier (${identifiers.join(', ')}) of the two matching subscriptions`);
});

t.test(`aedes ${V} still publishes a will with its Will Delay Interval property, aedes #1098 (corrected in src/broker/aedes-seam/seam.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not strip the will's Will Delay Interval before publishing it [MQTT-3.3.2.3].
  const { port } = await startPlainAedes(t);
  const watcher = await rawConnected(t, port, 'will-watcher', 5);
  watcher.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'wd/#', qos: 0 }] });
  await watcher.next('suback');
  // Session Expiry 0 caps the delay at 0: the will goes out at once [MQTT-3.1.3-9].
  const dying = await rawConnected(t, port, 'will-delay', 5, {
    will: { topic: 'wd/gone', payload: Buffer.from('offline'), qos: 0, retain: false, properties: { willDelayInterval: 30 } },
  });
  dying.drop();
  const will = await watcher.next('publish');
  t.equal(will.payload.toString(), 'offline');
  t.equal((will.properties as Record<string, unknown> | undefined)?.willDelayInterval, 30, 'the subscriber receives the will with Will Delay Interval 30');
});

t.test(`aedes ${V} still drops the queued messages of a session resumed with Clean Start 0 and no Session Expiry (corrected in src/broker/aedes-seam/sessions.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not keep a resumed session's queue until the connection's own expiry applies [MQTT-3.1.2-5].
  // handlers/connect.js: client.clean = (Session Expiry of this CONNECT === 0); emptyQueue then clears instead of sending.
  const broker = await startPlainAedes(t);
  await subscribedAndGone(t, broker, 'resume-v5', 'rs/t', 5, { clean: false, properties: { sessionExpiryInterval: 300 } });
  await publishVia(broker.aedes, { topic: 'rs/t', payload: 'queued while away', qos: 1 });
  const second = await rawClient(t, broker.port, 5);
  const resumed = await second.connectAndPing(connectPacket('resume-v5', 5, { clean: false }));
  const connack = resumed.find((p): p is Extract<Packet, { cmd: 'connack' }> => p.cmd === 'connack');
  t.equal(connack?.sessionPresent, true, 'the session is resumed');
  t.notOk(payloads(resumed).includes('queued while away'), 'but its queued message is not delivered');
});

t.test(`aedes ${V} still assigns no topic aliases to outgoing messages, aedes #1117 (corrected: broker.outgoingTopicAliases, aedes-seam/outgoing-aliases.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, broker-assigned topic aliases need not be edgemqtt's [MQTT-3.3.2-8]
  // (src/broker/aedes-seam/outgoing-aliases.ts, switched on by broker.outgoingTopicAliases).
  const { aedes, port } = await startPlainAedes(t);
  const raw = await rawConnected(t, port, 'alias-taker', 5, { properties: { topicAliasMaximum: 10 } });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'alias/a/rather/long/topic/name', qos: 0 }] });
  await raw.next('suback');
  for (let i = 0; i < 3; i++) await publishVia(aedes, { topic: 'alias/a/rather/long/topic/name', payload: `m${i}`, qos: 0 });
  await raw.waitFor((p) => published(p).length === 3, 'three messages');
  t.same(published(raw.packets).map((p) => [p.topic, p.properties?.topicAlias]), [0, 1, 2].map(() => ['alias/a/rather/long/topic/name', undefined]), 'each carries the full topic, no alias');
});

t.test(`aedes ${V} still refuses enhanced authentication (AUTH), aedes #1119`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, AUTH need not be edgemqtt's [MQTT-4.12].
  const { port } = await startPlainAedes(t);
  const raw = await rawClient(t, port, 5);
  raw.send(connectPacket('scram', 5, { properties: { authenticationMethod: 'SCRAM-SHA-256', authenticationData: Buffer.from('client-first') } }));
  t.equal((await raw.next('connack')).reasonCode, 0x8c, 'CONNACK 0x8C Bad authentication method');
});

t.test(`aedes ${V} still has no shared subscriptions, aedes #841 (corrected: src/broker/shared-subscriptions.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, shared subscriptions need not be edgemqtt's [MQTT-4.8.2].
  const { port } = await startPlainAedes(t);
  const raw = await rawClient(t, port, 5);
  raw.send(connectPacket('sharer', 5));
  const connack = await raw.next('connack');
  t.equal(connack.properties?.sharedSubscriptionAvailable, false, 'CONNACK: Shared Subscription Available 0');
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$share/group/jobs', qos: 1 }] });
  t.same((await raw.next('suback')).granted, [0x9e], 'SUBACK 0x9E Shared Subscriptions not supported');
});

t.test(`aedes ${V} still keeps a refused filter with a persistent session and answers every refusal 0x87 (corrected in src/broker/aedes-seam/subscribe-outcomes.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, installSubscribeOutcomes need not filter what is stored, or rewrite the SUBACK's codes.
  // handlers/subscribe.js storeSubscriptions: addSubscriptions(client, packet.subscriptions) for each granted filter, the
  // refused ones in the list too; a filter authorizeSubscribe refuses (done(null, null)) gets ReasonCodes.NOT_AUTHORIZED.
  const session = { clean: false, properties: { sessionExpiryInterval: 300 } };
  const { aedes, port } = await startPlainAedes(t, {
    authorizeSubscribe: (_client: unknown, sub: { topic: string }, done: (error: Error | null, sub: unknown) => void) => done(null, sub.topic === 'refused/t' ? null : sub),
  });
  const first = await rawConnected(t, port, 'keeps-refused', 5, session);
  first.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'granted/t', qos: 1 }, { topic: 'refused/t', qos: 1 }] });
  t.same((await first.next('suback')).granted, [0x01, 0x87], 'SUBACK: the refused filter gets 0x87, the one code for any refusal');
  first.send({ cmd: 'disconnect' });
  await first.waitForClose();
  await publishVia(aedes, { topic: 'refused/t', payload: 'on the refused filter', qos: 1 });
  await publishVia(aedes, { topic: 'granted/t', payload: 'marker', qos: 1 });
  const again = await rawClient(t, port, 5);
  const resumed = await again.connectAndPing(connectPacket('keeps-refused', 5, session));
  t.same(payloads(resumed), ['on the refused filter', 'marker'], 'the refused filter was stored with the session and queued a message');
});

t.test(`aedes ${V} still forgets session expiry timers across a restart, aedes #839 (corrected in src/broker/aedes-seam/sessions.ts and src/persistence/session-expiry.ts)`, { skip: v5 }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not re-arm session expiry (and will delay) from its store on start [MQTT-3.1.2-23].
  // aedes.js: expiringSessions and delayedWills are timers in memory, cleared by close().
  const first = await startPlainAedes(t);
  const session = await rawConnected(t, first.port, 'expires-in-1s', 5, { clean: false, properties: { sessionExpiryInterval: 1 } });
  session.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'exp/t', qos: 1 }] });
  await session.next('suback');
  session.send({ cmd: 'disconnect' });
  await session.waitForClose();
  const expiresAt = Date.now() + 1000;
  const persistence = (first.aedes as unknown as { persistence: unknown }).persistence;
  await new Promise<void>((resolve) => first.aedes.close(() => resolve()));
  const second = await startPlainAedes(t, { persistence });
  // The condition is time itself: the session's expiry interval has passed.
  await until(() => Date.now() > expiresAt + 250, 5000, 'the session expiry interval to pass');
  await publishVia(second.aedes, { topic: 'exp/t', payload: 'after expiry', qos: 1 });
  const again = await rawClient(t, second.port, 5);
  const resumed = await again.connectAndPing(connectPacket('expires-in-1s', 5, { clean: false, properties: { sessionExpiryInterval: 1 } }));
  const connack = resumed.find((p): p is Extract<Packet, { cmd: 'connack' }> => p.cmd === 'connack');
  t.equal(connack?.sessionPresent, true, 'the session outlived its expiry interval');
  t.same(payloads(resumed), ['after expiry'], 'its subscription still queued a message');
});

// ---------------------------------------------------------------- 1.x security fixes missing in the beta

t.test(`aedes ${V} still keys clients and subscriptions in plain objects, where a name like 'constructor' is found (GHSA-52qw-whmv-87c5)`, { skip: regression }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not refuse client ids and topic filters that name Object.prototype members.
  const { aedes, port } = await startPlainAedes(t);
  await rawConnected(t, port, 'plain-object');
  const internals = aedes as unknown as { clients: Record<string, { subscriptions: object; duplicates: object }>; brokers: object };
  const client = internals.clients['plain-object'];
  t.ok('constructor' in internals.clients, "aedes.clients has a 'constructor' entry no client made");
  t.ok('constructor' in internals.brokers, "aedes.brokers too");
  t.ok(client && '__proto__' in client.subscriptions && 'toString' in client.duplicates, "and so do a client's subscriptions and duplicates");
});

t.test(`aedes ${V} still stores any number of incoming QoS 2 messages awaiting PUBREL (GHSA-5jvp, maxInflightInbound) (corrected in src/broker/protocol-guard/guard.ts, limits.maxIncomingAwaitingRelease)`, { skip: regression }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not bound a client's incoming QoS 2 messages awaiting PUBREL.
  const { port } = await startPlainAedes(t, { maxInflightInbound: 2 });
  const raw = await rawConnected(t, port, 'qos2-flood');
  raw.send(...[1, 2, 3, 4, 5].map((id) => publish('flood/t', { qos: 2, id })));
  await raw.waitFor((p) => p.filter((x) => x.cmd === 'pubrec').length === 5, 'five PUBRECs');
  await raw.ping();
  t.notOk(raw.closed, 'five stored, none released, with maxInflightInbound 2: still connected');
});

t.test(`aedes ${V} still keeps a clean session's incoming QoS 2 messages after it ends, and drops a new one with the same id (cleanIncoming)`, { skip: regression }, async (t) => {
  // When this fails after an aedes upgrade, edgemqtt need not clear a clean session's incoming QoS 2 state itself [MQTT-3.1.2-6].
  let cleaned = 0;
  const { port } = await startPlainAedes(t, {}, (aedes) =>
    interceptPersistence(aedes, { cleanIncoming: (original, client) => (cleaned++, original(client)) }),
  );
  const watcher = await rawConnected(t, port, 'incoming-watcher');
  watcher.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'in/#', qos: 0 }] });
  await watcher.next('suback');
  const first = await rawConnected(t, port, 'clean-qos2');
  first.send(publish('in/t', { qos: 2, id: 9, payload: 'first session' }));
  await first.next('pubrec');
  first.drop();
  await first.waitForClose();
  const second = await rawClient(t, port);
  second.send(connect({ clientId: 'clean-qos2' }));
  await second.next('connack');
  second.send(publish('in/t', { qos: 2, id: 9, payload: 'second session' }));
  await second.next('pubrec');
  second.send(publish('in/marker', { qos: 1, id: 10, payload: 'marker' }));
  await second.next('puback');
  await watcher.waitFor((p) => payloads(p).includes('marker'), 'the marker');
  t.same(payloads(watcher.packets), ['first session', 'marker'], "the new session's message is taken for the old one and never published");
  t.equal(cleaned, 0, 'cleanIncoming was never called');
});
