/**
 * The persistence's building blocks on their own: key layout, record codec,
 * retained topic tree, outgoing queue index.
 */
import t from 'tap';
import {
  decodePacket,
  decodePacketGeneral,
  decodeSubscription,
  encodePacket,
  encodeQueued,
  encodeRetained,
  packRetained,
  encodeSubscription,
  messageExpiryOf,
  keptRecord,
  keptRecordBytes,
  packetData,
  queuedPacket,
  RecordDecodeError,
} from '../src/persistence/codec.js';
import {
  componentPrefix,
  incomingKey,
  KeyFormatError,
  outgoingKey,
  parseIncomingKey,
  parseOutgoingKey,
  parseSubscriptionKey,
  prefixRange,
  retainedKey,
  subscriptionKey,
} from '../src/persistence/keys.js';
import { ClientQueue, QueueCache, type QueueEntry } from '../src/persistence/outgoing-queues.js';
import { unpackQueued } from '../src/persistence/queued-unpack.js';
import { TopicTree } from '../src/persistence/topic-tree.js';
import { decodeStored, type StoredPacketSource } from '../src/persistence/stored-packets.js';
import type { BatchOp } from '../src/persistence/group-commit.js';

t.test('keys: one client range never contains another client', async (t) => {
  const { gte, lt } = prefixRange(subscriptionKey('abc', ''));
  const inside = (key: Buffer) => Buffer.compare(key, gte) >= 0 && Buffer.compare(key, lt) < 0;
  t.ok(inside(subscriptionKey('abc', 'any/topic')));
  t.notOk(inside(subscriptionKey('abcd', 'x')), 'a longer id sharing the prefix is outside');
  t.notOk(inside(subscriptionKey('ab', 'cx')), 'a shorter id whose topic continues the bytes is outside');
  t.same(parseSubscriptionKey(subscriptionKey('dev/ü', 'a/b')), { clientId: 'dev/ü', topic: 'a/b' });
});

t.test('keys: queue sequence numbers sort numerically and round-trip', async (t) => {
  const seqs = [1, 255, 256, 65_536, 2 ** 32, 2 ** 32 + 1, Number.MAX_SAFE_INTEGER];
  const keys = seqs.map((seq) => outgoingKey('c', seq));
  const sorted = [...keys].sort(Buffer.compare);
  t.same(sorted, keys, 'byte order is numeric order');
  t.same(keys.map((key) => parseOutgoingKey(key).seq), seqs);
  t.same(parseIncomingKey(incomingKey('c', 65_535)), { clientId: 'c', messageId: 65_535 });
  t.throws(() => incomingKey('c', 65_536), RangeError);
  t.throws(() => parseOutgoingKey(Buffer.from([0x4f, 0x00, 0x09, 0x61])), KeyFormatError);
  t.throws(() => componentPrefix('Bad Name'), RangeError);
  t.not(componentPrefix('bridge')[0], subscriptionKey('a', 'b')[0], 'components live in their own namespace');
});

t.test('codec: packets come back with exactly the keys they had', async (t) => {
  const packet = {
    cmd: 'publish',
    topic: 'a/b',
    payload: Buffer.from([0, 1, 2, 255]),
    qos: 1,
    retain: false,
    dup: false,
    messageId: undefined,
    brokerId: 'b',
    brokerCounter: 2 ** 40,
    id: 'an extra field',
    writeCallback: () => undefined,
  };
  const decoded = decodePacket(encodePacket(packet));
  const { writeCallback: _dropped, ...data } = packet;
  t.same(Object.keys(decoded).sort(), Object.keys(data).sort(), 'functions are not stored; extras and undefined are');
  t.same(decoded, data);
  t.ok(Buffer.isBuffer(decoded.payload));
  t.equal(decodePacket(encodePacket({ cmd: 'publish', payload: 'text' })).payload, 'text', 'a string payload stays a string');
  const hostile = decodePacket(encodePacket(JSON.parse('{"cmd":"publish","__proto__":{"polluted":true}}') as Record<string, unknown>));
  t.equal(({} as Record<string, unknown>).polluted, undefined);
  t.equal(Object.getPrototypeOf(hostile), Object.prototype);
  t.same(decodeSubscription(encodeSubscription({ qos: 2, rh: 0, rap: true, nl: false })), { qos: 2, rh: 0, rap: true, nl: false });
});

