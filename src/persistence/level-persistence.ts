/**
 * The LevelDB persistence for aedes: aedes-persistence 11's async interface
 * (the one aedes calls), cleanIncoming included, on top of the store
 * core (store.ts and its parts). This class speaks aedes: its method names
 * and argument shapes, the broker events it hooks, and three corrections to
 * what aedes asks for (below); the records themselves are the store's.
 *
 * One PUBLISH, one batch. aedes handles a PUBLISH as a chain of persistence
 * calls, each awaited before the next (lib/handlers/publish.js, aedes.js
 * publishFuncs): incomingStorePacket (QoS 2) → storeRetained (retain) →
 * subscriptionsByTopic → outgoingEnqueueCombi → deliver → PUBREC (QoS 2; the
 * QoS 1 PUBACK is held back by src/broker/aedes-seam/index.ts, the publish path). If each call waited
 * for its own fsync, the records would land in separate batches, and a crash
 * between them could keep the stored QoS 2 packet without the queued copies:
 * the publisher resends, aedes finds the packet stored and acknowledges
 * without publishing, and an acknowledged message is lost. So the first two
 * resolve as soon as their ops are queued (write-behind), and
 * outgoingEnqueueCombi, the last step before anything is acknowledged (and,
 * but for a QoS 1 message's live deliveries, qos-publish.ts, delivered),
 * waits for the batch holding all of them. The chain runs in
 * one event-loop turn (promise callbacks only, no timers or I/O between the
 * calls), and the group commit puts one turn's writes in one batch, so the
 * records of one PUBLISH become durable together or not at all
 * (test/persistence-durable-ack.test.ts checks this on real aedes).
 *
 * Where this answers aedes differently from the reference persistence, on
 * purpose (aedes-persistence's conformance suite passes all the same,
 * test/persistence-abstract.test.ts):
 * 1. Delivery QoS of queued messages (outgoingEnqueueCombi). aedes queues one
 *    copy per matching subscription at the published QoS, whatever was
 *    granted [MQTT-3.8.4-6], and clears the extras as it delivers. Here each
 *    client gets one copy at min(published QoS, highest matching grant)
 *    [MQTT-3.3.5-1], like a live delivery (src/broker/delivery-rules.ts).
 * 2. The resend after CONNECT (outgoingStream). aedes resends a persistent
 *    session's stored messages (handlers/connect.js emptyQueue) from a
 *    snapshot read ahead of the socket, while the restored subscriptions
 *    already deliver live, and numbers each connection's messages from a
 *    random start without checking which identifiers the client still holds:
 *    one message went out twice, or under two identifiers, or a new message
 *    took the identifier of one awaiting its PUBREL. So a stream asked for
 *    one of the broker's connections is the store's resend (see
 *    outgoingResendStream and the store's claim), which hands out each message
 *    once per connection under an identifier the client does not hold
 *    (test/reconnect-race.test.ts).
 * 3. aedes #1003 (outgoingUpdate). A retained QoS 2 message sent to a
 *    persistent session is not stored in its outgoing queue, so the client's
 *    PUBREC finds nothing to update and aedes drops the connection. The
 *    PUBREL is due either way [MQTT-4.3.3-1]; nothing is lost by sending it.
 *
 * Lifecycle: start() opens and recovers the store, stop() flushes and closes
 * it. aedes calls setup(broker) (which starts the store if needed, and hooks
 * the broker's client events for session expiry) but never destroy(); the
 * daemon owns the lifecycle. A stopped instance is not restarted: build a new
 * one on the same path.
 */
import { Readable } from 'node:stream';
import type { PacketLike } from './codec.js';
import type { GroupCommit } from './group-commit.js';
import type { Store } from './open-store.js';
import type { LevelPersistenceDeps, LevelPersistenceOptions } from './options.js';
import { QueueStore } from './queue-store.js';
import { queuedRecipients, type MatchingSubscription } from './recipients.js';
import type { QueueChunks } from './queue-streams.js';
import { RetainedStore } from './retained-store.js';
import type { BeforeExpiry } from './session-expiry.js';
import { SessionRecords } from './session-records.js';
import { LevelStore } from './store.js';
import type { MatchedSubscription, SubscriptionInput } from './subscription-index.js';
import type {
  BrokerLike,
  ClientLike,
  OutgoingClaim,
  PersistenceState,
  PersistenceStats,
  PublishTap,
  StoreWriteFailure,
} from './types.js';


