/**
 * Messages of a shared subscription waiting in the session of a member that
 * is away, handed to a member that is connected [MQTT-4.8.2].
 *
 * Two ways a group's messages come to wait in one member's session
 * (shared-subscriptions.ts): with no member connected, a QoS 1/2 message is
 * queued for one of the group's persistent sessions, round-robin; and a
 * persistent member that leaves while no other is connected keeps what it
 * had in flight. Before, they waited there for that one client, however
 * long it stayed away, while other members were connected and idle. Now,
 * whenever a member of the group with a persistent session is connected
 * (it subscribes, or its session resumes), what waits in the sessions of
 * the members that are away is moved to such members, round-robin, each
 * message out of the absent session in the same batch that queues it in
 * the new one (outgoingMove, so that it is neither lost nor delivered by
 * both): a work queue behaves so, and HiveMQ keeps a shared subscription's
 * messages for the group rather than for a member. MQTT 5.0 §4.8.2 lets the
 * Server wait for the chosen client or send the message to another. Not to
 * a clean member: a stored message would leave the disk for its in-memory
 * queue, whose overflow is dropped (limits.maxQueuedMessagesPerClient).
 *
 * Which queued messages are the group's: the queue names the session, not
 * the subscription that matched. A message whose topic none of the
 * session's own (non-shared) subscriptions matches, and exactly one of its
 * shared subscriptions does, came from that group. Any other stays: one the
 * session also receives through its own subscription is its own, and one
 * that two of its groups matched cannot be given to one group without the
 * other losing it or getting it twice. A QoS 2 message already sent to
 * the absent client stays, PUBREL or not: its delivery must be completed
 * with that client when it reconnects [MQTT-4.8.2-4], and never with
 * another, even when its session ends first [MQTT-4.8.2-5]. So does a
 * message the absent client acknowledged meanwhile (outgoingMove then
 * moves nothing). A
 * message moves at the QoS it was queued at, already capped at the absent
 * member's grant, and is capped again at the new member's.
 *
 * A session about to expire hands what waits in it for a group to another
 * member (handOver), connected (a clean one too: it is that or lost) or,
 * when none is, away: the store's expiry waits for that before it drops
 * the session (beforeSessionsExpire), at most one expiry check interval. Not at
 * the sweep when the store starts, before the broker runs: what waits in a
 * session found expired then is lost with it.
 */
import type { Readable } from 'node:stream';
import { topicMatches } from '../config/topic-filter.js';
import { copyForSubscriber, parseSharedFilter, type DeliveredPacket } from './aedes-seam/index.js';

/** What the session store offers for this (LevelPersistence). */
export interface BacklogStore {
  /** A session's subscriptions, its client connected or not. */
  subscriptionsByClient(client: { id: string }): Promise<Array<{ topic: string; qos: number }>>;
  /** A session's queue as stored, for a client id that is no connection. */
  outgoingStream(client: { id: string }): Readable;
  /** Whether anything may be queued for a client id, from memory: false spares reading its queue. */
  outgoingQueued(clientId: string): boolean;
}

/** A shared subscription group: its name as aedes keeps it (parseSharedFilter). */
export interface BacklogGroup {
  readonly name: string;
}

/** What the shared subscriptions tell and do for the moves. */
export interface BacklogOwner<G extends BacklogGroup> {
  /** The client ids of the group's persistent sessions whose client is away. */
  absent(group: G): string[];
  /** Whether the session's client is connected (again): what waits in it is its own. */
  present(group: G, clientId: string): boolean;
  /** Whether a member of the group with a persistent session is connected, to take messages. */
  canAdopt(group: G): boolean;
  /**
   * Moves a message out of `from`'s session to another member: with
   * `adopting`, only to a connected member with a persistent session (else
   * it stays); otherwise to any connected member, or an absent one's
   * session. `done` once it is placed (durably).
   */
  place(group: G, packet: DeliveredPacket, from: string, done: () => void, adopting: boolean): void;
  /** A session's queue could not be read. */
  failed(group: G, error: unknown): void;
}