t.test('codec: records of the wrong kind or shape fail to decode', async (t) => {
  t.throws(() => decodePacket(encodeSubscription({ qos: 1 })), RecordDecodeError);
  t.throws(() => decodeSubscription(encodePacket({ cmd: 'publish' })), RecordDecodeError);
  t.throws(() => decodePacket(Buffer.from('garbage')), RecordDecodeError);
  t.throws(() => decodePacket(Buffer.alloc(0)), RecordDecodeError);
  t.throws(() => decodePacket(encodePacket({ cmd: 'publish', topic: 42 })), RecordDecodeError);
});

t.test('topic tree: MQTT 3.1.1 matching', async (t) => {
  const tree = new TopicTree<string>();
  for (const topic of ['a', 'a/b', 'a/b/c', 'a//c', '/x', 'b/b', '$SYS/up']) tree.add(topic, `value of ${topic}`);
  const match = (filter: string) => {
    const found: string[] = [];
    tree.match(filter, (topic) => found.push(topic));
    return found.sort();
  };
  t.same(match('a/#'), ['a', 'a//c', 'a/b', 'a/b/c'], '# matches the parent level too');
  t.same(match('a/+/c'), ['a//c', 'a/b/c'], '+ matches an empty level');
  t.same(match('+/b'), ['a/b', 'b/b']);
  t.same(match('+/x'), ['/x'], 'a leading / makes an empty first level');
  t.same(match('#'), ['/x', 'a', 'a//c', 'a/b', 'a/b/c', 'b/b'], 'no $ topics for a leading wildcard');
  t.same(match('$SYS/#'), ['$SYS/up']);
  t.same(match('a/b'), ['a/b']);
  t.same(match('nope/#'), []);
  t.equal(tree.size, 7);
  t.equal(tree.add('a/b', 'replaced'), false, 'adding twice replaces the value');
  t.equal(tree.get('a/b'), 'replaced');
  t.equal(tree.size, 7, 'and does not count twice');
  t.equal(tree.replace('a/b', 'again'), 'replaced', 'replace returns the value it replaces');
  t.equal(tree.replace('a/b/d', 'new'), undefined, 'and undefined for a new topic');
  t.equal(tree.size, 8);
  t.equal(tree.take('a/b/d'), 'new', 'take removes a topic and returns its value');
  t.equal(tree.take('a/b/d'), undefined, 'and undefined once it is gone');
  t.equal(tree.size, 7);
  tree.replace('a/b', 'replaced');
  const pairs: string[] = [];
  tree.match('a/b', (topic, value) => pairs.push(`${topic}=${value}`));
  t.same(pairs, ['a/b=replaced'], 'matches carry their values');
  t.equal(tree.delete('a/b/c'), true);
  t.equal(tree.delete('a/b/c'), false);
  t.ok(tree.has('a/b'), 'deleting a child keeps the parent topic');
  t.same(match('a/#'), ['a', 'a//c', 'a/b']);
  t.equal(tree.size, 6);
});

