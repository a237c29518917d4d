/**
 * The rules of delivery to subscribers where aedes breaks them (1.2.0 and
 * 2.0.0-beta.1 alike), applied through the seam (aedes-seam/) to its clients; the parts that concern
 * queued messages (2, 3 and the resend of 4) are the persistence's own
 * behaviour (src/persistence/level-persistence.ts, the aedes adapter). Each
 * one is proven by test/mqtt-behaviour.test.ts; test/aedes-canaries.test.ts
 * shows each aedes fault is still there.
 *
 * 1. Lost messages. aedes drops a message for a client when a message
 *    published later reached that client first (lib/client.js `dedupe`: a
 *    message counts as a duplicate unless its broker counter is higher than
 *    the last one delivered). Messages do overtake each other: QoS 0 skips the
 *    offline-queue write that QoS 1/2 waits for, non-retained skips the
 *    retained-store write (aedes.js publishFuncs). So a QoS 1 message, or the
 *    will of a dropped client (which races its own $SYS disconnect notice),
 *    silently never reaches a subscriber that also receives the overtaking
 *    message. The dedupe exists for overlapping subscriptions, whose copies of
 *    one message reach a client back to back within a single emit; it is
 *    replaced by one that recognises exactly that.
 * 2. Delivery QoS. aedes downgrades to the subscription's QoS only when the
 *    filter equals the topic, so `a/#` granted QoS 1 receives QoS 2
 *    [MQTT-3.8.4-6], and then to that subscription's QoS even when an
 *    overlapping one grants more; with overlapping subscriptions the first one
 *    matched decides the QoS, not the highest [MQTT-3.3.5-1]; offline queues
 *    keep the published QoS whatever was granted. Here every delivery, live,
 *    retained or queued, goes out once at min(published QoS, highest matching
 *    grant); the write beneath (aedes-seam/direct-deliveries.ts) leaves out
 *    aedes' exact-topic downgrade. Where deliveries end in aedes' own
 *    deliverQoS (`broker.fastPublish: false`, or a persistence without
 *    outgoingUpdateNow, which the daemon's LevelDB one has), it still applies:
 *    that reference path keeps this one aedes fault.
 * 3. aedes #1003. A retained QoS 2 message sent to a persistent session is not
 *    stored in its outgoing queue, so the client's PUBREC finds nothing to
 *    update and aedes drops the connection. The PUBREL is due either way
 *    [MQTT-4.3.3-1]; nothing is lost by sending it.
 * 4. Duplicates after a reconnect. aedes resends a persistent session's
 *    stored messages after CONNECT (handlers/connect.js emptyQueue) from a
 *    snapshot read ahead of the socket, while the restored subscriptions
 *    already deliver live, and numbers each connection's messages from a
 *    random start without checking which identifiers the client still holds.
 *    So one message went out twice, or under two identifiers, or a new
 *    message took the identifier of one awaiting its PUBREL: QoS 2 delivered
 *    twice, or completed for the wrong message and lost. The store hands out
 *    the identifiers instead (claimOutgoing for live deliveries, in
 *    client-flow.ts; outgoingResendStream for the resend), each message once
 *    per connection (test/reconnect-race.test.ts).
 * 5. MQTT 5 subscription options with overlapping subscriptions. aedes 2
 *    applies No Local, Retain As Published and the Subscription Identifier
 *    per subscription, on that subscription's copy (handlers/subscribe.js
 *    addSubs), and its dedupe keeps whichever copy came first: one
 *    identifier instead of all (aedes #1090), the RETAIN flag of whichever
 *    subscription matched first, and, when the first copy is a No Local
 *    one of the client's own message, no delivery at all although another
 *    subscription asks for it. Here the one delivery [MQTT-3.3.4-2] is
 *    judged over every matching subscription: a subscription with No Local
 *    does not count for the client's own messages [MQTT-3.8.3-3]; RETAIN
 *    is kept when any counting subscription has Retain As Published
 *    [MQTT-3.3.1-12/13]; the message carries the identifiers of all of
 *    them [MQTT-3.3.4-3/4/5]. Queued copies get the same judgement when
 *    they are queued (src/persistence/queue-store.ts).
 */
import type { Client } from 'aedes';
import { topicMatches } from '../config/topic-filter.js';
import {
  disableAedesDedupe,
  subscriptionChanges,
  subscriptionsOf,
  wrapDeliveries,
  type AedesSeam,
  type ClientSubscription,
  type DeliveredPacket,
  type Deliveries,
  type QoS,
} from './aedes-seam/index.js';

