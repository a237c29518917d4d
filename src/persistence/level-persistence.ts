/**
 * aedes persistence on LevelDB, implementing aedes-persistence 11's async
 * interface (the one aedes 1.x calls) in full, cleanIncoming included.
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
 * One PUBLISH, one batch. aedes handles a PUBLISH as a chain of persistence
 * calls, each awaited before the next (lib/handlers/publish.js, aedes.js
 * publishFuncs): incomingStorePacket (QoS 2) → storeRetained (retain) →
 * subscriptionsByTopic → outgoingEnqueueCombi → deliver → PUBREC (QoS 2; the
 * QoS 1 PUBACK is held back by src/broker/durable-ack.ts). If each call waited
 * for its own fsync, the records would land in separate batches, and a crash
 * between them could keep the stored QoS 2 packet without the queued copies:
 * the publisher resends, aedes finds the packet stored and acknowledges
 * without publishing, and an acknowledged message is lost. So the first two
 * resolve as soon as their ops are queued (write-behind), and
 * outgoingEnqueueCombi, the last step before anything is delivered or
 * acknowledged, waits for the batch holding all of them. The chain runs in
 * one event-loop turn (promise callbacks only, no timers or I/O between the
 * calls), and the group commit puts one turn's writes in one batch, so the
 * records of one PUBLISH become durable together or not at all
 * (test/persistence-durable-ack.test.ts checks this on real aedes).
 *
 * Lifecycle: start() opens and recovers the store, stop() flushes and closes
 * it. aedes calls setup(broker) (which starts the store if needed, and hooks
 * the broker's client events for session expiry) but never destroy(); the
 * daemon owns the lifecycle. A stopped instance is not restarted: build a new
 * one on the same path.
 */
import { statfs } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Logger } from '../observability/logger.js';
import {
  decodePacket,
  encodePacket,
  encodeSubscription,
  packetData,
  queuedPacket,
  type PacketLike,
} from './codec.js';
import { isNoSpace, StoreClosedError, StoreFullError } from './errors.js';
import { createGroupCommit, type BatchOp, type GroupCommit, type GroupCommitStats } from './group-commit.js';
import { incomingKey, outgoingKey, retainedKey, subscriptionKey, willKey } from './keys.js';
import { openStore, type Store } from './open-store.js';
import {
  resolveOptions,
  type LevelPersistenceDeps,
  type LevelPersistenceOptions,
  type ResolvedOptions,
} from './options.js';
import { OutgoingQueues, type ClientQueue, type QueueEntry } from './outgoing-queues.js';
import { QueueLimiter } from './queue-limits.js';
import { aliveOp, quarantineOps, recover } from './recover.js';
import { SessionClock } from './session-clock.js';
import { SubscriptionIndex, type MatchedSubscription, type SubscriptionInput } from './subscription-index.js';
import { TopicTree } from './topic-tree.js';

/** The parts of an aedes broker the persistence uses. */
export interface BrokerLike {
  id: string;
  /** aedes' brokerCounter source, raised past queued entries on setup. */
  counter?: number;
  /** Connected clients by id (aedes keeps them in `broker.clients`). */
  clients?: Record<string, unknown>;
  on?(event: string, listener: (client: ClientLike) => void): unknown;
  removeListener?(event: string, listener: (client: ClientLike) => void): unknown;
}

/** A component riding on each PUBLISH's durable batch (addPublishTap): the ops to add, if any. */
export type PublishTap = (packet: PacketLike) => BatchOp[] | undefined;

/** What claimOutgoing answers for a message that may be sent: the packet identifier to use, and whether it is a resend. Empty while the store is not running (aedes decides). */
export interface OutgoingClaim {
  messageId?: number;
  resend?: boolean;
}

export interface ClientLike {
  id: string;
  clean?: boolean;
  /** Only in aedes' delWill calls after it published a will; see delWill. */
  brokerId?: unknown;
}

export type PersistenceState = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

/** Counters and gauges for metrics; a plain object, safe to serialise. */
export interface PersistenceStats {
  state: PersistenceState;
  retainedMessages: number;
  /** Encoded bytes of the retained messages held in memory (and on disk). */
  retainedBytes: number;
  /** Subscriptions with QoS > 0 (aedes' countOffline subsCount). */
  subscriptions: number;
  subscribedClients: number;
  sessions: number;
  queuedClients: number;
  queuedEntries: number;
  /** Encoded bytes of queued PUBLISH entries. */
  queuedBytes: number;
  incomingPackets: number;
  wills: number;
  /** Messages dropped by the per-client queue limits. */
  queueDroppedMessages: number;
  /** Stored messages sent again on a later connection, under the packet identifier they had, DUP set. */
  resentMessages: number;
  /** Times a stored message already handed out on a connection was not sent on it again (a live delivery racing the resend after CONNECT). */
  repeatSendsAvoided: number;
  /** Times aedes offered a stored message under a second packet identifier and the first was kept; above 0 means a delivery path bypassed claimOutgoing. */
  packetIdConflicts: number;
  /** Times a message had to wait for the next connection because all 65,535 packet identifiers of its session were in use. */
  packetIdsExhausted: number;
  /** Times a client's queue hit a limit (one per enqueue that dropped something). */
  queueOverflows: number;
  sessionsExpired: number;
  /** Records that failed to decode, at recovery or later; each was skipped. */
  decodeErrors: number;
  /** Records in the quarantine range. */
  quarantinedRecords: number;
  retainedLookups: number;
  /** Topic-tree nodes visited by retained lookups; small unless the filters are broad. */
  retainedNodesVisited: number;
  recovery: { records: number; durationMs: number };
  commit: GroupCommitStats | undefined;
}

// Values fetched per LevelDB getMany while streaming.
const STREAM_CHUNK = 64;

/**
 * After a failed write (see #halt) the store is reopened every this many ms
 * until that works, once at least REOPEN_MIN_FREE_BYTES are free on its file
 * system (reopening flushes the recovered log into a table: it needs room,
 * and a failed attempt leaves the store closed, so reads fail too, until the
 * next attempt).
 */
const REOPEN_RETRY_MS = 1000;
const REOPEN_MIN_FREE_BYTES = 1024 * 1024;

/** Why writes are refused: the first failed write since the store was last (re)opened. */
export interface StoreWriteFailure {
  /** EDGEMQTT_STORE_FULL when the file system is full, else EDGEMQTT_STORE_WRITE_FAILED. */
  code: 'EDGEMQTT_STORE_FULL' | 'EDGEMQTT_STORE_WRITE_FAILED';
  message: string;
  /** Wall-clock ms when the write failed. */
  since: number;
  cause: unknown;
}