t.test('topic tree: a level goes from one child to many and back, matching the same throughout', async (t) => {
  const tree = new TopicTree<number>();
  const match = (filter: string) => {
    const found: string[] = [];
    tree.match(filter, (topic, value) => found.push(`${topic}=${value}`));
    return found.sort();
  };
  tree.add('d/1/state', 1);
  t.same(match('d/+/state'), ['d/1/state=1'], 'one child');
  tree.add('d/2/state', 2);
  tree.add('d/3/state', 3);
  tree.add('d/1/battery', 4);
  t.same(match('d/+/state'), ['d/1/state=1', 'd/2/state=2', 'd/3/state=3'], 'many children');
  t.same(match('d/1/#'), ['d/1/battery=4', 'd/1/state=1'], 'a second child under a first');
  t.equal(tree.delete('d/2/state'), true);
  t.equal(tree.delete('d/3/state'), true);
  t.same(match('d/#'), ['d/1/battery=4', 'd/1/state=1'], 'back to one child, its own still there');
  t.equal(tree.delete('d/1/state'), true);
  t.same(match('d/+/+'), ['d/1/battery=4'], 'back to one grandchild');
  t.equal(tree.get('d/1/state'), undefined);
  t.equal(tree.replace('d/1/state', 5), undefined, 'added again');
  t.same(match('#'), ['d/1/battery=4', 'd/1/state=5']);
  t.equal(tree.delete('d/1/battery'), true);
  t.equal(tree.delete('d/1/state'), true);
  t.equal(tree.size, 0);
  t.same(match('#'), [], 'empty again');
  t.equal(tree.delete('d/1/state'), false, 'a pruned branch is gone');
  // $ topics at the root are left out of a leading wildcard, in either form of the root's children.
  tree.add('$SYS/x', 1);
  t.same(match('+/x'), [], 'a lone $ child');
  tree.add('a/x', 2);
  t.same(match('+/x'), ['a/x=2'], 'a $ child among others');
});

t.test('a record that fails to decode is logged and quarantined under its key, which a retained lookup makes only then', async (t) => {
  const warnings: Array<Record<string, unknown>> = [];
  const writes: BatchOp[][] = [];
  const store = {
    log: { warn: (fields: Record<string, unknown>) => void warnings.push(fields) },
    counters: { decodeErrors: 0, quarantinedRecords: 0 },
    pending: () => undefined,
    write: async (ops: readonly BatchOp[]) => void writes.push([...ops]),
  } as unknown as StoredPacketSource;
  let keysMade = 0;
  const keyOf = (topic: string) => () => {
    keysMade++;
    return retainedKey(topic);
  };
  const good = encodeRetained({ ...EDGE_BASE, retain: true });
  t.equal(decodeStored(store, keyOf('r/good'), good, undefined)?.topic, 'a/b', 'a good record decodes');
  t.equal(keysMade, 0, 'without making its key');
  let forgotten = 0;
  const garbage = Buffer.from([0xc1, 0xff]);
  t.equal(decodeStored(store, keyOf('r/bad'), garbage, () => forgotten++), undefined, 'a bad one is skipped');
  t.equal(keysMade, 1, 'its key made once');
  t.equal(forgotten, 1, 'dropped from memory');
  t.equal(warnings[0]?.['key'], retainedKey('r/bad').toString('hex'), 'logged with its key');
  t.ok(writes[0]?.some((op) => op.type === 'del' && Buffer.compare(op.key, retainedKey('r/bad')) === 0), 'moved out of its place');
  t.same(store.counters, { decodeErrors: 1, quarantinedRecords: 1 });
});

/** A queued PUBLISH of broker b1 as the queue index holds it. */
function queuedPublish(seq: number, messageId: number | undefined): QueueEntry {
  return { seq, cmd: 'publish', brokerId: 'b1', brokerCounter: seq, messageId, bytes: 10, value: undefined };
}

t.test('queue index: each PUBREL replaces its own PUBLISH, with others in flight', async (t) => {
  const queue = new ClientQueue();
  const publish = queuedPublish;
  const first = publish(1, 7);
  const second = publish(2, 8);
  queue.append(first);
  queue.append(second);
  const pubrel = (messageId: number) => ({ cmd: 'pubrel', messageId });
  const rel = { cmd: 'pubrel', brokerId: undefined, brokerCounter: undefined, bytes: 4 };
  t.equal(queue.findForUpdate(pubrel(7)), first);
  queue.update(first, { ...rel, messageId: 7 });
  // The reference persistence matches the queued PUBREL here (same undefined
  // broker id and counter) and leaves the second PUBLISH to be sent again.
  t.equal(queue.findForUpdate(pubrel(8)), second, 'the second PUBREC finds the second PUBLISH, not the first PUBREL');
  queue.update(second, { ...rel, messageId: 8 });
  t.equal(queue.findForUpdate(pubrel(7)), first, 'a repeated PUBREC finds its own PUBREL');
  t.equal(queue.findForClear(8), second);
});

