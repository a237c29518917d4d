/**
 * The QoS 0 fast path: a plain QoS 0 PUBLISH (publish-frames.ts) from a
 * connected client goes from the bytes read straight to each subscriber's
 * connection, without aedes, mqtt-packet or mqemitter in between.
 *
 * Why: in the QoS 0 profile of aedes' path, mqtt-packet's parser took ~20% of
 * the broker's CPU, mqemitter's fan-out ~14%, mqtt-packet's generate ~11%,
 * aedes' per-delivery setImmediate and fastparallel most of the rest: per
 * message a parsed object, an aedes-packet per subscriber and one closure
 * chain per delivery. Here a message costs one small object, one cached
 * topic match, and for each subscriber a write of bytes encoded once per
 * protocol level: for subscribers of the publisher's level, the very bytes
 * it sent.
 *
 * What stays aedes' (the reference: `broker.fastPublish: false` sends
 * everything through it, and test/fast-publish.test.ts compares the two):
 * every other packet; a PUBLISH with QoS 1/2, RETAIN, DUP, properties, a `$`
 * or non-ASCII topic, or split over reads when it is large; a message the
 * ACL does not allow; one matching a subscription this path does not know
 * (shared subscriptions) or two subscriptions of one client (delivery-rules.ts
 * merges those); and, per subscriber, one with a Subscription Identifier,
 * outgoing Topic Aliases, or not yet done resuming its session. Those take
 * aedes' own route: the message as a parsed packet into the client's parser
 * (the ACL's verdict carried over, so it is not asked twice), or the
 * subscription's own handler for that one subscriber.
 *
 * The other packets of the data path, a QoS 1/2 PUBLISH with a plain topic
 * and a PUBACK, PUBREC or PUBCOMP without Reason Code, are read in place too
 * (parsedInPlace) and handed to aedes as the packet mqtt-packet would have
 * made, in order (mqtt-packet's parser, its buffer list and its debug calls
 * were a fifth of the broker's CPU on the QoS 1 path), or taken through
 * aedes' steps here: a 3.1.1 QoS 1 PUBLISH (wire-qos1.ts), a PUBACK or
 * PUBCOMP (wire-acks.ts).
 *
 * Kept on this path: the protocol guard (underneath: these bytes passed it),
 * the ACL on publish and on each delivery (authorizeForward), No Local
 * [MQTT-3.8.3-3], the flow control's outgoing budget and Maximum Packet Size
 * [MQTT-3.1.2-24] (`admitQoS0`), the keep-alive [MQTT-3.1.2-22], the
 * traffic counts (the publish event, the written-PUBLISH tap), and order:
 * messages from one client on one topic reach each subscriber in the order
 * sent [MQTT-4.6.0-6]. For that, once a PUBLISH of a client goes to aedes,
 * its later ones do too until aedes has published every one of them
 * (FrameReader's `handedToAedes`, counted down by the seam's publish); aedes then has
 * written them, since its QoS 0 deliveries complete before its publish calls
 * back.
 *
 * Touches of aedes (2.0.0-beta.1): `conn.client` (lib/client.js
 * constructor), Client `connackSent`, `connected`, `closed`, `version`,
 * `_parser` ('packet' is what lib/client.js enqueue hears),
 * `_keepaliveInterval`/`_keepaliveTimer` (handlers/index.js refreshes it
 * per packet), `subscriptions[filter].func` (handlers/subscribe.js: the
 * function registered with mqemitter), `aedes.mq._matcher` (mqemitter's
 * qlobber: `add` and `remove` counted as changes, `match`, whose answers are
 * remembered per topic for mqemitter too), `aedes.authorizeForward`, and
 * aedes-packet for a subscriber's copy on aedes' route.
 */
import type { Duplex } from 'node:stream';
import type { Aedes, Client, PublishPacket } from 'aedes';
import type { ClientSubscription, PublishVerdict } from './client.js';
import { publishRewrite, publishTap } from './packet-writes.js';
import { encodePlainPublish, isDeliveryAck, parsedInPlace, PLAIN_PUBLISH, plainTopic, PUBACK_HEADER, PUBCOMP_HEADER, PUBLISH, remainingLength, variableByteIntegerBytes } from './publish-frames.js';
import type { AedesSeam } from './seam.js';
import { loadAedesPacket } from './aedes-lib.js';
import { WireQoS1, type WireQoS1Client } from './wire-qos1.js';
import { takeWireAck, type WireAckClient } from './wire-acks.js';
import { emitPacket, type PacketParser } from './parser-events.js';

type Handler = (packet: object, callback: () => void) => void;