/**
 * The broker id streamWill reports for a will stored by an earlier run of the
 * broker. That broker instance is gone even when the id is configured to stay
 * the same, so aedes treats the will as one of a dead broker and publishes it
 * (aedes.js _clearWills, every 4 heartbeat intervals) unless its client has
 * reconnected meanwhile, which replaces or deletes it.
 */
export const PREVIOUS_RUN_BROKER_ID = 'edgemqtt:previous-run';

export class LevelPersistence {
  readonly #options: ResolvedOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  #state: PersistenceState = 'created';
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #db: Store | undefined;
  #commit: GroupCommit | undefined;
  #broker: BrokerLike | undefined;
  #detachBroker: (() => void) | undefined;
  #expiryTimer: NodeJS.Timeout | undefined;
  #writeFailure: StoreWriteFailure | undefined;
  #reopenTimer: NodeJS.Timeout | undefined;
  #reopening: Promise<void> | undefined;

  #subscriptions = new SubscriptionIndex();
  #retained = new TopicTree<Buffer>();
  #retainedBytes = 0;
  #queues = new OutgoingQueues();
  #incoming = new Map<string, Set<number>>();
  #wills = new Map<string, unknown>();
  #sessions = new SessionClock(new Map());
  #nextSeq = 1;
  #maxCounters = new Map<string, number>();
  #taps: PublishTap[] = [];
  #lastTapped: string | undefined;
  /** A number per aedes client object: which connection a queued message was handed out on. */
  readonly #connections = new WeakMap<ClientLike, number>();
  #nextConnection = 1;

