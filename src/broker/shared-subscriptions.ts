/**
 * Shared subscriptions, `$share/{group}/{filter}` [MQTT-4.8.2], for MQTT 5
 * and 3.1.1 clients alike (as Mosquitto, EMQX and HiveMQ accept them from
 * 3.1.1 clients). aedes 2.0.0-beta.1 has none (#841); the seam
 * (aedes-seam/shared.ts) renames such a filter before aedes' SUBSCRIBE
 * handler sees it, so aedes keeps it as an ordinary subscription of the
 * client (granted QoS in the SUBACK, stored with a persistent session,
 * restored on reconnect and after a restart, removed by UNSUBSCRIBE) that
 * matches no topic: aedes itself never delivers on it, and sends no retained
 * message when it is made (MQTT 5.0 §3.3.1.3 sends the retained messages
 * when a new Non-shared Subscription is made; Mosquitto sends none to a
 * shared one either).
 *
 * The design:
 * - Membership. Every SUBSCRIBE (or restore) of a shared filter passes
 *   authorizeSubscribe: the ACL is asked about the filter after the group
 *   name (`canSubscribe('a/b')` for `$share/g/a/b`), and once every check has
 *   allowed it the connection becomes a member of the group for that filter.
 *   It leaves on UNSUBSCRIBE and when its connection closes.
 * - Delivery. Each group (a group name and a filter) is subscribed once to
 *   the broker's emitter; each message that matches goes to ONE member,
 *   chosen round-robin among the connected members: cheap, fair over time,
 *   and a slow member does not stall the group, since the flow control
 *   queues its share (and bounds it) like any other delivery. The member's
 *   copy has min(published QoS, its granted QoS) [MQTT-3.8.4-6] and goes
 *   through the member's delivery functions, i.e. the delivery rules, the
 *   flow control and aedes' authorizeForward (ACL read rules). Several
 *   groups each get a copy, and a member's non-shared subscriptions get
 *   theirs as usual (when the chosen member also gets the message through a
 *   non-shared subscription it receives one copy: the delivery rules' overlap
 *   rule, which the spec allows, §4.8.2).
 * - Durability. A persistent member's QoS 1/2 messages must be in its
 *   session store before they are sent (the flow control sends a persistent
 *   session nothing else). So for a QoS 1/2 message the member is chosen when
 *   aedes queues the message for persistent sessions, which the publisher's
 *   acknowledgement waits for, and queued for it there when its session is
 *   persistent (addQueueRecipients); the live delivery then goes to the same
 *   member. Where a member is chosen later (the chosen one left meanwhile, a
 *   member that left), the message is queued for a persistent one first and
 *   the emitter's callback (hence the publisher's acknowledgement) waits.
 * - No member connected: a QoS 1/2 message is queued for one of the group's
 *   persistent sessions, round-robin (as Mosquitto does; the sessions are
 *   read from the store at start, so this holds across a restart), and sent
 *   when its client returns, or to a member that connects first; a QoS 0
 *   message is dropped (counted).
 * - A member that leaves. Each QoS 1/2 message sent to a connected member is
 *   kept (in memory, shared-in-flight.ts) until the member acknowledges it.
 *   When the member's connection closes, each one left is
 *   sent to another connected member (MQTT 5.0 §4.8.2 allows it; the issue
 *   requires it), moved out of the leaving member's persistent session in the
 *   same batch that queues it for the next (outgoingMove), so it is neither
 *   lost nor sent to the leaving member again. With no other member
 *   connected, a persistent member's messages wait in its session; a clean
 *   member's go to a persistent session of the group, or are lost (counted)
 *   like any clean session's.
 *   An UNSUBSCRIBE does not move anything: the server completes the QoS 1/2
 *   deliveries it started [MQTT-3.10.4-3].
 * - A member that connects. What waits in the sessions of members that are
 *   away (queued while no member was connected, or kept by a member that
 *   left) moves to the connected members (shared-backlog.ts).
 * - A session that expires. What waits in it for a group goes to another
 *   member, connected or away, before the store drops it (shared-backlog.ts).
 *
 * Not done: a session the store finds expired when it starts (before the
 * broker runs) loses what waits in it. A member that leaves while another is
 * connected hands over its QoS 2 messages not yet answered with PUBREC too,
 * as the shared-subscription issue asked, where MQTT 5.0 would have the
 * delivery completed with that client [MQTT-4.8.2-4] (or, its session
 * ended, the message sent to no other [MQTT-4.8.2-5]); what waits in an
 * absent member's session keeps to the specification (shared-backlog.ts).
 * A PUBACK read before aedes reports the write (a full socket) is not
 * matched, and the message may be sent to a second member when the first
 * leaves. A member chosen by two groups for one message, or chosen for a
 * message it also receives through a non-shared subscription, gets one copy
 * (the delivery rules' overlap rule; §4.8.2 allows either).
 */
