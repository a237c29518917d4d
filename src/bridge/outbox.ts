/**
 * The bridge's outbox: messages to export, on disk in the store's key range
 * of the bridge (componentPrefix('bridge')), ordered by a persisted sequence.
 * It is the only buffer between the broker and JetStream: the nats.js client
 * keeps nothing across a reconnect.
 *
 * A QoS 1/2 message enters in the same durable batch as its session records,
 * the one its PUBACK or PUBREC waits for (a publish tap of the store, see
 * LevelPersistence.addPublishTap), so an acknowledged message is in the
 * outbox or nowhere; a QoS 0 one is written behind. An entry leaves only when
 * JetStream acknowledged it.
 *
 * Memory per entry is 12 bytes (its size and time, for the limits and the
 * age of the oldest entry); topics and payloads stay on disk, so an outage
 * of a million messages keeps the heap flat. Only the newest entries, up to
 * RECENT_MAX_BYTES, are also kept as stored once their batch is on disk:
 * while JetStream keeps up, the sender reads them from memory instead of
 * opening a store iterator for every few messages.
 */
import { pack, unpack } from 'msgpackr';
import type { Logger } from '../observability/logger.js';
import type { BatchOp, GroupCommit, PacketLike } from '../persistence/index.js';
import { componentPrefix, owned, prefixRange } from '../persistence/index.js';
import { RateLimitedLog } from '../util/rate-limited-log.js';
import { metadataOfPacket, packMetadata, unpackMetadata, type MessageMetadata } from './metadata.js';

export type QoS = 0 | 1 | 2;
export type OverflowPolicy = 'drop-oldest' | 'drop-new';

export interface OutboxRecord {
  seq: number;
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: boolean;
  /** When the broker took the message (ms since the epoch). */
  time: number;
  /** Its MQTT 5.0 metadata (properties), if it had any. */
  metadata?: MessageMetadata;
}

export interface OutboxLimits {
  /** 0 = unlimited. */
  maxMessages: number;
  /** Encoded bytes; 0 = unlimited. */
  maxBytes: number;
  overflow: OverflowPolicy;
}

export interface OutboxStats {
  depth: number;
  bytes: number;
  /** Age of the oldest entry in ms; 0 when empty. */
  oldestAgeMs: number;
  added: number;
  removed: number;
  /** Entries dropped to make room (drop-oldest). */
  droppedOldest: number;
  /** Messages not taken because the outbox was full (drop-new). */
  droppedNew: number;
  /** Entries whose batch failed (nothing on disk, nothing acknowledged): forgotten. */
  failedWrites: number;
}

/** An iterator over a key range of the store (abstract-level's). */
export interface RangeIterator extends AsyncIterable<[Buffer, Buffer]> {
  /** Up to `size` entries in one call, none at the end: one promise, not one per entry. */
  nextv(size: number): Promise<Array<[Buffer, Buffer]>>;
  close(): Promise<void>;
}

/** A reader of a key range of the store. */
export interface RangeReader {
  iterator(options: { gte: Buffer; lt: Buffer; limit?: number }): RangeIterator;
}

/** What the outbox needs of the store: its group commit and a reader of its key range. */
export interface OutboxStore {
  readonly commit: GroupCommit;
  read(key: Buffer): Promise<Buffer | undefined>;
  readonly db: RangeReader;
}

const PREFIX = Buffer.concat([componentPrefix('bridge'), Buffer.from('o')]);
/**
 * The highest sequence ever given, written with every entry: sequences are
 * never reused after the outbox empties and the daemon restarts (a reused
 * `<site>:<seq>` would be dropped by JetStream as a duplicate of an old
 * message). A new store starts from the clock in microseconds, so a site
 * whose data directory was wiped does not reuse the ids of its former life.
 */
const HIGH_WATER = Buffer.concat([componentPrefix('bridge'), Buffer.from('h')]);
const RANGE_END = prefixRange(PREFIX).lt;
/** Bound of the entries kept in memory for the sender (see Outbox.read); the rest is read from the store. */
export const RECENT_MAX_BYTES = 4 * 1024 * 1024;
/** What a kept entry costs beside its bytes (its own ArrayBuffer, the Buffer, the Map entry), counted against the bound. */
const RECENT_ENTRY_OVERHEAD = 200;
/** Entries read a call when the outbox is rebuilt at start. */
const RECOVER_CHUNK = 1000;

