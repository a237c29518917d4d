/**
 * The group commit: batching per turn, ordering, sync policies, failure
 * propagation, read-your-writes, against a scripted batch target (so each
 * batch's completion is under the test's control) and against real LevelDB.
 */
import t from 'tap';
import path from 'node:path';
import { Level } from 'level';
import { createGroupCommit, type BatchOp, type BatchTarget } from '../src/persistence/group-commit.js';
import { tempDir } from './helpers/daemon.js';
import { eventually } from './helpers/mqtt.js';

interface Call {
  keys: string[];
  /** Each op's value ('' for a delete). */
  values: string[];
  sync: boolean;
  resolve(): void;
  reject(error: Error): void;
}

/** A batch target whose batches finish only when the test says so. */
function scriptedTarget(): BatchTarget & { calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    batch(ops, options) {
      return new Promise<void>((resolve, reject) => {
        calls.push({
          keys: ops.map((op) => `${op.type}:${op.key.toString()}`),
          values: ops.map((op) => (op.type === 'put' ? op.value.toString() : '')),
          sync: options.sync,
          resolve,
          reject,
        });
      });
    },
  };
}

const put = (key: string, value = 'v'): BatchOp => ({ type: 'put', key: Buffer.from(key), value: Buffer.from(value) });
const del = (key: string): BatchOp => ({ type: 'del', key: Buffer.from(key) });
/**
 * The end of the next event-loop turn: batches scheduled in this one have
 * started (`always` at the end of this turn, `batch` and `os` a turn later).
 */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)));

t.test('writes made in one turn share one batch, in order', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch' });
  const writes = [commit.write([put('a')]), commit.write([put('b'), put('c')]), commit.write([del('d')])];
  t.equal(target.calls.length, 0, 'nothing is written before the turn ends');
  await nextTurn();
  t.equal(target.calls.length, 1, 'one batch');
  t.same(target.calls[0]!.keys, ['put:a', 'put:b', 'put:c', 'del:d']);
  t.equal(target.calls[0]!.sync, true, 'batch policy fsyncs');
  target.calls[0]!.resolve();
  await Promise.all(writes);
  t.match(commit.stats(), { writes: 3, ops: 4, batches: 1, syncs: 1, largestBatchOps: 4 });
});

t.test('writes arriving while a batch is written form the next batch', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch' });
  const first = commit.write([put('a')]);
  await nextTurn();
  t.equal(target.calls.length, 1);
  const second = [commit.write([put('b')]), commit.write([put('c')])];
  await nextTurn();
  t.equal(target.calls.length, 1, 'the next batch waits for the one in flight');
  let secondDone = false;
  void Promise.all(second).then(() => (secondDone = true));
  target.calls[0]!.resolve();
  await first;
  await eventually(() => target.calls.length === 2, 2000, 'the second batch');
  t.same(target.calls[1]!.keys, ['put:b', 'put:c'], 'everything that arrived meanwhile, in one batch');
  t.equal(secondDone, false, 'its writers wait for their own batch');
  target.calls[1]!.resolve();
  await Promise.all(second);
});

t.test('a write to a key the filling batch already writes replaces that op; one in flight is kept', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch' });
  const first = commit.write([put('m', 'stored')]);
  await nextTurn();
  t.same(target.calls[0]!.keys, ['put:m'], 'the first write is in flight');
  // While it is written: renumbered, then acknowledged, then another key.
  const later = [commit.write([put('m', 'renumbered')]), commit.write([put('x')]), commit.write([del('m')])];
  t.equal(commit.pending(Buffer.from('m')), null, 'readers see the last write to the key');
  target.calls[0]!.resolve();
  await first;
  await nextTurn();
  t.same(target.calls[1]!.keys, ['del:m', 'put:x'], 'one op for the key, where its first write in this batch was');
  target.calls[1]!.resolve();
  await Promise.all(later);
  t.equal(commit.pending(Buffer.from('m')), undefined, 'nothing left queued');
});

