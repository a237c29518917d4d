/**
 * The aedes instance with the seam's hooks: `handle`, `authorizePublish`,
 * `publish` (the publish path described in index.ts), the connected clients
 * and the broker counter.
 */
import type { Duplex } from 'node:stream';
import { Aedes, type AedesOptions, type Client, type PublishPacket } from 'aedes';
import { checkAedesVersion, installedAedesVersion } from './version.js';
import { freeSubscriptionMap, lightenClient, shareDrainTimeout, type ConnectionHook, type PublishPolicy, type PublishVerdict } from './client.js';
import { withoutWillDelay } from './sessions.js';
import { boundEmitterRecursion } from './emitter-depth.js';
import { sweepKeepAlives } from './keepalive.js';
import { withPlainParserList } from './parser-list.js';
import { qosPublisher } from './qos-publish.js';
import { loadAedesPacket } from './aedes-lib.js';
import { TurnCallbacks } from '../../util/turn-callbacks.js';

type Callback = (error?: Error | null) => void;
type Publish = (packet: object, client?: Client | null | Callback, done?: Callback) => void;

/** aedes instance internals (aedes.js); not in its typings. */
interface AedesInternals {
  publish: Publish;
  counter: number;
  clients: Record<string, Client>;
  /** Other brokers' ids from their $SYS heartbeats (aedes.js). */
  brokers: Record<string, unknown>;
}

/** The parser aedes made for a client (lib/client.js). */
const parserOf = (client: Client): object => (client as unknown as { _parser: object })._parser;

/** A QoS 1 PUBLISH from the wire: it carries a packet identifier, wills do not. */
function isWireQoS1(packet: PublishPacket): boolean {
  return packet.cmd === 'publish' && packet.qos === 1 && typeof packet.messageId === 'number';
}

/** The access policy's verdict on a packet the fast path read and handed to aedes (fast-publish.ts), so that it is asked once: a field of the packet. */
const PREJUDGED = Symbol('edgemqtt.prejudged');
type Prejudged = { [PREJUDGED]?: PublishVerdict };

/**
 * Set on a packet already published, or dropped, in authorizePublish: its
 * next broker.publish is answered at once (a field of the packet rather than
 * a WeakSet entry added and removed per QoS 1 message).
 */
const PUBLISHED = Symbol('edgemqtt.published');
type Published = { [PUBLISHED]?: boolean };
const markPublished = (packet: object): void => {
  (packet as Published)[PUBLISHED] = true;
};

/** aedes' answer to a refused publish; for a will, aedes then skips it (lib/client.js close). */
const REFUSED = 'publish not authorized';

/** The reason aedes' MQTT 5 path carries in its 0x87 acknowledgement (a Reason String when the client asked for problem information). */
const NOT_AUTHORIZED = 'not allowed by the ACL';

/**
 * One aedes instance with the hooks above installed. Construct it instead of
 * `new Aedes()`; then `listen()` it as usual through `aedes`.
 */
export class AedesSeam {
  readonly aedes: Aedes;
  /** The callbacks of the seam's own writes, deferred as aedes defers them, one setImmediate per turn (aedes-write.ts). */
  readonly turnCallbacks = new TurnCallbacks();
  readonly #instance: AedesInternals;
  readonly #connectionHooks: ConnectionHook[] = [];
  readonly #policy: PublishPolicy;
  readonly #publishedListeners: Array<(client: Client) => void> = [];
  readonly #publishQoS: (packet: object, client: Client | null, done: Callback) => void;

