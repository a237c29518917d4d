/**
 * The LevelDB persistence beyond the conformance suite: what survives a
 * restart, what a bad store does at start-up, decode failures, queue limits,
 * session expiry, retained lookups that do not scan, and aedes on top of it.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Aedes } from 'aedes';
import { Level } from 'level';
import { outgoingKey, retainedKey, subscriptionKey, willKey } from '../src/persistence/keys.js';
import { capturingLogger, collect, fakeBroker, harness, publish } from './helpers/store.js';
import { createLevelPersistence } from '../src/persistence/index.js';
import { eventually, openClient } from './helpers/mqtt.js';

const payloads = (packets: Array<Record<string, unknown>>) => packets.map((p) => String(p.payload));

/** Writes raw records into a closed store, bypassing the persistence. */
async function writeRaw(dir: string, records: Array<[Buffer, Buffer]>): Promise<void> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  await db.batch(records.map(([key, value]) => ({ type: 'put' as const, key, value })));
  await db.close();
}

t.test('the subscribers of a topic follow every change of subscriptions, though answers are remembered per topic', async (t) => {
  const h = harness(t);
  const store = await h.open();
  await store.setup(fakeBroker());
  const clientsOf = async (topic: string) => (await store.subscriptionsByTopic(topic)).map((sub) => `${sub.clientId} ${sub.topic} ${sub.qos}`).sort();
  await store.addSubscriptions({ id: 'dev1' }, [{ topic: 'a/+', qos: 1 }]);
  t.same(await clientsOf('a/b'), ['dev1 a/+ 1']);
  t.same(await clientsOf('a/b'), ['dev1 a/+ 1'], 'asked again');
  await store.addSubscriptions({ id: 'dev2' }, [{ topic: 'a/b', qos: 2 }]);
  t.same(await clientsOf('a/b'), ['dev1 a/+ 1', 'dev2 a/b 2'], 'a new subscription');
  await store.addSubscriptions({ id: 'dev1' }, [{ topic: 'a/+', qos: 0 }]);
  t.same(await clientsOf('a/b'), ['dev2 a/b 2'], 'one lowered to QoS 0 (nothing is queued for it)');
  await store.addSubscriptions({ id: 'dev1' }, [{ topic: 'a/+', qos: 1, subscriptionIdentifier: 5 } as never]);
  t.match(await store.subscriptionsByTopic('a/c'), [{ clientId: 'dev1', subscriptionIdentifier: 5 }], 'raised again, with its identifier');
  await store.removeSubscriptions({ id: 'dev2' }, ['a/b']);
  t.same(await clientsOf('a/b'), ['dev1 a/+ 1'], 'one removed');
  await store.cleanSubscriptions({ id: 'dev1' });
  t.same(await clientsOf('a/b'), [], 'all removed');
  await store.addSubscriptions({ id: 'dev3' }, [{ topic: '#', qos: 1 }]);
  const answer = await store.subscriptionsByTopic('x');
  t.ok(Object.isFrozen(answer) && Object.isFrozen(answer[0]), 'a shared answer cannot be changed by one caller for the next');
});

