/**
 * Step 3 of the publish path (index.ts) for a QoS 1 PUBLISH from the wire:
 * aedes' own publish (aedes.js `publish` with publishFuncsQoS), its steps in
 * its order, without the machinery around them. aedes runs them as a series
 * (runSeries: a PublishState, a bound callback and a closure per message),
 * and enqueueOffline asks the persistence for the matching sessions through
 * a promise, then queues the copies through a second one (DoEnqueues, with
 * a closure of its own): on the QoS 1 path to a persistent session those
 * were ~1.3 KB of the ~6.4 KB allocated per message
 * (bench/persistence-qos1.ts under V8's sampling heap profiler). Here, per
 * message (aedes.js, 2.0.0-beta.1):
 *
 *  1. the message as aedes makes it (aedes-packet, numbered from
 *     `aedes.counter`), its Message Expiry recorded as an absolute time
 *     [MQTT-3.3.2-5];
 *  2. storeRetained: nothing, a retained message goes aedes' own way;
 *  3. enqueueOffline: the sessions whose stored subscriptions match, asked
 *     of the store at once (subscriptionsByTopicNow; without it, aedes' own
 *     way), `$SYS/` topics without the wildcard filters, and
 *     `persistence.outgoingEnqueueCombi` (the shared subscriptions' hook
 *     included, shared.ts), whose promise settles once the records are
 *     durable (the store's outgoingEnqueueCombiNow: no promise when nothing
 *     was stored);
 *  4. emitPacket: the publisher's id on the message, and mqemitter's emit
 *     to the live subscriptions;
 *  5. callPublished: aedes' `published` hook, then its 'publish' event,
 *     with the packet as it came.
 *
 * Two differences, on purpose:
 * - Step 4 does not wait for step 3's records to be durable: the live
 *   subscribers get the message while its records are written, and step 5
 *   (and so the publisher's PUBACK) waits for both. aedes runs them in
 *   series, so that with a durable store every live delivery, to a clean
 *   session too, waited for an fsync. At QoS 1 that wait bought nothing: a
 *   message delivered and then lost to a crash before its write is sent
 *   again by its publisher, which had no PUBACK, and delivered twice, which
 *   QoS 1 allows [MQTT-4.3.2]; a failed write closes the publisher's
 *   connection without a PUBACK as before, with the same outcome. A
 *   persistent subscriber's copy is in its queue (in memory) before the
 *   emit, so the flow control can claim it (queue-store.ts claim).
 *   QoS 2 does not come here: it is delivered after its records are durable.
 * - When the store cannot answer which sessions match (it is closing),
 *   aedes emits 'error' and never calls back, leaving the PUBLISH
 *   unanswered for ever; here the publish fails, so that the seam closes
 *   the connection without a PUBACK and the client sends the message again.
 */
import type { Aedes, Client, PublishPacket } from 'aedes';
import type { PacketClass } from './aedes-lib.js';

type Callback = (error?: Error | null) => void;

interface Subscription {
  topic: string;
  clientId: string;
}

/** The store's (src/persistence/level-persistence.ts); another persistence has none and keeps aedes' way. */
interface QoSPublishPersistence {
  subscriptionsByTopicNow?(topic: string): readonly Subscription[];
  outgoingEnqueueCombi(subs: readonly Subscription[], packet: object): Promise<void>;
  /** outgoingEnqueueCombi with undefined when there is nothing to wait for, and its errors thrown (the store's). */
  outgoingEnqueueCombiNow?(subs: readonly Subscription[], packet: object): Promise<void> | undefined;
}

/** The parts of the aedes instance the steps read (aedes.js). */
interface PublishingAedes {
  persistence: QoSPublishPersistence;
  maxTopicLevels: number;
  mq: { emit(packet: object, done: Callback): void };
  published(packet: object, client: Client | null, done: Callback): void;
  emit(event: 'publish', packet: object, client: Client | null): boolean;
}

type Publish = (packet: object, client: Client | null, done: Callback) => void;

const SYS_PREFIX = '$SYS/';

/** aedes.js removeSharp: `$SYS/` messages do not reach `+` and `#` filters [MQTT-4.7.2-1]. */
function notWildcardFirst(sub: Subscription): boolean {
  const code = sub.topic.charCodeAt(0);
  return code !== 43 && code !== 35;
}

/** lib/utils.js topicLevelCount. */
export function topicLevelCount(topic: string): number {
  let count = 1;
  for (let i = 0; i < topic.length; i++) if (topic.charCodeAt(i) === 47) count++;
  return count;
}

/**
 * The publish for a wire QoS 1 PUBLISH (see the header): `fallback` (aedes'
 * own publish) for what these steps do not cover, a retained message or a
 * persistence without subscriptionsByTopicNow.
 */
export function qosPublisher(aedes: Aedes, Packet: PacketClass, fallback: Publish): Publish {
  const broker = aedes as unknown as PublishingAedes;
  return function publishQoS(packet, client, done) {
    const original = packet as PublishPacket & { messageExpiry?: number };
    const persistence = broker.persistence;
    if (original.retain || persistence.subscriptionsByTopicNow === undefined || topicLevelCount(original.topic) > broker.maxTopicLevels) {
      fallback.call(aedes, packet, client, done);
      return;
    }
    const message = new Packet(original, aedes) as unknown as PublishPacket & { messageExpiry?: number; clientId?: string };
    const expiry = message.properties?.messageExpiryInterval;
    if (expiry !== undefined && expiry > 0 && message.messageExpiry === undefined) message.messageExpiry = Date.now() + expiry * 1000;
    let subs: readonly Subscription[];
    try {
      subs = persistence.subscriptionsByTopicNow(message.topic);
    } catch (error) {
      done(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    if (message.topic.startsWith(SYS_PREFIX)) subs = subs.filter(notWildcardFirst);
    let stored: Promise<void> | undefined;
    try {
      stored = persistence.outgoingEnqueueCombiNow ? persistence.outgoingEnqueueCombiNow(subs, message) : persistence.outgoingEnqueueCombi(subs, message);
    } catch (error) {
      stored = Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    if (client) message.clientId = client.id;
    // Steps 3 and 4 overlap: the live subscribers get the message while its
    // records are written (see the header), and step 5 waits for both; for
    // only step 4 when nothing was stored (no promise, callback or microtask
    // then, for the usual message that no persistent session subscribes to).
    let waiting = stored === undefined ? 1 : 2;
    let failure: Error | undefined;
    const settle = (error?: Error | null): void => {
      if (error && failure === undefined) failure = error;
      if (--waiting > 0) return;
      if (failure !== undefined) {
        done(failure);
        return;
      }
      broker.published(packet, client, done);
      broker.emit('publish', packet, client);
    };
    if (stored !== undefined) stored.then(() => settle(), settle);
    broker.mq.emit(message, settle);
  };
}