t.test('always: one turn\'s writes are one fsync\'d batch, never joined by a later turn', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'always' });
  // One turn: e.g. the stored QoS 2 packet, the retained message and the queued copies of one PUBLISH.
  const firstTurn = [commit.write([put('a')]), commit.write([put('b')])];
  t.equal(target.calls.length, 0, 'the batch waits for the end of its turn');
  await nextTurn();
  t.equal(target.calls.length, 1);
  t.same(target.calls[0]!.keys, ['put:a', 'put:b'], 'the writes of one turn are never split');
  const secondTurn = commit.write([put('c')]);
  await nextTurn();
  const thirdTurn = commit.write([put('d')]);
  await nextTurn();
  t.equal(target.calls.length, 1, 'never two in flight');
  target.calls[0]!.resolve();
  await Promise.all(firstTurn);
  await eventually(() => target.calls.length === 2, 2000, 'the second batch');
  t.same(target.calls[1]!.keys, ['put:c'], 'a sealed batch takes no writes of later turns (batch would merge c and d)');
  target.calls[1]!.resolve();
  await secondTurn;
  await eventually(() => target.calls.length === 3, 2000, 'the third batch');
  t.same(target.calls[2]!.keys, ['put:d']);
  t.ok(target.calls.every((call) => call.sync), 'every batch is fsynced');
  target.calls[2]!.resolve();
  await thirdTurn;
  t.match(commit.stats(), { batches: 3, syncs: 3 });
});

t.test('barrier() and whenWritten() follow the batch of the latest write', async (t) => {
  for (const policy of ['batch', 'always', 'os'] as const) {
    const target = scriptedTarget();
    const commit = createGroupCommit(target, { policy });
    await t.resolves(commit.barrier(), `${policy}: nothing written, nothing to wait for`);
    t.equal(commit.whenWritten(Buffer.from('a')), undefined);
    const write = commit.write([put('a')]);
    let barrierDone = false;
    const barrier = commit.barrier().then(() => (barrierDone = true));
    const written = commit.whenWritten(Buffer.from('a'));
    t.ok(written, 'a queued key has a batch');
    await nextTurn();
    t.equal(barrierDone, false, `${policy}: the barrier waits for the batch`);
    target.calls[0]!.resolve();
    await Promise.all([write, barrier, written]);
    t.equal(commit.whenWritten(Buffer.from('a')), undefined, 'a landed key has none');

    commit.write([put('b')]).catch(() => undefined);
    const failed = commit.barrier();
    await nextTurn();
    target.calls[1]!.reject(new Error('io'));
    await t.rejects(failed, { code: 'EDGEMQTT_STORE_WRITE_FAILED' }, `${policy}: the barrier reports a failed batch`);
  }
});

t.test('os: batched like batch, without fsync', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'os' });
  const writes = [commit.write([put('a')]), commit.write([put('b')])];
  await nextTurn();
  t.equal(target.calls.length, 1);
  t.equal(target.calls[0]!.sync, false);
  target.calls[0]!.resolve();
  await Promise.all(writes);
  t.match(commit.stats(), { batches: 1, syncs: 0 });
});

t.test('batch and os start a batch a turn after the one that filled it, with that turn\'s writes; always at the end of its own turn', async (t) => {
  /** One setImmediate: the end of the current turn. */
  const endOfTurn = () => new Promise<void>((resolve) => setImmediate(resolve));
  for (const policy of ['batch', 'os'] as const) {
    const target = scriptedTarget();
    const commit = createGroupCommit(target, { policy });
    const writes = [commit.write([put('a')])];
    await endOfTurn();
    t.equal(target.calls.length, 0, `${policy}: not started at the end of the turn that filled it`);
    writes.push(commit.write([put('b')]));
    await endOfTurn();
    t.same(target.calls.map((call) => call.keys), [['put:a', 'put:b']], `${policy}: started a turn later, with the next turn's write`);
    target.calls[0]!.resolve();
    await Promise.all(writes);
  }
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'always' });
  const first = commit.write([put('a')]);
  await endOfTurn();
  t.same(target.calls.map((call) => call.keys), [['put:a']], 'always: started at the end of its turn');
  const second = commit.write([put('b')]);
  target.calls[0]!.resolve();
  await first;
  await eventually(() => target.calls.length === 2, 2000, 'the second batch');
  t.same(target.calls.map((call) => call.keys), [['put:a'], ['put:b']], 'always: the next turn\'s write in a batch of its own');
  target.calls[1]!.resolve();
  await second;
});