t.test('everything survives a stop and start on the same directory', async (t) => {
  const h = harness(t);
  const first = await h.open();
  const broker = fakeBroker();
  await first.setup(broker);

  await first.storeRetained(publish('home/temp', '21.5', { retain: true, qos: 0 }));
  await first.storeRetained(publish('home/gone', 'x', { retain: true, qos: 0 }));
  await first.storeRetained(publish('home/gone', '', { retain: true, qos: 0 }));
  await first.addSubscriptions({ id: 'dev1' }, [
    { topic: 'cmd/#', qos: 1 },
    { topic: 'status', qos: 0 },
  ]);
  const sent = [1, 2, 3].map((n) => publish('cmd/go', `m${n}`, { brokerId: broker.id, brokerCounter: 100 + n }));
  for (const packet of sent) await first.outgoingEnqueueCombi([{ clientId: 'dev1' }], packet);
  // m1 went out as packet id 7; m2 went out as 8 and was PUBRECed (now a PUBREL).
  await first.outgoingUpdate({ id: 'dev1' }, { ...sent[0], messageId: 7 });
  await first.outgoingUpdate({ id: 'dev1' }, { ...sent[1], messageId: 8 });
  await first.outgoingUpdate({ id: 'dev1' }, { cmd: 'pubrel', messageId: 8 });
  await first.incomingStorePacket({ id: 'sensor' }, publish('data', 'qos2', { qos: 2, messageId: 42 }));
  await first.putWill({ id: 'plc' }, { topic: 'plc/status', payload: Buffer.from('offline'), qos: 1, retain: true });
  await first.stop();

  const second = await h.open();
  const restarted = fakeBroker();
  await second.setup(restarted);

  t.same(payloads(await collect(second.createRetainedStream('#'))), ['21.5'], 'retained, deletion included');
  t.same(await second.subscriptionsByClient({ id: 'dev1' }), [
    { topic: 'cmd/#', qos: 1, rh: undefined, rap: undefined, nl: undefined },
    { topic: 'status', qos: 0, rh: undefined, rap: undefined, nl: undefined },
  ]);
  t.match(await second.subscriptionsByTopic('cmd/go'), [{ clientId: 'dev1', topic: 'cmd/#', qos: 1 }]);
  t.same(await second.countOffline(), { subsCount: 1, clientsCount: 1 });

  const queue = await collect(second.outgoingStream({ id: 'dev1' }));
  t.match(queue, [
    { cmd: 'publish', payload: Buffer.from('m1'), messageId: 7 },
    { cmd: 'pubrel', messageId: 8 },
    { cmd: 'publish', payload: Buffer.from('m3'), messageId: undefined },
  ]);
  t.equal(queue.length, 3, 'the queue, in order, with packet identifiers');
  t.ok((restarted.counter ?? 0) >= 103, 'brokerCounter moves past the queued entries of this broker id');

  t.match(await second.incomingGetPacket({ id: 'sensor' }, { messageId: 42 }), { payload: Buffer.from('qos2'), messageId: 42 });
  t.match(await second.getWill({ id: 'plc' }), { topic: 'plc/status', clientId: 'plc', brokerId: 'broker-1' });
  t.match(await collect(second.streamWill({ 'broker-2': Date.now() })), [{ clientId: 'plc' }], 'will of a dead broker');

  await second.outgoingClearMessageId({ id: 'dev1' }, { messageId: 7 });
  await second.incomingDelPacket({ id: 'sensor' }, { messageId: 42 });
  await second.stop();
  const third = await h.open();
  t.equal((await collect(third.outgoingStream({ id: 'dev1' }))).length, 2, 'acknowledged entries stay gone');
  await t.rejects(third.incomingGetPacket({ id: 'sensor' }, { messageId: 42 }), /no such packet/);
});

t.test('a will stored while the previous one is being deleted survives', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  await persistence.setup(fakeBroker());
  await persistence.putWill({ id: 'plc' }, { topic: 'will', payload: Buffer.from('old'), qos: 0, retain: false });
  await persistence.stop();
  // From disk, so the delete has to read before it can return the old will.
  const reopened = await h.open();
  await reopened.setup(fakeBroker());
  // aedes deletes a closing client's will without waiting while the client
  // may already be reconnecting with a new one.
  const deleting = reopened.delWill({ id: 'plc' });
  const storing = reopened.putWill({ id: 'plc' }, { topic: 'will', payload: Buffer.from('new'), qos: 0, retain: false });
  t.match(await deleting, { payload: Buffer.from('old') }, 'the delete returns the will it removed');
  await storing;
  t.match(await reopened.getWill({ id: 'plc' }), { payload: Buffer.from('new') });
  await reopened.stop();
  const third = await h.open();
  t.match(await third.getWill({ id: 'plc' }), { payload: Buffer.from('new') }, 'and on disk');
});

t.test('a second instance on a locked directory fails with EDGEMQTT_STORE_LOCKED', async (t) => {
  const h = harness(t);
  const first = await h.open();
  const second = h.create();
  await t.rejects(second.start(), { code: 'EDGEMQTT_STORE_LOCKED', name: 'StoreLockedError' });
  t.equal(second.state, 'failed');
  await first.storeRetained(publish('still/works', 'yes', { retain: true }));
  t.equal((await collect(first.createRetainedStream('still/works'))).length, 1, 'the first instance is unharmed');
});

