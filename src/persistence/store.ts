/**
 * The store core: edgemqtt's broker state on LevelDB, independent of how
 * aedes asks for it (level-persistence.ts adapts it to aedes).
 *
 * LevelDB is the truth; memory holds what matching and lookups need, so no
 * hot-path operation scans the store:
 * - subscriptions in a qlobber trie (subscription-index.ts),
 * - retained messages, payloads included, in a topic tree (topic-tree.ts):
 *   a SUBSCRIBE gets its retained messages without waiting for the disk, so
 *   they are queued for delivery before any message published after the
 *   SUBACK [MQTT-4.6.0-6] (Mosquitto keeps them all in memory too; the cost
 *   is measured in bench/persistence-retained.ts),
 * - per-client queue indexes, payloads on disk (outgoing-queues.ts),
 * - packet identifiers of stored incoming QoS 2 packets, will owners and
 *   session last-seen times.
 * Every mutation updates memory synchronously and queues its LevelDB ops in
 * the group commit; the returned promise resolves once they are durable per
 * the sync policy. Reads of values consult the group commit's queued writes
 * first, so a read never misses a write made before it.
 *
 * This class owns the lifecycle, the in-memory state, the reads and writes
 * and the session bookkeeping; the records of each kind are kept by its
 * parts (retained-store.ts, session-records.ts, queue-store.ts), which use
 * the members below marked "for the parts". Its counters and figures are in
 * store-stats.ts, the decoding of stored records in stored-packets.ts.
 * Nothing outside this directory sees the class (index.ts exports the adapter).
 *
 * Lifecycle: start() opens and recovers the store, stop() flushes and closes
 * it. A stopped instance is not restarted: build a new one on the same path.
 */
import type { Readable } from 'node:stream';
import type { Logger } from '../observability/logger.js';
import { encodePacket, packetData, type KeptRecord, type PacketLike } from './codec.js';
import { isNoSpace, StoreClosedError, StoreFullError } from './errors.js';
import { createGroupCommit, type BatchOp, type CommitObserver, type GroupCommit } from './group-commit.js';
import { incomingKey, outgoingKey, subscriptionKey } from './keys.js';
import { openStore, type Store } from './open-store.js';
import { resolveOptions, type LevelPersistenceDeps, type LevelPersistenceOptions, type ResolvedOptions } from './options.js';
import { OutgoingQueues } from './outgoing-queues.js';
import { QueueLimiter } from './queue-limits.js';
import { aliveOp, recover } from './recover.js';
import { SessionClock } from './session-clock.js';
import { newStoreCounters, persistenceStats, type StoreCounters } from './store-stats.js';
import { decodeStored, streamStored, type StoredKey } from './stored-packets.js';
import { holdWills, SessionExpiry } from './session-expiry.js';
import { SubscriptionIndex } from './subscription-index.js';
import { TopicTree } from './topic-tree.js';
import { PublishTaps } from './publish-taps.js';
import { PREVIOUS_RUN_BROKER_ID, type BrokerLike, type PersistenceState, type PersistenceStats, type StoreWriteFailure } from './types.js';
import { WriteFailures } from './write-failures.js';

export class LevelStore {
  readonly options: ResolvedOptions;
  readonly log: Logger;
  readonly now: () => number;
  #state: PersistenceState = 'created';
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  /** The open LevelDB and its group commit; what ready() answers while open: one object, not one per call (several per message). */
  #handles: { db: Store; commit: GroupCommit } | undefined;
  readonly #onCommit: CommitObserver | undefined;
  #writes: WriteFailures | undefined;
  // Reads of values being deleted (acknowledged messages, wills); stop() waits for them.
  readonly #inflight = new Set<Promise<unknown>>();
  /** The batch (its promise) and kind of the last write-behind that got a failure handler (see writeBehind). */
  #behind: { promise: Promise<void> | undefined; what: string } = { promise: undefined, what: '' };