t.test('queue index: entries of several brokers are found by broker and counter, as the queue empties and fills again', async (t) => {
  const queue = new ClientQueue();
  const of = (seq: number, brokerId: unknown, brokerCounter: number): QueueEntry => ({ ...queuedPublish(seq, undefined), brokerId, brokerCounter });
  for (let round = 0; round < 2; round++) {
    const base = round * 10;
    const own = of(base + 1, 'b1', 5);
    const bridged = of(base + 2, 'b2', 5);
    const orphan = of(base + 3, undefined, 5);
    for (const entry of [own, bridged, orphan]) queue.append(entry);
    t.equal(queue.findByCounter('b1', 5), own, `round ${round}: the first broker's`);
    t.equal(queue.findByCounter('b2', 5), bridged, `round ${round}: another broker's, same counter`);
    t.equal(queue.findByCounter(undefined, 5), orphan, `round ${round}: no broker id`);
    t.equal(queue.findByCounter('b3', 5), undefined, `round ${round}: an unknown broker`);
    queue.number(own, 40 + round);
    t.equal(queue.findForClear(40 + round), own, `round ${round}: numbered, found by its packet identifier`);
    queue.number(own, 50 + round);
    t.equal(queue.findForClear(40 + round), undefined, `round ${round}: renumbered, the old identifier is free`);
    t.equal(queue.findForClear(50 + round), own);
    for (const entry of [bridged, own, orphan]) queue.remove(entry);
    t.equal(queue.size, 0);
    t.equal(queue.findByCounter('b1', 5), undefined, `round ${round}: gone once removed`);
    t.equal(queue.findByCounter('b2', 5), undefined);
    t.equal(queue.findForClear(50 + round), undefined);
  }
});

t.test('queue cache: records held within the limit, as copies of their own, a shared copy counted once, given back when the last entry holding it changes or leaves', async (t) => {
  const cache = new QueueCache();
  const cost = (record: Buffer) => record.length + QueueCache.OVERHEAD_BYTES;
  // Two records from Node's shared pool, as the store's encoder makes them.
  const record = Buffer.from('a queued record');
  const other = Buffer.from('another queued record');
  cache.limit = cost(record) + cost(other) - 1;
  const queue = new ClientQueue(cache);
  const entries = [1, 2, 3].map((seq) => queuedPublish(seq, undefined));
  for (const entry of entries) queue.append(entry);
  queue.cache(entries[0]!, record);
  queue.cache(entries[1]!, record);
  queue.cache(entries[2]!, other);
  t.same(entries[0]!.cached, record, 'the bytes are kept');
  t.equal(entries[0]!.cached!.buffer.byteLength, record.length, 'in memory of its own, not a slice that keeps a pool alive');
  t.equal(entries[1]!.cached, entries[0]!.cached, 'recipients of one record share the copy');
  t.equal(cache.bytes, cost(record), 'the shared copy counted once');
  t.equal(entries[2]!.cached, undefined, 'no room for the third');
  const firstCopy = entries[0]!.cached;

  queue.update(entries[0]!, { messageId: 9 });
  t.equal(entries[0]!.cached, undefined, 'numbered: the record on disk is no longer the cached one');
  t.equal(cache.bytes, cost(record), 'still held by the other entry');
  queue.cache(entries[0]!, record);
  t.equal(entries[0]!.cached, undefined, 'an entry with a packet identifier is never cached');
  queue.remove(entries[1]!);
  t.equal(cache.bytes, 0, 'its last holder removed: given back');
  queue.cache(entries[2]!, other);
  t.equal(cache.bytes, cost(other), 'room again');
  queue.remove(entries[2]!);
  const later = queuedPublish(5, undefined);
  queue.append(later);
  queue.cache(later, record);
  t.same(later.cached, record, 'the same record cached again');
  t.not(later.cached, firstCopy, 'in a new copy: one given back is not handed out again uncounted');
  t.equal(cache.bytes, cost(record));
  queue.remove(later);
  t.equal(cache.bytes, 0, 'all given back');
  const unbounded = new ClientQueue();
  const alone = queuedPublish(4, undefined);
  unbounded.append(alone);
  unbounded.cache(alone, record);
  t.equal(alone.cached, undefined, 'a queue without the store\'s cache caches nothing');
});

