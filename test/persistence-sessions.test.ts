/**
 * The store's session records with MQTT 5 Session Expiry Intervals, on the
 * persistence alone (a clock the test moves): the record shape written
 * before them still reads, and keeps the configured expiry; a 3.1.1 session
 * is still written in that shape; an MQTT 5 session expires after its own
 * interval, downtime not counted, across a reopen.
 */
import t from 'tap';
import { Level } from 'level';
import { decodeSession, encodeTime, sessionKey } from '../src/persistence/keys.js';
import { collect, fakeBroker, harness, publish } from './helpers/store.js';

async function withRawStore<T>(dir: string, use: (db: Level<Buffer, Buffer>) => Promise<T>): Promise<T> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  try {
    return await use(db);
  } finally {
    await db.close();
  }
}

t.test('a session record of the shape written before MQTT 5 sessions still reads and keeps the configured expiry; 3.1.1 sessions are still written in it', async (t) => {
  const h = harness(t);
  const first = await h.open({ sessionExpirySec: 100 });
  await first.addSubscriptions({ id: 'old' }, [{ topic: 'o/#', qos: 1 }]);
  await first.addSubscriptions({ id: 'legacy' }, [{ topic: 'l/#', qos: 1 }]);
  await first.stop();
  // The old codec: the last-seen time alone, 6 bytes (keys.ts encodeTime).
  await withRawStore(h.dir, async (db) => {
    await db.put(sessionKey('old'), encodeTime(h.clock.now - 50_000));
    t.equal((await db.get(sessionKey('legacy')))?.length, 6, 'a 3.1.1 session is written as before');
  });

  const second = await h.open({ sessionExpirySec: 100 });
  t.match(second.stats(), { sessions: 2, decodeErrors: 0 }, 'both read back');
  h.clock.now += 40_000;
  t.equal(await second.sweepExpiredSessions(), 0, 'not yet: 90 s of 100');
  h.clock.now += 20_000;
  t.equal(await second.sweepExpiredSessions(), 1, 'the old record expires after the configured 100 s');
  t.same(await second.subscriptionsByClient({ id: 'old' }), []);
  t.equal((await second.subscriptionsByClient({ id: 'legacy' })).length, 1);
});

t.test("an MQTT 5 session expires after its own interval, which its record keeps across a reopen; downtime does not count", async (t) => {
  const h = harness(t);
  const first = await h.open({ sessionExpirySec: 3600, expiryCheckIntervalSec: 1 });
  const broker = fakeBroker();
  await first.setup(broker);
  broker.clients.v5 = {};
  broker.emit('client', { id: 'v5' });
  first.sessionExpiry('v5', 30);
  await first.addSubscriptions({ id: 'v5' }, [{ topic: 'v/#', qos: 1 }]);
  delete broker.clients.v5;
  broker.emit('clientDisconnect', { id: 'v5' });
  h.clock.now += 20_000;
  t.equal(await first.sweepExpiredSessions(), 0, '20 s of 30');
  await first.stop();
  await withRawStore(h.dir, async (db) => {
    const record = decodeSession((await db.get(sessionKey('v5')))!);
    t.equal(record.expirySec, 30, 'the interval is in the session record');
  });

  // Stopped for an hour: that does not count.
  h.clock.now += 3_600_000;
  const second = await h.open({ sessionExpirySec: 3600, expiryCheckIntervalSec: 1 });
  t.equal(second.stats().sessions, 1, 'present after the reopen');
  h.clock.now += 5_000;
  t.equal(await second.sweepExpiredSessions(), 0, '25 s of 30 while running');
  h.clock.now += 6_000;
  t.equal(await second.sweepExpiredSessions(), 1, 'expired after its 30 s, not the configured hour');
});

t.test('an MQTT 5 session with Session Expiry 0 expires on start when the broker died while it was connected', async (t) => {
  const h = harness(t);
  const first = await h.open({ sessionExpirySec: 3600 });
  const broker = fakeBroker();
  await first.setup(broker);
  broker.clients.zero = {};
  broker.emit('client', { id: 'zero' });
  first.sessionExpiry('zero', 0);
  await first.addSubscriptions({ id: 'zero' }, [{ topic: 'z/#', qos: 1 }]);
  // No disconnect: the process stops with the client connected.
  await first.stop();
  const second = await h.open({ sessionExpirySec: 3600 });
  t.match(second.stats(), { sessions: 0, sessionsExpired: 1 }, 'its session ended with the connection [MQTT-3.1.2-23]');
});

t.test('a session that ends with its connection is dropped in one write: subscriptions, queue and QoS 2 state, nothing read or numbered', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  const broker = fakeBroker();
  await persistence.setup(broker);
  await persistence.addSubscriptions({ id: 'ends' }, [{ topic: 'e/#', qos: 1 }]);
  for (let i = 0; i < 5; i++) await persistence.outgoingEnqueueCombi([{ clientId: 'ends' }], publish('e/x', `m${i}`));
  await persistence.incomingStorePacket({ id: 'ends' }, publish('in', 'q2', { qos: 2, messageId: 7 }));
  await persistence.addSubscriptions({ id: 'stays' }, [{ topic: 's/#', qos: 1 }]);
  const before = persistence.stats().commit!.writes;
  await persistence.endSession('ends');
  const after = persistence.stats();
  t.equal(after.commit!.writes - before, 1, 'one write');
  t.match(after, { sessions: 1, queuedEntries: 0, incomingPackets: 0, subscriptions: 1, resentMessages: 0, sessionsExpired: 0 });
  t.same(await persistence.subscriptionsByClient({ id: 'ends' }), []);
  t.same(await collect(persistence.outgoingStream({ id: 'ends' })), []);
});