t.test('a directory locked by another process fails with EDGEMQTT_STORE_LOCKED', async (t) => {
  const h = harness(t);
  await (await h.open()).stop();
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      "import { Level } from 'level'; const db = new Level(process.argv[1]); await db.open(); console.log('open'); setInterval(() => {}, 1000);",
      h.dir,
    ],
    { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.teardown(() => void child.kill('SIGKILL'));
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  await eventually(() => output.includes('open'), 10_000, 'the other process to open the store');
  await t.rejects(h.create().start(), { code: 'EDGEMQTT_STORE_LOCKED' });
});

t.test('garbage in CURRENT fails with EDGEMQTT_STORE_CORRUPT', async (t) => {
  const h = harness(t);
  await (await h.open()).stop();
  writeFileSync(path.join(h.dir, 'CURRENT'), 'not a manifest name');
  const persistence = h.create();
  await t.rejects(persistence.start(), { code: 'EDGEMQTT_STORE_CORRUPT', name: 'StoreCorruptError' });
  t.equal(persistence.state, 'failed');
});

t.test('a missing CURRENT next to store files fails instead of starting empty', async (t) => {
  const h = harness(t);
  const first = await h.open();
  await first.storeRetained(publish('a', 'b', { retain: true }));
  await first.stop();
  unlinkSync(path.join(h.dir, 'CURRENT'));
  await t.rejects(h.create().start(), { code: 'EDGEMQTT_STORE_CORRUPT', message: /CURRENT is missing/ });
  t.notOk(readdirSync(h.dir).includes('CURRENT'), 'no fresh store was created over the old files');
});

t.test('a garbage table file fails with EDGEMQTT_STORE_CORRUPT during recovery', async (t) => {
  const h = harness(t);
  const first = await h.open();
  // Enough data that LevelDB writes a table file (.ldb) on the next open.
  const payload = 'x'.repeat(1000);
  await Promise.all(
    Array.from({ length: 6000 }, (_, i) => first.storeRetained(publish(`t/${i}`, `${payload}${i}`, { retain: true }))),
  );
  await first.stop();
  await (await h.open()).stop();
  const tables = readdirSync(h.dir).filter((name) => name.endsWith('.ldb'));
  t.ok(tables.length > 0, 'a table file exists');
  const originals = tables.map((table) => readFileSync(path.join(h.dir, table)));
  // Same size, garbage bytes: LevelDB finds no table footer.
  tables.forEach((table, i) => writeFileSync(path.join(h.dir, table), Buffer.alloc(originals[i]!.length, 0x5a)));
  await t.rejects(h.create().start(), { code: 'EDGEMQTT_STORE_CORRUPT' });
  // Truncated: LevelDB reports an I/O error reading past the end. Either way
  // start-up stops with a store error rather than serving a partial store.
  tables.forEach((table, i) => writeFileSync(path.join(h.dir, table), originals[i]!.subarray(0, 4096)));
  const error = await h.create().start().then(
    () => undefined,
    (rejection: unknown) => rejection as { code?: string },
  );
  t.match(error?.code, /^EDGEMQTT_STORE_(CORRUPT|UNREADABLE)$/, `truncated table: ${error?.code}`);
});

t.test('a path that is not a directory fails with EDGEMQTT_STORE_UNREADABLE', async (t) => {
  const h = harness(t);
  writeFileSync(h.dir, 'a file where the store should be');
  await t.rejects(h.create().start(), { code: 'EDGEMQTT_STORE_UNREADABLE' });
});

t.test("another program's LevelDB fails with EDGEMQTT_STORE_INCOMPATIBLE", async (t) => {
  const h = harness(t);
  await writeRaw(h.dir, [[Buffer.from('!retained!hello'), Buffer.from('{}')]]);
  await t.rejects(h.create().start(), { code: 'EDGEMQTT_STORE_INCOMPATIBLE' });
});