  readonly taps = new PublishTaps();
  /** The broker whose clients are online (set by the adapter's setup); for the parts. */
  broker: BrokerLike | undefined;
  // The in-memory state, replaced by what recovery finds on start; for the parts.
  subscriptions = new SubscriptionIndex();
  retained = new TopicTree<KeptRecord>();
  retainedBytes = 0;
  queues = new OutgoingQueues();
  incoming = new Map<string, Set<number>>();
  /** Will owners: client id → the id of the broker that stored the will. */
  wills = new Map<string, unknown>();
  /**
   * Wills not to be published before a time (ms since epoch): one whose
   * connection closed with a Will Delay Interval running, and one an earlier
   * run left with a Will Delay Interval (see the adapter's streamWill).
   */
  willsHeldUntil = new Map<string, number>();
  /** The wills of an earlier run whose delay was running, with when they fall due: the broker times them (delayedWills). */
  delayedWills = new Map<string, number>();
  sessions = new SessionClock(new Map());
  /** Session expiry: the sweeps and their timers (session-expiry.ts). */
  readonly expiry = new SessionExpiry(this);
  /** The highest broker counter queued per broker id (see the adapter's setup). */
  maxCounters = new Map<string, number>();
  #nextSeq = 1;
  readonly limiter: QueueLimiter;
  readonly counters: StoreCounters = newStoreCounters();

  constructor(options: LevelPersistenceOptions, deps: LevelPersistenceDeps) {
    this.options = resolveOptions(options);
    this.log = deps.logger.child({ component: 'persistence' });
    this.now = deps.now ?? Date.now;
    this.#onCommit = deps.onCommit;
    this.limiter = new QueueLimiter(
      { maxMessages: this.options.maxQueuedMessagesPerClient, maxBytes: this.options.maxQueuedBytesPerClient },
      this.log,
      this.now,
    );
  }

  get state(): PersistenceState {
    return this.#state;
  }

  /** Set while writes are refused after a failed one (write-failures.ts); readiness reports it. */
  get writeFailure(): StoreWriteFailure | undefined {
    return this.#writes?.failure;
  }

  /** The group commit, for components that add their own records (keys under `componentPrefix(name)`). */
  get commit(): GroupCommit {
    return this.ready().commit;
  }

  /** The LevelDB handle, for components reading their own key range. */
  get db(): Store {
    return this.ready().db;
  }

  // ---------------------------------------------------------------- lifecycle