import type { Aedes, AedesOptions, Client, Subscription } from 'aedes';
import { topicMatches } from '../config/topic-filter.js';
import type { Logger } from '../observability/logger.js';
import { SharedBacklogs, type BacklogStore } from './shared-backlog.js';
import { SharedInFlight } from './shared-in-flight.js';
import {
  addQueueRecipients,
  announceSharedSubscriptions,
  copyForSubscriber,
  deliverToClient,
  onAcknowledgements,
  parseSharedFilter,
  renameSharedFilters,
  SHARED_FILTER_PREFIX,
  watchDeliveries,
  wireSharedFilter,
  type AedesSeam,
  type DeliveredPacket,
  type DeliveryWatcher,
  type QoS,
  type QueueRecipient,
} from './aedes-seam/index.js';

type AuthorizeSubscribeHandler = NonNullable<AedesOptions['authorizeSubscribe']>;

/** What the session store offers shared subscriptions (LevelPersistence); without it, no offline queueing or moves. */
export interface SharedSubscriptionStore extends BacklogStore {
  subscriptionsWithPrefix(prefix: string): Array<{ clientId: string; topic: string; qos: number }>;
  holdsSubscription(clientId: string, topic: string): boolean;
  outgoingMove(from: string | undefined, to: { clientId: string; qos: number } | undefined, packet: DeliveredPacket & Record<string, unknown>): Promise<boolean>;
  /** Runs `handler` on sessions about to expire, before they are dropped (the store waits for it). */
  beforeSessionsExpire(handler: (clientIds: string[]) => Promise<void>): void;
}

interface Member {
  client: Client;
  qos: QoS;
  /** MQTT 5 Retain As Published [MQTT-3.3.1-12]. */
  rap: boolean;
}

/** Whether `member` can be sent messages: connected, and with `persistentOnly`, with a persistent session. */
function takes(member: Member, persistentOnly: boolean): boolean {
  return !member.client.closed && !(persistentOnly && member.client.clean);
}

interface Group {
  name: string;
  filter: string;
  /** Connected members by client id. */
  members: Map<string, Member>;
  /** Persistent sessions holding the subscription, connected or not: client id → granted QoS. */
  sessions: Map<string, QoS>;
  turn: number;
  offlineTurn: number;
  listener: (packet: DeliveredPacket, done: () => void) => void;
}

export interface SharedSubscriptionStats {
  groups: number;
  members: number;
  /** Messages that matched a group with no member to take them. */
  undelivered: number;
  /** Messages of a member that left, or that waited for a member away, sent to another member. */
  redelivered: number;
}