t.test('records that fail to decode are logged, counted, skipped and quarantined', async (t) => {
  const h = harness(t);
  const first = await h.open();
  await first.addSubscriptions({ id: 'dev1' }, [{ topic: 'good', qos: 1 }]);
  await first.outgoingEnqueueCombi([{ clientId: 'dev1' }], publish('good', 'kept'));
  await first.storeRetained(publish('r/good', 'fine', { retain: true }));
  await first.stop();

  const garbage = Buffer.from([0xc1, 0xff, 0x00, 0x13]);
  await writeRaw(h.dir, [
    [subscriptionKey('dev1', 'bad'), garbage],
    [outgoingKey('dev1', 999_999), garbage],
    [willKey('dev9'), Buffer.from('not msgpack at all')],
    [retainedKey('r/bad'), garbage],
  ]);

  const second = await h.open();
  t.equal(second.stats().decodeErrors, 4, 'subscription, queue entry, will and retained message fail at recovery');
  t.equal(h.messages('skipping a record that fails to decode').length, 4, 'each is logged');
  t.same((await second.subscriptionsByClient({ id: 'dev1' })).map((s) => s.topic), ['good']);
  t.same(payloads(await collect(second.outgoingStream({ id: 'dev1' }))), ['kept']);
  t.equal(await second.getWill({ id: 'dev9' }), undefined);
  // Retained messages are held in memory, decoded once at recovery.
  t.same(payloads(await collect(second.createRetainedStream('r/+'))), ['fine']);
  t.equal(second.stats().decodeErrors, 4, 'nothing more fails at lookup time');
  await second.stop();

  const third = await h.open();
  t.equal(third.stats().decodeErrors, 0, 'quarantined records are out of the way');
  t.equal(third.stats().quarantinedRecords, 4, 'and kept for inspection');
  t.same(payloads(await collect(third.createRetainedStream('r/+'))), ['fine']);
});

t.test('an offline queue over its message limit drops the oldest messages', async (t) => {
  const h = harness(t);
  const persistence = await h.open({ maxQueuedMessagesPerClient: 3 });
  const broker = fakeBroker();
  await persistence.setup(broker);
  for (let i = 0; i < 5; i++) {
    await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }, { clientId: 'dev2' }], publish('t', `m${i}`, { brokerId: broker.id, brokerCounter: i + 1 }));
  }
  t.same(payloads(await collect(persistence.outgoingStream({ id: 'dev1' }))), ['m2', 'm3', 'm4']);
  t.same(payloads(await collect(persistence.outgoingStream({ id: 'dev2' }))), ['m2', 'm3', 'm4'], 'per client');
  t.match(persistence.stats(), { queueDroppedMessages: 4, queueOverflows: 4, queuedEntries: 6 });
  const warnings = h.messages('offline queue full: dropped the oldest messages');
  t.equal(warnings.length, 2, 'logged once per client, not per message');
  t.match(warnings[0], { clientId: 'dev1', dropped: 1, maxMessages: 3 });

  h.clock.now += 10_000;
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], publish('t', 'm5'));
  t.equal(h.messages('offline queue full: dropped the oldest messages').length, 3, 'logged again after 10 s');

  await persistence.stop();
  const restarted = await h.open({ maxQueuedMessagesPerClient: 2 });
  t.same(payloads(await collect(restarted.outgoingStream({ id: 'dev1' }))), ['m4', 'm5'], 'a lowered limit applies at start');
});

t.test('an offline queue over its byte limit drops the oldest messages', async (t) => {
  const h = harness(t);
  const probe = await h.open();
  await probe.outgoingEnqueueCombi([{ clientId: 'size' }], publish('t', 'x'.repeat(100)));
  const entryBytes = probe.stats().queuedBytes;
  await probe.stop();

  const persistence = await h.open({ maxQueuedBytesPerClient: entryBytes * 2 + 10 });
  for (let i = 0; i < 4; i++) {
    await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], publish('t', `${i}`.repeat(100)));
  }
  t.same(payloads(await collect(persistence.outgoingStream({ id: 'dev1' }))), ['2'.repeat(100), '3'.repeat(100)]);
  t.equal(persistence.stats().queueDroppedMessages, 2);
});