  /** Opens and recovers the store. Idempotent; rejects with a StoreError subclass. */
  start(): Promise<void> {
    if (this.#state === 'stopping' || this.#state === 'stopped') {
      return Promise.reject(new StoreClosedError('persistence'));
    }
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    this.#state = 'starting';
    const { path } = this.options;
    this.log.info({ path, sync: this.options.sync }, 'opening store');
    let db: Store;
    try {
      db = await openStore(path);
    } catch (error) {
      this.#state = 'failed';
      throw error;
    }
    try {
      const recovered = await recover(db, path, this.log, this.options.recoveryProgressEvery);
      this.subscriptions = recovered.subscriptions;
      this.retained = recovered.retained;
      this.retainedBytes = recovered.retainedBytes;
      this.queues = recovered.queues;
      this.queues.cache.limit = this.options.queueCacheBytes;
      this.incoming = recovered.incoming;
      // Every will on disk was left by an earlier run (see PREVIOUS_RUN_BROKER_ID).
      this.wills = new Map([...recovered.wills.keys()].map((clientId) => [clientId, PREVIOUS_RUN_BROKER_ID]));
      this.willsHeldUntil = new Map();
      this.delayedWills = new Map();
      this.sessions = new SessionClock(recovered.sessions);
      this.#nextSeq = recovered.nextSeq;
      this.maxCounters = recovered.maxCounters;
      this.counters.decodeErrors += recovered.decodeErrors;
      this.counters.quarantinedRecords = recovered.quarantined;
      this.counters.recoveryRecords = recovered.records;
      this.counters.recoveryMs = recovered.durationMs;

      const writes = new WriteFailures(db, path, this.log, this.now, () => this.#state === 'running');
      this.#writes = writes;
      const commit = createGroupCommit(
        { batch: (ops, options) => writes.batch(ops, options) },
        { policy: this.options.sync, maxDelayMs: this.options.commitDelayMs, onCommit: this.#onCommit },
      );
      this.#handles = { db, commit };
      this.#state = 'running';
      const ops = [...recovered.repairOps];
      const now = this.now();
      // Downtime counts as time away unless it is longer than one expiry
      // check interval (then a restart, not an absence, explains it).
      const downMs = recovered.aliveAt === undefined ? 0 : now - recovered.aliveAt;
      const shiftMs = downMs > this.options.expiryCheckIntervalSec * 1000 ? downMs : 0;
      this.sessions.reconcile(now, shiftMs, this.#clientsWithState(), ops);
      holdWills(this, recovered.wills, now, shiftMs, ops);
      ops.push(aliveOp(now));
      // Every client is offline at start: a lowered limit applies now.
      for (const [clientId, queue] of this.queues.clients()) this.limiter.enforce(clientId, queue, ops);
      for (const [clientId] of [...this.queues.clients()]) this.queues.release(clientId);
      await this.write(ops);
      this.expiry.start();
      await this.expiry.sweep();

      const totals = this.queues.totals();
      this.log.info(
        {
          durationMs: recovered.durationMs,
          records: recovered.records,
          retained: this.retained.size,
          sessions: this.sessions.size,
          subscriptions: this.subscriptions.matchableCount,
          queuedEntries: totals.entries,
          decodeErrors: recovered.decodeErrors,
        },
        'store recovered',
      );
    } catch (error) {
      this.#state = 'failed';
      this.expiry.stop();
      await this.#writes?.stop();
      await this.#handles?.commit.close();
      this.#handles = undefined;
      await db.close().catch(() => undefined);
      // The first write (recovery repairs, the alive stamp) on a full disk:
      // the same clear error as a full disk while opening.
      if (isNoSpace(error)) throw new StoreFullError(path, error);
      throw error;
    }
  }

  /** Flushes queued writes and closes the store. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    if (this.#starting) await this.#starting.catch(() => undefined);
    if (this.#state !== 'running') {
      this.#state = 'stopped';
      return;
    }
    this.#state = 'stopping';
    this.expiry.stop();
    await this.#writes?.stop();
    await Promise.allSettled([...this.#inflight]);
    const { db, commit } = this.#handles!;
    // Clients still connected: the identifiers of their messages in flight.
    const ops: BatchOp[] = [];
    for (const [clientId] of this.queues.clients()) this.#recordSent(clientId, ops);
    ops.push(aliveOp(this.now()));
    await commit.write(ops).catch((error: unknown) => {
      this.log.warn({ err: error }, 'could not record the stop time');
    });
    await commit.close();
    await db.close();
    this.#state = 'stopped';
    this.log.info('store closed');
  }

  // -------------------------------------------------------------- publish taps

  /**
   * A QoS 0 PUBLISH for the taps: nothing waits for it (there is no
   * acknowledgement), so their records are written behind. QoS 1/2 messages
   * reach the taps when they are queued (queue-store.ts enqueue).
   */
  tapUngated(packet: PacketLike): void {
    if (this.#state !== 'running') return;
    const ops: BatchOp[] = [];
    this.taps.collect(packet, ops);
    if (ops.length > 0) this.writeBehind(ops, 'record of a QoS 0 message');
  }

  // --------------------------------------------------------------- sessions

  /** A client connected or disconnected: see SessionExpiry.clientSeen. */
  clientSeen(clientId: string, connected: boolean): void {
    if (!connected) {
      const ops: BatchOp[] = [];
      this.#recordSent(clientId, ops);
      if (ops.length > 0 && (this.#state === 'running' || this.#state === 'stopping')) {
        this.writeBehind(ops, 'queued message identifier');
      }
    }
    this.expiry.clientSeen(clientId, connected);
  }

  /**
   * Forgets a client's cached records and stores (ops) the packet identifiers
   * its QoS 1 messages in flight were sent under, which QueueStore.record
   * kept in memory only: a resend on the next connection, also after a
   * restart, uses them again [MQTT-4.4.0-1].
   */
  #recordSent(clientId: string, ops: BatchOp[]): void {
    const queue = this.queues.get(clientId);
    if (!queue) return;
    for (const entry of queue.dropCachedValues()) {
      const value = encodePacket(packetData(entry.sent!));
      entry.sent = undefined;
      queue.update(entry, { bytes: value.length });
      ops.push({ type: 'put', key: outgoingKey(clientId, entry.seq), value });
    }
  }

  /** A client with no subscriptions, queue or QoS 2 state has no session to expire; for the parts. */
  forgetIfStateless(clientId: string, ops: BatchOp[]): void {
    if (!this.sessions.has(clientId) || this.#hasState(clientId)) return;
    this.#forgetSession(clientId, ops);
  }

  /** The session's clock record (ops), its declared expiry once offline, and its queue limiter. */
  #forgetSession(clientId: string, ops: BatchOp[]): void {
    this.sessions.forget(clientId, ops);
    if (!this.isOnline(clientId)) this.sessions.undeclare(clientId);
    this.limiter.forget(clientId);
  }

  #hasState(clientId: string): boolean {
    return this.subscriptions.has(clientId) || this.queues.has(clientId) || this.incoming.has(clientId);
  }

  #clientsWithState(): Set<string> {
    const clients = new Set<string>(this.subscriptions.clients());
    for (const [clientId] of this.queues.clients()) clients.add(clientId);
    for (const clientId of this.incoming.keys()) clients.add(clientId);
    return clients;
  }

  /** Removes a session's subscriptions, queue and QoS 2 state (ops for them); for the parts. */
  dropSession(clientId: string, ops: BatchOp[]): void {
    for (const topic of this.subscriptions.clear(clientId)) ops.push({ type: 'del', key: subscriptionKey(clientId, topic) });
    for (const entry of this.queues.delete(clientId)?.entries() ?? []) {
      ops.push({ type: 'del', key: outgoingKey(clientId, entry.seq) });
    }
    for (const id of this.incoming.get(clientId) ?? []) ops.push({ type: 'del', key: incomingKey(clientId, id) });
    this.incoming.delete(clientId);
    this.#forgetSession(clientId, ops);
  }

  // ------------------------------------------------- reads and writes (for the parts)

  /** Throws StoreClosedError unless the store takes reads and writes. */
  ready(): { db: Store; commit: GroupCommit } {
    // 'stopping' still accepts: aedes' last fire-and-forget writes (wills of
    // closing clients) land before the group commit closes.
    if ((this.#state !== 'running' && this.#state !== 'stopping') || this.#handles === undefined) {
      throw new StoreClosedError(`persistence (${this.#state})`);
    }
    return this.#handles;
  }

  /** The value `key` will have once queued writes land (see GroupCommit.pending); undefined also when closed. */
  pending(key: Buffer): Buffer | null | undefined {
    return this.#handles?.commit.pending(key);
  }

  /** The sequence number (the key) of the next queued entry. */
  nextSeq(): number {
    return this.#nextSeq++;
  }

  isOnline(clientId: string): boolean {
    const clients = this.broker?.clients;
    return clients !== undefined && clients[clientId] !== undefined;
  }

  write(ops: readonly BatchOp[]): Promise<void> {
    if (ops.length === 0) return Promise.resolve();
    return this.ready().commit.write(ops);
  }

  /**
   * Queues `ops` without waiting for them (write-behind, see the adapter's
   * header). A failure is logged and `failed` runs; whoever waits on the
   * batch (the barrier of queue-store.ts enqueue) gets the error too, so
   * nothing is acknowledged.
   */
  writeBehind(ops: readonly BatchOp[], what: string, failed?: () => void): void {
    this.#behindFailures(this.write(ops), what, failed);
  }

  /**
   * Queues `ops` that a crash may lose and nobody reads again (the deletes
   * of acknowledged messages, gone from the queue index first): they ride
   * with the next write, or go in a batch of their own without fsync a
   * little later; pending() does not see them (GroupCommit.writeLazily).
   * Failures as for writeBehind.
   */
  writeLazily(ops: readonly BatchOp[], what: string): void {
    if (ops.length === 0) return;
    this.#behindFailures(this.ready().commit.writeLazily(ops), what, undefined);
  }

  #behindFailures(written: Promise<void>, what: string, failed: (() => void) | undefined): void {
    // Writes of one batch share its promise: one handler, and one warning,
    // per batch and kind of write, not one per message (an acknowledged
    // message's delete is written lazily).
    if (failed === undefined && written === this.#behind.promise && what === this.#behind.what) return;
    this.#behind = { promise: written, what };
    written.catch((error: unknown) => {
      this.log.warn({ err: error }, `could not store a ${what}`);
      failed?.();
    });
  }

  /** Runs a read of values being deleted; stop() waits for it. */
  track<T>(operation: () => Promise<T>): Promise<T> {
    const promise = operation();
    this.#inflight.add(promise);
    const forget = () => this.#inflight.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  /** A value as it will be once queued writes land; undefined when absent. */
  async read(key: Buffer): Promise<Buffer | undefined> {
    const [value] = await this.readMany([key]);
    return value;
  }

  /**
   * Reads `key` as it is now and queues its delete (with `ops`) in the same
   * synchronous step, so a write to the key made after this call always lands
   * after the delete. The read uses a LevelDB snapshot taken before the delete
   * is queued; `known` skips the read when the caller has the value. With
   * `durable` false the delete is written lazily (see writeLazily): this
   * resolves with the value without waiting for the batch (a failure is logged).
   */
  async readAndDelete(key: Buffer, ops: readonly BatchOp[], known: Buffer | undefined, durable = true): Promise<Buffer | undefined> {
    const { db, commit } = this.ready();
    let read: Promise<Buffer | undefined>;
    const queued = known ?? commit.pending(key);
    if (queued !== undefined) {
      read = Promise.resolve(queued ?? undefined);
    } else {
      const snapshot = db.snapshot();
      read = db.get(key, { snapshot }).finally(() => snapshot.close());
    }
    const deletion: BatchOp[] = [{ type: 'del', key }, ...ops];
    if (!durable) {
      this.writeLazily(deletion, 'removal of an acknowledged message');
      return read;
    }
    const [value] = await Promise.all([read, this.write(deletion)]);
    return value;
  }

  async readMany(keys: readonly Buffer[]): Promise<Array<Buffer | undefined>> {
    const { db, commit } = this.ready();
    const values: Array<Buffer | undefined> = new Array(keys.length);
    const fromDisk: number[] = [];
    keys.forEach((key, i) => {
      const queued = commit.pending(key);
      if (queued === undefined) fromDisk.push(i);
      else values[i] = queued ?? undefined;
    });
    if (fromDisk.length > 0) {
      const read = await db.getMany(fromDisk.map((i) => keys[i]!));
      fromDisk.forEach((i, j) => (values[i] = read[j] ?? undefined));
    }
    return values;
  }

  /** Decodes a stored packet; one that fails is counted, skipped and quarantined (see decodeStored). */
  decode(key: StoredKey, value: Buffer, forget: (() => void) | undefined): PacketLike | undefined {
    return decodeStored(this, key, value, forget);
  }

  /** The packets stored under `keys`, read a chunk at a time; `amend` adjusts each before it is yielded. */
  streamKeys(keys: readonly Buffer[], amend: (packet: PacketLike) => void): Readable {
    return streamStored(this, keys, amend);
  }

  stats(): PersistenceStats {
    return persistenceStats(this.#state, this, this.#handles?.commit.stats());
  }
}
