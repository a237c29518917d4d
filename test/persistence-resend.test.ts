/**
 * The store hands out a persistent session's packet identifiers: each queued
 * message gets one when it is first sent (live, claimOutgoing, or in the
 * resend after CONNECT, outgoingResendStream), keeps it until acknowledged,
 * never shares it with another queued message, and leaves once per
 * connection. Each aedes client object is one connection; the objects here
 * stand in for them.
 */
import t from 'tap';
import { collect, fakeBroker, harness, publish } from './helpers/store.js';

const topic = 'plant/line1';

async function session(t: Parameters<typeof harness>[0], messages: number) {
  const h = harness(t);
  const persistence = await h.open();
  const broker = fakeBroker();
  await persistence.setup(broker);
  const packets = Array.from({ length: messages }, (_, i) =>
    publish(topic, `m${i}`, { qos: 2, brokerId: broker.id, brokerCounter: i + 1 }),
  );
  for (const packet of packets) await persistence.outgoingEnqueueCombi([{ clientId: 'dev' }], packet);
  const connect = () => {
    const client = { id: 'dev', clean: false };
    broker.clients.dev = client;
    return client;
  };
  return { h, persistence, broker, packets, connect };
}

t.test('a live message gets a free identifier and keeps it on every later connection, DUP set', async (t) => {
  const { persistence, broker, packets, connect } = await session(t, 2);
  const first = connect();
  t.same(persistence.claimOutgoing(first, broker.id, 1), { messageId: 1, resend: false });
  await persistence.outgoingUpdate(first, { ...packets[0], messageId: 1 });
  t.equal(persistence.claimOutgoing(first, broker.id, 1), undefined, 'not twice on one connection');

  const second = connect();
  const resent = await collect(persistence.outgoingResendStream(second));
  t.match(resent, [
    { payload: Buffer.from('m0'), messageId: 1, dup: true },
    { payload: Buffer.from('m1'), messageId: 2 },
  ]);
  t.notOk(resent[1]!.dup, 'a message never sent before is no duplicate');
  t.equal(persistence.claimOutgoing(second, broker.id, 2), undefined, 'the resend sent it: the live copy stays home');
  t.same(persistence.claimOutgoing(connect(), broker.id, 2), { messageId: 2, resend: true }, 'a third connection resends it');
  const stats = persistence.stats();
  t.equal(stats.repeatSendsAvoided, 2);
  t.equal(stats.resentMessages, 2);
});

t.test('identifiers the client still holds are never given to another message', async (t) => {
  const { persistence, broker, packets, connect } = await session(t, 3);
  const first = connect();
  // m0 is waiting for its PUBCOMP under 1, m1 was sent under 2.
  persistence.claimOutgoing(first, broker.id, 1);
  await persistence.outgoingUpdate(first, { ...packets[0], messageId: 1 });
  await persistence.outgoingUpdate(first, { cmd: 'pubrel', messageId: 1 });
  persistence.claimOutgoing(first, broker.id, 2);
  await persistence.outgoingUpdate(first, { ...packets[1], messageId: 2 });

  const resent = await collect(persistence.outgoingResendStream(connect()));
  t.match(resent, [
    { cmd: 'pubrel', messageId: 1 },
    { cmd: 'publish', payload: Buffer.from('m1'), messageId: 2, dup: true },
    { cmd: 'publish', payload: Buffer.from('m2'), messageId: 3 },
  ]);
  t.equal(resent[0]!.payload, undefined, 'past PUBREC the PUBLISH is not sent again');

  // m0 completes; its identifier is free again, but the search goes on from where it was.
  await persistence.outgoingClearMessageId(first, { messageId: 1 });
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev' }], publish(topic, 'm3', { qos: 2, brokerId: broker.id, brokerCounter: 4 }));
  t.same(persistence.claimOutgoing(connect(), broker.id, 4), { messageId: 4, resend: false });
});

t.test('the resend decides after reading: a live send meanwhile is not repeated', async (t) => {
  const { persistence, broker, connect } = await session(t, 2);
  const client = connect();
  const stream = persistence.outgoingResendStream(client);
  // The stream reads its first chunk only when consumed; the live delivery goes first.
  t.same(persistence.claimOutgoing(client, broker.id, 2), { messageId: 1, resend: false });
  const resent = await collect(stream);
  t.match(resent, [{ payload: Buffer.from('m0'), messageId: 2 }]);
  t.equal(resent.length, 1, 'm1 went live on this connection: not resent on it');
});

t.test('the resend a chunk at a time (the broker\'s): every message once, in order, across chunks read ahead; a live send meanwhile is not repeated', async (t) => {
  const { persistence, broker, connect } = await session(t, 300);
  t.equal(persistence.outgoingResendChunks(connect()), undefined, 'only for a connection of the broker it was set up with');
  const client = Object.assign(connect(), { broker });
  const chunks = persistence.outgoingResendChunks(client)!;
  const first = await chunks.next();
  t.ok(first !== undefined && first.length > 1 && first.length < 280, 'a chunk of several messages');
  // The next chunk is being read now; m280 goes live before it is taken, under the next free identifier.
  const live = persistence.claimOutgoing(client, broker.id, 281);
  t.same(live, { messageId: first!.length + 1, resend: false });
  const resent = [...first!];
  for (let chunk = await chunks.next(); chunk !== undefined; chunk = await chunks.next()) resent.push(...chunk);
  const expected = Array.from({ length: 300 }, (_, i) => `m${i}`).filter((payload) => payload !== 'm280');
  t.same(
    resent.map((packet) => String(packet.payload)),
    expected,
    'each queued message once, in queue order, without the one sent live',
  );
  const ids = resent.map((packet) => packet.messageId);
  t.equal(new Set([...ids, live!.messageId]).size, 300, 'no identifier given twice');
  t.ok(resent.every((packet) => packet.cmd === 'publish' && packet.dup !== true), 'never sent before: no DUP');
});