t.test('outgoingQueued says false only while nothing is stored for the client (the connect path skips the resend then)', async (t) => {
  const h = harness(t);
  const unstarted = h.create();
  t.equal(unstarted.outgoingQueued('dev1'), true, 'not running yet: it cannot tell');
  const persistence = await h.open();
  const broker = fakeBroker();
  await persistence.setup(broker);
  t.equal(persistence.outgoingQueued('dev1'), false, 'nothing queued');
  const first = publish('t', 'm0', { qos: 2, brokerId: broker.id, brokerCounter: 1 });
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], first);
  t.equal(persistence.outgoingQueued('dev1'), true, 'a queued message');
  t.equal(persistence.outgoingQueued('dev2'), false, "another client's queue is not this one's");
  await persistence.outgoingUpdate({ id: 'dev1' }, { ...first, messageId: 1 });
  await persistence.outgoingUpdate({ id: 'dev1' }, { cmd: 'pubrel', messageId: 1 });
  t.equal(persistence.outgoingQueued('dev1'), true, 'only a PUBREL');
  await persistence.outgoingClearMessageId({ id: 'dev1' }, { cmd: 'pubcomp', messageId: 1 });
  t.equal(persistence.outgoingQueued('dev1'), false, 'after the last acknowledgement');
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], publish('t', 'm1', { brokerId: broker.id, brokerCounter: 2 }));
  t.equal(persistence.outgoingQueued('dev1'), true, 'queued again');
});

t.test('queue limits spare messages in flight to online clients and PUBREL entries', async (t) => {
  const h = harness(t);
  const persistence = await h.open({ maxQueuedMessagesPerClient: 2 });
  const broker = fakeBroker();
  await persistence.setup(broker);
  const first = publish('t', 'm0', { qos: 2, brokerId: broker.id, brokerCounter: 1 });
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], first);
  await persistence.outgoingUpdate({ id: 'dev1' }, { ...first, messageId: 1 });
  await persistence.outgoingUpdate({ id: 'dev1' }, { cmd: 'pubrel', messageId: 1 });

  broker.clients.dev1 = {};
  const message = (i: number) => publish('t', `m${i}`, { brokerId: broker.id, brokerCounter: i + 1 });
  for (let i = 1; i <= 4; i++) await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], message(i));
  let queue = await collect(persistence.outgoingStream({ id: 'dev1' }));
  t.match(queue, [{ cmd: 'pubrel', messageId: 1 }, { payload: Buffer.from('m3') }, { payload: Buffer.from('m4') }]);
  t.equal(queue.length, 3, 'online too, the oldest messages not sent yet are dropped; the PUBREL stays');
  t.equal(persistence.stats().queueDroppedMessages, 2);

  // aedes sends what the stream gave it: m3 and m4 get packet identifiers.
  await persistence.outgoingUpdate({ id: 'dev1' }, { ...message(3), messageId: 2 });
  await persistence.outgoingUpdate({ id: 'dev1' }, { ...message(4), messageId: 3 });
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], message(5));
  queue = await collect(persistence.outgoingStream({ id: 'dev1' }));
  t.match(queue, [{ cmd: 'pubrel' }, { messageId: 2 }, { messageId: 3 }], 'messages in flight are never dropped: the unsent one went');
  t.equal(queue.length, 3);
  t.equal(persistence.claimOutgoing({ id: 'dev1' }, broker.id, 6), undefined, 'the dropped message is not to be sent');
  t.same(persistence.claimOutgoing({ id: 'dev1' }, broker.id, 5), { messageId: 3, resend: true }, 'one still queued is, under the identifier it had');
  t.equal(persistence.stats().queueDroppedMessages, 3);

  delete broker.clients.dev1;
  broker.emit('clientDisconnect', { id: 'dev1', clean: false });
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev1' }], message(6));
  queue = await collect(persistence.outgoingStream({ id: 'dev1' }));
  t.match(queue, [{ cmd: 'pubrel', messageId: 1 }, { payload: Buffer.from('m4') }, { payload: Buffer.from('m6') }]);
  t.equal(queue.length, 3, 'offline, sent messages are dropped too; the PUBREL stays');
});

