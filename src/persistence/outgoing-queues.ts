/**
 * The in-memory index of every client's outgoing queue: per entry its
 * sequence number (the LevelDB key), the fields aedes looks entries up by, and
 * its size. Payloads stay in LevelDB, with two copies in memory:
 * - the encoded record of an entry sent to the connected client (in flight:
 *   it has its packet identifier), so a PUBACK does not cost a disk read;
 * - the record of a message queued for a client that is offline, while the
 *   store-wide queue cache has room (QueueCache, `queueCacheBytes`), so that
 *   the client's resend after it reconnects reads nothing back from disk.
 *   Dropped once the entry changes (it is numbered, sent or replaced by a
 *   PUBREL: the cached bytes are then no longer what is on disk) or leaves.
 * Beyond the cache, and for a connected client's unsent backlog (the flow
 * control holds those messages itself), the backlog stays on disk.
 *
 * Lookups mirror aedes-persistence's reference queue (a list searched front to
 * back), without the linear search:
 * - outgoingUpdate: the first entry with the same brokerId and brokerCounter
 *   (the message got its packet identifier), or with another brokerId and the
 *   same messageId (a PUBREL replacing its PUBLISH);
 * - outgoingClearMessageId: the first entry with that messageId.
 */
import type { PacketLike } from './codec.js';
import { outgoingKeyAfter, outgoingKeyPrefix } from './keys.js';

export interface QueueEntry {
  readonly seq: number;
  cmd: string;
  brokerId: unknown;
  brokerCounter: unknown;
  messageId: unknown;
  /** Size of the encoded record in LevelDB. */
  bytes: number;
  /** When the message's Message Expiry Interval ends (ms since epoch), if it has one [MQTT-3.3.2-5]. */
  expiresAt?: number | undefined;
  /** The encoded record, kept while the client is online and the entry is in flight; undefined otherwise. */
  value: Buffer | undefined;
  /**
   * The record as queued (no packet identifier: never sent), byte for byte
   * what is on disk, held by the queue cache (ClientQueue.cache); undefined
   * otherwise.
   */
  cached?: Buffer | undefined;
  /**
   * The connection (a number per aedes client object) this entry was last
   * handed out on, by a live delivery or by the resend stream after CONNECT:
   * it is not handed out again on that connection. An entry handed out also
   * has its packet identifier, kept until acknowledged, so the queue limits
   * never drop it (oldestUnsentPublish).
   */
  sentOn?: number;
  /**
   * A QoS 1 PUBLISH as sent to the connected client, while its record on
   * disk does not hold its packet identifier yet (see QueueStore.record):
   * stored when the client disconnects or the store stops, unless
   * acknowledged first. Undefined otherwise.
   */
  sent?: PacketLike | undefined;
}

export type EntryFields = Pick<QueueEntry, 'cmd' | 'brokerId' | 'brokerCounter' | 'messageId' | 'bytes'>;

/**
 * A queue entry as stored, nothing kept in memory yet. Every entry is made
 * here, with all its fields from the start: entries that gained one later
 * had another object shape, and V8's optimized code for the queue index was
 * thrown away when it met both.
 */
export function newQueueEntry(fields: Pick<QueueEntry, 'seq' | 'expiresAt'> & EntryFields): QueueEntry {
  return {
    seq: fields.seq,
    cmd: fields.cmd,
    brokerId: fields.brokerId,
    brokerCounter: fields.brokerCounter,
    messageId: fields.messageId,
    bytes: fields.bytes,
    expiresAt: fields.expiresAt,
    value: undefined,
    cached: undefined,
    sentOn: undefined,
    sent: undefined,
  };
}

/**
 * One entry, or several under the same key (rare: the same message queued
 * twice, a reused identifier): no Set is made for the usual single entry,
 * which for a persistent session's QoS 1 flow would be two per message.
 */
type Slot = QueueEntry | Set<QueueEntry>;

function addTo<K>(map: Map<K, Slot>, key: K, entry: QueueEntry): void {
  const slot = map.get(key);
  if (slot === undefined) map.set(key, entry);
  else if (slot instanceof Set) slot.add(entry);
  else if (slot !== entry) map.set(key, new Set([slot, entry]));
}

function removeFrom<K>(map: Map<K, Slot>, key: K, entry: QueueEntry): void {
  const slot = map.get(key);
  if (slot === undefined) return;
  if (slot instanceof Set) {
    slot.delete(entry);
    if (slot.size === 0) map.delete(key);
  } else if (slot === entry) {
    map.delete(key);
  }
}

/** oldest()'s default: a broker id no entry has, so that any entry is taken. */
const NO_BROKER = Symbol('no broker');

/**
 * The oldest entry of a slot whose broker id is not `notFrom` (any entry by
 * default): a comparison, not a predicate closure made per lookup.
 */
