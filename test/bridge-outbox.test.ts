/**
 * The bridge outbox on a real store: a QoS 1/2 message's outbox record is in
 * the same durable batch as its session records (the one its PUBACK or
 * PUBREC waits for); limits and overflow policies; what survives a restart.
 */
import t from 'tap';
import type { BatchOp } from '../src/persistence/index.js';
import { Outbox, outboxKey, RECENT_MAX_BYTES } from '../src/bridge/outbox.js';
import { outgoingKey } from '../src/persistence/keys.js';
import { eventually } from './helpers/mqtt.js';
import { capturingLogger, fakeBroker, harness, publish } from './helpers/store.js';

const limits = { maxMessages: 0, maxBytes: 0, overflow: 'drop-oldest' as const };

t.test('the outbox record commits in the batch of the PUBLISH it rides on, which its acknowledgement waits for', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  const broker = fakeBroker();
  await persistence.setup(broker);
  const outbox = new Outbox(persistence, limits, { logger: capturingLogger().logger });
  await outbox.recover();
  persistence.addPublishTap((packet) => outbox.add(packet));

  // Hold LevelDB's batches: what is in one commits together or not at all.
  const db = persistence.db as unknown as { batch(ops: BatchOp[], options: unknown): Promise<void> };
  const write = db.batch.bind(db);
  const held: Array<{ ops: BatchOp[]; release(): void }> = [];
  db.batch = (ops, options) => new Promise((resolve, reject) => held.push({ ops, release: () => void write(ops, options).then(resolve, reject) }));

  const packet = publish('plant/a', 'x', { qos: 1, brokerId: broker.id, brokerCounter: 1 });
  let acknowledged = false;
  const stored = persistence.outgoingEnqueueCombi([{ clientId: 'dev' }], packet).then(() => (acknowledged = true));
  await eventually(() => held.length === 1, 2000, 'the batch');
  const keys = held[0]!.ops.map((op) => op.key.toString('hex'));
  const seq = outbox.head;
  t.ok(keys.includes(outboxKey(seq).toString('hex')), 'the outbox record is in the batch');
  t.ok(keys.some((key) => key.startsWith(outgoingKey('dev', 0).subarray(0, -8).toString('hex'))), 'with the subscriber queue entry');
  t.equal(held.length, 1, 'one batch');
  t.notOk(acknowledged, 'nothing is acknowledged while the batch is held');
  held[0]!.release();
  db.batch = write;
  await stored;
  t.equal((await outbox.read(seq, 10)).length, 1, 'once committed, the sender can read it');
});

t.test('limits: drop-oldest keeps the newest; drop-new keeps the oldest; both count', async (t) => {
  for (const overflow of ['drop-oldest', 'drop-new'] as const) {
    const h = harness(t);
    const persistence = await h.open();
    const outbox = new Outbox(persistence, { maxMessages: 3, maxBytes: 0, overflow }, { logger: capturingLogger().logger });
    await outbox.recover();
    for (let i = 0; i < 5; i++) await persistence.commit.write(outbox.add(publish('plant/a', String(i), { qos: 1 })));
    const kept = (await outbox.read(0, 10)).map((record) => record.payload.toString());
    t.same(kept, overflow === 'drop-oldest' ? ['2', '3', '4'] : ['0', '1', '2'], overflow);
    const stats = outbox.stats();
    t.equal(stats.depth, 3);
    t.equal(overflow === 'drop-oldest' ? stats.droppedOldest : stats.droppedNew, 2);
  }
});

t.test('after a restart: what waits is there in order, and sequences go on without reuse', async (t) => {
  const h = harness(t);
  const first = await h.open();
  const outbox = new Outbox(first, limits, { logger: capturingLogger().logger });
  await outbox.recover();
  const seqs: number[] = [];
  for (let i = 0; i < 6; i++) {
    seqs.push(outbox.head + outbox.depth);
    await first.commit.write(outbox.add(publish('plant/a', String(i), { qos: 1 })));
  }
  // Acknowledged out of order, and the newest two: only 0, 2, 3 wait.
  for (const i of [1, 4, 5]) outbox.remove(seqs[i]!);
  await first.stop();

  const second = await h.open();
  const again = new Outbox(second, limits, { logger: capturingLogger().logger });
  await again.recover();
  t.equal(again.depth, 3);
  t.same((await again.read(0, 10)).map((r) => [r.seq, r.payload.toString()]), [[seqs[0], '0'], [seqs[2], '2'], [seqs[3], '3']]);
  await second.commit.write(again.add(publish('plant/a', 'new', { qos: 1 })));
  const [last] = (await again.read(seqs[3]! + 1, 10)).map((r) => r.seq);
  t.equal(last, seqs[5]! + 1, 'the next sequence follows the highest ever given, not the highest still waiting');
});

/** Counts the store iterators the outbox opens: a read served from memory opens none. */
function countIterators(persistence: { db: unknown }): { readonly opened: number } {
  const db = persistence.db as { iterator(options: unknown): unknown };
  const iterator = db.iterator.bind(db);
  const counter = { opened: 0 };
  db.iterator = (options) => {
    counter.opened++;
    return iterator(options);
  };
  return counter;
}