t.test('onCommit hears each committed batch once, with its op count and write time in seconds', async (t) => {
  const target = scriptedTarget();
  let clock = 1000;
  const heard: Array<[number, number]> = [];
  const commit = createGroupCommit(target, { policy: 'batch', now: () => clock, onCommit: (ops, seconds) => heard.push([ops, seconds]) });
  const first = [commit.write([put('a'), put('b')]), commit.write([del('c')])];
  await nextTurn();
  clock += 250;
  target.calls[0]!.resolve();
  await Promise.all(first);
  t.same(heard, [[3, 0.25]], 'one call for a batch of three ops that took 250 ms');
  const failed = commit.write([put('d')]);
  await nextTurn();
  target.calls[1]!.reject(new Error('disk gone'));
  await t.rejects(failed);
  t.same(heard, [[3, 0.25]], 'a failed batch is not a commit');
});

t.test('a failing batch rejects every writer of that batch, and only those', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch' });
  const failing = [commit.write([put('a')]), commit.write([put('b')])];
  await nextTurn();
  const later = commit.write([put('c')]);
  const cause = new Error('disk full');
  target.calls[0]!.reject(cause);
  for (const write of failing) {
    await t.rejects(write, { code: 'EDGEMQTT_STORE_WRITE_FAILED', cause });
  }
  t.equal(commit.pending(Buffer.from('a')), undefined, 'failed writes leave the overlay');
  await eventually(() => target.calls.length === 2, 2000, 'the next batch');
  target.calls[1]!.resolve();
  await t.resolves(later, 'the next batch is still written');
  t.match(commit.stats(), { failedBatches: 1, batches: 2 });
});

t.test('a target that throws synchronously rejects the batch as well', async (t) => {
  const commit = createGroupCommit(
    {
      batch() {
        throw new Error('not open');
      },
    },
    { policy: 'batch' },
  );
  await t.rejects(commit.write([put('a')]), { code: 'EDGEMQTT_STORE_WRITE_FAILED' });
});

t.test('pending() shows queued writes until their batch lands', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch' });
  const key = Buffer.from('k');
  t.equal(commit.pending(key), undefined, 'no queued write');
  const first = commit.write([put('k', 'one')]);
  t.equal(commit.pending(key)?.toString(), 'one');
  await nextTurn();
  const second = commit.write([put('k', 'two')]);
  t.equal(commit.pending(key)?.toString(), 'two', 'the latest queued value wins');
  target.calls[0]!.resolve();
  await first;
  t.equal(commit.pending(key)?.toString(), 'two', 'an older batch landing does not hide a newer write');
  const third = commit.write([del('k')]);
  t.equal(commit.pending(key), null, 'a queued delete reads as null');
  await eventually(() => target.calls.length === 2, 2000, 'the second batch');
  target.calls[1]!.resolve();
  await Promise.all([second, third]);
  t.equal(commit.pending(key), undefined, 'nothing queued once all landed');
});

t.test('maxDelayMs lets writes of later turns join the batch', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch', maxDelayMs: 200 });
  const first = commit.write([put('a')]);
  await nextTurn();
  await nextTurn();
  t.equal(target.calls.length, 0, 'still collecting after two turns');
  const second = commit.write([put('b')]);
  await eventually(() => target.calls.length === 1, 5000, 'the delayed batch');
  t.same(target.calls[0]!.keys, ['put:a', 'put:b']);
  target.calls[0]!.resolve();
  await Promise.all([first, second]);
});