t.test('the expiry waits for beforeSessionsExpire; a session whose client came back meanwhile stays', async (t) => {
  const h = harness(t);
  const persistence = await h.open({ sessionExpirySec: 100 });
  const broker = fakeBroker();
  await persistence.setup(broker);
  for (const id of ['gone', 'back']) {
    await persistence.addSubscriptions({ id }, [{ topic: `to/${id}`, qos: 1 }]);
    await persistence.outgoingEnqueueCombi([{ clientId: id }], publish(`to/${id}`, 'queued'));
  }
  h.clock.now += 110_000;
  const told: string[][] = [];
  persistence.beforeSessionsExpire(async (clientIds) => {
    told.push([...clientIds].sort());
    t.same(payloads(await collect(persistence.outgoingStream({ id: 'gone' }))), ['queued'], 'the session is whole while the handler runs');
    // Its client reconnects meanwhile.
    broker.clients.back = {};
  });
  // A second sweep asked for during the first's wait runs after it, and answers for itself.
  t.same(await Promise.all([persistence.sweepExpiredSessions(), persistence.sweepExpiredSessions()]), [1, 0], 'one session expired, by the first sweep');
  t.same(told, [['back', 'gone']], 'the handler was told of both, once');
  t.same(await persistence.subscriptionsByClient({ id: 'gone' }), []);
  t.equal((await persistence.subscriptionsByClient({ id: 'back' })).length, 1, 'the client that came back keeps its session');
  t.match(persistence.stats(), { sessionsExpired: 1 });
});

t.test('abandoned persistent sessions expire; connected ones do not', async (t) => {
  const h = harness(t);
  const persistence = await h.open({ sessionExpirySec: 100 });
  const broker = fakeBroker();
  await persistence.setup(broker);
  for (const id of ['gone', 'online', 'recent']) {
    await persistence.addSubscriptions({ id }, [{ topic: `to/${id}`, qos: 1 }]);
    await persistence.outgoingEnqueueCombi([{ clientId: id }], publish(`to/${id}`, 'queued'));
  }
  await persistence.incomingStorePacket({ id: 'gone' }, publish('x', 'q2', { qos: 2, messageId: 9 }));
  broker.clients.online = {};
  h.clock.now += 60_000;
  broker.emit('clientDisconnect', { id: 'recent', clean: false });
  h.clock.now += 50_000;

  t.equal(await persistence.sweepExpiredSessions(), 1);
  t.same(await persistence.subscriptionsByClient({ id: 'gone' }), []);
  t.same(await collect(persistence.outgoingStream({ id: 'gone' })), []);
  await t.rejects(persistence.incomingGetPacket({ id: 'gone' }, { messageId: 9 }), /no such packet/);
  t.equal((await persistence.subscriptionsByClient({ id: 'online' })).length, 1, 'a connected client never expires');
  t.equal((await persistence.subscriptionsByClient({ id: 'recent' })).length, 1, 'the clock restarts at disconnect');
  t.match(persistence.stats(), { sessionsExpired: 1, sessions: 2, subscriptions: 2 });
  t.match(h.messages('expired an abandoned persistent session'), [{ clientId: 'gone', idleSec: 110 }]);

  await persistence.stop();
  const restarted = await h.open({ sessionExpirySec: 100 });
  t.same(await restarted.subscriptionsByClient({ id: 'gone' }), [], 'expiry is durable');
});

t.test('time the broker was stopped does not count towards expiry', async (t) => {
  const h = harness(t);
  const first = await h.open({ sessionExpirySec: 100 });
  await first.addSubscriptions({ id: 'dev1' }, [{ topic: 'a', qos: 1 }]);
  h.clock.now += 50_000;
  await first.stop();

  h.clock.now += 30 * 24 * 3600 * 1000;
  const second = await h.open({ sessionExpirySec: 100 });
  t.equal((await second.subscriptionsByClient({ id: 'dev1' })).length, 1, 'survives a month of downtime');
  h.clock.now += 49_000;
  t.equal(await second.sweepExpiredSessions(), 0, '99 s of idle time so far');
  h.clock.now += 2_000;
  t.equal(await second.sweepExpiredSessions(), 1, 'expires once it was idle 100 s while the broker ran');
});