t.test('a second identifier offered for a queued message is refused; the first goes on the wire', async (t) => {
  const { h, persistence, broker, packets, connect } = await session(t, 1);
  const client = connect();
  persistence.claimOutgoing(client, broker.id, 1);
  await persistence.outgoingUpdate(client, { ...packets[0], messageId: 1 });
  const renumbered = { ...packets[0], messageId: 777 };
  await persistence.outgoingUpdate(connect(), renumbered);
  t.equal(renumbered.messageId, 1, 'the packet aedes writes next carries the first identifier');
  t.equal(persistence.stats().packetIdConflicts, 1, 'counted');
  t.equal(h.messages('queued message offered under a second packet identifier; the first is kept').length, 1, 'and logged');
});

// QoS 2: each identifier is stored before its PUBLISH leaves (a receiver that has it would
// otherwise get the message twice under two identifiers). QoS 1: kept in memory while the client
// is connected and stored by a planned stop, as for a live send (a crash may resend under a new
// identifier, a duplicate QoS 1 allows).
for (const qos of [2, 1] as const) {
  const title =
    qos === 2
      ? 'QoS 2 identifiers given by the resend are stored before the stream hands the messages on, and survive a restart'
      : 'QoS 1 identifiers given by the resend are kept in memory, and stored by a planned stop';
  t.test(title, async (t) => {
    const h = harness(t);
    const first = await h.open();
    const broker = fakeBroker();
    await first.setup(broker);
    for (let i = 0; i < 3; i++) {
      await first.outgoingEnqueueCombi([{ clientId: 'dev' }], publish(topic, `m${i}`, { qos, brokerId: broker.id, brokerCounter: i + 1 }));
    }
    broker.clients.dev = { id: 'dev' };
    const writes = first.stats().commit!.writes;
    const sent = await collect(first.outgoingResendStream({ id: 'dev', clean: false }));
    t.same(sent.map((p) => p.messageId), [1, 2, 3]);
    if (qos === 2) t.ok(first.stats().commit!.writes > writes, 'stored before the stream handed them on');
    else t.equal(first.stats().commit!.writes, writes, 'nothing written for them while the client is connected');
    await first.stop();

    const second = await h.open();
    await second.setup(fakeBroker());
    const again = await collect(second.outgoingResendStream({ id: 'dev', clean: false }));
    t.same(
      again.map((p) => [String(p.payload), p.messageId, p.dup]),
      [
        ['m0', 1, true],
        ['m1', 2, true],
        ['m2', 3, true],
      ],
      'after a planned restart each goes again under the identifier it went out with',
    );
  });
}

t.test('a QoS 1 message sent live keeps its identifier across a disconnect and a planned restart; an acknowledged one is gone', async (t) => {
  const h = harness(t);
  const first = await h.open();
  const broker = fakeBroker();
  await first.setup(broker);
  const packets = [0, 1, 2, 3].map((i) => publish(topic, `m${i}`, { brokerId: broker.id, brokerCounter: i + 1 }));
  for (const packet of packets) await first.outgoingEnqueueCombi([{ clientId: 'dev' }, { clientId: 'other' }], packet);
  const dev = { id: 'dev', clean: false };
  const other = { id: 'other', clean: false };
  broker.clients.dev = dev;
  broker.clients.other = other;
  // aedes' live QoS 1 deliveries: claim an identifier, record the packet as sent.
  for (const client of [dev, other]) {
    for (const [i, packet] of packets.entries()) {
      const claim = first.claimOutgoing(client, broker.id, i + 1);
      await first.outgoingUpdate(client, { ...packet, messageId: claim!.messageId });
    }
  }
  const acked = await first.outgoingClearMessageId(dev, { messageId: 1 });
  t.match(acked, { payload: Buffer.from('m0'), messageId: 1 }, 'the PUBACK gets the packet it acknowledges');
  t.same(
    (await collect(first.outgoingStream({ id: 'dev' }))).map((p) => p.messageId),
    [2, 3, 4],
    'the queue as stored shows the identifiers of messages in flight',
  );

  // dev goes away before the stop; other is still connected when it comes.
  delete broker.clients.dev;
  broker.emit('clientDisconnect', dev);
  await first.stop();

  const second = await h.open();
  await second.setup(fakeBroker());
  for (const clientId of ['dev', 'other']) {
    const again = await collect(second.outgoingResendStream({ id: clientId, clean: false }));
    t.same(
      again.map((p) => [String(p.payload), p.messageId, p.dup]),
      (clientId === 'dev' ? [1, 2, 3] : [0, 1, 2, 3]).map((i) => [`m${i}`, i + 1, true]),
      `${clientId}: after the restart each unacknowledged message goes again under the identifier it went out with`,
    );
  }
});