export function outboxKey(seq: number): Buffer {
  const key = Buffer.alloc(PREFIX.length + 8);
  PREFIX.copy(key);
  key.writeBigUInt64BE(BigInt(seq), PREFIX.length);
  return key;
}

function seqOf(key: Buffer): number {
  return Number(key.readBigUInt64BE(PREFIX.length));
}

/**
 * Sizes and times of the entries from `head` on, in typed arrays (12 bytes
 * an entry) used as a queue: `#start` is where `head` sits; the consumed
 * front is reclaimed when it is most of the array. Size 0 = gone.
 */
class EntryLog {
  head = 1;
  next = 1;
  #start = 0;
  #sizes = new Uint32Array(1024);
  #times = new Float64Array(1024);

  #index(seq: number): number {
    return this.#start + seq - this.head;
  }

  add(seq: number, size: number, time: number): void {
    if (this.next === this.head) {
      this.head = this.next = seq;
      this.#start = 0;
    }
    const index = this.#index(seq);
    if (index >= this.#sizes.length) this.#makeRoom(index + 1);
    this.#sizes[this.#index(seq)] = Math.max(1, size);
    this.#times[this.#index(seq)] = time;
    this.next = seq + 1;
  }

  sizeOf(seq: number): number {
    if (seq < this.head || seq >= this.next) return 0;
    return this.#sizes[this.#index(seq)]!;
  }

  /** Marks `seq` gone; returns its size (0 if it was not there). */
  remove(seq: number): number {
    const size = this.sizeOf(seq);
    if (size === 0) return 0;
    this.#sizes[this.#index(seq)] = 0;
    while (this.head < this.next && this.#sizes[this.#start] === 0) {
      this.head++;
      this.#start++;
    }
    return size;
  }

  /** Where the next sequence starts (recovery); only forward, and only over an empty tail. */
  startAt(seq: number): void {
    if (seq <= this.next) return;
    if (this.head === this.next) {
      this.head = this.next = seq;
      this.#start = 0;
      return;
    }
    // The tail was sent and removed before the restart: its slots stay empty (size 0).
    const index = this.#index(seq - 1);
    if (index >= this.#sizes.length) this.#makeRoom(index + 1);
    this.next = seq;
  }

  oldestTime(): number | undefined {
    return this.head < this.next ? this.#times[this.#start] : undefined;
  }

  #makeRoom(length: number): void {
    const used = this.next - this.head;
    let size = this.#sizes.length;
    // Reclaim the consumed front first; grow only when the live part needs it.
    while (size < length - this.#start) size *= 2;
    const sizes = new Uint32Array(size);
    sizes.set(this.#sizes.subarray(this.#start, this.#start + used));
    const times = new Float64Array(size);
    times.set(this.#times.subarray(this.#start, this.#start + used));
    this.#sizes = sizes;
    this.#times = times;
    this.#start = 0;
  }
}

export class Outbox {
  readonly #store: OutboxStore;
  readonly #limits: OutboxLimits;
  readonly #log: Logger;
  /** A full outbox is logged once per 10 s, not once per message. */
  readonly #rateLimited: RateLimitedLog;
  readonly #now: () => number;
  readonly #entries = new EntryLog();
  #depth = 0;
  #bytes = 0;
  readonly #counters = { added: 0, removed: 0, droppedOldest: 0, droppedNew: 0, failedWrites: 0 };
  #removals: BatchOp[] = [];
  /** Entries whose batch is on disk, as stored, while they fit in RECENT_MAX_BYTES; gone with the entry. */
  readonly #recent = new Map<number, Buffer>();
  #recentBytes = 0;
  /** Called after each add, once its batch may have landed: the sender reads from the store. */
  onAdded: () => void = () => undefined;

  constructor(store: OutboxStore, limits: OutboxLimits, deps: { logger: Logger; now?: () => number }) {
    this.#store = store;
    this.#limits = limits;
    this.#log = deps.logger.child({ component: 'bridge' });
    this.#rateLimited = new RateLimitedLog(this.#log);
    this.#now = deps.now ?? Date.now;
  }

  /** Rebuilds the index of sizes from the store (after a restart, what waits on disk). */
  async recover(): Promise<void> {
    await eachStored(this.#store.db, { gte: PREFIX, lt: RANGE_END }, RECOVER_CHUNK, (key, value) => {
      this.#entries.add(seqOf(key), value.length, decode(value).time);
      this.#depth++;
      this.#bytes += value.length;
    });
    const highWater = await this.#store.read(HIGH_WATER);
    const next = highWater ? Number(highWater.readBigUInt64BE(0)) + 1 : this.#depth > 0 ? this.#entries.next : this.#now() * 1000;
    this.#entries.startAt(Math.max(next, this.#entries.next));
  }

  get depth(): number {
    return this.#depth;
  }

  /** The newest sequence given (its entry may be gone). */
  get lastAdded(): number {
    return this.#entries.next - 1;
  }

  /** The oldest entry's sequence, or the next one when empty. */
  get head(): number {
    return this.#entries.head;
  }

  /**
   * The ops that put a message into the outbox, for the batch of the PUBLISH
   * it came with; the limits apply here (see OverflowPolicy).
   */
  add(packet: PacketLike): BatchOp[] {
    const payload = toBuffer(packet.payload);
    const time = this.#now();
    const value = encode({
      topic: String(packet.topic),
      payload,
      qos: (packet.qos ?? 0) as QoS,
      retain: packet.retain === true,
      time,
      metadata: metadataOfPacket(packet),
    });
    const ops: BatchOp[] = [];
    while (this.#full(value.length)) {
      if (this.#limits.overflow === 'drop-new' || this.#depth === 0) {
        this.#counters.droppedNew++;
        this.#overflowed('drop-new', 'outbox full: a new message was not taken (overflow: drop-new)');
        return [];
      }
      const oldest = this.#entries.head;
      this.#forget(oldest);
      ops.push({ type: 'del', key: outboxKey(oldest) });
      this.#counters.droppedOldest++;
      this.#overflowed('drop-oldest', 'outbox full: the oldest message was dropped (overflow: drop-oldest)');
    }
    const seq = this.#entries.next;
    this.#entries.add(seq, value.length, time);
    this.#depth++;
    this.#bytes += value.length;
    this.#counters.added++;
    const key = outboxKey(seq);
    ops.push({ type: 'put', key, value }, { type: 'put', key: HIGH_WATER, value: u64(seq) });
    queueMicrotask(() => {
      // The caller has queued the ops by now. A batch that fails (a full disk) leaves nothing on
      // disk: forget the entry, or head would wait for it forever (its PUBLISH was not acknowledged).
      this.#store.commit.whenWritten(key)?.then(
        () => this.#remember(seq, value),
        () => {
          if (this.#forget(seq)) this.#counters.failedWrites++;
        },
      );
      this.onAdded();
    });
    return ops;
  }

  /**
   * Up to `limit` entries from `fromSeq` on, as stored (what the store has
   * committed): from memory while they are there, the rest from the store.
   */
  async read(fromSeq: number, limit: number): Promise<OutboxRecord[]> {
    const records: OutboxRecord[] = [];
    let seq = Math.max(fromSeq, this.#entries.head);
    for (; records.length < limit && seq < this.#entries.next; seq++) {
      if (this.#entries.sizeOf(seq) === 0) continue;
      const value = this.#recent.get(seq);
      if (!value) break;
      records.push({ seq, ...decode(value) });
    }
    if (records.length === limit || seq >= this.#entries.next) return records;
    const wanted = limit - records.length;
    await eachStored(this.#store.db, { gte: outboxKey(seq), lt: RANGE_END, limit: wanted }, wanted, (key, value) => {
      const at = seqOf(key);
      if (this.#entries.sizeOf(at) > 0) records.push({ seq: at, ...decode(value) });
    });
    return records;
  }

  /** JetStream has the entry: it leaves the outbox (the deletes of one turn in one write). */
  remove(seq: number): void {
    if (!this.#forget(seq)) return;
    this.#counters.removed++;
    this.#removals.push({ type: 'del', key: outboxKey(seq) });
    if (this.#removals.length === 1) queueMicrotask(() => this.#flushRemovals());
  }

  #flushRemovals(): void {
    const ops = this.#removals;
    this.#removals = [];
    // Lazily: they ride with the next write (the PUBLISHes coming in) instead of a batch and an
    // fsync of their own each turn. A crash may lose them: what is left on disk is sent again
    // after the restart, and the stream drops it as a duplicate (or reconcile.ts finds it).
    this.#store.commit.writeLazily(ops).catch((error: unknown) => {
      // Left on disk: sent again after a restart, and found in the stream there (reconcile.ts).
      this.#log.warn({ err: error, entries: ops.length }, 'could not remove exported messages from the outbox');
    });
  }

  stats(): OutboxStats {
    const oldest = this.#entries.oldestTime();
    return {
      depth: this.#depth,
      bytes: this.#bytes,
      oldestAgeMs: oldest === undefined ? 0 : Math.max(0, this.#now() - oldest),
      ...this.#counters,
    };
  }

  #remember(seq: number, value: Buffer): void {
    const cost = value.length + RECENT_ENTRY_OVERHEAD;
    if (this.#entries.sizeOf(seq) === 0 || this.#recentBytes + cost > RECENT_MAX_BYTES) return;
    // A copy of its own: `value` is a slice of msgpackr's shared slab (8 KiB or more), and a
    // kept slice keeps the whole slab. When JetStream is slower than the input, what is kept
    // is one entry here and there, each holding a slab of its own, far beyond the bound.
    this.#recent.set(seq, owned(value));
    this.#recentBytes += cost;
  }

  #forget(seq: number): boolean {
    const size = this.#entries.remove(seq);
    if (size === 0) return false;
    const recent = this.#recent.get(seq);
    if (recent) {
      this.#recent.delete(seq);
      this.#recentBytes -= recent.length + RECENT_ENTRY_OVERHEAD;
    }
    this.#depth--;
    this.#bytes -= size;
    return true;
  }

  #full(adding: number): boolean {
    const { maxMessages, maxBytes } = this.#limits;
    return (maxMessages > 0 && this.#depth + 1 > maxMessages) || (maxBytes > 0 && this.#bytes + adding > maxBytes);
  }

  #overflowed(key: 'drop-new' | 'drop-oldest', message: string): void {
    this.#rateLimited.warn(key, { depth: this.#depth, bytes: this.#bytes, ...this.#limits, ...this.#counters }, message);
  }

}

/**
 * Calls `each` for every entry of a key range, read `chunk` at a time (nextv:
 * one promise a chunk, not one an entry; it gives fewer than asked when the
 * values are large, classic-level's highWaterMarkBytes).
 */
async function eachStored(
  reader: RangeReader,
  range: { gte: Buffer; lt: Buffer; limit?: number },
  chunk: number,
  each: (key: Buffer, value: Buffer) => void,
): Promise<void> {
  const iterator = reader.iterator(range);
  try {
    for (let entries = await iterator.nextv(chunk); entries.length > 0; entries = await iterator.nextv(chunk)) {
      for (const [key, value] of entries) each(key, value);
    }
  } finally {
    await iterator.close();
  }
}

type StoredMessage = Omit<OutboxRecord, 'seq'>;

/**
 * An entry on disk is a MessagePack array whose fields are only ever
 * appended, so that what one version wrote the next one reads (an outbox
 * left by an upgrade, or a downgrade, is still sent):
 *   version 1: [topic, payload, qos, retain, time]
 *   version 2: [topic, payload, qos, retain, time, metadata] (packMetadata),
 *              the sixth field written only when the message has metadata:
 *              an MQTT 3.1.1 message is stored exactly as in version 1.
 * A version 1 reader ignores the sixth field (the metadata is lost, the message is not).
 */
export function encode(message: StoredMessage): Buffer {
  const fields: unknown[] = [message.topic, message.payload, message.qos, message.retain, message.time];
  if (message.metadata) fields.push(packMetadata(message.metadata));
  return pack(fields);
}

export function decode(value: Buffer): StoredMessage {
  const [topic, payload, qos, retain, time, metadata] = unpack(value) as [string, Uint8Array, QoS, boolean, number, unknown];
  const message: StoredMessage = { topic, payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), qos, retain, time };
  const unpacked = unpackMetadata(metadata);
  if (unpacked) message.metadata = unpacked;
  return message;
}

function toBuffer(payload: unknown): Buffer {
  if (Buffer.isBuffer(payload)) return payload;
  if (typeof payload === 'string') return Buffer.from(payload);
  if (payload instanceof Uint8Array) return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  return Buffer.alloc(0);
}

/** `value` as 8 bytes, big-endian: the bridge's sequences and times on disk. */
export function u64(value: number): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigUInt64BE(BigInt(value));
  return buffer;
}
