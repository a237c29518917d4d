/**
 * What shared subscriptions (src/broker/shared-subscriptions.ts) need from
 * aedes internals. aedes 2.0.0-beta.1 has none (#841): its SUBSCRIBE handler
 * answers a v5 `$share/` filter with 0x9E before any hook runs
 * (handlers/subscribe.js doSubscribe), subscribes a 3.1.1 one literally, and
 * its CONNACK says Shared Subscription Available 0 (handlers/connect.js
 * connackProperties) [MQTT-3.2.2-13].
 *
 * - A `$share/{group}/{filter}` filter in a SUBSCRIBE or UNSUBSCRIBE is
 *   renamed, before aedes' handler sees the packet (a 'packet' listener put
 *   ahead of aedes' on the client's parser, lib/client.js), to a name that
 *   starts with U+0000, which no client can send (the protocol guard refuses
 *   it, [MQTT-1.5.4-2]). aedes then subscribes, stores, restores and
 *   unsubscribes it like any filter; it matches no topic, so aedes itself
 *   delivers nothing and sends no retained message on it. The broker's
 *   authorizeSubscribe and the shared-subscription module recognise the name.
 *   aedes' 'subscribe'/'unsubscribe' events and $SYS/.../new/subscribes
 *   notices carry this name too (wireSharedFilter gives the client's form).
 * - The CONNACK's Shared Subscription Available property is set to 1 in the
 *   bytes aedes writes (see announceSharedSubscriptions).
 * - A message is copied per subscriber as aedes does (aedes-packet), and
 *   handed to a client's current deliverQoS (lib/client.js), i.e. through the
 *   flow control and the delivery rules wrapped around it.
 */
import type { Duplex } from 'node:stream';
import type { Aedes, Client } from 'aedes';
import { wrapDeliveries, type Deliver, type DeliveredPacket, type Deliveries } from './client.js';
import { rememberSubscribe } from './subscribe-outcomes.js';

/** The prefix clients write [MQTT-4.8.2-1]. */
export const SHARE_PREFIX = '$share/';

/** What aedes sees instead of SHARE_PREFIX; U+0000 never comes from the wire. */
export const SHARED_FILTER_PREFIX = '\u0000share/';

/** A shared subscription's parts; `name` is the filter as aedes keeps it. */
export interface SharedFilter {
  name: string;
  group: string;
  filter: string;
}

/** The parts of an aedes-side shared filter name, or undefined for any other filter. */
export function parseSharedFilter(name: string): SharedFilter | undefined {
  if (!name.startsWith(SHARED_FILTER_PREFIX)) return undefined;
  const rest = name.slice(SHARED_FILTER_PREFIX.length);
  const slash = rest.indexOf('/');
  if (slash <= 0 || slash === rest.length - 1) return undefined;
  return { name, group: rest.slice(0, slash), filter: rest.slice(slash + 1) };
}

/** The `$share/...` form a client wrote, for logs. */
export function wireSharedFilter(name: string): string {
  return name.startsWith(SHARED_FILTER_PREFIX) ? SHARE_PREFIX + name.slice(SHARED_FILTER_PREFIX.length) : name;
}

/**
 * A well-formed `$share/{group}/{filter}` [MQTT-4.8.2-1/2] under its aedes
 * name; anything else unchanged. The v5 guard already refused malformed ones;
 * a 3.1.1 client's malformed one stays literal and matches nothing.
 */
function renamed(topic: string): string {
  if (!topic.startsWith(SHARE_PREFIX)) return topic;
  const parts = parseSharedFilter(SHARED_FILTER_PREFIX + topic.slice(SHARE_PREFIX.length));
  return parts && !parts.group.includes('+') && !parts.group.includes('#') ? parts.name : topic;
}

interface ParserInternals {
  _parser: NodeJS.EventEmitter;
}

interface WirePacket {
  cmd?: string;
  messageId?: number;
  subscriptions?: Array<{ topic: string }>;
  unsubscriptions?: string[];
}

