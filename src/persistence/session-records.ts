/**
 * The store's per-client session records other than the outgoing queue
 * (queue-store.ts): subscriptions, stored incoming QoS 2 packets, wills.
 */
import { Readable } from 'node:stream';
import { encodePacket, encodeSubscription, packetData, queuedPacket, WILL_DUE_AT, type PacketLike } from './codec.js';
import type { BatchOp } from './group-commit.js';
import { incomingKey, subscriptionKey, willKey } from './keys.js';
import type { LevelStore } from './store.js';
import { PREVIOUS_RUN_BROKER_ID } from './types.js';
import type { MatchedSubscription, SubscriptionInput } from './subscription-index.js';

export class SessionRecords {
  readonly #store: LevelStore;

  constructor(store: LevelStore) {
    this.#store = store;
  }

  // ---------------------------------------------------------- subscriptions

  /** Adds or replaces subscriptions; resolves once durable. */
  async subscribe(clientId: string, subs: readonly SubscriptionInput[]): Promise<void> {
    const store = this.#store;
    store.ready();
    const changed = store.subscriptions.add(clientId, subs);
    const ops: BatchOp[] = [];
    for (const [topic, record] of changed) {
      ops.push({ type: 'put', key: subscriptionKey(clientId, topic), value: encodeSubscription(record) });
    }
    if (ops.length > 0) store.sessions.start(clientId, store.now(), ops);
    await store.write(ops);
  }

  /** Removes the subscriptions to `topics` (all of them when undefined); resolves once durable. */
  async unsubscribe(clientId: string, topics: readonly string[] | undefined): Promise<void> {
    const store = this.#store;
    store.ready();
    const removed = topics ? store.subscriptions.remove(clientId, topics) : store.subscriptions.clear(clientId);
    const ops = removed.map((topic): BatchOp => ({ type: 'del', key: subscriptionKey(clientId, topic) }));
    store.forgetIfStateless(clientId, ops);
    await store.write(ops);
  }

  subscriptionsOf(clientId: string): Array<{ topic: string; qos: number }> {
    this.#store.ready();
    return this.#store.subscriptions.byClient(clientId);
  }

  /** The subscriptions (QoS > 0) whose filter matches `topic`: who gets a queued copy. */
  subscribersOf(topic: string): readonly MatchedSubscription[] {
    this.#store.ready();
    return this.#store.subscriptions.match(topic);
  }

  /** Every stored subscription whose filter starts with `prefix` (a scan). */
  subscriptionsWithPrefix(prefix: string): MatchedSubscription[] {
    this.#store.ready();
    return this.#store.subscriptions.withPrefix(prefix);
  }

  /** Whether the session of `clientId` holds a subscription to exactly `topic`. */
  holds(clientId: string, topic: string): boolean {
    return this.#store.state === 'running' && this.#store.subscriptions.holds(clientId, topic);
  }

  /** The clients subscribed with exactly the filter `topic`. */
  clientsSubscribedTo(topic: string): Iterable<string> {
    this.#store.ready();
    return this.#store.subscriptions.clientsOf(topic);
  }

  subscriptionCounts(): { subsCount: number; clientsCount: number } {
    const { subscriptions } = this.#store;
    this.#store.ready();
    return { subsCount: subscriptions.matchableCount, clientsCount: subscriptions.clientCount };
  }

  // ------------------------------------------------------- incoming (QoS 2)

  /**
   * Write-behind (see the adapter's header): returns once the packet
   * identifier is known and the record is queued; the PUBLISH's enqueue
   * waits for the batch holding it, before aedes sends the PUBREC.
   */
  storeIncoming(clientId: string, packet: PacketLike): void {
    const store = this.#store;
    store.ready();
    const messageId = packet.messageId as number;
    const key = incomingKey(clientId, messageId);
    const stored = queuedPacket(packet);
    stored.messageId = messageId;
    let ids = store.incoming.get(clientId);
    if (!ids) {
      ids = new Set();
      store.incoming.set(clientId, ids);
    }
    ids.add(messageId);
    const ops: BatchOp[] = [{ type: 'put', key, value: encodePacket(stored) }];
    store.sessions.start(clientId, store.now(), ops);
    store.writeBehind(ops, 'incoming QoS 2 packet', () => {
      // Not stored: a resend of the PUBLISH is a new message again (unless a
      // newer write to the key is queued).
      if (store.pending(key) === undefined) this.#forgetIncoming(clientId, messageId);
    });
  }

  /** The stored incoming packet with this identifier, or undefined. */
  async incoming(clientId: string, messageId: number): Promise<PacketLike | undefined> {
    const store = this.#store;
    const { commit } = store.ready();
    // Most lookups are for a new packet identifier: answered from memory.
    if (!store.incoming.get(clientId)?.has(messageId)) return undefined;
    const key = incomingKey(clientId, messageId);
    // A resent PUBLISH (DUP) of a packet whose record is not durable yet
    // would get its PUBREC (aedes: "already stored") before the original's
    // batch lands: wait for that batch; if it failed, the packet is unknown.
    const written = commit.whenWritten(key);
    if (written) {
      await written.catch(() => undefined);
      if (!store.incoming.get(clientId)?.has(messageId)) return undefined;
    }
    const value = await store.read(key);
    return value && store.decode(key, value, () => this.#forgetIncoming(clientId, messageId));
  }

  /** Deletes a stored incoming packet; false when there is none. */
  async deleteIncoming(clientId: string, messageId: number): Promise<boolean> {
    const store = this.#store;
    store.ready();
    if (!store.incoming.get(clientId)?.has(messageId)) return false;
    this.#forgetIncoming(clientId, messageId);
    const ops: BatchOp[] = [{ type: 'del', key: incomingKey(clientId, messageId) }];
    store.forgetIfStateless(clientId, ops);
    await store.write(ops);
    return true;
  }

  /** Drops every stored incoming QoS 2 packet of a client whose session ends [MQTT-3.1.2-6]. */
  async clearIncoming(clientId: string): Promise<void> {
    const store = this.#store;
    store.ready();
    const ids = store.incoming.get(clientId);
    if (!ids) return;
    store.incoming.delete(clientId);
    const ops = [...ids].map((id): BatchOp => ({ type: 'del', key: incomingKey(clientId, id) }));
    store.forgetIfStateless(clientId, ops);
    await store.write(ops);
  }

  #forgetIncoming(clientId: string, messageId: number): void {
    const ids = this.#store.incoming.get(clientId);
    ids?.delete(messageId);
    if (ids?.size === 0) this.#store.incoming.delete(clientId);
  }