/** A frame split over reads is held back and joined up to this size; a larger one goes to aedes as it comes. */
const MAX_HELD_FRAME_BYTES = 64 * 1024;
/** mqemitter's match for a topic without subscribers. */
const NO_HANDLERS: readonly Handler[] = Object.freeze([]);
/** Topics whose matches are remembered at once; past it the memory starts over. */
const MAX_CACHED_TOPICS = 10_000;

interface FastClient extends WireQoS1Client {
  connackSent?: boolean;
  closed: boolean;
  _parser: PacketParser;
  subscriptions: Record<string, ClientSubscription & { func?: Handler }>;
}

interface MqEmitter {
  _matcher: {
    add(topic: string, handler: Handler): unknown;
    /** Without a handler: every handler of the topic (mqemitter's removeAllListeners). */
    remove(topic: string, handler?: Handler): unknown;
    match(topic: string): readonly Handler[];
  };
}

interface Target {
  client: FastClient;
  subscription: ClientSubscription;
  handler: Handler;
}

/** The subscriptions a topic matches; `aedesOnly` when one of them is not for this path. */
interface Matches {
  aedesOnly: boolean;
  targets: Target[];
}

export interface FastPublishOptions {
  /**
   * The flow control's say on a QoS 0 message of `bytes` to `client`: false
   * when it must be dropped (counted and reported there).
   */
  admitQoS0(client: Client, bytes: number): boolean;
  /** Told of each message this path took. */
  taken(): void;
}

/** aedes-packet, as aedes loads it: a subscriber's copy of a message on aedes' route. */
const AedesPacket = loadAedesPacket();

function noop(): void {}

export class FastPublish {
  readonly #aedes: Aedes;
  readonly #seam: AedesSeam;
  readonly #mq: MqEmitter;
  readonly #options: FastPublishOptions;
  /** A QoS 1 PUBLISH read in place, taken to its PUBACK (wire-qos1.ts). */
  readonly wireQoS1: WireQoS1;
  /** Counts changes of subscriptions; #matches holds matches made at #cachedGeneration. */
  #generation = 0;
  #cachedGeneration = 0;
  readonly #matches = new Map<string, Matches>();
  /** mqemitter's matches (handlers by topic), made at #cachedGeneration too. */
  readonly #handlers = new Map<string, readonly Handler[]>();
  /** The client (and its subscription) each mqemitter handler delivers to. */
  readonly #owners = new WeakMap<Handler, Target>();