/** Where onAcknowledgements keeps its listener: on the aedes instance, one for all its clients. */
const ACKNOWLEDGED = Symbol('edgemqtt.acknowledged');
type AcknowledgementListener = (client: Client, messageId: number) => void;
type WithListener = { [ACKNOWLEDGED]?: AcknowledgementListener };

/**
 * The parser listener of renameSharedFilters, one function for all clients
 * (EventEmitter calls it on the parser, whose `client` aedes sets): renames
 * the shared filters of a SUBSCRIBE or UNSUBSCRIBE, remembers an MQTT 5
 * SUBSCRIBE for its SUBACK's Reason Codes (subscribe-outcomes.ts), and
 * reports each PUBACK and PUBREC to the broker's onAcknowledgements
 * listener. One listener rather than two keeps the parser's 'packet' list at
 * two entries (this and aedes'), an array of exactly that length.
 */
function sharedInPacket(this: { client?: Client }, packet: WirePacket): void {
  if (packet.cmd === 'subscribe' && packet.subscriptions) {
    for (const sub of packet.subscriptions) sub.topic = renamed(sub.topic);
    if (this.client !== undefined) rememberSubscribe(this.client, packet);
  } else if (packet.cmd === 'unsubscribe' && packet.unsubscriptions) {
    packet.unsubscriptions = packet.unsubscriptions.map(renamed);
  } else if ((packet.cmd === 'puback' || packet.cmd === 'pubrec') && typeof packet.messageId === 'number') {
    if (this.client !== undefined) reportAcknowledgement(this.client, packet.messageId);
  }
}

/** What sharedInPacket does with a PUBACK or PUBREC: tells the broker's onAcknowledgements listener. */
export function reportAcknowledgement(client: Client, messageId: number): void {
  const listener = (client as unknown as { broker: WithListener }).broker[ACKNOWLEDGED];
  if (listener !== undefined) listener(client, messageId);
}

/** Whether `listener` is the parser listener renameSharedFilters adds (for wire-acks.ts, which stands in for the parser's listeners). */
export function isSharedPacketListener(listener: unknown): boolean {
  return listener === sharedInPacket;
}

/**
 * Renames the client's `$share/` filters (see the header) and reports its
 * acknowledgements (onAcknowledgements); call right after aedes made the client.
 */
export function renameSharedFilters(client: Client): void {
  (client as unknown as ParserInternals)._parser.prependListener('packet', sharedInPacket);
}

/** What watchDeliveries tells of a client's QoS 1/2 deliveries; one object for all clients. */
export interface DeliveryWatcher {
  /** Whether this delivery is to be followed. */
  watched(packet: DeliveredPacket): boolean;
  /** The packet identifier it went out under, or undefined when aedes did not send it. */
  written(client: Client, packet: DeliveredPacket, messageId: number | undefined): void;
}

/** The layer of watchDeliveries: one object per client, its methods shared. */
class WatchedDeliveries implements Deliveries {
  readonly #client: Client;
  readonly #below: Deliveries;
  readonly #watcher: DeliveryWatcher;

  constructor(client: Client, below: Deliveries, watcher: DeliveryWatcher) {
    this.#client = client;
    this.#below = below;
    this.#watcher = watcher;
  }

  deliver0(packet: DeliveredPacket, callback: () => void): void {
    this.#below.deliver0(packet, callback);
  }

  deliverQoS(packet: DeliveredPacket, callback: () => void): void {
    if (packet.qos === 0 || !this.#watcher.watched(packet)) {
      this.#below.deliverQoS(packet, callback);
      return;
    }
    const [client, watcher] = [this.#client, this.#watcher];
    this.#below.deliverQoS(packet, function afterWrite(this: unknown, ...args: unknown[]) {
      const sent = typeof this === 'object' && this !== null && (this as { cmd?: unknown }).cmd === 'publish' ? (this as { messageId?: number }).messageId : undefined;
      watcher.written(client, packet, sent);
      (callback as (...rest: unknown[]) => void).apply(this, args);
    });
  }
}