t.test('queue index: lookups follow the reference queue semantics', async (t) => {
  const queue = new ClientQueue();
  const entry = (seq: number, fields: Partial<QueueEntry>): QueueEntry => ({
    seq,
    cmd: 'publish',
    brokerId: 'b1',
    brokerCounter: seq,
    messageId: undefined,
    bytes: 10,
    value: undefined,
    ...fields,
  });
  const first = entry(1, {});
  const second = entry(2, { messageId: 7 });
  const third = entry(3, { brokerId: 'b2', messageId: 7 });
  for (const e of [first, second, third]) queue.append(e);
  t.equal(queue.findForUpdate({ brokerId: 'b1', brokerCounter: 1, messageId: 5 }), first, 'same broker and counter');
  t.equal(queue.findForUpdate({ cmd: 'pubrel', messageId: 7 } as never), second, 'the oldest entry with that id from another broker');
  t.equal(queue.findForUpdate({ brokerId: 'b1', brokerCounter: 99, messageId: 7 }), third, 'same broker, other counter: keeps searching');
  t.equal(queue.findForClear(7), second);
  queue.update(second, { cmd: 'pubrel', brokerId: undefined, brokerCounter: undefined, messageId: 7, bytes: 4 });
  t.equal(queue.oldestPublish(), first);
  t.equal(queue.publishCount, 2, 'a PUBREL is not a queued message');
  t.equal(queue.publishBytes, 20);
  queue.remove(first);
  t.equal(queue.oldestPublish(), third, 'the PUBREL is skipped');
  t.notOk(queue.holds(first));
});

t.test('queue index: packet identifiers are given round the 16-bit space, skipping those held', async (t) => {
  const queue = new ClientQueue();
  const entry = queuedPublish;
  queue.append(entry(1, 2));
  queue.append(entry(2, 65_535));
  t.same([queue.allocateMessageId(), queue.allocateMessageId()], [1, 3], '2 is held');
  for (let id = 4; id < 65_534; id++) queue.allocateMessageId();
  t.equal(queue.allocateMessageId(), 65_534);
  t.equal(queue.allocateMessageId(), 1, '65535 is held: round to 1, never 0 [MQTT-2.3.1-1]');
  const full = new ClientQueue();
  for (let id = 1; id <= 65_535; id++) full.append(entry(id, id));
  t.equal(full.allocateMessageId(), undefined, 'none free');
});

t.test('codec: a queued message is encoded as encodePacket(queuedPacket(...)) encodes it, byte for byte', async (t) => {
  const base = { cmd: 'publish', topic: 'a/b', payload: Buffer.from('x'), qos: 1, retain: false, dup: false, messageId: 7, brokerId: 'b1', brokerCounter: 3 };
  const variants: Array<Record<string, unknown>> = [
    base,
    { ...base, qos: 0, messageId: undefined },
    { ...base, qos: 2, retain: true, dup: true },
    { ...base, clientId: 'pub', nl: true, properties: { userProperties: { k: 'v' }, subscriptionIdentifier: 4 }, messageExpiry: 1_900_000_000_000 },
    { cmd: 'pubrel', messageId: 9 },
    { topic: 't', payload: 'text', qos: 1 },
    { ...base, length: 14, extra: 'ignored by the queued copy' },
  ];
  for (const packet of variants) {
    const queued = encodeQueued(packet);
    const reference = queuedPacket(packet);
    t.same(queued.value, encodePacket(reference), JSON.stringify(packet));
    t.same(
      [queued.cmd, queued.brokerId, queued.brokerCounter, queued.messageExpiry],
      [reference.cmd, reference.brokerId, reference.brokerCounter, messageExpiryOf(reference)],
    );
  }
});