function oldest(slot: Slot | undefined, notFrom: unknown = NO_BROKER): QueueEntry | undefined {
  if (slot === undefined) return undefined;
  if (!(slot instanceof Set)) return slot.brokerId !== notFrom ? slot : undefined;
  let found: QueueEntry | undefined;
  for (const entry of slot) {
    if (entry.brokerId !== notFrom && (!found || entry.seq < found.seq)) found = entry;
  }
  return found;
}

/**
 * Entries by broker id, then broker counter: Map keys compare the values
 * themselves (undefined apart from 'undefined', 5 apart from '5'), with no
 * key string built per lookup.
 */
class CounterIndex {
  /**
   * The counters of the first broker id seen, nearly always the only one
   * (this broker's: other ids come from a bridge or another broker sharing
   * the store): one Map lookup, and a map kept while empty rather than
   * dropped and made again each time the queue empties.
   */
  #firstId: unknown;
  #first: Map<unknown, Slot> | undefined;
  readonly #others = new Map<unknown, Map<unknown, Slot>>();

  get(brokerId: unknown, brokerCounter: unknown): Slot | undefined {
    return this.#countersOf(brokerId)?.get(brokerCounter);
  }

  add(entry: QueueEntry): void {
    const brokerId = entry.brokerId;
    let counters = this.#countersOf(brokerId);
    if (!counters) {
      counters = new Map();
      if (this.#first === undefined) {
        this.#firstId = brokerId;
        this.#first = counters;
      } else {
        this.#others.set(brokerId, counters);
      }
    }
    addTo(counters, entry.brokerCounter, entry);
  }

  remove(entry: QueueEntry): void {
    const counters = this.#countersOf(entry.brokerId);
    if (!counters) return;
    removeFrom(counters, entry.brokerCounter, entry);
    if (counters.size === 0 && counters !== this.#first) this.#others.delete(entry.brokerId);
  }

  #countersOf(brokerId: unknown): Map<unknown, Slot> | undefined {
    // Map keys compare as SameValueZero; so does this, NaN aside, which no broker id is.
    if (this.#first !== undefined && brokerId === this.#firstId) return this.#first;
    return this.#others.size === 0 ? undefined : this.#others.get(brokerId);
  }
}

/**
 * Memory that records of queued messages may take store-wide (see the
 * header): the bytes held, each copy counted once with what holding it costs
 * besides its bytes, however many sessions hold it (the recipients of one
 * message share its copy). `limit` 0 caches nothing.
 */
export class QueueCache {
  bytes = 0;
  limit = 0;
  /** A record's own ArrayBuffer, its Buffer view, its holders' count and the allocator's header, roughly: counted on top of its bytes. */
  static readonly OVERHEAD_BYTES = 128;

  /** The last record copied and its copy, for the next recipient of the same message. */
  #source: Buffer | undefined;
  #copy: Buffer | undefined;
  /** How many entries hold each copy: it is counted until the last lets go. */
  readonly #holders = new Map<Buffer, number>();

  /** Whether a record of `length` bytes would fit now. */
  hasRoom(length: number): boolean {
    return this.bytes + length + QueueCache.OVERHEAD_BYTES <= this.limit;
  }

  /**
   * A copy of `record` in memory of its own (not a slice of Node's shared
   * pool, which it would keep alive), counted until every holder has called
   * release(): the copy made for the last record when `record` is that
   * record again (another recipient of the same message), else a new one if
   * the cache has room; undefined otherwise.
   */
  admit(record: Buffer): Buffer | undefined {
    const last = this.#copy;
    if (record === this.#source && last !== undefined) {
      const holders = this.#holders.get(last);
      if (holders !== undefined) {
        this.#holders.set(last, holders + 1);
        return last;
      }
    }
    if (!this.hasRoom(record.length)) return undefined;
    const copy = Buffer.allocUnsafeSlow(record.length);
    record.copy(copy);
    this.#source = record;
    this.#copy = copy;
    this.#holders.set(copy, 1);
    this.bytes += record.length + QueueCache.OVERHEAD_BYTES;
    return copy;
  }

  /** One holder of `copy` lets go of it; the last gives its memory back. */
  release(copy: Buffer): void {
    const holders = this.#holders.get(copy);
    if (holders === undefined) return;
    if (holders > 1) {
      this.#holders.set(copy, holders - 1);
      return;
    }
    this.#holders.delete(copy);
    this.bytes -= copy.length + QueueCache.OVERHEAD_BYTES;
    if (copy === this.#copy) {
      this.#source = undefined;
      this.#copy = undefined;
    }
  }
}

export class ClientQueue {
  // Insertion order is sequence order: entries are appended with rising seq.
  readonly #entries = new Map<number, QueueEntry>();
  readonly #byCounter = new CounterIndex();
  /** Entries with a packet identifier; those not sent yet have none and are never looked up by it. */
  readonly #byMessageId = new Map<unknown, Slot>();
  /** PUBLISH entries and their bytes: what the per-client limits count. */
  publishCount = 0;
  publishBytes = 0;
  /** Where the search for a free packet identifier starts (allocateMessageId). */
  #nextMessageId = 1;
  /** The start of this queue's LevelDB keys (keyOf), made at its first key. */
  #keyPrefix: Buffer | undefined;
  readonly #cache: QueueCache;