  // Reads of values being deleted (acknowledged messages, wills); stop() waits for them.
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #limiter: QueueLimiter;
  readonly #counters = {
    sessionsExpired: 0,
    decodeErrors: 0,
    quarantinedRecords: 0,
    retainedLookups: 0,
    resentMessages: 0,
    repeatSendsAvoided: 0,
    packetIdConflicts: 0,
    packetIdsExhausted: 0,
    recoveryRecords: 0,
    recoveryMs: 0,
  };

  constructor(options: LevelPersistenceOptions, deps: LevelPersistenceDeps) {
    this.#options = resolveOptions(options);
    this.#log = deps.logger.child({ component: 'persistence' });
    this.#now = deps.now ?? Date.now;
    this.#limiter = new QueueLimiter(
      { maxMessages: this.#options.maxQueuedMessagesPerClient, maxBytes: this.#options.maxQueuedBytesPerClient },
      this.#log,
      this.#now,
    );
  }

  get state(): PersistenceState {
    return this.#state;
  }

  /** Set while writes are refused after a failed one (see #halt); readiness reports it. */
  get writeFailure(): StoreWriteFailure | undefined {
    return this.#writeFailure;
  }

  /** The broker passed to setup() (aedes-persistence's conformance suite reads it). */
  get broker(): BrokerLike | undefined {
    return this.#broker;
  }

  /**
   * The group commit, for components that add their own records (keys under
   * `componentPrefix(name)`) to the same durable batches.
   */
  get commit(): GroupCommit {
    return this.#ready().commit;
  }

  /** The LevelDB handle, for components reading their own key range. */
  get db(): Store {
    return this.#ready().db;
  }

  /** A value as it will be once queued writes land; undefined when absent. */
  async read(key: Buffer): Promise<Buffer | undefined> {
    const [value] = await this.#readMany([key]);
    return value;
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
    const { path } = this.#options;
    this.#log.info({ path, sync: this.#options.sync }, 'opening store');
    let db: Store;
    try {
      db = await openStore(path);
    } catch (error) {
      this.#state = 'failed';
      throw error;
    }
    try {
      const recovered = await recover(db, path, this.#log, this.#options.recoveryProgressEvery);
      this.#subscriptions = recovered.subscriptions;
      this.#retained = recovered.retained;
      this.#retainedBytes = recovered.retainedBytes;
      this.#queues = recovered.queues;
      this.#incoming = recovered.incoming;
      // Every will on disk was left by an earlier run (see PREVIOUS_RUN_BROKER_ID).
      this.#wills = new Map([...recovered.wills.keys()].map((clientId) => [clientId, PREVIOUS_RUN_BROKER_ID]));
      this.#sessions = new SessionClock(recovered.sessions);
      this.#nextSeq = recovered.nextSeq;
      this.#maxCounters = recovered.maxCounters;
      this.#counters.decodeErrors += recovered.decodeErrors;
      this.#counters.quarantinedRecords = recovered.quarantined;
      this.#counters.recoveryRecords = recovered.records;
      this.#counters.recoveryMs = recovered.durationMs;

      this.#db = db;
      this.#commit = createGroupCommit(
        { batch: (ops, options) => this.#batch(db, ops, options) },
        { policy: this.#options.sync, maxDelayMs: this.#options.commitDelayMs },
      );
      this.#state = 'running';
      const ops = [...recovered.repairOps];
      const now = this.#now();
      this.#sessions.reconcile(
        now,
        recovered.aliveAt === undefined ? 0 : now - recovered.aliveAt,
        this.#options.expiryCheckIntervalSec * 1000,
        this.#clientsWithState(),
        ops,
      );
      ops.push(aliveOp(now));
      // Every client is offline at start: a lowered limit applies now.
      for (const [clientId, queue] of this.#queues.clients()) this.#limiter.enforce(clientId, queue, ops);
      for (const [clientId] of [...this.#queues.clients()]) this.#queues.release(clientId);
      await this.#write(ops);
      await this.sweepExpiredSessions();

      const totals = this.#queues.totals();
      this.#log.info(
        {
          durationMs: recovered.durationMs,
          records: recovered.records,
          retained: this.#retained.size,
          sessions: this.#sessions.size,
          subscriptions: this.#subscriptions.matchableCount,
          queuedEntries: totals.entries,
          decodeErrors: recovered.decodeErrors,
        },
        'store recovered',
      );
      if (this.#options.sessionExpirySec > 0) {
        this.#expiryTimer = setInterval(() => {
          this.sweepExpiredSessions().catch((error: unknown) =>
            this.#log.warn({ err: error }, 'session expiry sweep failed'),
          );
        }, this.#options.expiryCheckIntervalSec * 1000);
        this.#expiryTimer.unref();
      }
    } catch (error) {
      this.#state = 'failed';
      clearTimeout(this.#reopenTimer);
      this.#db = undefined;
      await this.#commit?.close();
      this.#commit = undefined;
      await db.close().catch(() => undefined);
      // The first write (recovery repairs, the alive stamp) on a full disk:
      // the same clear error as a full disk while opening.
      if (isNoSpace(error)) throw new StoreFullError(path, error);
      throw error;
    }
  }

  // ------------------------------------------------------ failed writes

  /**
   * The group commit's only way to LevelDB. Once a write has failed, every
   * later one is refused without touching LevelDB until the store has been
   * reopened (#halt explains why), so nothing is acknowledged meanwhile.
   */
  async #batch(db: Store, ops: BatchOp[], options: { sync: boolean }): Promise<void> {
    if (this.#writeFailure) throw this.#writeFailure.cause;
    try {
      await db.batch(ops, options);
    } catch (error) {
      this.#halt(error);
      throw error;
    }
  }

  /**
   * What LevelDB (1.23, classic-level 3) does when a write fails, e.g. on
   * ENOSPC: the batch is not applied, and the next write is attempted as
   * usual (no sticky error for a failed append; a failed fsync or compaction
   * does make every later write fail until reopen). But the failed append
   * can leave part of its record in the write-ahead log while the log writer
   * counts it as written: records appended after it are misaligned, and when
   * the log is replayed at the next open they are dropped as corruption with
   * it. Writes that succeed after space is freed would be acknowledged and
   * then lost on restart (test/full-disk.test.ts shows it). So the first
   * failed write stops all writing until the store is reopened, which replays
   * the log up to the torn record (everything written before the failure)
   * into a table and starts a fresh log. Reopening is retried every
   * REOPEN_RETRY_MS in the background; meanwhile writes fail fast (QoS 1/2
   * publishers get no acknowledgement, see durable-ack.ts) and readiness
   * reports the failure.
   */
  #halt(error: unknown): void {
    if (this.#writeFailure) return;
    const full = isNoSpace(error);
    const message = error instanceof Error ? error.message : String(error);
    this.#writeFailure = {
      code: full ? 'EDGEMQTT_STORE_FULL' : 'EDGEMQTT_STORE_WRITE_FAILED',
      message,
      since: this.#now(),
      cause: error,
    };
    this.#log.error(
      { code: this.#writeFailure.code, err: error, retryMs: REOPEN_RETRY_MS },
      full
        ? 'store is full: writes are refused and nothing is acknowledged until space is freed and the store reopens'
        : 'store write failed: writes are refused and nothing is acknowledged until the store reopens',
    );
    this.#scheduleReopen();
  }

  #scheduleReopen(): void {
    if (this.#state !== 'running' || this.#reopenTimer) return;
    this.#reopenTimer = setTimeout(() => {
      this.#reopenTimer = undefined;
      this.#reopening = this.#reopen().finally(() => (this.#reopening = undefined));
    }, REOPEN_RETRY_MS);
    this.#reopenTimer.unref();
  }

  async #reopen(): Promise<void> {
    const db = this.#db;
    if (this.#state !== 'running' || !this.#writeFailure || !db) return;
    const free = await statfs(this.#options.path).then(
      (stats) => stats.bavail * stats.bsize,
      () => Infinity, // cannot tell: try
    );
    if (free >= REOPEN_MIN_FREE_BYTES) {
      try {
        // The group commit writes nothing meanwhile (#batch refuses); reads
        // made while closed fail, those made while opening wait for it.
        await db.close();
        await db.open();
        if (this.#state !== 'running') return;
        const failedFor = this.#now() - this.#writeFailure.since;
        this.#writeFailure = undefined;
        this.#log.warn({ failedForMs: failedFor }, 'store reopened: writes are accepted again');
        return;
      } catch (error) {
        this.#log.warn({ err: error }, 'store could not be reopened yet');
      }
    }
    this.#scheduleReopen();
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
    clearInterval(this.#expiryTimer);
    clearTimeout(this.#reopenTimer);
    await this.#reopening;
    this.#detachBroker?.();
    await Promise.allSettled([...this.#inflight]);
    const commit = this.#commit!;
    await commit.write([aliveOp(this.#now())]).catch((error: unknown) => {
      this.#log.warn({ err: error }, 'could not record the stop time');
    });
    await commit.close();
    await this.#db!.close();
    this.#state = 'stopped';
    this.#log.info('store closed');
  }

  /** aedes calls this from listen(); must be an async function (aedes checks). */
  async setup(broker: BrokerLike): Promise<void> {
    await this.start();
    this.#detachBroker?.();
    this.#broker = broker;
    // With a fixed broker id, aedes restarts its brokerCounter at 0 and would
    // reuse counters of queued entries: outgoingUpdate would then match the
    // wrong entry, and aedes' per-client dedupe would drop fresh messages.
    const max = this.#maxCounters.get(broker.id);
    if (max !== undefined && typeof broker.counter === 'number' && broker.counter < max) broker.counter = max;
    const { on, removeListener } = broker;
    if (typeof on !== 'function' || typeof removeListener !== 'function') return;
    const connected = (client: ClientLike) => this.#clientSeen(client, true);
    const disconnected = (client: ClientLike) => this.#clientSeen(client, false);
    on.call(broker, 'client', connected);
    on.call(broker, 'clientDisconnect', disconnected);
    this.#detachBroker = () => {
      removeListener.call(broker, 'client', connected);
      removeListener.call(broker, 'clientDisconnect', disconnected);
      this.#detachBroker = undefined;
    };
  }

  /** aedes-persistence's teardown; the same as stop(). */
  async destroy(): Promise<void> {
    await this.stop();
  }

  // --------------------------------------------------------------- retained

  /**
   * Write-behind (see the header): resolves once the retained message is in
   * memory and its write is queued. A QoS 1/2 PUBLISH waits for that write in
   * outgoingEnqueueCombi; a QoS 0 one, which nobody acknowledges, is
   * delivered without waiting for the disk.
   */
  async storeRetained(packet: PacketLike): Promise<void> {
    this.#ready();
    const topic = packet.topic as string;
    const key = retainedKey(topic);
    const payload = packet.payload as { length: number } | undefined;
    const previous = this.#retained.get(topic);
    // An empty payload clears the retained message [MQTT-3.3.1-10].
    if (!payload || payload.length === 0) {
      if (!this.#retained.delete(topic)) return;
      this.#retainedBytes -= previous?.length ?? 0;
      this.#writeBehind([{ type: 'del', key }], 'retained message');
      return;
    }
    const value = detached(encodePacket(packetData(packet)));
    this.#retained.add(topic, value);
    this.#retainedBytes += value.length - (previous?.length ?? 0);
    this.#writeBehind([{ type: 'put', key, value }], 'retained message');
  }

  createRetainedStream(pattern: string): Readable {
    return this.createRetainedStreamCombi([pattern]);
  }

  /**
   * The retained messages matching `patterns`, from memory: the set is taken
   * synchronously (a message stored or cleared later is not in it), and the
   * stream never waits for the disk. Records are decoded as they are read.
   */
  createRetainedStreamCombi(patterns: readonly string[]): Readable {
    this.#ready();
    // A Map: a topic matched by two of the filters is sent once.
    const matches = new Map<string, Buffer>();
    for (const pattern of patterns) this.#retained.match(pattern, (topic, value) => matches.set(topic, value));
    this.#counters.retainedLookups++;
    const persistence = this;
    function* generate(): Generator<PacketLike> {
      for (const [topic, value] of matches) {
        const packet = persistence.#decode(retainedKey(topic), value, () => {
          if (persistence.#retained.get(topic) !== value) return;
          persistence.#retained.delete(topic);
          persistence.#retainedBytes -= value.length;
        });
        if (packet) yield packet;
      }
    }
    return Readable.from(generate());
  }

  // ---------------------------------------------------------- subscriptions

  async addSubscriptions(client: ClientLike, subs: readonly SubscriptionInput[]): Promise<void> {
    this.#ready();
    const changed = this.#subscriptions.add(client.id, subs);
    const ops: BatchOp[] = [];
    for (const [topic, record] of changed) {
      ops.push({ type: 'put', key: subscriptionKey(client.id, topic), value: encodeSubscription(record) });
    }
    if (ops.length > 0) this.#sessions.start(client.id, this.#now(), ops);
    await this.#write(ops);
  }

  async removeSubscriptions(client: ClientLike, topics: readonly string[]): Promise<void> {
    this.#ready();
    const ops = this.#subscriptions
      .remove(client.id, topics)
      .map((topic): BatchOp => ({ type: 'del', key: subscriptionKey(client.id, topic) }));
    this.#forgetIfStateless(client.id, ops);
    await this.#write(ops);
  }

  async subscriptionsByClient(client: ClientLike): Promise<Array<{ topic: string; qos: number }>> {
    this.#ready();
    return this.#subscriptions.byClient(client.id);
  }

  async countOffline(): Promise<{ subsCount: number; clientsCount: number }> {
    this.#ready();
    return { subsCount: this.#subscriptions.matchableCount, clientsCount: this.#subscriptions.clientCount };
  }

  async subscriptionsByTopic(topic: string): Promise<MatchedSubscription[]> {
    this.#ready();
    return this.#subscriptions.match(topic);
  }

  async cleanSubscriptions(client: ClientLike): Promise<void> {
    this.#ready();
    const ops = this.#subscriptions
      .clear(client.id)
      .map((topic): BatchOp => ({ type: 'del', key: subscriptionKey(client.id, topic) }));
    this.#forgetIfStateless(client.id, ops);
    await this.#write(ops);
  }

  getClientList(topic: string): Readable {
    this.#ready();
    return Readable.from(this.#subscriptions.clientsOf(topic));
  }

  // --------------------------------------------------------- outgoing queue

  async outgoingEnqueue(sub: { clientId: string }, packet: PacketLike): Promise<void> {
    await this.outgoingEnqueueCombi([sub], packet);
  }

  /**
   * Queues `packet` for each subscriber and resolves once that is durable.
   * aedes calls this for every QoS 1/2 PUBLISH (usually with nobody offline)
   * as the last persistence step before it delivers the message: the barrier
   * of the write-behind records of the same PUBLISH (see the header). Its own
   * write goes into the newest batch, which holds them; without one, a
   * PUBLISH that wrote something before (a retained message, a QoS 2 packet)
   * waits for the newest batch.
   */
  async outgoingEnqueueCombi(subs: ReadonlyArray<{ clientId: string }>, packet: PacketLike): Promise<void> {
    const { commit } = this.#ready();
    const ops: BatchOp[] = [];
    this.#tap(packet, ops);
    if (subs.length === 0) {
      if (ops.length > 0) await this.#write(ops);
      else if (packet.retain === true || packet.qos === 2) await commit.barrier();
      return;
    }
    const stored = queuedPacket(packet);
    const value = encodePacket(stored);
    let owned: Buffer | undefined;
    const cacheable = () => (owned ??= detached(value));
    for (const sub of subs) this.#enqueue(sub.clientId, stored, value, cacheable, ops);
    await this.#write(ops);
  }

  #enqueue(clientId: string, stored: PacketLike, value: Buffer, cacheable: () => Buffer, ops: BatchOp[]): void {
    const online = this.#isOnline(clientId);
    const queue = this.#queues.getOrCreate(clientId);
    const seq = this.#nextSeq++;
    queue.append({
      seq,
      cmd: stored.cmd as string,
      brokerId: stored.brokerId,
      brokerCounter: stored.brokerCounter,
      messageId: stored.messageId,
      bytes: value.length,
      // Not cached even for a connected client: aedes sends it under a new
      // packet identifier, and outgoingUpdate caches that record instead.
      // A stalled client's backlog thus stays on disk, not in RAM.
      value: undefined,
    });
    ops.push({ type: 'put', key: outgoingKey(clientId, seq), value });
    this.#sessions.start(clientId, this.#now(), ops);
    // Bounded whether the client is connected or not: a stalled persistent
    // subscriber would otherwise grow the store without limit. Online, only
    // messages not sent yet are dropped (see queue-limits.ts); aedes or the
    // flow control skip them (claimOutgoing). A message larger than
    // maxQueuedBytesPerClient drops itself: release an emptied queue.
    if (this.#limiter.enforce(clientId, queue, ops, online) > 0) this.#queues.release(clientId);
  }

  /**
   * Adds a component's records to the durable batch of every QoS 1/2
   * PUBLISH (the one its PUBACK or PUBREC waits for), so that they commit
   * together with the message's session records or not at all. Called
   * once per PUBLISH, as published, from outgoingEnqueueCombi (the broker
   * calls that for every QoS 1/2 PUBLISH, the published QoS first; see
   * src/broker/delivery-fixes.ts). Returns the function that removes it.
   */
  addPublishTap(tap: PublishTap): () => void {
    this.#taps.push(tap);
    return () => {
      this.#taps = this.#taps.filter((other) => other !== tap);
    };
  }

  /**
   * A QoS 0 PUBLISH for the taps: nothing waits for it (there is no
   * acknowledgement), so their records are written behind.
   */
  tapUngated(packet: PacketLike): void {
    if (this.#state !== 'running') return;
    const ops: BatchOp[] = [];
    this.#tap(packet, ops);
    if (ops.length > 0) this.#writeBehind(ops, 'record of a QoS 0 message');
  }

  #tap(packet: PacketLike, ops: BatchOp[]): void {
    if (this.#taps.length === 0) return;
    // The broker may enqueue one PUBLISH in several calls (a group per
    // granted QoS), back to back: tap it once.
    const message = `${String(packet.brokerId)}\u0000${String(packet.brokerCounter)}`;
    if (packet.brokerCounter !== undefined && message === this.#lastTapped) return;
    this.#lastTapped = message;
    for (const tap of this.#taps) {
      const extra = tap(packet);
      if (extra) ops.push(...extra);
    }
  }

  /**
   * Called by the flow control (src/broker/flow-control.ts) right before it
   * hands a live QoS 1/2 message for a connected persistent session to aedes'
   * deliverQoS, which will call outgoingUpdate for it. Answers with the
   * packet identifier to send it under, or undefined when it must not be
   * sent: no longer queued (dropped by the queue limits, or acknowledged),
   * already past PUBREC, or already handed out on this connection (by the
   * resend stream after CONNECT, see outgoingResendStream). A message handed out
   * on an earlier connection keeps its identifier and is a resend (DUP)
   * [MQTT-4.3.3-1]; a new one gets a free identifier (allocateMessageId).
   */
  claimOutgoing(client: ClientLike, brokerId: unknown, brokerCounter: unknown): OutgoingClaim | undefined {
    if (this.#state !== 'running') return {};
    const queue = this.#queues.get(client.id);
    const entry = queue?.findByCounter(brokerId, brokerCounter);
    if (!queue || !entry || entry.cmd !== 'publish') return undefined;
    const connection = this.#connectionOf(client);
    if (entry.sentOn === connection) {
      this.#counters.repeatSendsAvoided++;
      return undefined;
    }
    const resend = entry.messageId !== undefined;
    if (!resend && !this.#numberEntry(client.id, queue, entry)) return undefined;
    if (resend) this.#counters.resentMessages++;
    entry.sentOn = connection;
    return { messageId: entry.messageId as number, resend };
  }

  /** Gives a queued message its packet identifier (in memory; outgoingUpdate stores it with the record). */
  #numberEntry(clientId: string, queue: ClientQueue, entry: QueueEntry): boolean {
    const messageId = queue.allocateMessageId();
    if (messageId === undefined) {
      this.#counters.packetIdsExhausted++;
      this.#log.warn({ clientId }, 'all 65535 packet identifiers of this session are in use: the message waits for the next connection');
      return false;
    }
    queue.update(entry, { messageId });
    return true;
  }

  /** A number for each aedes client object, i.e. each connection. */
  #connectionOf(client: ClientLike): number {
    let connection = this.#connections.get(client);
    if (connection === undefined) {
      connection = this.#nextConnection++;
      this.#connections.set(client, connection);
    }
    return connection;
  }

  /**
   * Records the packet identifier a queued message was sent with, or replaces
   * a PUBLISH by its PUBREL. The passed packet is what gets stored: it is what
   * went on the wire (the granted QoS, the identifier), so a resend after a
   * restart repeats exactly that [MQTT-4.4.0-1].
   *
   * aedes sends the packet once this resolves. A PUBREL, and a QoS 2 PUBLISH,
   * wait for the disk: a QoS 2 message resent under another identifier after
   * a crash could be delivered twice by a receiver that delivers on PUBLISH.
   * A QoS 1 PUBLISH does not (write-behind): resent after a crash it may be
   * delivered twice anyway, and aedes resends a reconnecting client's queue
   * one message at a time, so an fsync per message would pace the whole
   * backlog. A resend that changes nothing writes nothing.
   */
  async outgoingUpdate(client: ClientLike, packet: PacketLike): Promise<void> {
    this.#ready();
    const queue = this.#queues.get(client.id);
    const entry = queue?.findForUpdate(packet);
    if (!queue || !entry) throw new Error('no such packet');
    if (packet.cmd === 'publish' && entry.cmd === 'publish' && entry.messageId !== undefined && packet.messageId !== entry.messageId) {
      // A message already sent under one identifier must never be sent
      // under another: a receiver that completed the first would deliver it
      // twice. claimOutgoing and outgoingResendStream hand out the identifier, so
      // this means aedes numbered it itself; `packet` is what aedes writes
      // next, so it goes out under the identifier already given.
      this.#counters.packetIdConflicts++;
      this.#log.warn({ clientId: client.id, kept: entry.messageId, offered: packet.messageId }, 'queued message offered under a second packet identifier; the first is kept');
      packet.messageId = entry.messageId;
    }
    const data = packetData(packet);
    const value = encodePacket(data);
    if (entry.value?.equals(value)) return;
    const cmd = typeof data.cmd === 'string' ? data.cmd : 'publish';
    queue.update(entry, {
      cmd,
      brokerId: data.brokerId,
      brokerCounter: data.brokerCounter,
      messageId: data.messageId,
      bytes: value.length,
    });
    entry.value = this.#isOnline(client.id) ? detached(value) : undefined;
    const ops: BatchOp[] = [{ type: 'put', key: outgoingKey(client.id, entry.seq), value }];
    if (cmd === 'publish' && data.qos === 1) this.#writeBehind(ops, 'queued message identifier');
    else await this.#write(ops);
  }

  /** Removes the entry a PUBACK/PUBCOMP acknowledges and returns its packet. */
  outgoingClearMessageId(client: ClientLike, packet: PacketLike | number | null | undefined): Promise<PacketLike | undefined> {
    try {
      this.#ready();
    } catch (error) {
      return Promise.reject(error);
    }
    const messageId = typeof packet === 'object' && packet !== null ? packet.messageId : undefined;
    const queue = this.#queues.get(client.id);
    const entry = queue?.findForClear(messageId);
    if (!queue || !entry) return Promise.resolve(undefined);
    queue.remove(entry);
    this.#queues.release(client.id);
    const key = outgoingKey(client.id, entry.seq);
    const ops: BatchOp[] = [];
    this.#forgetIfStateless(client.id, ops);
    return this.#track(async () => {
      const value = await this.#readAndDelete(key, ops, entry.value);
      return value ? this.#decode(key, value, undefined) : undefined;
    });
  }

  /**
   * aedes-persistence's outgoingStream: the queue as stored, packet
   * identifiers as they are (none for a message never sent). The broker
   * resends through outgoingResendStream instead, which decides what each
   * message is at the moment it goes out.
   */
  outgoingStream(client: ClientLike): Readable {
    this.#ready();
    return this.#queueStream(client.id, (chunk, keys, values) =>
      chunk.flatMap((entry, i): PacketLike[] => {
        const packet = this.#storedPacket(client.id, entry, keys[i]!, values[i]);
        return packet ? [packet] : [];
      }),
    );
  }

  /**
   * The stored messages aedes sends after CONNECT (handlers/connect.js
   * emptyQueue), in queue order. Each is decided when its chunk has been
   * read, from the in-memory index, the truth for what a message is now:
   * - a PUBREL stays a PUBREL: the PUBLISH is never sent again once the
   *   client's PUBREC arrived [MQTT-4.3.3-1];
   * - a PUBLISH that has a packet identifier is sent again under it, with
   *   DUP set [MQTT-3.3.1-1], [MQTT-4.4.0-1];
   * - a PUBLISH without one gets a free one (allocateMessageId);
   * - one already handed out on this connection (a live delivery that went
   *   first) is skipped, and the ones handed out here are skipped by live
   *   deliveries (claimOutgoing): each message leaves once per connection.
   * The identifiers given here are stored with one write per chunk, which a
   * QoS 2 message waits for before it is sent (see outgoingUpdate); aedes'
   * outgoingUpdate then finds the record unchanged and writes nothing. So a
   * backlog costs one fsync per chunk, not one per message.
   */
  outgoingResendStream(client: ClientLike): Readable {
    this.#ready();
    const connection = this.#connectionOf(client);
    return this.#queueStream(client.id, async (chunk, keys, values) => {
      const { packets, ops, durable } = this.#resends(client, connection, chunk, keys, values);
      if (ops.length > 0) {
        if (durable) await this.#write(ops);
        else this.#writeBehind(ops, 'resent message identifier');
      }
      return packets;
    });
  }

  /**
   * A client's queue as it is now (like the reference implementation: what
   * is queued later reaches the client live), read a chunk at a time;
   * `decide` turns each chunk, right after it was read, into what to yield.
   * Entries removed meanwhile (acknowledged, dropped) are skipped.
   */
  #queueStream(
    clientId: string,
    decide: (chunk: QueueEntry[], keys: Buffer[], values: Array<Buffer | undefined>) => PacketLike[] | Promise<PacketLike[]>,
  ): Readable {
    const entries = [...(this.#queues.get(clientId)?.entries() ?? [])];
    const persistence = this;
    async function* generate(): AsyncGenerator<PacketLike> {
      for (let start = 0; start < entries.length; start += STREAM_CHUNK) {
        const chunk = entries.slice(start, start + STREAM_CHUNK).filter((entry) => persistence.#holds(clientId, entry));
        const keys = chunk.map((entry) => outgoingKey(clientId, entry.seq));
        const values = await persistence.#readValues(chunk, keys);
        yield* await decide(chunk, keys, values);
      }
    }
    return Readable.from(generate());
  }

  /** Decides, in one synchronous step, what outgoingResendStream sends of one chunk (see there). */
  #resends(
    client: ClientLike,
    connection: number,
    chunk: readonly QueueEntry[],
    keys: readonly Buffer[],
    values: ReadonlyArray<Buffer | undefined>,
  ): { packets: PacketLike[]; ops: BatchOp[]; durable: boolean } {
    const clientId = client.id;
    const queue = this.#queues.get(clientId);
    const online = this.#isOnline(clientId);
    const packets: PacketLike[] = [];
    const ops: BatchOp[] = [];
    let durable = false;
    chunk.forEach((entry, i) => {
      // Acknowledged, dropped or sent live while the chunk was read.
      if (!queue || !this.#holds(clientId, entry) || entry.sentOn === connection) return;
      const value = values[i];
      const stored = this.#storedPacket(clientId, entry, keys[i]!, value);
      if (!stored || !value) return;
      let packet: PacketLike;
      if (entry.cmd !== 'publish') {
        packet = stored.cmd === entry.cmd ? stored : { cmd: entry.cmd, messageId: entry.messageId };
      } else if (entry.messageId !== undefined) {
        packet = { ...stored, cmd: 'publish', messageId: entry.messageId, dup: true };
        this.#counters.resentMessages++;
      } else {
        if (!this.#numberEntry(clientId, queue, entry)) return;
        packet = { ...stored, cmd: 'publish', messageId: entry.messageId };
      }
      entry.sentOn = connection;
      const encoded = encodePacket(packetData(packet));
      if (!encoded.equals(value)) {
        ops.push({ type: 'put', key: keys[i]!, value: encoded });
        queue.update(entry, { bytes: encoded.length });
        if (packet.cmd !== 'publish' || packet.qos === 2) durable = true;
      }
      // aedes resends it next (outgoingUpdate): an unchanged resend then writes nothing.
      entry.value = online ? detached(encoded) : undefined;
      packets.push(packet);
    });
    return { packets, ops, durable };
  }

  /** The records of queued entries: the cached copy where there is one, else the group commit's queued write or the disk. */
  async #readValues(chunk: readonly QueueEntry[], keys: readonly Buffer[]): Promise<Array<Buffer | undefined>> {
    const cached = chunk.map((entry) => entry.value);
    const missing = keys.filter((_, i) => cached[i] === undefined);
    const read = missing.length > 0 ? await this.#readMany(missing) : [];
    let next = 0;
    return chunk.map((_, i) => cached[i] ?? read[next++]);
  }

  /** Decodes a queued entry's record; undefined (and the entry dropped) when it is missing or undecodable. */
  #storedPacket(clientId: string, entry: QueueEntry, key: Buffer, value: Buffer | undefined): PacketLike | undefined {
    if (!value) {
      // Indexed but not stored: its write failed. Drop it so limits and counts stay true.
      if (this.#holds(clientId, entry)) this.#dropEntry(clientId, entry);
      return undefined;
    }
    return this.#decode(key, value, () => this.#dropEntry(clientId, entry));
  }

  // ------------------------------------------------------- incoming (QoS 2)

  /**
   * Write-behind (see the header): resolves once the packet identifier is
   * known and the record is queued; the PUBLISH's outgoingEnqueueCombi waits
   * for the batch holding it, before aedes sends the PUBREC.
   */
  async incomingStorePacket(client: ClientLike, packet: PacketLike): Promise<void> {
    this.#ready();
    const messageId = packet.messageId as number;
    const key = incomingKey(client.id, messageId);
    const stored = queuedPacket(packet);
    stored.messageId = messageId;
    let ids = this.#incoming.get(client.id);
    if (!ids) {
      ids = new Set();
      this.#incoming.set(client.id, ids);
    }
    ids.add(messageId);
    const ops: BatchOp[] = [{ type: 'put', key, value: encodePacket(stored) }];
    this.#sessions.start(client.id, this.#now(), ops);
    this.#writeBehind(ops, 'incoming QoS 2 packet', () => {
      // Not stored: a resend of the PUBLISH is a new message again (unless a
      // newer write to the key is queued).
      if (this.#commit?.pending(key) === undefined) this.#forgetIncoming(client.id, messageId);
    });
  }

  async incomingGetPacket(client: ClientLike, packet: { messageId?: unknown }): Promise<PacketLike> {
    const { commit } = this.#ready();
    const messageId = packet.messageId as number;
    // Most lookups are for a new packet identifier: answered from memory.
    if (!this.#incoming.get(client.id)?.has(messageId)) throw new Error('no such packet');
    const key = incomingKey(client.id, messageId);
    // A resent PUBLISH (DUP) of a packet whose record is not durable yet
    // would get its PUBREC (aedes: "already stored") before the original's
    // batch lands: wait for that batch; if it failed, the packet is unknown.
    const written = commit.whenWritten(key);
    if (written) {
      await written.catch(() => undefined);
      if (!this.#incoming.get(client.id)?.has(messageId)) throw new Error('no such packet');
    }
    const value = await this.read(key);
    const stored = value && this.#decode(key, value, () => this.#forgetIncoming(client.id, messageId));
    if (!stored) throw new Error('no such packet');
    return stored;
  }

  async incomingDelPacket(client: ClientLike, packet: { messageId?: unknown }): Promise<void> {
    this.#ready();
    const messageId = packet.messageId as number;
    if (!this.#incoming.get(client.id)?.has(messageId)) throw new Error('no such packet');
    this.#forgetIncoming(client.id, messageId);
    const ops: BatchOp[] = [{ type: 'del', key: incomingKey(client.id, messageId) }];
    this.#forgetIfStateless(client.id, ops);
    await this.#write(ops);
  }

  /** Drops every stored incoming QoS 2 packet of a client whose session ends [MQTT-3.1.2-6]. */
  async cleanIncoming(client: ClientLike): Promise<void> {
    this.#ready();
    const ids = this.#incoming.get(client.id);
    if (!ids) return;
    this.#incoming.delete(client.id);
    const ops = [...ids].map((id): BatchOp => ({ type: 'del', key: incomingKey(client.id, id) }));
    this.#forgetIfStateless(client.id, ops);
    await this.#write(ops);
  }

  // ------------------------------------------------------------------ wills

  async putWill(client: ClientLike, packet: PacketLike): Promise<void> {
    this.#ready();
    // Stamped on the caller's object, as the reference does: aedes reads them back.
    packet.brokerId = this.#broker?.id;
    packet.clientId = client.id;
    this.#wills.set(client.id, packet.brokerId);
    await this.#write([{ type: 'put', key: willKey(client.id), value: encodePacket(packetData(packet)) }]);
  }

  async getWill(client: ClientLike): Promise<PacketLike | undefined> {
    this.#ready();
    if (!this.#wills.has(client.id)) return undefined;
    const key = willKey(client.id);
    const value = await this.read(key);
    return value ? this.#decode(key, value, () => this.#wills.delete(client.id)) : undefined;
  }

  /**
   * With `client.brokerId` (aedes passes it when it deletes a will it has just
   * published) only a will stored by that broker is deleted: one that the
   * client's newer connection put in the meantime stays.
   */
  delWill(client: ClientLike): Promise<PacketLike | undefined> {
    try {
      this.#ready();
    } catch (error) {
      return Promise.reject(error);
    }
    if (!this.#wills.has(client.id)) return Promise.resolve(undefined);
    if (client.brokerId !== undefined && this.#wills.get(client.id) !== client.brokerId) return Promise.resolve(undefined);
    this.#wills.delete(client.id);
    const key = willKey(client.id);
    return this.#track(async () => {
      const value = await this.#readAndDelete(key, [], undefined);
      return value ? this.#decode(key, value, undefined) : undefined;
    });
  }

  /**
   * Wills whose broker is not in `brokers` (aedes publishes those of dead
   * brokers), those of an earlier run included, which carry
   * PREVIOUS_RUN_BROKER_ID as their brokerId.
   */
  streamWill(brokers: Record<string, unknown> = {}): Readable {
    this.#ready();
    const keys: Buffer[] = [];
    const previousRun = new Set<string>();
    for (const [clientId, brokerId] of this.#wills) {
      if (brokers[String(brokerId)]) continue;
      keys.push(willKey(clientId));
      if (brokerId === PREVIOUS_RUN_BROKER_ID) previousRun.add(clientId);
    }
    return this.#streamKeys(keys, (packet) => {
      if (typeof packet.clientId === 'string' && previousRun.has(packet.clientId)) packet.brokerId = PREVIOUS_RUN_BROKER_ID;
    });
  }

  // --------------------------------------------------------------- sessions

  /**
   * Removes persistent sessions whose client has been away longer than
   * sessionExpirySec; returns how many. Runs on a timer; callable directly.
   */
  async sweepExpiredSessions(): Promise<number> {
    this.#ready();
    const now = this.#now();
    const ops: BatchOp[] = [aliveOp(now)];
    const due = this.#sessions.expired(
      now,
      this.#options.sessionExpirySec * 1000,
      this.#options.expiryCheckIntervalSec * 1000,
      (clientId) => this.#isOnline(clientId),
      ops,
    );
    for (const [clientId, idleMs] of due) {
      this.#dropSession(clientId, ops);
      this.#log.info({ clientId, idleSec: Math.round(idleMs / 1000) }, 'expired an abandoned persistent session');
    }
    this.#counters.sessionsExpired += due.length;
    await this.#write(ops);
    return due.length;
  }

  #clientSeen(client: ClientLike, connected: boolean): void {
    if (!connected) this.#queues.get(client.id)?.dropCachedValues();
    if (this.#state !== 'running' || !this.#sessions.has(client.id)) return;
    const ops: BatchOp[] = [];
    this.#sessions.set(client.id, this.#now(), ops);
    this.#write(ops).catch((error: unknown) => this.#log.warn({ err: error, clientId: client.id }, 'could not record session time'));
  }

  /** A client with no subscriptions, queue or QoS 2 state has no session to expire. */
  #forgetIfStateless(clientId: string, ops: BatchOp[]): void {
    if (!this.#sessions.has(clientId) || this.#hasState(clientId)) return;
    this.#sessions.forget(clientId, ops);
    this.#limiter.forget(clientId);
  }

  #hasState(clientId: string): boolean {
    return this.#subscriptions.has(clientId) || this.#queues.has(clientId) || this.#incoming.has(clientId);
  }

  #clientsWithState(): Set<string> {
    const clients = new Set<string>(this.#subscriptions.clients());
    for (const [clientId] of this.#queues.clients()) clients.add(clientId);
    for (const clientId of this.#incoming.keys()) clients.add(clientId);
    return clients;
  }

  #dropSession(clientId: string, ops: BatchOp[]): void {
    for (const topic of this.#subscriptions.clear(clientId)) ops.push({ type: 'del', key: subscriptionKey(clientId, topic) });
    for (const entry of this.#queues.delete(clientId)?.entries() ?? []) {
      ops.push({ type: 'del', key: outgoingKey(clientId, entry.seq) });
    }
    for (const id of this.#incoming.get(clientId) ?? []) ops.push({ type: 'del', key: incomingKey(clientId, id) });
    this.#incoming.delete(clientId);
    this.#sessions.forget(clientId, ops);
    this.#limiter.forget(clientId);
  }

  // ----------------------------------------------------------------- helpers

  #ready(): { db: Store; commit: GroupCommit } {
    // 'stopping' still accepts: aedes' last fire-and-forget writes (wills of
    // closing clients) land before the group commit closes.
    if ((this.#state !== 'running' && this.#state !== 'stopping') || !this.#db || !this.#commit) {
      throw new StoreClosedError(`persistence (${this.#state})`);
    }
    return { db: this.#db, commit: this.#commit };
  }

  #write(ops: readonly BatchOp[]): Promise<void> {
    if (ops.length === 0) return Promise.resolve();
    return this.#ready().commit.write(ops);
  }

  /**
   * Queues `ops` without waiting for them (see the header). A failure is
   * logged and `failed` runs; whoever waits on the batch (a barrier in
   * outgoingEnqueueCombi) gets the error too, so nothing is acknowledged.
   */
  #writeBehind(ops: readonly BatchOp[], what: string, failed?: () => void): void {
    this.#write(ops).catch((error: unknown) => {
      this.#log.warn({ err: error }, `could not store a ${what}`);
      failed?.();
    });
  }

  #track<T>(operation: () => Promise<T>): Promise<T> {
    const promise = operation();
    this.#inflight.add(promise);
    const forget = () => this.#inflight.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  #isOnline(clientId: string): boolean {
    const clients = this.#broker?.clients;
    return clients !== undefined && clients[clientId] !== undefined;
  }

  #holds(clientId: string, entry: QueueEntry): boolean {
    return this.#queues.get(clientId)?.holds(entry) ?? false;
  }

  #dropEntry(clientId: string, entry: QueueEntry): void {
    this.#queues.get(clientId)?.remove(entry);
    this.#queues.release(clientId);
  }

  #forgetIncoming(clientId: string, messageId: number): void {
    const ids = this.#incoming.get(clientId);
    ids?.delete(messageId);
    if (ids?.size === 0) this.#incoming.delete(clientId);
  }

  /**
   * Reads `key` as it is now and queues its delete (with `ops`) in the same
   * synchronous step, so a write to the key made after this call always lands
   * after the delete. The read uses a LevelDB snapshot taken before the delete
   * is queued; `known` skips the read when the caller has the value.
   */
  async #readAndDelete(key: Buffer, ops: readonly BatchOp[], known: Buffer | undefined): Promise<Buffer | undefined> {
    const { db, commit } = this.#ready();
    let read: Promise<Buffer | undefined>;
    const queued = known ?? commit.pending(key);
    if (queued !== undefined) {
      read = Promise.resolve(queued ?? undefined);
    } else {
      const snapshot = db.snapshot();
      read = db.get(key, { snapshot }).finally(() => snapshot.close());
    }
    const written = this.#write([{ type: 'del', key }, ...ops]);
    const [value] = await Promise.all([read, written]);
    return value;
  }

  async #readMany(keys: readonly Buffer[]): Promise<Array<Buffer | undefined>> {
    const { db, commit } = this.#ready();
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

  /**
   * Decodes a stored packet. One that fails is logged, counted and skipped:
   * `forget` drops it from the in-memory index, and unless a newer write to
   * the key is queued it moves to the quarantine range.
   */
  #decode(key: Buffer, value: Buffer, forget: (() => void) | undefined): PacketLike | undefined {
    try {
      return decodePacket(value);
    } catch (error) {
      this.#counters.decodeErrors++;
      this.#log.warn({ key: key.toString('hex'), err: (error as Error).message }, 'skipping a record that fails to decode');
      if (forget) {
        forget();
        if (this.#commit?.pending(key) === undefined) {
          this.#counters.quarantinedRecords++;
          this.#write(quarantineOps(key, value)).catch((writeError: unknown) =>
            this.#log.warn({ err: writeError }, 'could not quarantine a record'),
          );
        }
      }
      return undefined;
    }
  }

  #streamKeys(keys: readonly Buffer[], amend: (packet: PacketLike) => void): Readable {
    const persistence = this;
    async function* generate(): AsyncGenerator<PacketLike> {
      for (let start = 0; start < keys.length; start += STREAM_CHUNK) {
        const chunk = keys.slice(start, start + STREAM_CHUNK);
        const values = await persistence.#readMany(chunk);
        const packets: PacketLike[] = [];
        values.forEach((value, i) => {
          if (!value) return;
          const packet = persistence.#decode(chunk[i]!, value, undefined);
          if (!packet) return;
          amend(packet);
          packets.push(packet);
        });
        yield* packets;
      }
    }
    return Readable.from(generate());
  }

  stats(): PersistenceStats {
    const totals = this.#queues.totals();
    let incomingPackets = 0;
    for (const ids of this.#incoming.values()) incomingPackets += ids.size;
    const c = this.#counters;
    return {
      state: this.#state,
      retainedMessages: this.#retained.size,
      retainedBytes: this.#retainedBytes,
      subscriptions: this.#subscriptions.matchableCount,
      subscribedClients: this.#subscriptions.clientCount,
      sessions: this.#sessions.size,
      queuedClients: totals.clients,
      queuedEntries: totals.entries,
      queuedBytes: totals.publishBytes,
      incomingPackets,
      wills: this.#wills.size,
      queueDroppedMessages: this.#limiter.droppedMessages,
      queueOverflows: this.#limiter.overflows,
      resentMessages: c.resentMessages,
      repeatSendsAvoided: c.repeatSendsAvoided,
      packetIdConflicts: c.packetIdConflicts,
      packetIdsExhausted: c.packetIdsExhausted,
      sessionsExpired: c.sessionsExpired,
      decodeErrors: c.decodeErrors,
      quarantinedRecords: c.quarantinedRecords,
      retainedLookups: c.retainedLookups,
      retainedNodesVisited: this.#retained.nodesVisited,
      recovery: { records: c.recoveryRecords, durationMs: c.recoveryMs },
      commit: this.#commit?.stats(),
    };
  }
}

/**
 * A buffer that owns its memory. msgpackr packs into a shared 8 KiB slab, so
 * keeping one small record alive would keep the whole slab alive.
 */
function detached(value: Buffer): Buffer {
  return value.byteOffset === 0 && value.byteLength === value.buffer.byteLength ? value : Buffer.from(value);
}

export function createLevelPersistence(options: LevelPersistenceOptions, deps: LevelPersistenceDeps): LevelPersistence {
  return new LevelPersistence(options, deps);
}