/** One settled promise for the answers that need not wait: aedes only chains on them. */
const RESOLVED: Promise<void> = Promise.resolve();

export class LevelPersistence {
  readonly #store: LevelStore;
  readonly #retained: RetainedStore;
  readonly #records: SessionRecords;
  readonly #queues: QueueStore;
  #detachBroker: (() => void) | undefined;

  constructor(options: LevelPersistenceOptions, deps: LevelPersistenceDeps) {
    this.#store = new LevelStore(options, deps);
    this.#retained = new RetainedStore(this.#store);
    this.#records = new SessionRecords(this.#store);
    this.#queues = new QueueStore(this.#store);
  }

  get state(): PersistenceState {
    return this.#store.state;
  }

  /** Set while writes are refused after a failed one (write-failures.ts); readiness reports it. */
  get writeFailure(): StoreWriteFailure | undefined {
    return this.#store.writeFailure;
  }

  /** The broker passed to setup() (aedes-persistence's conformance suite reads it). */
  get broker(): BrokerLike | undefined {
    return this.#store.broker;
  }

  /**
   * The group commit, for components that add their own records (keys under
   * `componentPrefix(name)`) to the same durable batches.
   */
  get commit(): GroupCommit {
    return this.#store.commit;
  }

  /** The LevelDB handle, for components reading their own key range. */
  get db(): Store {
    return this.#store.db;
  }

  /** A value as it will be once queued writes land; undefined when absent. */
  read(key: Buffer): Promise<Buffer | undefined> {
    return this.#store.read(key);
  }

  stats(): PersistenceStats {
    return this.#store.stats();
  }

  /** Entries in a session's queue: messages waiting to be sent, and those sent and not yet acknowledged. */
  queuedFor(clientId: string): number {
    return this.#store.queues.get(clientId)?.size ?? 0;
  }

  // ---------------------------------------------------------------- lifecycle

  /** Opens and recovers the store. Idempotent; rejects with a StoreError subclass. */
  start(): Promise<void> {
    return this.#store.start();
  }

  /** Flushes queued writes and closes the store. Idempotent. */
  stop(): Promise<void> {
    this.#detachBroker?.();
    return this.#store.stop();
  }