  /** `cache`: the store-wide queue cache; without one (a limit of 0) nothing is cached. */
  constructor(cache: QueueCache = new QueueCache()) {
    this.#cache = cache;
  }

  get size(): number {
    return this.#entries.size;
  }

  entries(): IterableIterator<QueueEntry> {
    return this.#entries.values();
  }

  /**
   * The LevelDB key of entry `seq` of this queue, whose client is
   * `clientId`: outgoingKey without encoding the client id each time (a key
   * is made for every queued message and again for its acknowledgement).
   */
  keyOf(clientId: string, seq: number): Buffer {
    return outgoingKeyAfter((this.#keyPrefix ??= outgoingKeyPrefix(clientId, true)), seq);
  }

  /** Whether `entry` is still queued (not acknowledged, dropped or replaced). */
  holds(entry: QueueEntry): boolean {
    return this.#entries.get(entry.seq) === entry;
  }

  append(entry: QueueEntry): void {
    this.#entries.set(entry.seq, entry);
    this.#index(entry);
  }

  /** Keeps `record`, what `entry` has on disk, in memory if the queue cache has room (see the header). */
  cache(entry: QueueEntry, record: Buffer): void {
    if (entry.cached === undefined && entry.messageId === undefined) entry.cached = this.#cache.admit(record);
  }

  /** Lets go of the entry's cached record. */
  uncache(entry: QueueEntry): void {
    if (entry.cached === undefined) return;
    this.#cache.release(entry.cached);
    entry.cached = undefined;
  }

  remove(entry: QueueEntry): void {
    if (!this.#entries.delete(entry.seq)) return;
    this.uncache(entry);
    this.#unindex(entry);
  }

  /** Lets go of every cached record of this queue (it is deleted whole). */
  uncacheAll(): void {
    for (const entry of this.#entries.values()) this.uncache(entry);
  }

  /** Changes looked-up fields of an entry in place (those given); re-indexed only where they changed. */
  update(entry: QueueEntry, fields: Partial<EntryFields>): void {
    // Numbered, renumbered or replaced: the record on disk is, or will be, another.
    this.uncache(entry);
    const counterChanged =
      ('brokerId' in fields && fields.brokerId !== entry.brokerId) || ('brokerCounter' in fields && fields.brokerCounter !== entry.brokerCounter);
    const idChanged = 'messageId' in fields && fields.messageId !== entry.messageId;
    if (counterChanged) this.#byCounter.remove(entry);
    if (idChanged && entry.messageId !== undefined) removeFrom(this.#byMessageId, entry.messageId, entry);
    this.#count(entry, -1);
    Object.assign(entry, fields);
    this.#count(entry, 1);
    if (counterChanged) this.#byCounter.add(entry);
    if (idChanged && entry.messageId !== undefined) addTo(this.#byMessageId, entry.messageId, entry);
  }

  /**
   * Gives an entry its packet identifier (update with `messageId` alone,
   * the step every message sent takes, without a fields object): the
   * record on disk is then no longer the one cached.
   */
  number(entry: QueueEntry, messageId: number): void {
    this.uncache(entry);
    if (entry.messageId === messageId) return;
    if (entry.messageId !== undefined) removeFrom(this.#byMessageId, entry.messageId, entry);
    entry.messageId = messageId;
    addTo(this.#byMessageId, messageId, entry);
  }

  findForUpdate(packet: { brokerId?: unknown; brokerCounter?: unknown; messageId?: unknown }): QueueEntry | undefined {
    // A PUBREL (no broker id or counter) replaces the entry holding its packet
    // identifier. The reference persistence (and aedes-persistence-level) also
    // takes an entry with the same (undefined) broker id and counter, i.e. any
    // PUBREL still queued: with two QoS 2 flows in flight to a persistent
    // session, the second PUBREC then renumbers the first PUBREL and leaves its
    // own PUBLISH queued, which is sent again, and delivered twice, on the
    // next connection (test/crash.test.ts caught this).
    if (packet.brokerId === undefined && packet.brokerCounter === undefined) {
      return oldest(this.#byMessageId.get(packet.messageId));
    }
    const sameMessage = oldest(this.#byCounter.get(packet.brokerId, packet.brokerCounter));
    const replaced = oldest(this.#byMessageId.get(packet.messageId), packet.brokerId);
    if (!sameMessage) return replaced;
    if (!replaced) return sameMessage;
    return sameMessage.seq < replaced.seq ? sameMessage : replaced;
  }

  findForClear(messageId: unknown): QueueEntry | undefined {
    return oldest(this.#byMessageId.get(messageId));
  }

  /**
   * A packet identifier no entry of this queue holds [MQTT-2.3.1-2]: a PUBLISH
   * in flight or a PUBREL awaiting its PUBCOMP, whichever connection it was
   * first sent on. aedes numbers each connection's messages from a random
   * start and never checks, so after a reconnect a new message could take the
   * identifier of one the client still holds: the client's PUBREC then
   * completes the wrong message, and one is lost while the other arrives
   * twice. Undefined when all 65,535 are in use.
   */
  allocateMessageId(): number | undefined {
    for (let tried = 0; tried < 65_535; tried++) {
      const id = this.#nextMessageId;
      this.#nextMessageId = id >= 65_535 ? 1 : id + 1;
      if (!this.#byMessageId.has(id)) return id;
    }
    return undefined;
  }

  /** The oldest PUBLISH entry: what the overflow policy drops first. */
  oldestPublish(): QueueEntry | undefined {
    for (const entry of this.#entries.values()) if (entry.cmd === 'publish') return entry;
    return undefined;
  }

  /**
   * The oldest PUBLISH a connected client has not been sent: no packet
   * identifier yet (one is given when it is handed to aedes). What the
   * overflow policy drops first while the client is online; entries in
   * flight and PUBRELs stay.
   */
  oldestUnsentPublish(): QueueEntry | undefined {
    for (const entry of this.#entries.values()) {
      if (entry.cmd === 'publish' && entry.messageId === undefined) return entry;
    }
    return undefined;
  }

  /** The entry aedes queued for a message (by broker id and counter), if still queued. */
  findByCounter(brokerId: unknown, brokerCounter: unknown): QueueEntry | undefined {
    return oldest(this.#byCounter.get(brokerId, brokerCounter));
  }

  /**
   * Forgets cached records (the client went offline) and hands back the
   * entries whose packet identifier is in memory only (`sent`), which the
   * caller stores.
   */
  dropCachedValues(): QueueEntry[] {
    const unrecorded: QueueEntry[] = [];
    for (const entry of this.#entries.values()) {
      entry.value = undefined;
      if (entry.sent !== undefined) unrecorded.push(entry);
    }
    return unrecorded;
  }

  #index(entry: QueueEntry): void {
    this.#byCounter.add(entry);
    if (entry.messageId !== undefined) addTo(this.#byMessageId, entry.messageId, entry);
    this.#count(entry, 1);
  }

  #unindex(entry: QueueEntry): void {
    this.#byCounter.remove(entry);
    if (entry.messageId !== undefined) removeFrom(this.#byMessageId, entry.messageId, entry);
    this.#count(entry, -1);
  }

  /** The per-client limits count PUBLISH entries and their bytes. */
  #count(entry: QueueEntry, sign: 1 | -1): void {
    if (entry.cmd !== 'publish') return;
    this.publishCount += sign;
    this.publishBytes += sign * entry.bytes;
  }
}

/** All clients' queues plus store-wide totals. */
export class OutgoingQueues {
  readonly #queues = new Map<string, ClientQueue>();
  /** Shared by every queue: the store sets its limit (`queueCacheBytes`). */
  readonly cache = new QueueCache();

  get(clientId: string): ClientQueue | undefined {
    return this.#queues.get(clientId);
  }

  getOrCreate(clientId: string): ClientQueue {
    let queue = this.#queues.get(clientId);
    if (!queue) {
      queue = new ClientQueue(this.cache);
      this.#queues.set(clientId, queue);
    }
    return queue;
  }

  /** Drops the client's queue object once it is empty. */
  release(clientId: string): void {
    if (this.#queues.get(clientId)?.size === 0) this.#queues.delete(clientId);
  }

  delete(clientId: string): ClientQueue | undefined {
    const queue = this.#queues.get(clientId);
    this.#queues.delete(clientId);
    queue?.uncacheAll();
    return queue;
  }

  has(clientId: string): boolean {
    return this.#queues.has(clientId);
  }

  clients(): IterableIterator<[string, ClientQueue]> {
    return this.#queues.entries();
  }

  totals(): { clients: number; entries: number; publishBytes: number } {
    let entries = 0;
    let publishBytes = 0;
    for (const queue of this.#queues.values()) {
      entries += queue.size;
      publishBytes += queue.publishBytes;
    }
    return { clients: this.#queues.size, entries, publishBytes };
  }
}