/** A fresh store and an outbox on it, recovered (empty); `head` is its first sequence. */
async function freshOutbox(t: Parameters<typeof harness>[0]) {
  const h = harness(t);
  const persistence = await h.open();
  const outbox = new Outbox(persistence, limits, { logger: capturingLogger().logger });
  await outbox.recover();
  return { h, persistence, outbox, head: outbox.head };
}

t.test('the sender reads entries whose batch is on disk from memory, the same records the store holds', async (t) => {
  const { h, persistence: first, outbox, head } = await freshOutbox(t);
  for (let i = 0; i < 4; i++) await first.commit.write(outbox.add(publish(`plant/${i}`, String(i), { qos: 1, retain: i === 2 })));
  // The outbox learns that a batch is on disk one promise reaction after the writer does.
  await eventually(async () => (await outbox.read(head, 10)).length === 4, 2000, 'the four entries');
  const iterators = countIterators(first);
  const fromMemory = await outbox.read(head, 10);
  t.equal(iterators.opened, 0, 'no store iterator for entries in memory');
  await first.stop();

  const second = await h.open();
  const recovered = new Outbox(second, limits, { logger: capturingLogger().logger });
  await recovered.recover();
  const fromStore = await recovered.read(head, 10);
  const view = (records: typeof fromStore) => records.map((r) => [r.seq, r.topic, r.payload.toString(), r.qos, r.retain, r.time]);
  t.same(view(fromMemory), view(fromStore), 'what memory gave is what the store holds');
  t.same(view(fromMemory).map((r) => r[2]), ['0', '1', '2', '3']);
});

t.test('an entry whose batch failed is never read, from memory or from the store', async (t) => {
  const { persistence, outbox, head } = await freshOutbox(t);
  await persistence.commit.write(outbox.add(publish('plant/a', 'kept', { qos: 1 })));
  const db = persistence.db as unknown as { batch(ops: BatchOp[], options: unknown): Promise<void> };
  const write = db.batch.bind(db);
  db.batch = () => Promise.reject(new Error('No space left on device'));
  await t.rejects(persistence.commit.write(outbox.add(publish('plant/a', 'lost', { qos: 1 }))));
  db.batch = write;
  await eventually(() => outbox.stats().failedWrites === 1, 2000, 'the failed entry to be forgotten');
  t.same((await outbox.read(head, 10)).map((r) => r.payload.toString()), ['kept']);
  t.equal(outbox.depth, 1);
  // The store takes writes again once it has reopened (write-failures.ts); what comes then is read after 'kept'.
  await eventually(
    () => persistence.commit.write(outbox.add(publish('plant/a', 'after', { qos: 1 }))).then(() => true, () => false),
    10_000,
    'the store to take writes again',
  );
  await eventually(async () => (await outbox.read(head, 10)).length === 2, 2000, 'the entry written after');
  t.same((await outbox.read(head, 10)).map((r) => r.payload.toString()), ['kept', 'after']);
});

t.test('beyond its memory bound the outbox reads on from the store, in order', async (t) => {
  const { persistence, outbox, head } = await freshOutbox(t);
  // 1 MiB each: RECENT_MAX_BYTES keeps the first few only.
  const count = Math.ceil(RECENT_MAX_BYTES / (1024 * 1024)) + 3;
  for (let i = 0; i < count; i++) {
    await persistence.commit.write(outbox.add({ ...publish('plant/big', ''), payload: Buffer.alloc(1024 * 1024, i) }));
  }
  await eventually(async () => (await outbox.read(head, count)).length === count, 2000, 'every entry');
  const iterators = countIterators(persistence);
  const records = await outbox.read(head, count);
  t.same(records.map((r) => r.payload[0]), Array.from({ length: count }, (_, i) => i), 'every entry once, in order');
  t.ok(records.every((r) => r.payload.length === 1024 * 1024));
  t.equal(iterators.opened, 1, 'the first ones from memory, the rest from one store iterator');
  const fromStore = await outbox.read(records.at(-1)!.seq, 1);
  t.equal(fromStore[0]?.payload[0], count - 1);
  t.equal(iterators.opened, 2, 'an entry past the bound comes from the store');
});

t.test('an entry kept in memory holds its own bytes, not the shared buffer it was encoded in', async (t) => {
  const { persistence, outbox, head } = await freshOutbox(t);
  for (let i = 0; i < 3; i++) await persistence.commit.write(outbox.add(publish('plant/a', String(i), { qos: 1 })));
  await eventually(async () => (await outbox.read(head, 10)).length === 3, 2000, 'the entries');
  const iterators = countIterators(persistence);
  const records = await outbox.read(head, 10);
  t.equal(iterators.opened, 0, 'read from memory');
  // A record's payload is a view of the kept value: its ArrayBuffer is what the entry keeps alive.
  // Kept as encoded, that would be msgpackr's slab (8 KiB or more) for every entry kept.
  for (const record of records) t.ok(record.payload.buffer.byteLength < 256, `entry ${record.payload.toString()} keeps ${record.payload.buffer.byteLength} bytes`);
});