const EDGE_LENGTHS = [0, 1, 31, 32, 255, 256, 65_535, 65_536];
const EDGE_BASE = { cmd: 'publish', topic: 'a/b', payload: Buffer.from('x'), qos: 1, retain: false, dup: false, brokerId: 'b1', brokerCounter: 3 };

/** Queued packets whose fields sit at the edge of every length and integer class of the record (strings also past ASCII). */
function edgePackets(): Array<Record<string, unknown>> {
  const strings = EDGE_LENGTHS.map((n) => 'a'.repeat(n)).concat(['ü'.repeat(15), 'ü'.repeat(16), 'ü'.repeat(128), 'gerät/€/😀']);
  const integers = [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, 2 ** 40];
  return [
    ...strings.map((topic) => ({ ...EDGE_BASE, topic })),
    ...strings.map((brokerId) => ({ ...EDGE_BASE, brokerId })),
    ...strings.map((clientId) => ({ ...EDGE_BASE, clientId })),
    ...EDGE_LENGTHS.map((n) => ({ ...EDGE_BASE, payload: Buffer.alloc(n, 0x61) })),
    ...integers.map((brokerCounter) => ({ ...EDGE_BASE, brokerCounter })),
    { ...EDGE_BASE, qos: 0 },
    { ...EDGE_BASE, qos: 2, retain: true, dup: true },
  ];
}

/** A packet as a test names it: long strings and byte lists shortened. */
function edgeLabel(packet: unknown): string {
  return JSON.stringify(packet, (_, v: unknown) => {
    if (typeof v === 'string' && v.length > 40) return `${v.slice(0, 8)}…(${v.length})`;
    return Array.isArray(v) && v.length > 40 ? `(${v.length} bytes)` : v;
  });
}

t.test('codec: the direct encoding of a queued message matches msgpackr at the edge of every length and integer class', async (t) => {
  const variants: Array<Record<string, unknown>> = [
    ...edgePackets(),
    { ...EDGE_BASE, cmd: undefined, brokerCounter: undefined, payload: undefined, retain: undefined, dup: undefined },
    { ...EDGE_BASE, brokerId: 7 },
    { ...EDGE_BASE, brokerCounter: -1 },
    { ...EDGE_BASE, brokerCounter: 1.5 },
    { ...EDGE_BASE, clientId: undefined },
    { ...EDGE_BASE, payload: 'text' },
    { ...EDGE_BASE, payload: new Uint8Array([1, 2]) },
  ];
  for (const packet of variants) {
    const queued = encodeQueued(packet);
    const label = edgeLabel(packet);
    t.ok(queued.value.equals(encodePacket(queuedPacket(packet))), label);
    t.same(decodePacket(queued.value).topic, queuedPacket(packet).topic, `${label} decodes`);
  }
});