export class SharedSubscriptions {
  readonly #log: Logger;
  readonly #store: SharedSubscriptionStore | undefined;
  /** By the filter name aedes keeps (parseSharedFilter). */
  readonly #groups = new Map<string, Group>();
  /** The member chosen for a QoS 1/2 message when aedes queued it, per group, for its live delivery. */
  readonly #chosen = new WeakMap<object, Map<string, { clientId: string; queued: boolean }>>();
  readonly #inFlight = new SharedInFlight();
  /** What watchDeliveries reports to: one object for all clients. */
  readonly #watcher: DeliveryWatcher = {
    watched: (packet) => this.#inFlight.follows(packet),
    written: (client, packet, messageId) => this.#inFlight.written(client, packet, messageId),
  };
  readonly #backlogs: SharedBacklogs<Group> | undefined;
  #aedes: Aedes | undefined;
  #undelivered = 0;
  #redelivered = 0;

  constructor(logger: Logger, store?: SharedSubscriptionStore) {
    this.#log = logger.child({ component: 'shared-subscriptions' });
    this.#store = store;
    this.#backlogs =
      store &&
      new SharedBacklogs<Group>(store, {
        absent: (group) => [...group.sessions.keys()].filter((clientId) => !this.#isConnected(group, clientId)),
        present: (group, clientId) => this.#isConnected(group, clientId),
        canAdopt: (group) => this.#hasConnectedMember(group, true),
        place: (group, packet, from, done, adopting) => {
          this.#redelivered++;
          this.#place(group, packet, from, done, adopting);
        },
        failed: (group, error) => this.#log.warn({ err: error, filter: wireSharedFilter(group.name) }, 'could not read a shared subscription member\'s session'),
      });
  }

  /**
   * Wraps the ACL's authorizeSubscribe: for a shared filter it is asked
   * about the filter after the group name, the one a message's topic is
   * matched against.
   */
  aclView(inner: AuthorizeSubscribeHandler | undefined): AuthorizeSubscribeHandler | undefined {
    if (!inner) return undefined;
    return (client, sub, done) => {
      const shared = parseSharedFilter(sub.topic);
      if (!shared) {
        inner(client, sub, done);
        return;
      }
      inner(client, { ...sub, topic: shared.filter }, (error, allowed) => done(error, error || !allowed ? allowed : sub));
    };
  }

  /** Wraps the whole authorizeSubscribe chain: a shared subscription it allows makes the client a member. */
  track(inner: AuthorizeSubscribeHandler): AuthorizeSubscribeHandler {
    return (client, sub, done) => {
      inner(client, sub, (error, allowed) => {
        if (!error && allowed && !client.closed && parseSharedFilter(sub.topic)) this.#join(client, allowed);
        done(error, allowed);
      });
    };
  }

  /**
   * Installs the hooks; call after listen() and before any client connects,
   * before the flow control (see watchDeliveries).
   */
  install(seam: AedesSeam): void {
    const aedes = seam.aedes;
    this.#aedes = aedes;
    // Persistent members of an earlier run, offline until they reconnect.
    for (const sub of this.#store?.subscriptionsWithPrefix(SHARED_FILTER_PREFIX) ?? []) {
      const group = this.#group(sub.topic);
      group?.sessions.set(sub.clientId, Math.min(2, sub.qos) as QoS);
    }
    seam.onConnection((conn) => {
      announceSharedSubscriptions(conn);
      return (client) => {
        renameSharedFilters(client);
        watchDeliveries(client, this.#watcher);
      };
    });
    onAcknowledgements(aedes, (client, messageId) => this.#inFlight.acknowledged(client, messageId));
    aedes.on('unsubscribe', (topics, client) => {
      for (const topic of topics) this.#leave(topic, client, true);
    });
    aedes.on('clientDisconnect', (client) => {
      for (const name of [...this.#groups.keys()]) this.#leave(name, client, client.clean);
      this.#redeliver(client);
    });
    // A member to take what waits for members that are away: a new subscription, or a session resumed.
    aedes.on('subscribe', (subscriptions, client) => {
      for (const { topic, qos } of subscriptions) if (qos < 0x80) this.#adopt(this.#groups.get(topic), client);
    });
    aedes.on('clientReady', (client) => {
      for (const group of this.#groups.values()) this.#adopt(group, client);
    });
    addQueueRecipients(aedes, (packet) => this.#queueRecipients(packet));
    this.#store?.beforeSessionsExpire((clientIds) => this.#expiring(clientIds));
  }

  stats(): SharedSubscriptionStats {
    let members = 0;
    for (const group of this.#groups.values()) members += group.members.size;
    return { groups: this.#groups.size, members, undelivered: this.#undelivered, redelivered: this.#redelivered };
  }

  // ------------------------------------------------------------ membership

  /** The group of an aedes-side shared filter name, made (and subscribed to the emitter) on first use. */
  #group(name: string): Group | undefined {
    const existing = this.#groups.get(name);
    if (existing) return existing;
    const shared = parseSharedFilter(name);
    const aedes = this.#aedes;
    if (!shared || !aedes) return undefined;
    const group: Group = {
      ...shared,
      members: new Map(),
      sessions: new Map(),
      turn: 0,
      offlineTurn: 0,
      listener: (packet, done) => this.#deliver(group, packet, done),
    };
    this.#groups.set(name, group);
    aedes.subscribe(shared.filter, group.listener as never, () => undefined);
    return group;
  }

  #join(client: Client, sub: Subscription): void {
    if (client.id === null) return;
    const group = this.#group(sub.topic);
    if (!group) return;
    const qos = Math.min(2, sub.qos) as QoS;
    group.members.set(client.id, { client, qos, rap: (sub as Subscription & { rap?: boolean }).rap === true });
    if (client.clean) group.sessions.delete(client.id);
    else group.sessions.set(client.id, qos);
    this.#log.debug({ clientId: client.id, filter: wireSharedFilter(group.name) }, 'joined a shared subscription');
  }

  /** The connection left the group; with `sessionToo`, its session (if any) holds the subscription no more. */
  #leave(name: string, client: Client, sessionToo: boolean): void {
    const group = this.#groups.get(name);
    // A newer connection with the same client id took the membership over.
    if (!group || group.members.get(client.id)?.client !== client) return;
    group.members.delete(client.id);
    if (sessionToo) group.sessions.delete(client.id);
    this.#dropIfEmpty(group);
  }

  #dropIfEmpty(group: Group): void {
    // Another object of the same name: this one was dropped, and the name made again since.
    if (this.#groups.get(group.name) !== group) return;
    if (group.members.size > 0 || group.sessions.size > 0) return;
    this.#groups.delete(group.name);
    this.#aedes?.unsubscribe(group.filter, group.listener as never, () => undefined);
  }

  // ------------------------------------------------------------- choosing

  /** The next connected member, round-robin; with `persistentOnly`, among those with a persistent session. */
  #pick(group: Group, persistentOnly = false): Member | undefined {
    const connected = [...group.members.values()].filter((member) => takes(member, persistentOnly));
    if (connected.length === 0) return undefined;
    group.turn = (group.turn + 1) % connected.length;
    return connected[group.turn];
  }

  /** The next persistent session of the group whose client is offline, round-robin; sessions gone from the store are forgotten. */
  #pickOffline(group: Group): { clientId: string; qos: QoS } | undefined {
    const store = this.#store;
    if (!store) return undefined;
    const offline: Array<{ clientId: string; qos: QoS }> = [];
    for (const [clientId, qos] of group.sessions) {
      if (!store.holdsSubscription(clientId, group.name)) group.sessions.delete(clientId);
      else if (!group.members.has(clientId)) offline.push({ clientId, qos });
    }
    if (offline.length === 0) return undefined;
    group.offlineTurn = (group.offlineTurn + 1) % offline.length;
    return offline[group.offlineTurn];
  }

  /**
   * For a QoS 1/2 message aedes is about to queue for persistent sessions: a
   * member per matching group, queued for when its session is persistent;
   * with no member connected, a persistent session of the group's (as
   * Mosquitto does), which gets it when its client comes back.
   */
  #queueRecipients(packet: DeliveredPacket): QueueRecipient[] {
    const recipients: QueueRecipient[] = [];
    for (const group of this.#groups.values()) {
      if (!topicMatches(group.filter, packet.topic)) continue;
      const member = this.#pick(group);
      const target = member ? { clientId: member.client.id, qos: member.qos } : this.#pickOffline(group);
      if (!target) continue;
      const queued = member ? !member.client.clean && this.#store !== undefined : true;
      let chosen = this.#chosen.get(packet);
      if (!chosen) {
        chosen = new Map();
        this.#chosen.set(packet, chosen);
      }
      chosen.set(group.name, { clientId: target.clientId, queued });
      if (queued) recipients.push({ clientId: target.clientId, topic: group.name, qos: target.qos });
    }
    return recipients;
  }

  // ------------------------------------------------------------- delivery

  /** The group's emitter listener: the message goes to one member. */
  #deliver(group: Group, packet: DeliveredPacket, done: () => void): void {
    if (!topicMatches(group.filter, packet.topic)) {
      done();
      return;
    }
    const chosen = this.#chosen.get(packet)?.get(group.name);
    if (chosen !== undefined) {
      const member = group.members.get(chosen.clientId);
      if (member && !member.client.closed) {
        this.#send(group, member, packet, chosen.queued);
        done();
        return;
      }
      // Queued for a persistent session whose client is away: it waits there.
      if (chosen.queued) {
        done();
        return;
      }
    }
    this.#place(group, packet, undefined, done);
  }

  /**
   * Sends a message that is in no member's session store to a connected
   * member (queued first when its session is persistent: the flow control
   * sends a persistent session nothing else), else, QoS 1/2, queues it for
   * an offline persistent session; `from` is the session it is taken from.
   * `done` runs once it is placed (durably, where it is queued). With
   * `persistentOnly`, only to a connected member with a persistent session,
   * else it stays where it is.
   */
  #place(group: Group, packet: DeliveredPacket, from: string | undefined, done: () => void, persistentOnly = false): void {
    const member = this.#pick(group, persistentOnly);
    const store = this.#store;
    if (persistentOnly && !member) {
      done();
      return;
    }
    if (member && (packet.qos === 0 || member.client.clean || !store) && from === undefined) {
      this.#send(group, member, packet, false);
      done();
      return;
    }
    const target = member ? { clientId: member.client.id, qos: member.qos } : packet.qos > 0 ? this.#pickOffline(group) : undefined;
    if (!target || !store) {
      // From a persistent session: it stays there. Else nobody can take it.
      if (from === undefined) this.#undelivered++;
      done();
      return;
    }
    const persistentTarget = member ? !member.client.clean : true;
    store
      .outgoingMove(from, persistentTarget ? target : undefined, packet as DeliveredPacket & Record<string, unknown>)
      .then(
        (moved) => {
          if (!moved || !member) return;
          if (!member.client.closed) this.#send(group, member, packet, persistentTarget);
          // Gone while the move was written: a persistent member has it in its session; for a clean one, placed again.
          else if (!persistentTarget) this.#place(group, packet, undefined, () => undefined);
        },
        (error: unknown) => this.#log.warn({ err: error, filter: wireSharedFilter(group.name) }, 'could not queue a shared subscription message'),
      )
      .finally(done);
  }

  /** The member's own copy, at min(published, granted) QoS [MQTT-3.8.4-6], through its delivery functions. */
  #send(group: Group, member: Member, packet: DeliveredPacket, queued: boolean): void {
    const copy = copyForSubscriber(packet);
    if (member.qos < copy.qos) copy.qos = member.qos;
    if (!member.rap) copy.retain = false;
    if (copy.qos > 0) this.#inFlight.track(member.client, copy, { group: group.name, source: packet, queued });
    deliverToClient(member.client, copy, () => undefined);
  }

  // --------------------------------------------- acknowledgements and leaving

  /**
   * A member's connection closed with shared messages unacknowledged: each
   * goes to another member of its group [MQTT-4.8.2: the Server MAY send it
   * to another]. One queued in the member's persistent session is moved out
   * of it (unless the session was resumed by a newer connection, which
   * resends it, or no other member is connected: it waits there).
   */
  #redeliver(client: Client): void {
    for (const entry of this.#inFlight.take(client)) {
      const group = this.#groups.get(entry.group);
      if (!group) continue;
      if (entry.queued) {
        const resumed = group.members.get(client.id);
        if (resumed && resumed.client !== client) continue;
        if (!this.#hasConnectedMember(group)) continue;
      }
      this.#redelivered++;
      this.#place(group, entry.source, entry.queued ? client.id : undefined, () => undefined);
    }
  }

  /** Sessions about to expire: each group's messages waiting in them go to another member (shared-backlog.ts handOver). */
  async #expiring(clientIds: string[]): Promise<void> {
    const handOvers: Array<Promise<void>> = [];
    for (const clientId of clientIds) {
      for (const group of this.#groups.values()) {
        if (!group.sessions.has(clientId) || this.#isConnected(group, clientId)) continue;
        // Not a place for its own messages any more (#pickOffline).
        group.sessions.delete(clientId);
        const handOver = this.#backlogs?.handOver(group, clientId) ?? Promise.resolve();
        handOvers.push(
          handOver
            .catch((error: unknown) => this.#log.warn({ err: error, clientId, filter: wireSharedFilter(group.name) }, 'could not hand over an expiring session\'s messages'))
            .finally(() => this.#dropIfEmpty(group)),
        );
      }
    }
    await Promise.all(handOvers);
  }

  /** Moves what waits for absent members of `group` to its connected ones, if `client` is one. */
  #adopt(group: Group | undefined, client: Client): void {
    if (group !== undefined && group.members.get(client.id)?.client === client && !client.closed) this.#backlogs?.adopt(group);
  }

  #isConnected(group: Group, clientId: string): boolean {
    const member = group.members.get(clientId);
    return member !== undefined && !member.client.closed;
  }

  #hasConnectedMember(group: Group, persistentOnly = false): boolean {
    for (const member of group.members.values()) if (takes(member, persistentOnly)) return true;
    return false;
  }
}