  // ------------------------------------------------------------------ wills

  /** Stores a client's will, owned by the broker `brokerId`; resolves once durable. */
  async putWill(clientId: string, brokerId: unknown, packet: PacketLike): Promise<void> {
    const store = this.#store;
    store.ready();
    this.#setWill(clientId, brokerId);
    await store.write([{ type: 'put', key: willKey(clientId), value: encodePacket(packetData(packet)) }]);
  }

  /**
   * The connection of `clientId` closed with its will's delay running
   * [MQTT-3.1.3-9]: the will, as stored at CONNECT, is stored again with
   * when it falls due, so a restart before then still publishes it then
   * (session-expiry.ts holdWills). The write is queued at once, ahead of
   * anything a reconnect of the client writes.
   */
  delayWill(clientId: string, brokerId: unknown, packet: PacketLike, dueAt: number): void {
    const store = this.#store;
    store.ready();
    this.#setWill(clientId, brokerId);
    store.willsHeldUntil.set(clientId, dueAt);
    const value = encodePacket({ ...packetData(packet), [WILL_DUE_AT]: dueAt });
    store.writeBehind([{ type: 'put', key: willKey(clientId), value }], 'will delay');
  }

  #setWill(clientId: string, brokerId: unknown): void {
    this.#forgetWill(clientId);
    this.#store.wills.set(clientId, brokerId);
  }

  #forgetWill(clientId: string): void {
    const store = this.#store;
    store.wills.delete(clientId);
    store.willsHeldUntil.delete(clientId);
    store.delayedWills.delete(clientId);
  }

  async getWill(clientId: string): Promise<PacketLike | undefined> {
    const store = this.#store;
    store.ready();
    if (!store.wills.has(clientId)) return undefined;
    const key = willKey(clientId);
    const value = await store.read(key);
    const will = value ? store.decode(key, value, () => this.#forgetWill(clientId)) : undefined;
    if (will) delete will[WILL_DUE_AT];
    return will;
  }

  /** The clients whose will an earlier run left with its delay running, and when each falls due (ms since epoch). */
  delayedWills(): Array<[string, number]> {
    this.#store.ready();
    return [...this.#store.delayedWills];
  }

  /**
   * The will an earlier run left for `clientId` with its delay running, once
   * due; undefined when the client has stored another since (it reconnected)
   * or it is gone. It carries PREVIOUS_RUN_BROKER_ID as its brokerId.
   */
  async dueWill(clientId: string): Promise<PacketLike | undefined> {
    const store = this.#store;
    store.ready();
    const dueAt = store.delayedWills.get(clientId);
    if (dueAt === undefined || dueAt > store.now() || store.wills.get(clientId) !== PREVIOUS_RUN_BROKER_ID) return undefined;
    const will = await this.getWill(clientId);
    if (!will || store.wills.get(clientId) !== PREVIOUS_RUN_BROKER_ID) return undefined;
    will.brokerId = PREVIOUS_RUN_BROKER_ID;
    return will;
  }

  /**
   * Deletes a client's will and returns it. With `ownedBy`, only a will
   * stored by that broker is deleted.
   */
  takeWill(clientId: string, ownedBy: unknown): Promise<PacketLike | undefined> {
    const store = this.#store;
    try {
      store.ready();
    } catch (error) {
      return Promise.reject(error);
    }
    if (!store.wills.has(clientId)) return Promise.resolve(undefined);
    if (ownedBy !== undefined && store.wills.get(clientId) !== ownedBy) return Promise.resolve(undefined);
    this.#forgetWill(clientId);
    const key = willKey(clientId);
    return store.track(async () => {
      const value = await store.readAndDelete(key, [], undefined);
      const will = value ? store.decode(key, value, undefined) : undefined;
      if (will) delete will[WILL_DUE_AT];
      return will;
    });
  }

  /**
   * Wills whose broker is not in `brokers`, those of an earlier run
   * included, which carry PREVIOUS_RUN_BROKER_ID as their brokerId; not
   * those held back until their delay has passed (willsHeldUntil).
   */
  willsOutside(brokers: Record<string, unknown>): Readable {
    const store = this.#store;
    store.ready();
    const keys: Buffer[] = [];
    const previousRun = new Set<string>();
    const now = store.now();
    for (const [clientId, brokerId] of store.wills) {
      if (brokers[String(brokerId)]) continue;
      if ((store.willsHeldUntil.get(clientId) ?? -Infinity) > now) continue;
      keys.push(willKey(clientId));
      if (brokerId === PREVIOUS_RUN_BROKER_ID) previousRun.add(clientId);
    }
    return store.streamKeys(keys, (packet) => {
      delete packet[WILL_DUE_AT];
      if (typeof packet.clientId === 'string' && previousRun.has(packet.clientId)) packet.brokerId = PREVIOUS_RUN_BROKER_ID;
    });
  }
}