/**
 * Tells the watcher the packet identifier each watched QoS 1/2 delivery went
 * out under, once aedes has written it (lib/client.js writeQoS calls the
 * callback with the written QoSPacket as `this`), or undefined when aedes
 * did not send it (authorizeForward refused it, the connection closed).
 * Call right after aedes made the client, before anything else wraps its
 * deliveries: this must see the packet aedes numbers, under the flow control.
 */
export function watchDeliveries(client: Client, watcher: DeliveryWatcher): void {
  wrapDeliveries(client, (below) => new WatchedDeliveries(client, below, watcher));
}

/**
 * Calls `listener` for each PUBACK and PUBREC a client of `aedes` sends, as
 * aedes parses it (lib/client.js), for the clients renameSharedFilters was
 * called on: the acknowledgements after which a message is the receiver's
 * (a PUBCOMP follows a PUBREC already reported). Once per aedes instance.
 */
export function onAcknowledgements(aedes: Aedes, listener: AcknowledgementListener): void {
  (aedes as unknown as WithListener)[ACKNOWLEDGED] = listener;
}

/** aedes' Client internals used to deliver (lib/client.js). */
interface DeliveryInternals {
  deliverQoS: Deliver;
}

/**
 * Hands `packet` to the client's deliverQoS as it is now (the flow control
 * and delivery rules are wrapped around aedes' own); QoS 0 packets go to
 * deliver0 from there.
 */
export function deliverToClient(client: Client, packet: DeliveredPacket, callback: () => void): void {
  (client as unknown as DeliveryInternals).deliverQoS(packet, callback);
}

/**
 * A subscriber's own copy of a message, the fields aedes-packet copies for
 * each subscription (handlers/subscribe.js): the broker id and counter kept,
 * no packet identifier (the subscriber's session numbers it).
 */
export function copyForSubscriber(packet: DeliveredPacket): DeliveredPacket {
  const source = packet as DeliveredPacket & Record<string, unknown>;
  const copy: DeliveredPacket & Record<string, unknown> = {
    cmd: 'publish',
    brokerId: packet.brokerId,
    brokerCounter: packet.brokerCounter,
    topic: packet.topic,
    payload: packet.payload ?? Buffer.alloc(0),
    qos: packet.qos,
    retain: packet.retain ?? false,
    dup: false,
    messageId: undefined,
  };
  for (const key of ['clientId', 'properties', 'messageExpiry']) if (Object.hasOwn(source, key)) copy[key] = source[key];
  return copy;
}

const CONNACK = 0x20;
const SHARED_SUBSCRIPTION_AVAILABLE = 0x2a;

type Step = 'header' | 'length' | 'flags' | 'reason' | 'propertiesLength' | 'property' | 'value';

/** How far announceSharedSubscriptions has followed a connection's CONNACK. */
class ConnackFollower {
  step: Step = 'header';
  multiplier = 1;
  left = 0;
  done = false;