  constructor(seam: AedesSeam, options: FastPublishOptions) {
    this.#seam = seam;
    this.#aedes = seam.aedes;
    this.#options = options;
    this.wireQoS1 = new WireQoS1(seam);
    const mq = (seam.aedes as unknown as { mq: MqEmitter }).mq;
    this.#mq = mq;
    // Any subscription added or removed makes every remembered match stale:
    // counted where the trie changes, since mqemitter's removeListener
    // removes a handler only in a later setImmediate (mqemitter.js), and a
    // match made in between would be remembered with the handler still in.
    const matcher = mq._matcher;
    const add = matcher.add.bind(matcher);
    const remove = matcher.remove.bind(matcher);
    matcher.add = (topic, handler) => {
      this.#generation++;
      return add(topic, handler);
    };
    matcher.remove = (topic, handler) => {
      this.#generation++;
      return remove(topic, handler);
    };
    // mqemitter matches each message aedes emits (its QoS 1/2 messages, and
    // QoS 0 ones this path leaves to it) against its trie anew: the split and
    // walk were ~3% of the broker's CPU on the QoS 1 path. Its answer is
    // remembered per topic like this path's own, until subscriptions change.
    // mqemitter only reads the list (MQEmitter._do hands it to fastparallel).
    const match = matcher.match.bind(matcher);
    matcher.match = (topic) => this.#handlersOf(topic, match);
    // A handler is known once its client's SUBSCRIBE is done (handlers/subscribe.js
    // completeSubscribe), or its stored ones restored on CONNECT (handlers/connect.js
    // restoreSubs, before registerClient emits 'client'); until then its messages go through aedes.
    seam.aedes.on('client', (client) => this.#learn(client as unknown as FastClient));
    seam.aedes.on('subscribe', (_subscriptions, client) => this.#learn(client as unknown as FastClient));
    seam.onPublished((client) => {
      const reader = (client.conn as Partial<Reading>)[READER];
      if (reader !== undefined && reader.handedToAedes > 0) reader.handedToAedes--;
    });
    seam.onConnection((conn) => {
      (conn as Reading)[READER] = new FrameReader(this, conn, conn.read as Read);
      conn.read = readFrames as Duplex['read'];
    });
  }

  /**
   * Publishes the plain QoS 0 PUBLISH at `start`..`end` of `chunk`. Returns
   * false when it went to aedes instead (as a packet, in order): then the
   * client's later PUBLISHes go there too, until aedes is done with it.
   */
  publish(client: FastClient, chunk: Buffer, start: number, bodyStart: number, end: number, topic: string, payloadStart: number): boolean {
    const payload = chunk.subarray(payloadStart, end);
    // The packet as mqtt-packet would parse it (no messageId at QoS 0, no properties when there are none).
    const packet = { cmd: 'publish', retain: false, qos: 0, dup: false, length: end - bodyStart, topic, payload } as PublishPacket;
    const verdict = this.#seam.judge(client as unknown as Client, packet);
    const matches = verdict === 'allow' ? this.#match(topic) : undefined;
    if (matches === undefined || matches.aedesOnly) {
      this.#toAedes(client, packet, verdict);
      return false;
    }
    const publisher = client;
    let aedesCopy: object | undefined;
    // The frame as read, as a plain view (see write-coalescer.ts toBytes), for subscribers of the
    // publisher's level; encoded once for those of the other level.
    let asRead: Uint8Array | undefined;
    let reencoded: Uint8Array | undefined;
    const publisherLevel = publisher.version === 5 ? 5 : 4;
    const tap = publishTap(this.#aedes);
    const authorizeForward = this.#aedes.authorizeForward as (client: Client, packet: PublishPacket) => PublishPacket | null | undefined;
    for (const { client: subscriber, subscription, handler } of matches.targets) {
      if (subscriber.closed || subscriber.conn.destroyed) continue;
      if (subscription.nl === true && subscriber === publisher) continue;
      if (!subscriber.connected || subscription.si !== undefined || publishRewrite(subscriber.conn) !== undefined) {
        // aedes' route for this one subscriber: its handler, as mqemitter would call it (aedes.js emitPacket).
        aedesCopy ??= new AedesPacket({ ...packet, clientId: publisher.id }, this.#aedes);
        handler(aedesCopy, noop);
        continue;
      }
      if (!authorizeForward(subscriber as unknown as Client, packet)) continue;
      const level = subscriber.version === 5 ? 5 : 4;
      const bytes =
        level === publisherLevel
          ? (asRead ??= new Uint8Array(chunk.buffer, chunk.byteOffset + start, end - start))
          : (reencoded ??= encodePlainPublish(topic, payload, level));
      if (!this.#options.admitQoS0(subscriber as unknown as Client, bytes.length)) continue;
      subscriber.conn.write(bytes);
      tap?.(subscriber as unknown as Client, 0, payload.length);
    }
    this.#options.taken();
    // After the deliveries, as aedes.js callPublished (the traffic counts, the bridge's export).
    this.#aedes.emit('publish', packet, client as unknown as Client);
    return true;
  }

  #toAedes(client: FastClient, packet: PublishPacket, verdict: PublishVerdict): void {
    // Counted before aedes can publish it (and count it down), which it may do at once.
    (client.conn as Reading)[READER].handedToAedes++;
    this.#seam.prejudge(packet, verdict);
    emitPacket(client._parser, packet);
  }

  /** Forgets every remembered match after a change of subscriptions (they may hold clients now gone). */
  #current(): void {
    if (this.#cachedGeneration === this.#generation) return;
    this.#matches.clear();
    this.#handlers.clear();
    this.#cachedGeneration = this.#generation;
  }

  /** mqemitter's matcher, remembered per topic (see the constructor); a frozen list shared by its callers. */
  #handlersOf(topic: string, match: (topic: string) => readonly Handler[]): readonly Handler[] {
    this.#current();
    let handlers = this.#handlers.get(topic);
    if (handlers === undefined) {
      // A copy: qlobber may answer with a list it keeps (and changes) inside its trie. A topic
      // nobody subscribes to (a sensor's, often) shares one empty list.
      const matched = match(topic);
      handlers = matched.length === 0 ? NO_HANDLERS : Object.freeze([...matched]);
      if (this.#handlers.size >= MAX_CACHED_TOPICS) this.#handlers.clear();
      this.#handlers.set(topic, handlers);
    }
    return handlers;
  }

  #match(topic: string): Matches {
    this.#current();
    const cached = this.#matches.get(topic);
    if (cached !== undefined) return cached;
    const matches: Matches = { aedesOnly: false, targets: [] };
    const seen = new Set<FastClient>();
    for (const handler of this.#mq._matcher.match(topic)) {
      const target = this.#owners.get(handler);
      // A subscription of another kind, or a second one of the same client.
      if (target === undefined || seen.has(target.client)) {
        matches.aedesOnly = true;
        matches.targets = [];
        break;
      }
      seen.add(target.client);
      matches.targets.push(target);
    }
    if (this.#matches.size >= MAX_CACHED_TOPICS) this.#matches.clear();
    this.#matches.set(topic, matches);
    return matches;
  }

  /** Learns which client each of `client`'s subscription handlers delivers to. */
  #learn(client: FastClient): void {
    const subscriptions = client.subscriptions;
    let learned = false;
    for (const filter in subscriptions) {
      const subscription = subscriptions[filter]!;
      const handler = subscription.func;
      if (typeof handler === 'function' && this.#owners.get(handler)?.subscription !== subscription) {
        this.#owners.set(handler, { client, subscription, handler });
        learned = true;
      }
    }
    // Matches remembered while these handlers were unknown went all to aedes; a client that
    // brought no new handler (every clean connect) leaves the remembered matches as they are.
    if (learned) this.#generation++;
  }
}

type Read = (this: Duplex, size?: number) => unknown;
const READER = Symbol('edgemqtt.frameReader');
type Reading = Duplex & { [READER]: FrameReader };

/** Installed as `conn.read` (one function for all connections; its callers call it on the connection). */
function readFrames(this: Reading, size?: number): unknown {
  return this[READER].read(size);
}

/**
 * One connection's reads, between the protocol guard (below) and aedes
 * (above): takes the frames the fast path publishes out of what aedes
 * reads, and keeps aedes' parser fed with whole frames or with the rest of
 * one it has begun.
 */
class FrameReader {
  readonly #fast: FastPublish;
  readonly #conn: Duplex;
  /** Bytes of a frame aedes has begun that it is still owed. */
  #owed = 0;
  /** The start of a frame not yet complete, held back. */
  #held: Buffer | null = null;
  #reading = false;
  #later: Buffer[] = [];
  /** Bytes after the CONNECT went to aedes before the client was accepted, and may not have reached its parser yet. */
  #beforeReady = false;
  /** Frames whose first bytes went to aedes (those read in place not counted). */
  #framesHanded = 0;
  /** The client's QoS 0 PUBLISHes handed to aedes (as bytes or as a packet) and not yet published by it. */
  handedToAedes = 0;
  /** The topic of the last PUBLISH read in place: the same string for the next one to the same topic (plainTopic). */
  #topic: string | undefined;

  /** The read below this one (the protocol guard's), unbound. */
  readonly #read: Read;

  constructor(fast: FastPublish, conn: Duplex, read: Read) {
    this.#fast = fast;
    this.#conn = conn;
    this.#read = read;
  }

  read(size?: number): unknown {
    const chunk = this.#read.call(this.#conn, size);
    if (!(chunk instanceof Uint8Array)) return chunk;
    const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.#reading) {
      // aedes reads again from inside a packet handed to it; keep the order.
      this.#later.push(buffer);
      return null;
    }
    this.#reading = true;
    try {
      let out = this.#take(buffer);
      while (this.#later.length > 0) {
        const next = this.#take(this.#later.shift()!);
        out = out === null ? next : next === null ? out : Buffer.concat([out, next]);
      }
      return out;
    } finally {
      this.#reading = false;
    }
  }

  /** What of `chunk` goes to aedes, having published what it may. */
  #take(chunk: Buffer): Buffer | null {
    let data = chunk;
    if (this.#held !== null) {
      data = Buffer.concat([this.#held, chunk]);
      this.#held = null;
    }
    let index = 0;
    if (this.#owed > 0) {
      const owed = Math.min(this.#owed, data.length);
      this.#owed -= owed;
      // The rest of a frame aedes has begun: it, and so all after it, is aedes'.
      return this.#toAedes(data, 0, owed);
    }
    const client = (this.#conn as { client?: FastClient }).client;
    if (!this.#ready(client)) {
      const out = this.#toAedes(data, 0, 0);
      // The connect hold above passes the first packet, the CONNECT, and holds what follows it.
      if (this.#framesHanded > 1) this.#beforeReady = true;
      return out;
    }
    if (this.#beforeReady) {
      // What came before the CONNACK is still held by the connect hold above (connect-hold.ts),
      // which hands it to aedes with this read's answer, ahead of it: so this read goes to aedes
      // as bytes too, nothing read in place overtaking it.
      this.#beforeReady = false;
      return this.#toAedes(data, 0, 0);
    }
    const level5 = client.version === 5;
    let published = false;
    while (index < data.length) {
      const header = remainingLength(data, index + 1);
      if (header === undefined) break;
      const end = header.next + header.length;
      const first = data[index] as number;
      // Only a Remaining Length in the fewest bytes is sent on as it came [MQTT-1.5.5-1]; and only
      // PUBLISH and PUBACK, PUBREC, PUBCOMP, the packets of the data path, are read here.
      if ((first >> 4 !== PUBLISH && !isDeliveryAck(first)) || header.next - index !== 1 + variableByteIntegerBytes(header.length)) {
        return this.#done(client, published, this.#toAedes(data, index, index));
      }
      if (end > data.length) {
        if (end - index > MAX_HELD_FRAME_BYTES) return this.#done(client, published, this.#toAedes(data, index, index));
        break;
      }
      if (first === PLAIN_PUBLISH) {
        const topic = plainTopic(data, header.next, end, this.#topic);
        this.#topic = topic ?? this.#topic;
        const topicEnd = header.next + 2 + (topic?.length ?? 0);
        // MQTT 5: only a Property Length of 0 (one byte) [MQTT-3.3.2.3].
        if (topic === undefined || (level5 && (topicEnd >= end || data[topicEnd] !== 0))) {
          return this.#done(client, published, this.#toAedes(data, index, index));
        }
        published = true;
        const fast = this.#fast.publish(client, data, index, header.next, end, topic, level5 ? topicEnd + 1 : topicEnd);
        index = end;
        if (!fast) return this.#done(client, published, this.#toAedes(data, index, index));
        continue;
      }
      // A PUBACK or PUBCOMP: aedes' steps without its handler chain (wire-acks.ts).
      const ack = (first === PUBACK_HEADER || first === PUBCOMP_HEADER) && header.length === 2;
      if (ack && takeWireAck(client as unknown as WireAckClient, ((data[header.next] as number) << 8) | (data[header.next + 1] as number))) {
        index = end;
        continue;
      }
      // A QoS 1/2 PUBLISH or an acknowledgement: read in place and handed to aedes as the packet
      // mqtt-packet would have made of it (publish-frames.ts), its parser and buffer list skipped.
      const packet = parsedInPlace(data, index, header.next, end, level5, this.#topic) as { topic?: string | null } | undefined;
      if (packet === undefined) return this.#done(client, published, this.#toAedes(data, index, index));
      if (typeof packet.topic === 'string') this.#topic = packet.topic;
      index = end;
      // A QoS 1 PUBLISH of a 3.1.1 client: aedes' steps without its handler chain (wire-qos1.ts).
      if (!this.#fast.wireQoS1.take(client, packet as { cmd: string; qos: number; topic: string })) emitPacket(client._parser, packet);
      // aedes may close the connection on it (a refused PUBLISH): nothing after it is read.
      if (client.closed) return null;
    }
    if (index < data.length) this.#held = data.subarray(index);
    return this.#done(client, published, null);
  }

  /** Whether `client`'s next PUBLISH may take the fast path. */
  #ready(client: FastClient | undefined): client is FastClient {
    return client !== undefined && client.connackSent === true && !client.closed && this.handedToAedes === 0;
  }

  /** The keep-alive counts every packet the client sends (handlers/index.js), those published here too [MQTT-3.1.2-22]. */
  #done(client: FastClient, published: boolean, out: Buffer | null): Buffer | null {
    if (published && client._keepaliveInterval > 0) client._keepaliveTimer?.refresh();
    return out;
  }

  /**
   * Hands `data` from `from` on to aedes, noting where its last frame ends
   * and counting its QoS 0 PUBLISHes; frames start at `framesFrom`. An
   * incomplete fixed header at the end is held back for the next read.
   */
  #toAedes(data: Buffer, from: number, framesFrom: number): Buffer | null {
    let index = framesFrom;
    const client = (this.#conn as { client?: FastClient }).client;
    let end = data.length;
    while (index < data.length) {
      const header = remainingLength(data, index + 1);
      if (header === undefined) {
        this.#held = data.subarray(index);
        end = index;
        break;
      }
      const first = data[index] as number;
      this.#framesHanded++;
      if (client !== undefined && first >> 4 === PUBLISH && (first & 0x06) === 0) this.handedToAedes++;
      const frameEnd = header.next + header.length;
      if (frameEnd > data.length) {
        this.#owed = frameEnd - data.length;
        break;
      }
      index = frameEnd;
    }
    return end > from ? data.subarray(from, end) : null;
  }
}
