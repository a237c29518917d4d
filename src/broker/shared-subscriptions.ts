/**
 * Shared subscriptions, `$share/{group}/{filter}` [MQTT-4.8.2], for MQTT 5
 * and 3.1.1 clients alike (as Mosquitto, EMQX and HiveMQ accept them from
 * 3.1.1 clients). aedes 2.0.0-beta.1 has none (#841); the seam
 * (aedes-seam/shared.ts) renames such a filter before aedes' SUBSCRIBE
 * handler sees it, so aedes keeps it as an ordinary subscription of the
 * client (granted QoS in the SUBACK, stored with a persistent session,
 * restored on reconnect and after a restart, removed by UNSUBSCRIBE) that
 * matches no topic: aedes itself never delivers on it, and sends no retained
 * message when it is made (retained messages are for non-shared
 * subscriptions, MQTT 5.0 §3.3.1.3 and §4.8.2).
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
 *   session store before they are sent (the flow control sends nothing else
 *   to a persistent session). So for a QoS 1/2 message the member is chosen
 *   when aedes queues the message for persistent sessions, which the
 *   publisher's acknowledgement waits for, and queued for it there when it is
 *   persistent (addQueueRecipients); the live delivery then goes to the same
 *   member. A persistent member that disconnects keeps what was queued for
 *   it, and gets it when it comes back (MQTT 5.0 §4.8.2: the Server MAY wait
 *   for the Client to reconnect).
 * - No member connected: a QoS 0 message is dropped; a QoS 1/2 one too (see
 *   "Not done").
 *
 * Not done (yet): sending the unacknowledged messages of a member that
 * leaves to another member; queueing for an offline persistent member when
 * no member is connected.
 */
import type { Aedes, AedesOptions, Client, Subscription } from 'aedes';
import { topicMatches } from '../config/topic-filter.js';
import type { Logger } from '../observability/logger.js';
import {
  addQueueRecipients,
  announceSharedSubscriptions,
  copyForSubscriber,
  deliverToClient,
  parseSharedFilter,
  renameSharedFilters,
  wireSharedFilter,
  type AedesSeam,
  type DeliveredPacket,
  type QoS,
  type QueueRecipient,
} from './aedes-seam/index.js';

type AuthorizeSubscribeHandler = NonNullable<AedesOptions['authorizeSubscribe']>;

interface Member {
  client: Client;
  qos: QoS;
  /** MQTT 5 Retain As Published [MQTT-3.3.1-12]. */
  rap: boolean;
}

interface Group {
  name: string;
  group: string;
  filter: string;
  members: Map<string, Member>;
  /** Round-robin position. */
  turn: number;
  listener: (packet: DeliveredPacket, done: () => void) => void;
}

export interface SharedSubscriptionStats {
  groups: number;
  members: number;
  /** Messages that matched a group with no connected member. */
  undelivered: number;
}

export class SharedSubscriptions {
  readonly #log: Logger;
  /** By the filter name aedes keeps (parseSharedFilter). */
  readonly #groups = new Map<string, Group>();
  /** The member chosen for a QoS 1/2 message when it was queued, per group, for its live delivery. */
  readonly #chosen = new WeakMap<object, Map<string, { clientId: string; queued: boolean }>>();
  #aedes: Aedes | undefined;
  #undelivered = 0;