export class SharedBacklogs<G extends BacklogGroup> {
  readonly #store: BacklogStore;
  readonly #owner: BacklogOwner<G>;
  /** Groups being gone through, and those asked for again meanwhile. */
  readonly #running = new Set<G>();
  readonly #again = new Set<G>();

  constructor(store: BacklogStore, owner: BacklogOwner<G>) {
    this.#store = store;
    this.#owner = owner;
  }

  /** A member of `group` is connected: moves what waits for absent members to the connected ones (one pass at a time per group). */
  adopt(group: G): void {
    if (this.#running.has(group)) {
      this.#again.add(group);
      return;
    }
    this.#running.add(group);
    this.#pass(group)
      .catch((error: unknown) => this.#owner.failed(group, error))
      .finally(() => {
        this.#running.delete(group);
        if (this.#again.delete(group)) this.adopt(group);
      });
  }

  /**
   * `clientId`'s session is about to expire: what waits in it for `group`
   * goes to another member, connected or, when none is, away (MQTT 5.0
   * §4.8.2: for a QoS 1 message, if the Client's Session terminates before
   * it reconnects, the Server SHOULD send it to another Client of the Shared
   * Subscription; a QoS 2 one not yet sent is no one's yet). Resolves once
   * each is placed, before the session goes.
   */
  async handOver(group: G, clientId: string): Promise<void> {
    if (this.#store.outgoingQueued(clientId)) await this.#placeAll(group, clientId, false);
  }

  async #pass(group: G): Promise<void> {
    for (const clientId of this.#owner.absent(group)) {
      if (!this.#owner.canAdopt(group)) return;
      if (this.#store.outgoingQueued(clientId)) await this.#placeAll(group, clientId, true);
    }
  }

  /** Places what waits in `clientId`'s session for `group`; `adopting`: with connected persistent members only (see place). */
  async #placeAll(group: G, clientId: string, adopting: boolean): Promise<void> {
    const waiting = await this.#waiting(group, clientId);
    const placed: Array<Promise<void>> = [];
    for (const packet of waiting) {
      // Decided message by message: the absent client may be back, or the last taker gone.
      if (this.#owner.present(group, clientId) || (adopting && !this.#owner.canAdopt(group))) break;
      placed.push(new Promise<void>((done) => this.#owner.place(group, packet, clientId, done, adopting)));
    }
    // Placed together: the moves share the store's batches, and reach the members in queue order.
    await Promise.all(placed);
  }

  /** The messages in `clientId`'s session that are `group`'s alone (see the header), each as a fresh copy. */
  async #waiting(group: G, clientId: string): Promise<DeliveredPacket[]> {
    const subscriptions = await this.#store.subscriptionsByClient({ id: clientId });
    const own: string[] = [];
    const shared: Array<{ name: string; filter: string }> = [];
    for (const { topic } of subscriptions) {
      const parts = parseSharedFilter(topic);
      if (parts) shared.push(parts);
      else own.push(topic);
    }
    const waiting: DeliveredPacket[] = [];
    for await (const stored of this.#store.outgoingStream({ id: clientId })) {
      const packet = stored as DeliveredPacket & { cmd?: string };
      if (packet.cmd !== 'publish' || own.some((filter) => topicMatches(filter, packet.topic))) continue;
      // A QoS 2 message sent already: its delivery is completed with that client [MQTT-4.8.2-4], and never another's [MQTT-4.8.2-5].
      if (packet.qos === 2 && packet.messageId !== undefined) continue;
      let matched: string | undefined;
      let count = 0;
      for (const parts of shared) {
        if (!topicMatches(parts.filter, packet.topic)) continue;
        matched = parts.name;
        count++;
      }
      if (count === 1 && matched === group.name) waiting.push(copyForSubscriber(packet));
    }
    return waiting;
  }
}