  /** aedes calls this from listen(); must be an async function (aedes checks). */
  async setup(broker: BrokerLike): Promise<void> {
    await this.start();
    this.#detachBroker?.();
    this.#store.broker = broker;
    // With a fixed broker id, aedes restarts its brokerCounter at 0 and would
    // reuse counters of queued entries: outgoingUpdate would then match the
    // wrong entry, and aedes' per-client dedupe would drop fresh messages.
    const max = this.#store.maxCounters.get(broker.id);
    if (max !== undefined && typeof broker.counter === 'number' && broker.counter < max) broker.counter = max;
    const { on, removeListener } = broker;
    if (typeof on !== 'function' || typeof removeListener !== 'function') return;
    const connected = (client: ClientLike) => this.#store.clientSeen(client.id, true);
    const disconnected = (client: ClientLike) => this.#store.clientSeen(client.id, false);
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

  /**
   * Runs `handler` on the sessions about to expire before they are dropped,
   * the expiry waiting for it (the broker's shared subscriptions hand the
   * messages waiting in them to another member); one handler, the last given.
   */
  beforeSessionsExpire(handler: BeforeExpiry): void {
    this.#store.expiry.beforeExpiry = handler;
  }

  /** Removes the sessions whose client has been away longer than their expiry (session-expiry.ts); returns how many. */
  sweepExpiredSessions(): Promise<number> {
    return this.#store.expiry.sweep();
  }

  // --------------------------------------------------------------- sessions
  // Called by the broker's seam (aedes-seam/sessions.ts), which keeps aedes'
  // in-memory session timers out: this store is the authority.

  /** The Session Expiry Interval (s) of an MQTT 5 client's session; undefined for 3.1.1 (see SessionExpiry.declare). */
  sessionExpiry(clientId: string, expirySec: number | undefined): void {
    this.#store.expiry.declare(clientId, expirySec);
  }

  /** Ends a session with its connection (MQTT 5, Session Expiry Interval 0): a plain drop, no stream. */
  endSession(clientId: string): Promise<void> {
    return this.#store.expiry.end(clientId);
  }

  /** Whether `clientId` has a stored session: subscriptions, queued messages or QoS 2 state. */
  hasSession(clientId: string): boolean {
    return this.#store.state === 'running' && this.#store.sessions.has(clientId);
  }

  /**
   * Adds a component's records to the durable batch of every QoS 1/2
   * PUBLISH (the one its PUBACK or PUBREC waits for), so that they commit
   * together with the message's session records or not at all. Called once
   * per PUBLISH, as published, from outgoingEnqueueCombi (aedes calls that
   * for every QoS 1/2 PUBLISH). Returns the function that removes it.
   */
  addPublishTap(tap: PublishTap): () => void {
    return this.#store.taps.add(tap);
  }

  /** See LevelStore.tapUngated: the daemon calls it for each QoS 0 PUBLISH (from aedes' 'publish' event, src/daemon.ts). */
  tapUngated(packet: PacketLike): void {
    this.#store.tapUngated(packet);
  }

  // --------------------------------------------------------------- retained

  /**
   * Write-behind (see the header): resolves once the retained message is in
   * memory and its write is queued. A QoS 1/2 PUBLISH waits for that write in
   * outgoingEnqueueCombi; a QoS 0 one, which nobody acknowledges, is
   * delivered without waiting for the disk.
   */
  async storeRetained(packet: PacketLike): Promise<void> {
    this.#retained.retain(packet);
  }

  createRetainedStream(pattern: string): Readable {
    return this.#retained.matching([pattern]);
  }

  createRetainedStreamCombi(patterns: readonly string[]): Readable {
    return this.#retained.matching(patterns);
  }

  // ---------------------------------------------------------- subscriptions

  addSubscriptions(client: ClientLike, subs: readonly SubscriptionInput[]): Promise<void> {
    return this.#records.subscribe(client.id, subs);
  }

  removeSubscriptions(client: ClientLike, topics: readonly string[]): Promise<void> {
    return this.#records.unsubscribe(client.id, topics);
  }

  async subscriptionsByClient(client: ClientLike): Promise<Array<{ topic: string; qos: number }>> {
    return this.#records.subscriptionsOf(client.id);
  }

  async countOffline(): Promise<{ subsCount: number; clientsCount: number }> {
    return this.#records.subscriptionCounts();
  }

  async subscriptionsByTopic(topic: string): Promise<readonly MatchedSubscription[]> {
    return this.subscriptionsByTopicNow(topic);
  }

  /** subscriptionsByTopic answered at once (the broker's QoS 1 publish, src/broker/aedes-seam/qos-publish.ts). */
  subscriptionsByTopicNow(topic: string): readonly MatchedSubscription[] {
    return this.#records.subscribersOf(topic);
  }

  /** Stored subscriptions whose filter starts with `prefix`, of every session (a scan; the broker's shared subscriptions). */
  subscriptionsWithPrefix(prefix: string): MatchedSubscription[] {
    return this.#records.subscriptionsWithPrefix(prefix);
  }

  /** Whether the session of `clientId` holds a subscription to exactly `topic` (in memory, at once). */
  holdsSubscription(clientId: string, topic: string): boolean {
    return this.#records.holds(clientId, topic);
  }

  cleanSubscriptions(client: ClientLike): Promise<void> {
    return this.#records.unsubscribe(client.id, undefined);
  }

  getClientList(topic: string): Readable {
    return Readable.from(this.#records.clientsSubscribedTo(topic));
  }

  // --------------------------------------------------------- outgoing queue

  async outgoingEnqueue(sub: MatchingSubscription, packet: PacketLike): Promise<void> {
    await this.#queues.enqueue(packet, [sub]);
  }

  /**
   * Queues `packet` for the subscribers aedes found (subscriptionsByTopic)
   * and resolves once that is durable: the barrier of the PUBLISH's
   * write-behind records (see the header). One copy per client, at its
   * highest matching grant (correction 1 in the header); the store caps that
   * at the published QoS. aedes calls this once per QoS 1/2 PUBLISH, usually
   * with nobody offline: no work beyond the store's call then.
   */
  outgoingEnqueueCombi(subs: readonly MatchingSubscription[], packet: PacketLike): Promise<void> {
    return this.#queues.enqueue(packet, queuedRecipients(subs, packet));
  }

  /** outgoingEnqueueCombi for the QoS 1 publish step (aedes-seam/qos-publish.ts): undefined when nothing waits, errors thrown. */
  outgoingEnqueueCombiNow(subs: readonly MatchingSubscription[], packet: PacketLike): Promise<void> | undefined {
    return this.#queues.enqueueNow(packet, queuedRecipients(subs, packet));
  }

  /**
   * Moves a queued message from one session to another (the broker's shared
   * subscriptions, when a member leaves): removed from `from`'s queue unless
   * already acknowledged or past PUBREC (then false, and nothing is queued),
   * and queued for `to` at `qos`, when given, in the same batch. The publish
   * taps do not see it again. Resolves once durable.
   */
  async outgoingMove(from: string | undefined, to: MatchingSubscription | undefined, packet: PacketLike): Promise<boolean> {
    let removal: Promise<void> | undefined;
    if (from !== undefined) {
      const taken = this.#queues.take(from, packet.brokerId, packet.brokerCounter);
      if (!taken.removed) return false;
      removal = taken.written;
    }
    const added = to ? this.#queues.enqueue(packet, [to], false) : undefined;
    await Promise.all([removal, added]);
    return true;
  }

  /** See the store's claim (queue-store.ts); the flow control calls it for each live delivery. */
  claimOutgoing(client: ClientLike, brokerId: unknown, brokerCounter: unknown): OutgoingClaim | undefined {
    return this.#queues.claim(client, brokerId, brokerCounter);
  }

  /**
   * Records the packet identifier a queued message was sent with, or
   * replaces a PUBLISH by its PUBREL (see the store's record). A PUBREL for
   * a message that was never queued resolves all the same (correction 3 in
   * the header): aedes then sends it.
   */
  outgoingUpdate(client: ClientLike, packet: PacketLike): Promise<void> {
    try {
      return this.outgoingUpdateNow(client, packet) ?? RESOLVED;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** outgoingUpdate without a promise when nothing waits for the disk (undefined then); throws what that rejects with. */
  outgoingUpdateNow(client: ClientLike, packet: PacketLike): Promise<void> | undefined {
    const recorded = this.#queues.record(client, packet);
    if (recorded === true) return undefined;
    if (recorded !== false) return recorded.then(() => undefined);
    if (packet.cmd !== 'pubrel') throw new Error('no such packet');
    this.#store.log.debug({ clientId: client.id, messageId: packet.messageId }, 'PUBREC for an unstored message');
    return undefined;
  }

  /** Removes the entry a PUBACK/PUBCOMP acknowledges and returns its packet. */
  outgoingClearMessageId(client: ClientLike, packet: PacketLike | number | null | undefined): Promise<PacketLike | undefined> {
    const messageId = typeof packet === 'object' && packet !== null ? packet.messageId : undefined;
    return this.#queues.acknowledge(client.id, messageId);
  }

  /** outgoingClearMessageId for a PUBACK or PUBCOMP taken by aedes-seam/wire-acks.ts: no promise unless it reads the disk, errors thrown. */
  outgoingClearMessageIdNow(client: ClientLike, messageId: number): PacketLike | undefined | Promise<PacketLike | undefined> {
    return this.#queues.acknowledgeNow(client.id, messageId);
  }

  /**
   * For one of the broker's connections (an aedes client, which carries the
   * broker it belongs to), the resend after CONNECT (correction 2 in the
   * header). aedes' other caller, Client#emptyOutgoingQueue (aedes 2's
   * _wipeSession, a session ending), is replaced by endSession at the
   * broker's seam (aedes-seam/sessions.ts), a plain drop.
   * For anything else, aedes-persistence's outgoingStream: the queue as
   * stored, packet identifiers as they are (none for a message never sent).
   */
  outgoingStream(client: ClientLike): Readable {
    return this.#ownConnection(client) ? this.outgoingResendStream(client) : this.#queues.storedStream(client.id);
  }

  /** Whether `client` is one of the broker's connections (an aedes client carries the broker it belongs to). */
  #ownConnection(client: ClientLike): boolean {
    const broker = this.#store.broker;
    return broker !== undefined && client.broker === broker;
  }

  /** The stored messages sent again on a new connection; see the store's resendStream. */
  outgoingResendStream(client: ClientLike): Readable {
    return this.#queues.resendStream(client);
  }

  /**
   * Whether anything may be queued for `clientId` (in memory, at once):
   * false only when the resend after CONNECT would find nothing
   * (src/broker/aedes-seam/connect.ts then skips it).
   */
  outgoingQueued(clientId: string): boolean {
    return this.#store.state !== 'running' || this.#store.queues.has(clientId);
  }

  /** outgoingStream's resend a chunk at a time (for src/broker/aedes-seam/resend.ts); undefined where it is not the resend. */
  outgoingResendChunks(client: ClientLike): QueueChunks | undefined {
    return this.#ownConnection(client) ? this.#queues.resendChunks(client) : undefined;
  }

  // ------------------------------------------------------- incoming (QoS 2)

  /**
   * Write-behind (see the header): resolves once the packet identifier is
   * known and the record is queued; the PUBLISH's outgoingEnqueueCombi waits
   * for the batch holding it, before aedes sends the PUBREC.
   */
  async incomingStorePacket(client: ClientLike, packet: PacketLike): Promise<void> {
    this.#records.storeIncoming(client.id, packet);
  }

  async incomingGetPacket(client: ClientLike, packet: { messageId?: unknown }): Promise<PacketLike> {
    const stored = await this.#records.incoming(client.id, packet.messageId as number);
    if (!stored) throw new Error('no such packet');
    return stored;
  }

  /**
   * Resolves also when there is nothing to delete: a PUBREL repeated within
   * one read finds the packet twice (aedes handles a read's packets
   * concurrently) and the second delete finds nothing; PUBCOMP is owed either
   * way [MQTT-4.3.3-2]. aedes 2.0.0-beta.1 passes a rejection here on to no
   * one (lib/handlers/pubrel.js, `.finally()`), which would end the process.
   */
  async incomingDelPacket(client: ClientLike, packet: { messageId?: unknown }): Promise<void> {
    await this.#records.deleteIncoming(client.id, packet.messageId as number);
  }

  /** Drops every stored incoming QoS 2 packet of a client whose session ends [MQTT-3.1.2-6]. */
  cleanIncoming(client: ClientLike): Promise<void> {
    return this.#records.clearIncoming(client.id);
  }

  // ------------------------------------------------------------------ wills

  async putWill(client: ClientLike, packet: PacketLike): Promise<void> {
    this.#store.ready();
    // Stamped on the caller's object, as the reference does: aedes reads them back.
    packet.brokerId = this.#store.broker?.id;
    packet.clientId = client.id;
    await this.#records.putWill(client.id, packet.brokerId, packet);
  }

  /**
   * The connection of `clientId` closed and its will waits for its Will
   * Delay Interval [MQTT-3.1.3-9]: stored again with when it falls due, so
   * that a restart before then does not lose the delay (aedes times it in
   * memory until then).
   */
  delayWill(clientId: string, will: PacketLike, dueAt: number): void {
    this.#records.delayWill(clientId, will.brokerId ?? this.#store.broker?.id, will, dueAt);
  }

  /** The wills an earlier run left with their delay running, and when each falls due: the broker times them. */
  delayedWills(): Array<[string, number]> {
    return this.#records.delayedWills();
  }

  /** Such a will once due, unless its client has stored another since (see SessionRecords.dueWill). */
  dueWill(clientId: string): Promise<PacketLike | undefined> {
    return this.#records.dueWill(clientId);
  }

  getWill(client: ClientLike): Promise<PacketLike | undefined> {
    return this.#records.getWill(client.id);
  }

  /**
   * With `client.brokerId` (aedes passes it when it deletes a will it has just
   * published) only a will stored by that broker is deleted: one that the
   * client's newer connection put in the meantime stays.
   */
  delWill(client: ClientLike): Promise<PacketLike | undefined> {
    return this.#records.takeWill(client.id, client.brokerId);
  }

  /**
   * Wills whose broker is not in `brokers` (aedes publishes those of dead
   * brokers), those of an earlier run included, which carry
   * PREVIOUS_RUN_BROKER_ID as their brokerId.
   */
  streamWill(brokers: Record<string, unknown> = {}): Readable {
    return this.#records.willsOutside(brokers);
  }
}

export function createLevelPersistence(options: LevelPersistenceOptions, deps: LevelPersistenceDeps): LevelPersistence {
  return new LevelPersistence(options, deps);
}