  /** The byte to write in place of `byte`, if it changes. */
  next(byte: number): number | undefined {
    if (this.step === 'header') {
      if (byte !== CONNACK) this.done = true;
      this.step = 'length';
      return undefined;
    }
    if (this.step === 'length') {
      this.left += (byte & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      if ((byte & 0x80) === 0) this.step = 'flags';
      return undefined;
    }
    this.left--;
    if (this.step === 'flags') this.step = 'reason';
    else if (this.step === 'reason') {
      // Only an accepting CONNACK announces capabilities; 3.1.1 has no properties.
      if (byte !== 0 || this.left <= 0) this.done = true;
      this.step = 'propertiesLength';
      this.multiplier = 1;
    } else if (this.step === 'propertiesLength') {
      if ((byte & 0x80) === 0) {
        if (byte === 0 && this.multiplier === 1) this.done = true;
        this.step = 'property';
      }
      this.multiplier *= 128;
    } else if (this.step === 'property') {
      if (byte !== SHARED_SUBSCRIPTION_AVAILABLE) this.done = true;
      this.step = 'value';
    } else {
      this.done = true;
      if (byte === 0) return 1;
    }
    if (this.left <= 0) this.done = true;
    return undefined;
  }
}

const ANNOUNCING = Symbol('edgemqtt.announcing');
type WriteFn = (...args: unknown[]) => boolean;
/** The write this one wraps, and the follower while the CONNACK is not past (then null). */
type Announcing = Duplex & { [ANNOUNCING]: { write: WriteFn; follower: ConnackFollower | null } };

// Installed as `conn.write` (one function for all connections); `this` is the connection.
function writeConnack(this: Announcing, chunk: unknown, ...rest: unknown[]): boolean {
  const state = this[ANNOUNCING];
  const follower = state.follower;
  if (follower !== null && chunk instanceof Uint8Array) {
    let out: Uint8Array = chunk;
    for (let i = 0; i < chunk.length && !follower.done; i++) {
      const replacement = follower.next(chunk[i]!);
      if (replacement !== undefined) {
        // Chunks may be buffers mqtt-packet shares between packets: change a copy.
        out = Buffer.from(chunk);
        out[i] = replacement;
      }
    }
    // Past the CONNACK: the follower goes.
    if (follower.done) state.follower = null;
    return state.write.call(this, out, ...rest);
  }
  return state.write.call(this, chunk, ...rest);
}

/**
 * Sets Shared Subscription Available to 1 in the CONNACK aedes writes on
 * `conn`. aedes builds the properties in handlers/connect.js
 * connackProperties, which sets sharedSubscriptionAvailable first, so an
 * accepting v5 CONNACK's first property is that one; mqtt-packet writes the
 * packet in pieces, so the bytes are followed one by one until that property
 * (or anything else) is past. The CONNACK is the first packet aedes writes
 * on a connection. Once past it, every write passes unchanged (the wrapper
 * stays: others may have wrapped it since) and the follower is dropped.
 */
export function announceSharedSubscriptions(conn: Duplex): void {
  (conn as Announcing)[ANNOUNCING] = { write: conn.write as WriteFn, follower: new ConnackFollower() };
  conn.write = writeConnack as Duplex['write'];
}

/** Who aedes queues a QoS 1/2 message for (aedes.js enqueueOffline → persistence.outgoingEnqueueCombi). */
export interface QueueRecipient {
  clientId: string;
  topic: string;
  qos: number;
}

type EnqueueCombi = (subs: QueueRecipient[], packet: DeliveredPacket) => Promise<void>;
/** The store's outgoingEnqueueCombi without a promise when nothing waits (qos-publish.ts). */
type EnqueueCombiNow = (subs: QueueRecipient[], packet: DeliveredPacket) => Promise<void> | undefined;

/**
 * Lets `add` name more recipients of each QoS 1/2 message aedes queues for
 * persistent sessions. aedes calls outgoingEnqueueCombi once per QoS 1/2
 * publish, before it emits the message to the live subscribers (aedes.js
 * publishFuncsQoS), with the packet object it then emits, and the publisher's
 * acknowledgement waits for it: what is queued here is as durable as the
 * message's other copies. Call after listen() (the persistence exists then).
 */
export function addQueueRecipients(aedes: unknown, add: (packet: DeliveredPacket) => QueueRecipient[]): void {
  const persistence = (aedes as { persistence: { outgoingEnqueueCombi?: EnqueueCombi; outgoingEnqueueCombiNow?: EnqueueCombiNow } }).persistence;
  /** aedes' recipients and `add`'s, for either way of queuing. */
  const withAdded = (subs: QueueRecipient[], packet: DeliveredPacket): QueueRecipient[] => {
    const extra = add(packet);
    return extra.length > 0 ? [...subs, ...extra] : subs;
  };
  const enqueue = persistence.outgoingEnqueueCombi;
  if (typeof enqueue !== 'function') return;
  persistence.outgoingEnqueueCombi = (subs, packet) => enqueue.call(persistence, withAdded(subs, packet), packet);
  const enqueueNow = persistence.outgoingEnqueueCombiNow;
  if (typeof enqueueNow !== 'function') return;
  persistence.outgoingEnqueueCombiNow = (subs, packet) => enqueueNow.call(persistence, withAdded(subs, packet), packet);
}