t.test('lazy writes alone wait for a write to join, then share its batch and fsync, in order', async (t) => {
  for (const policy of ['batch', 'always'] as const) {
    const target = scriptedTarget();
    const commit = createGroupCommit(target, { policy, lazyDelayMs: 60_000 });
    const lazy = [commit.writeLazily([del('a')]), commit.writeLazily([del('b')])];
    await nextTurn();
    await nextTurn();
    t.equal(target.calls.length, 0, `${policy}: no batch for lazy writes alone within their delay`);
    t.equal(commit.pending(Buffer.from('a')), undefined, 'not indexed: pending() does not see them');
    const durable = commit.write([put('c'), put('a')]);
    t.same(commit.pending(Buffer.from('a')), Buffer.from('v'), 'a later write to the same key is seen');
    await nextTurn();
    t.equal(target.calls.length, 1, `${policy}: the write takes them along at the end of its turn`);
    t.same(target.calls[0]!.keys, ['del:a', 'del:b', 'put:c', 'put:a'], 'in the order written: the later put after the delete');
    t.equal(target.calls[0]!.sync, true, 'with the write\'s fsync');
    target.calls[0]!.resolve();
    await Promise.all([...lazy, durable]);
    t.match(commit.stats(), { writes: 3, batches: 1, syncs: 1 });
    t.equal(commit.pending(Buffer.from('a')), undefined, 'landed');
  }
});

t.test('lazy writes alone go after lazyDelayMs, or at once with lazyMaxOps ops, fsync\'d as the policy says', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch', lazyDelayMs: 20, lazyMaxOps: 3 });
  const timed = commit.writeLazily([del('a')]);
  await eventually(() => target.calls.length === 1, 5000, 'the lazy batch after its delay');
  t.same(target.calls[0]!.keys, ['del:a']);
  // LevelDB fsyncs its current log only: an unsynced batch in a log it closes later could be lost in a power cut.
  t.equal(target.calls[0]!.sync, true, 'with fsync under batch');
  target.calls[0]!.resolve();
  await timed;

  const full = [commit.writeLazily([del('b'), del('c')]), commit.writeLazily([del('d')])];
  await nextTurn();
  t.equal(target.calls.length, 2, 'started once it holds lazyMaxOps ops');
  t.same(target.calls[1]!.keys, ['del:b', 'del:c', 'del:d']);
  t.equal(target.calls[1]!.sync, true);
  target.calls[1]!.resolve();
  await Promise.all(full);
  t.match(commit.stats(), { batches: 2, syncs: 2 });

  const os = scriptedTarget();
  const unsynced = createGroupCommit(os, { policy: 'os', lazyDelayMs: 20 });
  const osWrite = unsynced.writeLazily([del('a')]);
  await eventually(() => os.calls.length === 1, 5000, 'the lazy batch under os');
  t.equal(os.calls[0]!.sync, false, 'without fsync under os');
  os.calls[0]!.resolve();
  await osWrite;
});

t.test('a write to a key after a lazy delete of it in the same batch lands after the delete, not in the place of an earlier write', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch', lazyDelayMs: 60_000 });
  const first = commit.write([put('k', 'v1')]);
  const deleted = commit.writeLazily([del('k')]);
  const again = commit.write([put('k', 'v2'), put('other')]);
  t.same(commit.pending(Buffer.from('k')), Buffer.from('v2'), 'pending() answers the last write');
  const replaced = commit.write([put('k', 'v3')]);
  await nextTurn();
  t.same(target.calls[0]!.keys, ['put:k', 'del:k', 'put:k', 'put:other'], 'the write before the delete kept before it');
  t.same(target.calls[0]!.values, ['v1', '', 'v3', 'v'], 'the write after it replaced in place by a later one');
  target.calls[0]!.resolve();
  await Promise.all([first, deleted, again, replaced]);
});