  /** Checks the installed aedes version first (checkAedesVersion). */
  constructor(options: AedesOptions, policy: PublishPolicy, version: string = installedAedesVersion()) {
    checkAedesVersion(version);
    const publishedListeners = this.#publishedListeners;
    this.#policy = policy;
    // aedes calls it as broker.publish (handlers, wills, $SYS); replaced below.
    const publish = Aedes.prototype.publish as unknown as Publish;
    const aedes = new Aedes({
      ...options,
      authorizePublish(client, packet, done) {
        const verdict = (packet as Prejudged)[PREJUDGED] ?? policy(client, packet);
        // The publisher's id, on the packet before aedes' publish queues its
        // copies for persistent sessions (aedes.js enqueueOffline): No Local
        // is judged there too [MQTT-3.8.3-3]. aedes itself sets it only
        // afterwards, for live delivery (aedes.js emitPacket).
        if (client) (packet as PublishPacket & { clientId?: string }).clientId = client.id;
        if (verdict === 'refuse') {
          done(new Error(REFUSED));
          return;
        }
        if (verdict === 'drop') {
          // MQTT 5: aedes answers an authorization error with PUBACK/PUBREC
          // 0x87 Not authorized, keeps the connection and does not publish
          // (lib/handlers/publish.js) [MQTT-3.4.2.1]. MQTT 3.1.1 has no
          // negative acknowledgement: acknowledged, and dropped at step 5.
          if (client?.version === 5) {
            // Not published, so aedes does not call publish for it: it is done with it here.
            if (client && packet.qos === 0) for (const listener of publishedListeners) listener(client);
            done(new Error(NOT_AUTHORIZED));
            return;
          }
          markPublished(packet);
          done(null);
          return;
        }
        if (!isWireQoS1(packet)) {
          done(null);
          return;
        }
        // Step 3 of the path above: aedes' own publish steps (qos-publish.ts), not the hook below.
        publishQoS(packet, client, (error) => {
          if (error) {
            // The message is not stored: no acknowledgement may go out. For
            // MQTT 5 aedes would answer the error with PUBACK 0x87 and keep
            // the connection, telling the publisher to drop the message;
            // closing first leaves the client to resend it on its next
            // connection, as for 3.1.1 [MQTT-4.4.0-1].
            client?.conn.destroy();
            done(error);
            return;
          }
          markPublished(packet);
          done(null);
        });
      },
    });
    const publishQoS = qosPublisher(aedes, loadAedesPacket(), publish);
    this.#publishQoS = publishQoS;
    this.aedes = aedes;
    const instance = aedes as unknown as AedesInternals;
    this.#instance = instance;
    // GHSA-52qw-whmv-87c5, fixed in aedes 1.2.0 and missing from
    // 2.0.0-beta.1 (aedes.js constructor): maps keyed by strings from the wire
    // must not inherit Object's names, or a client id `constructor` makes
    // registerClient call .disconnect() on Object's constructor and end the
    // process. A client's subscriptions likewise (freeSubscriptionMap below).
    instance.clients = Object.assign(Object.create(null) as Record<string, Client>, instance.clients);
    instance.brokers = Object.assign(Object.create(null) as Record<string, unknown>, instance.brokers);

    instance.publish = function publishOnce(packet, client, done) {
      // A client's QoS 0 PUBLISH: its listeners hear when aedes is done with it (written to the subscribers).
      if (typeof client === 'object' && client !== null && (packet as { qos?: number }).qos === 0 && publishedListeners.length > 0) {
        const from = client;
        const then = done;
        done = (error) => {
          for (const listener of publishedListeners) listener(from);
          then?.(error);
        };
      }
      if ((packet as Published)[PUBLISHED] === true) {
        // Not `delete`: a deleted field would turn the packet into a dictionary.
        (packet as Published)[PUBLISHED] = false;
        const callback = typeof client === 'function' ? client : done;
        callback?.();
        return;
      }
      // Wills reach subscribers without their Will Delay Interval (sessions.ts):
      // publishWill and _clearWills both publish through here.
      publish.call(aedes, withoutWillDelay(packet), client, done);
    };

    boundEmitterRecursion((aedes as unknown as { mq: object }).mq);
    sweepKeepAlives(aedes);

    const hooks = this.#connectionHooks;
    const handle = aedes.handle;
    aedes.handle = (conn, request) => {
      const stream = conn as Duplex;
      let after: Array<(client: Client) => void> | undefined;
      for (const hook of hooks) {
        const then = hook(stream, request);
        if (then) (after ??= []).push(then);
      }
      const client = withPlainParserList(handle, conn, request, parserOf);
      freeSubscriptionMap(client);
      lightenClient(client);
      shareDrainTimeout(client);
      if (after) for (const then of after) then(client);
      return client;
    };
  }

  /** The access policy's verdict on a client's PUBLISH (fast-publish.ts asks it once, then prejudge). */
  judge(client: Client, packet: PublishPacket): PublishVerdict {
    return this.#policy(client, packet);
  }

  /** `packet`, about to reach aedes, was judged already: aedes' authorizePublish uses `verdict`. */
  prejudge(packet: PublishPacket, verdict: PublishVerdict): void {
    (packet as Prejudged)[PREJUDGED] = verdict;
  }

  /**
   * Publishes a wire QoS 1 PUBLISH the access policy allows, as the
   * authorizePublish hook above does (the publisher's id on it, then aedes'
   * publish steps, qos-publish.ts), for wire-qos1.ts, which takes such a
   * PUBLISH past aedes' handler: `done` is called once the message is
   * stored for every matching session and handed to the live subscribers,
   * or with the error that kept it from being stored.
   */
  publishAllowedQoS1(client: Client, packet: PublishPacket, done: Callback): void {
    (packet as PublishPacket & { clientId?: string }).clientId = client.id;
    this.#publishQoS(packet, client, done);
  }

  /** Runs `listener` each time aedes is done publishing a client's QoS 0 PUBLISH, or dropping it. */
  onPublished(listener: (client: Client) => void): void {
    this.#publishedListeners.push(listener);
  }

  /** Adds a hook for every connection aedes handles from now on, run after the ones added before it. */
  onConnection(hook: ConnectionHook): void {
    this.#connectionHooks.push(hook);
  }

  /** The clients connected now (aedes.js registerClient keeps them by id). */
  connectedClients(): Client[] {
    return Object.values(this.#instance.clients);
  }

  /**
   * The broker counter for a message the broker publishes on its own behalf:
   * aedes numbers messages from this counter (aedes-packet), and keeps a
   * number a packet already carries.
   */
  nextBrokerCounter(): number {
    return ++this.#instance.counter;
  }
}