/** One subscription as a grant lookup reads it. */
interface Grant {
  readonly filter: string;
  readonly qos: QoS;
  readonly nl: boolean;
}

/** A client's subscriptions as a list of grants: read once per change, not per lookup (the map is a Proxy, whose for…in is slow). */
function grantsOf(subscriptions: Readonly<Record<string, ClientSubscription>>): Grant[] {
  const grants: Grant[] = [];
  for (const filter in subscriptions) {
    const subscription = subscriptions[filter];
    grants.push({ filter, qos: subscription?.qos ?? 0, nl: subscription?.nl === true });
  }
  return grants;
}

function highestGrant(grants: readonly Grant[], topic: string, own: boolean): QoS | undefined {
  let granted: QoS | undefined;
  for (const grant of grants) {
    if ((granted === undefined || grant.qos > granted) && !(own && grant.nl) && topicMatches(grant.filter, topic)) granted = grant.qos;
  }
  return granted;
}

/**
 * The highest QoS granted to any of the client's subscriptions matching
 * `topic`, if any. For the client's own message (`own`), a subscription with
 * No Local does not count [MQTT-3.8.3-3].
 */
export function grantedQoS(subscriptions: Readonly<Record<string, ClientSubscription>>, topic: string, own = false): QoS | undefined {
  return highestGrant(grantsOf(subscriptions), topic, own);
}

/** Topics a client's grant cache holds at most; beyond, it starts over (topics may be unbounded: sensor/<id>/…). */
const GRANT_CACHE_TOPICS = 1024;
/**
 * Up to this many subscriptions a grant is worked out each time: a few
 * in-place topic matches cost less than a Map lookup and, for a client that
 * gets many distinct topics (`#`, a retained burst), a Map insert.
 */
const DIRECT_GRANTS = 4;

/**
 * grantedQoS per topic for one client, kept until the client's subscriptions
 * change (SubscriptionChanges): from a list of its grants taken once per
 * change, and for a client with more than DIRECT_GRANTS subscriptions
 * remembered per topic, instead of a scan of all of them for every QoS 1/2
 * delivery. `null`: none matches.
 */
class GrantCache {
  readonly #client: Client;
  readonly #changes: { readonly count: number };
  #seen = Number.NaN;
  #grants: Grant[] | undefined = undefined;
  /** Without and with No Local applied (the client's own messages). */
  #others = new Map<string, QoS | null>();
  #own = new Map<string, QoS | null>();

  constructor(client: Client) {
    this.#client = client;
    this.#changes = subscriptionChanges(client);
  }

  granted(topic: string, own: boolean): QoS | undefined {
    const count = this.#changes.count;
    if (count !== this.#seen) {
      this.#grants = undefined;
      this.#others.clear();
      this.#own.clear();
      this.#seen = count;
    }
    const grants = (this.#grants ??= grantsOf(subscriptionsOf(this.#client)));
    if (grants.length <= DIRECT_GRANTS) return highestGrant(grants, topic, own);
    const cache = own ? this.#own : this.#others;
    let granted = cache.get(topic);
    if (granted === undefined) {
      granted = highestGrant(grants, topic, own) ?? null;
      if (cache.size >= GRANT_CACHE_TOPICS) cache.clear();
      cache.set(topic, granted);
    }
    return granted ?? undefined;
  }
}

/**
 * Installs the rules on every client aedes makes from now on; call before
 * any client connects.
 * Register it after the flow control: its wrappers must run on top of the
 * flow control's.
 */
export function installDeliveryRules(seam: AedesSeam): void {
  seam.onConnection(() => applyClientRules);
}

/** The copies, one per matching subscription, of one message to one MQTT 5 client, gathered before it goes out once. */
interface Gathered {
  copies: DeliveredPacket[];
  callback: () => void;
}

function applyClientRules(client: Client): void {
  // aedes' dedupe reads 0 for every message from now on, the wrapper below
  // having already dropped the real copies.
  disableAedesDedupe(client);
  // Subscription handlers capture these at SUBSCRIBE time (handlers/subscribe.js),
  // after this runs; retained and queued deliveries look them up per call.
  wrapDeliveries(client, (inner) => new ClientRules(client, inner));
}

/** One client's delivery rules: its state and the deliveries beneath (the flow control's); methods shared by all clients. */
class ClientRules implements Deliveries {
  readonly #client: Client;
  readonly #inner: Deliveries;
  /** The message delivered last (its broker id and counter): a copy of it is the next delivery (see #deliver). */
  #lastBrokerId: unknown = undefined;
  #lastBrokerCounter: unknown = undefined;
  #inside = false;
  #gathered: Gathered | undefined = undefined;
  #grants: GrantCache | undefined = undefined;
  /** Bound once, on the first MQTT 5 message that may have copies. */
  #flushLater: (() => void) | undefined = undefined;