t.test('codec: a retained message is encoded as encodePacket(packetData(...)) encodes it, byte for byte', async (t) => {
  // aedes-packet's shape as aedes stores it: messageId present (undefined) for QoS > 0, absent for
  // QoS 0. A counter past 32 bits is left to msgpackr, as for a queued message.
  const [usual, wide] = [true, false].map((narrow) =>
    edgePackets()
      .filter((packet) => ((packet.brokerCounter as number) < 2 ** 32) === narrow)
      .flatMap((packet): Array<Record<string, unknown>> => {
        const retained: Record<string, unknown> = { ...packet, retain: true };
        return (retained.qos as number) > 0 ? [{ ...retained, messageId: undefined }, retained] : [retained];
      }),
  ) as [Array<Record<string, unknown>>, Array<Record<string, unknown>>];
  const other: Array<Record<string, unknown>> = [
    ...wide,
    { ...EDGE_BASE, retain: true, properties: { contentType: 'text/plain' } },
    { ...EDGE_BASE, retain: true, messageExpiry: 1_900_000_000_000 },
    { ...EDGE_BASE, retain: true, nl: true },
    { ...EDGE_BASE, retain: true, custom: 'kept in the extras' },
    { ...EDGE_BASE, retain: true, callback: () => undefined },
    { ...EDGE_BASE, retain: true, messageId: 5 },
    { ...EDGE_BASE, retain: true, messageId: () => undefined },
    { ...EDGE_BASE, retain: true, clientId: () => undefined },
    { ...EDGE_BASE, retain: true, clientId: undefined },
    { ...EDGE_BASE, retain: true, payload: 'text' },
    { ...EDGE_BASE, retain: true, brokerId: 7 },
    { ...EDGE_BASE, retain: true, cmd: 'pubrel' },
    { topic: 'a/b', payload: Buffer.from('x'), retain: true },
  ];
  for (const [packets, direct] of [[usual, true], [other, false]] as const) {
    for (const packet of packets) {
      const label = edgeLabel(packet);
      const record = encodeRetained(packet);
      t.ok(record.equals(encodePacket(packetData(packet))), label);
      t.equal(packRetained(packet) !== undefined, direct, `${label}: ${direct ? 'written directly' : 'left to msgpackr'}`);
    }
  }
});

t.test('codec: a kept record gives back its bytes: a small one kept as a string, one char a byte, a large one as a buffer of its own', async (t) => {
  const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const small = [Buffer.alloc(0), every, Buffer.concat([every, Buffer.from(every).reverse()]), encodeRetained({ ...EDGE_BASE, topic: 'gerät/€/😀', retain: true }), Buffer.alloc(4096, 0xfe)];
  for (const record of small) {
    const kept = keptRecord(record);
    t.equal(typeof kept, 'string', `${record.length} bytes: a string`);
    t.equal(kept.length, record.length, `${record.length} bytes: as many chars`);
    t.ok(keptRecordBytes(kept).equals(record), `${record.length} bytes: the same bytes back`);
  }
  // A large record in a slice of a bigger buffer, as a pool or msgpackr slab would give it.
  const slab = Buffer.alloc(20_000, 0x61);
  const large = slab.subarray(100, 100 + 4097);
  const kept = keptRecord(large);
  t.ok(Buffer.isBuffer(kept), '4097 bytes: a buffer');
  t.equal((kept as Buffer).buffer.byteLength, 4097, 'of its own, not a view of the slab');
  t.ok((kept as Buffer).equals(large), 'the same bytes');
  t.equal(keptRecordBytes(kept), kept, 'read in place, not copied');
});

t.test('codec: a queued message read back directly is the packet msgpackr reads, at the edge of every length and integer class', async (t) => {
  const packets: Array<Record<string, unknown>> = [
    ...edgePackets(),
    { ...EDGE_BASE, retain: true },
    { ...EDGE_BASE, dup: true },
    { ...EDGE_BASE, cmd: 'pubrel' },
    { ...EDGE_BASE, properties: { userProperties: { k: 'v' } } },
  ];
  let direct = 0;
  for (const packet of packets) {
    // As queued (packet identifier not given yet), then as stored once sent under one.
    const records = [encodeQueued(packet).value, ...[0, 1, 127, 128, 65_535].map((messageId) => encodePacket({ ...queuedPacket(packet), messageId }))];
    for (const record of records) {
      const label = `${edgeLabel(packet)} as ${record.subarray(0, 6).toString('hex')}…`;
      const reference = decodePacketGeneral(record);
      const read = unpackQueued(record);
      if (read !== undefined) {
        direct++;
        t.same(read, reference, label);
        t.same(Object.keys(read), Object.keys(reference), `${label}: the same keys in the same order`);
      }
      t.same(decodePacket(record), reference, `${label}: decodePacket`);
    }
  }
  t.ok(direct >= 150, `${direct} of the records were read directly (every ASCII one)`);
  t.equal(unpackQueued(Buffer.concat([encodeQueued(EDGE_BASE).value, Buffer.from([0xc0])])), undefined, 'a record with a byte more is left to msgpackr');
});