t.test('lazy writes join a batch already filling; barrier(), flush() and close() do not wait out their delay', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch', lazyDelayMs: 60_000 });
  const durable = commit.write([put('a')]);
  const joined = commit.writeLazily([del('b')]);
  await nextTurn();
  t.same(target.calls[0]!.keys, ['put:a', 'del:b'], 'in the filling batch');
  t.equal(target.calls[0]!.sync, true, 'with its fsync');
  target.calls[0]!.resolve();
  await Promise.all([durable, joined]);

  const waited = commit.writeLazily([del('c')]);
  const barrier = commit.barrier();
  await nextTurn();
  t.same(target.calls[1]!.keys, ['del:c'], 'a barrier starts them at the end of the turn');
  t.equal(target.calls[1]!.sync, true, 'with fsync: the barrier waits for them');
  target.calls[1]!.resolve();
  await Promise.all([waited, barrier]);

  const flushed = commit.writeLazily([del('d')]);
  const flushing = commit.flush();
  await eventually(() => target.calls.length === 3, 5000, 'the batch flush() started');
  t.same(target.calls[2]!.keys, ['del:d']);
  t.equal(target.calls[2]!.sync, true);
  target.calls[2]!.resolve();
  await Promise.all([flushed, flushing]);

  const closed = commit.writeLazily([del('e')]);
  const closing = commit.close();
  await eventually(() => target.calls.length === 4, 5000, 'the batch close() started');
  t.same(target.calls[3]!.keys, ['del:e']);
  target.calls[3]!.resolve();
  await Promise.all([closed, closing]);
  await t.rejects(commit.writeLazily([del('f')]), { code: 'EDGEMQTT_STORE_CLOSED' });
});

t.test('close() waits for queued writes and refuses new ones', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch' });
  const write = commit.write([put('a')]);
  let closed = false;
  const closing = commit.close().then(() => (closed = true));
  await t.rejects(commit.write([put('b')]), { code: 'EDGEMQTT_STORE_CLOSED' });
  await eventually(() => target.calls.length === 1, 2000, 'the queued batch');
  t.equal(closed, false, 'close waits for the batch in flight');
  target.calls[0]!.resolve();
  await write;
  await closing;
  t.equal(closed, true);
  await t.resolves(commit.close(), 'idempotent');
});

t.test('flush() resolves once earlier writes settled, failed ones included', async (t) => {
  const target = scriptedTarget();
  const commit = createGroupCommit(target, { policy: 'batch' });
  await t.resolves(commit.flush(), 'nothing to wait for');
  const write = commit.write([put('a')]);
  write.catch(() => undefined);
  let flushed = false;
  const flushing = commit.flush().then(() => (flushed = true));
  await eventually(() => target.calls.length === 1, 2000, 'the batch');
  t.equal(flushed, false);
  target.calls[0]!.reject(new Error('io'));
  await flushing;
  t.equal(flushed, true);
});

t.test('on LevelDB: concurrent writers share fsyncs and every write lands', async (t) => {
  const db = new Level<Buffer, Buffer>(path.join(tempDir(t), 'db'), { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  t.teardown(() => db.close());
  const commit = createGroupCommit(db, { policy: 'batch' });
  const writers = 200;
  await Promise.all(
    Array.from({ length: writers }, (_, i) => commit.write([put(`key-${String(i).padStart(3, '0')}`, `value-${i}`)])),
  );
  const stats = commit.stats();
  t.equal(stats.writes, writers);
  t.ok(stats.batches < writers, `${writers} writes took ${stats.batches} fsync'd batches`);
  t.equal(stats.syncs, stats.batches);
  t.equal(stats.commitMs.count, stats.batches, 'each commit is timed');
  t.equal(
    stats.commitMs.buckets.reduce((sum, n) => sum + n, 0),
    stats.batches,
    'the latency histogram counts every batch',
  );
  const values = await db.values().all();
  t.equal(values.length, writers);
  t.equal((await db.get(Buffer.from('key-123')))?.toString(), 'value-123');
  await commit.close();
});