  constructor(logger: Logger) {
    this.#log = logger.child({ component: 'shared-subscriptions' });
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
        const shared = parseSharedFilter(sub.topic);
        if (shared && !error && allowed && !client.closed) this.#join(client, allowed);
        done(error, allowed);
      });
    };
  }

  /** Installs the hooks; call after listen() and before any client connects. */
  install(seam: AedesSeam): void {
    const aedes = seam.aedes;
    this.#aedes = aedes;
    seam.onConnection((conn) => {
      announceSharedSubscriptions(conn);
      return renameSharedFilters;
    });
    aedes.on('unsubscribe', (topics, client) => {
      for (const topic of topics) this.#leave(topic, client);
    });
    aedes.on('clientDisconnect', (client) => {
      for (const name of [...this.#groups.keys()]) this.#leave(name, client);
    });
    addQueueRecipients(aedes, (packet) => this.#queueRecipients(packet));
  }

  stats(): SharedSubscriptionStats {
    let members = 0;
    for (const group of this.#groups.values()) members += group.members.size;
    return { groups: this.#groups.size, members, undelivered: this.#undelivered };
  }

  #join(client: Client, sub: Subscription): void {
    const shared = parseSharedFilter(sub.topic);
    const aedes = this.#aedes;
    if (!shared || !aedes || client.id === null) return;
    let group = this.#groups.get(shared.name);
    if (!group) {
      const created: Group = {
        ...shared,
        members: new Map(),
        turn: 0,
        listener: (packet, done) => this.#deliver(created, packet, done),
      };
      group = created;
      this.#groups.set(shared.name, group);
      aedes.subscribe(shared.filter, group.listener as never, () => undefined);
    }
    const options = sub as Subscription & { rap?: boolean };
    group.members.set(client.id, { client, qos: sub.qos as QoS, rap: options.rap === true });
    this.#log.debug({ clientId: client.id, filter: wireSharedFilter(shared.name) }, 'joined a shared subscription');
  }

  #leave(name: string, client: Client): void {
    const group = this.#groups.get(name);
    // A newer connection with the same client id took the membership over.
    if (!group || group.members.get(client.id)?.client !== client) return;
    group.members.delete(client.id);
    if (group.members.size > 0) return;
    this.#groups.delete(name);
    this.#aedes?.unsubscribe(group.filter, group.listener as never, () => undefined);
  }

  /** Whether the group takes a message on `topic` (a filter starting with a wildcard skips `$` topics [MQTT-4.7.2-1]). */
  #takes(group: Group, topic: string): boolean {
    if (topic.startsWith('$') && (group.filter.startsWith('+') || group.filter.startsWith('#'))) return false;
    return topicMatches(group.filter, topic);
  }

  /** The next connected member, round-robin. */
  #pick(group: Group): Member | undefined {
    const connected = [...group.members.values()].filter((member) => !member.client.closed);
    if (connected.length === 0) return undefined;
    const member = connected[group.turn % connected.length]!;
    group.turn = (group.turn + 1) % 1_000_000_007;
    return member;
  }

  /** For a QoS 1/2 message aedes is about to queue: a member per matching group, queued for when persistent. */
  #queueRecipients(packet: DeliveredPacket): QueueRecipient[] {
    const recipients: QueueRecipient[] = [];
    for (const group of this.#groups.values()) {
      if (!this.#takes(group, packet.topic)) continue;
      const member = this.#pick(group);
      if (!member) continue;
      let chosen = this.#chosen.get(packet);
      if (!chosen) {
        chosen = new Map();
        this.#chosen.set(packet, chosen);
      }
      const queued = !member.client.clean;
      chosen.set(group.name, { clientId: member.client.id, queued });
      if (queued) recipients.push({ clientId: member.client.id, topic: group.name, qos: member.qos });
    }
    return recipients;
  }

  #deliver(group: Group, packet: DeliveredPacket, done: () => void): void {
    if (!this.#takes(group, packet.topic)) {
      done();
      return;
    }
    let member: Member | undefined;
    const chosen = this.#chosen.get(packet)?.get(group.name);
    if (chosen === undefined) {
      member = this.#pick(group);
    } else {
      const current = group.members.get(chosen.clientId);
      if (current && !current.client.closed) member = current;
      else if (chosen.queued) {
        // Queued for a persistent member that left meanwhile: it waits in its session.
        done();
        return;
      } else member = this.#pick(group);
    }
    if (!member) {
      this.#undelivered++;
      done();
      return;
    }
    const copy = copyForSubscriber(packet);
    if (member.qos < copy.qos) copy.qos = member.qos;
    if (!member.rap) copy.retain = false;
    deliverToClient(member.client, copy, done);
  }
}