t.test('a wildcard lookup visits only matching branches of the retained index', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  const noise = 5000;
  // Concurrent, as many publishers would be: they share group commits.
  await Promise.all(
    Array.from({ length: noise }, (_, i) => persistence.storeRetained(publish(`noise/${i}/value`, `${i}`, { retain: true }))),
  );
  for (const topic of ['room/1/temp', 'room/2/temp', 'room/2/humidity', '$SYS/broker/uptime']) {
    await persistence.storeRetained(publish(topic, topic, { retain: true }));
  }
  t.ok(persistence.stats().commit!.batches < noise / 10, `${noise} retained writes took ${persistence.stats().commit!.batches} batches`);

  // Count every read the store is asked for while the lookups run.
  const db = persistence.db as unknown as Record<'get' | 'getMany' | 'iterator', (...args: unknown[]) => unknown>;
  let storeReads = 0;
  for (const method of ['get', 'getMany', 'iterator'] as const) {
    const original = db[method].bind(db);
    db[method] = (...args: unknown[]) => {
      storeReads++;
      return original(...args);
    };
  }
  const before = persistence.stats();
  const found = payloads(await collect(persistence.createRetainedStream('room/+/temp')));
  const after = persistence.stats();
  t.same(found.sort(), ['room/1/temp', 'room/2/temp']);
  t.equal(storeReads, 0, 'retained messages are served from memory: no store reads');
  const visited = after.retainedNodesVisited - before.retainedNodesVisited;
  t.ok(visited <= 8, `visited ${visited} index nodes among ${noise + 4} retained topics`);

  t.same(payloads(await collect(persistence.createRetainedStream('+/broker/uptime'))), [], 'wildcards skip $ topics [MQTT-4.7.2-1]');
  t.same(payloads(await collect(persistence.createRetainedStream('$SYS/#'))), ['$SYS/broker/uptime']);
  t.same(payloads(await collect(persistence.createRetainedStream('room/2/#'))).sort(), ['room/2/humidity', 'room/2/temp']);
  t.equal((await collect(persistence.createRetainedStream('#'))).length, noise + 3, '# matches all but $ topics');
  t.equal(storeReads, 0, 'still no store reads');
});

t.test('recovery logs progress and its duration', async (t) => {
  const h = harness(t);
  const first = await h.open();
  await Promise.all(
    Array.from({ length: 2500 }, (_, i) => first.storeRetained(publish(`p/${i}`, 'v', { retain: true }))),
  );
  await first.stop();
  await h.open({ recoveryProgressEvery: 1000 });
  const progress = h.messages('recovering store');
  t.ok(progress.length >= 2, `${progress.length} progress lines`);
  t.match(progress[0], { records: 1000, namespace: 'retained', elapsedMs: Number });
  const done = h.messages('store recovered');
  t.match(done.at(-1), { durationMs: Number, retained: 2500 });
  t.ok((done.at(-1)!.records as number) >= 2500);
});

t.test('aedes on the persistence delivers a queued QoS 1 message after both restart', async (t) => {
  const h = harness(t);
  const { logger } = capturingLogger();
  const storePath = path.join(h.dir);

  async function startBroker(): Promise<{ url: string; stop(): Promise<void> }> {
    const persistence = createLevelPersistence({ path: storePath }, { logger });
    await persistence.start();
    const aedes = await Aedes.createBroker({ id: 'edge-1', persistence });
    const server = net.createServer((socket) => aedes.handle(socket));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    let stopped: Promise<void> | undefined;
    const stop = () =>
      (stopped ??= (async () => {
        server.close();
        await new Promise<void>((resolve) => aedes.close(() => resolve()));
        await persistence.stop();
      })());
    t.teardown(stop);
    return { url: `mqtt://127.0.0.1:${port}`, stop };
  }

  const first = await startBroker();
  const subscriber = await openClient(t, first.url, { clientId: 'dashboard', clean: false });
  await subscriber.client.subscribeAsync('plant/+/alarm', { qos: 1 });
  await subscriber.client.endAsync();
  const publisher = await openClient(t, first.url, { clientId: 'plc-1' });
  await publisher.client.publishAsync('plant/7/alarm', 'overheat', { qos: 1 });
  await publisher.client.endAsync();
  await first.stop();

  const second = await startBroker();
  const resumed = await openClient(t, second.url, { clientId: 'dashboard', clean: false });
  t.equal(resumed.connack.sessionPresent, true, 'the session was restored');
  const [message] = await resumed.log.waitForCount(1);
  t.match(message, { topic: 'plant/7/alarm', payload: 'overheat', packet: { qos: 1 } });
  await resumed.client.endAsync();
  await second.stop();
  const stats = await (async () => {
    const persistence = createLevelPersistence({ path: storePath }, { logger });
    t.teardown(() => persistence.stop());
    await persistence.start();
    return persistence.stats();
  })();
  t.equal(stats.queuedEntries, 0, 'the acknowledged message left the queue');
});