t.test('codec: a PUBREL record written directly is the one msgpackr writes, byte for byte, and reads back', async (t) => {
  for (const messageId of [0, 1, 127, 128, 255, 256, 65_535]) {
    for (const reasonCode of [undefined, 0, 0x7f, 0x92]) {
      // aedes' PubRel: cmd, messageId, reasonCode (handlers/pubrec.js); the same fields in another
      // order are not taken by the direct writer, so msgpackr writes them, in the table's order.
      const pubrel: Record<string, unknown> = reasonCode === undefined ? { cmd: 'pubrel', messageId } : { cmd: 'pubrel', messageId, reasonCode };
      const reordered: Record<string, unknown> = reasonCode === undefined ? { messageId, cmd: 'pubrel' } : { reasonCode, messageId, cmd: 'pubrel' };
      const label = JSON.stringify(pubrel);
      t.ok(encodePacket(pubrel).equals(encodePacket(reordered)), label);
      t.same(decodePacket(encodePacket(pubrel)), pubrel, `${label} reads back`);
    }
  }
  const other = { cmd: 'pubrel', messageId: 7, brokerId: 'b' };
  t.same(decodePacket(encodePacket(other)), other, 'another shape goes through msgpackr');
});

t.test('keys: an outgoing key reads back to its client id (multi-byte UTF-8 too) and sequence number', async (t) => {
  for (const [clientId, seq] of [['c', 1], ['gerät-ü/7', 2 ** 40 + 5], ['', 2 ** 53 - 1]] as const) {
    t.same(parseOutgoingKey(outgoingKey(clientId, seq)), { clientId, seq });
    const queue = new ClientQueue();
    t.same(queue.keyOf(clientId, seq), outgoingKey(clientId, seq), 'a queue makes the same key from its prefix');
    t.same(queue.keyOf(clientId, seq + 1), outgoingKey(clientId, seq + 1), 'and again');
  }
  t.throws(() => outgoingKey('x'.repeat(0x10000), 1), RangeError, 'a client id longer than its u16 length');
});

t.test('packetData: the own enumerable data of a packet, as Object.entries gives it, without functions or prototype keys', async (t) => {
  function Packet(this: Record<string, unknown>) {
    this.cmd = 'publish';
    this.topic = 'a/b';
    this.payload = Buffer.from('x');
    this.qos = 1;
    this.messageId = undefined;
    this.callback = () => undefined;
  }
  Packet.prototype.inherited = 'not own';
  const packet = new (Packet as unknown as new () => Record<string, unknown>)();
  Object.defineProperty(packet, 'hidden', { value: 1, enumerable: false });
  Object.defineProperty(packet, '__proto__', { value: { polluted: true }, enumerable: true });
  const expected = Object.fromEntries(Object.entries(packet).filter(([key, value]) => typeof value !== 'function' && key !== '__proto__'));
  const data = packetData(packet);
  t.same(Object.keys(data), ['cmd', 'topic', 'payload', 'qos', 'messageId'], 'in their order, and nothing else');
  t.same(data, expected);
  t.ok(Object.hasOwn(data, 'messageId'), 'a key whose value is undefined is kept');
  t.equal(Object.getPrototypeOf(data), Object.prototype, 'no prototype taken from the packet');
  t.same(encodePacket(data), encodePacket(expected), 'the same record');
});