  constructor(client: Client, inner: Deliveries) {
    this.#client = client;
    this.#inner = inner;
  }

  #send(packet: DeliveredPacket, callback: () => void, own: boolean): void {
    // QoS 0 stays QoS 0: no grant to look up.
    if (packet.qos > 0) {
      const granted = (this.#grants ??= new GrantCache(this.#client)).granted(packet.topic, own);
      if (granted !== undefined && granted < packet.qos) packet.qos = granted;
    }
    this.#inside = true;
    try {
      if (packet.qos > 0) this.#inner.deliverQoS(packet, callback);
      else this.#inner.deliver0(packet, callback);
    } finally {
      this.#inside = false;
    }
  }

  // Sends the gathered message, once: at the end of the emit that delivered
  // its copies, or before the next delivery to this client (order kept).
  flush(): void {
    const message = this.#gathered;
    if (!message) return;
    this.#gathered = undefined;
    const own = isOwn(message.copies[0]!, this.#client);
    const merged = mergeCopies(message.copies, own);
    if (merged) this.#send(merged, message.callback, own);
    else setImmediate(message.callback);
  }

  deliver0(packet: DeliveredPacket, callback: () => void): void {
    this.#deliver(packet, callback, false);
  }

  deliverQoS(packet: DeliveredPacket, callback: () => void): void {
    this.#deliver(packet, callback, true);
  }

  /** A delivery through deliverQoS (`qos`) or deliver0. */
  #deliver(packet: DeliveredPacket, callback: () => void, qos: boolean): void {
    // aedes' deliverQoS hands QoS 0 packets to deliver0: already decided.
    if (this.#inside) {
      if (qos) this.#inner.deliverQoS(packet, callback);
      else this.#inner.deliver0(packet, callback);
      return;
    }
    if (packet.brokerId && packet.brokerCounter) {
      // Overlapping subscriptions: mqemitter calls every matching handler
      // of one message synchronously, so a copy is always the very next
      // delivery to this client; anything else is a different message.
      // (Retained messages carry no brokerId: never copies, as in aedes.)
      // Compared field by field: a key string made per delivery was ~150 B of garbage each.
      if (packet.brokerId === this.#lastBrokerId && packet.brokerCounter === this.#lastBrokerCounter) {
        this.#gathered?.copies.push(packet);
        setImmediate(callback);
        return;
      }
      this.#lastBrokerId = packet.brokerId;
      this.#lastBrokerCounter = packet.brokerCounter;
      if (this.#client.version === 5) {
        // Rule 5: the copies still to come decide what goes out. They
        // all arrive in this synchronous emit, before any microtask.
        this.flush();
        this.#gathered = { copies: [packet], callback };
        queueMicrotask((this.#flushLater ??= () => this.flush()));
        return;
      }
    }
    this.flush();
    this.#send(packet, callback, false);
  }
}

function isOwn(packet: DeliveredPacket, client: Client): boolean {
  return packet.clientId !== undefined && packet.clientId === client.id;
}

/**
 * The one delivery of a message to an MQTT 5 client, from the copies aedes
 * made of it for each matching subscription (rule 5); undefined when No
 * Local rules out every one. The first counting copy is sent, its RETAIN
 * and identifiers replaced; properties are a new object, never the shared one.
 */
function mergeCopies(copies: readonly DeliveredPacket[], own: boolean): DeliveredPacket | undefined {
  let base: DeliveredPacket | undefined;
  let retain = false;
  let identifiers: number[] | undefined;
  for (const copy of copies) {
    // aedes' own check (lib/client.js getToForwardPacket), per subscription.
    if (own && copy.nl === true) continue;
    base ??= copy;
    // aedes cleared RETAIN on the copy of a subscription without Retain As Published.
    if (copy.retain === true) retain = true;
    const id = copy.properties?.['subscriptionIdentifier'];
    if (typeof id === 'number' && !(identifiers ??= []).includes(id)) identifiers.push(id);
  }
  if (!base || copies.length === 1) return base;
  base.retain = retain;
  base.nl = false;
  const current = base.properties?.['subscriptionIdentifier'];
  if (identifiers && identifiers.length > 1) {
    base.properties = { ...base.properties, subscriptionIdentifier: identifiers };
  } else if (identifiers && current !== identifiers[0]) {
    base.properties = { ...base.properties, subscriptionIdentifier: identifiers[0] };
  }
  return base;
}