t.test('a large retained message (kept as a buffer) and a small one (kept as a string) read back whole, as stored and as recovered', async (t) => {
  const h = harness(t);
  const first = await h.open();
  await first.setup(fakeBroker());
  const large = Buffer.alloc(64 * 1024);
  for (let i = 0; i < large.length; i++) large[i] = (i * 7) & 0xff;
  await first.storeRetained({ ...publish('big/image', ''), payload: large, retain: true, qos: 1 });
  await first.storeRetained(publish('big/state', 'on', { retain: true, qos: 0 }));
  const read = async (persistence: typeof first) =>
    Object.fromEntries(((await collect(persistence.createRetainedStreamCombi(['big/#']))) as Array<{ topic: string; payload: Buffer }>).map((p) => [p.topic, p.payload]));
  const stored = await read(first);
  t.ok(stored['big/image']?.equals(large), 'the 64 KiB payload, every byte');
  t.equal(stored['big/state']?.toString(), 'on');
  await first.stop();
  const second = await h.open();
  await second.setup(fakeBroker());
  const recovered = await read(second);
  t.ok(recovered['big/image']?.equals(large), 'recovered: the 64 KiB payload, every byte');
  t.equal(recovered['big/state']?.toString(), 'on', 'recovered: the small one');
  t.equal(second.stats().retainedBytes, first.stats().retainedBytes, 'the same bytes counted');
});

t.test('retained messages are kept off ArrayBuffers, as stored and as recovered: a record costs its bytes', async (t) => {
  // A Buffer a record is an ArrayBuffer with its backing store and bookkeeping (~250 bytes over
  // the data), and a small one copied into Node's shared 8 KiB pool keeps the whole slab alive
  // while the records around it are replaced. Neither shows in memoryUsage().arrayBuffers when
  // the records are kept as strings.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const COUNT = 5_000;
  const PAYLOAD = 'p'.repeat(100);
  const BOUND = COUNT * 20;
  // V8 gives an ArrayBuffer's memory back when it sweeps, which may come after gc() returns:
  // the lowest figure over a few collections.
  const arrayBuffers = async () => {
    let lowest = Infinity;
    for (let i = 0; i < 5; i++) {
      gc();
      lowest = Math.min(lowest, process.memoryUsage().arrayBuffers);
      await new Promise((resolve) => setImmediate(resolve));
    }
    return lowest;
  };
  /** arrayBuffers' growth over `base`, once it is under the bound or after 2 s of collections. */
  const growthOver = async (base: number) => {
    let growth = Infinity;
    await eventually(async () => (growth = (await arrayBuffers()) - base) < BOUND, 2_000).catch(() => undefined);
    return growth;
  };
  const h = harness(t);
  const first = await h.open();
  await first.setup(fakeBroker());
  await first.storeRetained(publish('warm/up', PAYLOAD, { retain: true, qos: 0 }));
  const before = await arrayBuffers();
  for (let i = 0; i < COUNT; i++) await first.storeRetained(publish(`room/${i}`, PAYLOAD, { retain: true, qos: 0 }));
  // A durable write after them: the batches holding the retained records are written.
  await first.addSubscriptions({ id: 'flush' }, [{ topic: 'flush/#', qos: 1 }]);
  const stored = await growthOver(before);
  t.ok(stored < BOUND, `${COUNT} records of ~${PAYLOAD.length + 30} bytes stored: arrayBuffers grew by ${stored} bytes`);
  await first.stop();

  const beforeRecovery = await arrayBuffers();
  const second = await h.open();
  const recovered = await growthOver(beforeRecovery);
  t.ok(recovered < BOUND, `the same recovered at start: arrayBuffers grew by ${recovered} bytes`);
  await second.setup(fakeBroker());
  const packets = (await collect(second.createRetainedStreamCombi(['room/#']))) as Array<{ topic: string; payload: Buffer }>;
  t.equal(packets.length, COUNT, 'every one is read back');
  t.ok(packets.every((packet) => packet.payload.toString() === PAYLOAD), 'with its payload');
});
