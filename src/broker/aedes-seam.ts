/**
 * The one place that reaches past aedes' public typings. Everything else in
 * the broker (and the authorizer, through the broker) uses the surface here;
 * each touch names the aedes 1.2 file and function it relies on, so that an
 * upgrade is one module to read. aedes is pinned (AEDES_VERSION) and the
 * broker refuses to start on another version (checkAedesVersion).
 *
 * What is hooked, and why:
 * - `aedes.handle` (aedes.js constructor): the limits, the protocol guard and
 *   the write coalescer see each connection before aedes makes its Client,
 *   the delivery hooks see the Client right after (onConnection).
 * - `conn.read` (lib/client.js: aedes pulls bytes with read() on 'readable'
 *   and never uses 'data'): the protocol guard's filter (interceptReads);
 *   and connect-hold.ts, which stands in for read() itself until aedes has
 *   accepted the CONNECT (connackAccepted: `connackSent`, `closed`), relying
 *   on the same rule.
 * - Client `deliver0`/`deliverQoS` (lib/client.js; subscription handlers
 *   capture them at SUBSCRIBE time, handlers/subscribe.js), `duplicates`
 *   (lib/client.js dedupe), `subscriptions`, `_handleDrainTimeout`
 *   (lib/client.js waitForDrain), `_will` and `will` (handlers/connect.js,
 *   lib/client.js close).
 * - `aedes.authorizePublish` and `aedes.publish`: the publish path below.
 * - `aedes.clients` (aedes.js registerClient), `aedes.counter` (aedes.js, read
 *   by aedes-packet for each new message), `aedes.persistence` (set by
 *   listen()).
 *
 * The publish path. aedes 1.2.0 answers a QoS 1 PUBLISH in this order
 * (lib/handlers/publish.js, enqueuePublish): authorizePublish → write PUBACK
 * → broker.publish(packet), and only that publish stores the retained
 * message and queues the copies for offline persistent sessions. A crash
 * between the PUBACK and the end of the publish would lose a message the
 * publisher was told is safe (DESIGN.md, the data path, step 2). So the
 * publish runs inside authorizePublish instead, and aedes' own call after
 * the PUBACK is answered at once. A QoS 1 PUBLISH, from socket to PUBACK:
 *
 *  1. aedes reads the bytes (conn.read, through the protocol guard's filter)
 *     and parses the packet (lib/client.js → lib/handlers/publish.js).
 *  2. aedes calls broker.authorizePublish: `authorizePublish` below asks the
 *     access policy, which answers synchronously: allow, drop or refuse.
 *  3. Allowed: aedes' own publish (Aedes.prototype.publish) runs, once:
 *     storeRetained; enqueueOffline, whose outgoingEnqueueCombi the
 *     persistence resolves only once the batch holding this PUBLISH's
 *     records is written per `persistence.sync`; emitPacket, which calls each
 *     matching subscriber's deliverQoS (delivery-rules.ts, then
 *     flow-control.ts, then aedes'); callPublished.
 *  4. Its callback marks the packet as published and lets aedes go on: aedes
 *     writes the PUBACK (lib/write.js).
 *  5. aedes calls broker.publish(packet): `publish` below finds the mark and
 *     calls back without publishing again.
 * A publish that fails (a store write failed) is reported to aedes as an
 * authorization error: aedes closes the connection without a PUBACK, and the
 * client resends the message on its next connection.
 *
 * QoS 0 and QoS 2 keep aedes' order (QoS 2 is durable already: the PUBREC
 * follows the publish, and the persistence makes that publish's records
 * durable together): step 2 allows, step 5 publishes. A dropped PUBLISH (the
 * ACL denies it: MQTT 3.1.1 has no negative acknowledgement, so it is
 * acknowledged and dropped, the connection kept) is marked at step 2 and
 * never published. Wills have no packet identifier: aedes calls
 * authorizePublish and then publish for them (lib/client.js close, aedes.js
 * _clearWills); a dropped will is not published, but aedes still deletes it
 * from the store, as for one published.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { Aedes, type AedesOptions, type Client, type PublishPacket } from 'aedes';
import { EdgeMqttError } from '../errors.js';

/** The aedes release this module was written against; package.json pins it too. */
export const AEDES_VERSION = '1.2.0';

/** The version of the aedes package that `import 'aedes'` loads. */
export function installedAedesVersion(): string {
  const require = createRequire(import.meta.url);
  // aedes' "exports" does not list its package.json: find it next to the entry point.
  let dir = path.dirname(require.resolve('aedes'));
  for (;;) {
    try {
      const manifest = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'aedes' && typeof manifest.version === 'string') return manifest.version;
    } catch {
      // No package.json here: look one level up.
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('cannot find the package.json of the installed aedes');
    dir = parent;
  }
}

/** Throws unless `found` is the aedes version the hooks here were written for. */
export function checkAedesVersion(found: string): void {
  if (found === AEDES_VERSION) return;
  throw new EdgeMqttError(
    'EDGEMQTT_AEDES_VERSION',
    `aedes ${found} is installed, but edgemqtt is built for aedes ${AEDES_VERSION} exactly: ` +
      `it corrects aedes internals that another release may have changed (src/broker/aedes-seam.ts); install aedes@${AEDES_VERSION}`,
  );
}

export type QoS = 0 | 1 | 2;

/** A message on its way to one subscriber, as aedes hands it to a client's deliver functions (an aedes-packet). */
export interface DeliveredPacket {
  topic: string;
  payload?: Uint8Array | string;
  qos: QoS;
  retain?: boolean;
  /** Set on live messages; retained ones sent on SUBSCRIBE carry none (handlers/subscribe.js). */
  brokerId?: string | null;
  brokerCounter?: number;
  /** aedes keeps one a packet carries instead of numbering it itself (lib/qos-packet.js). */
  messageId?: number;
  dup?: boolean;
}

/** aedes' callback to a delivery is sometimes called with the written packet as `this` (lib/write.js). */
export type Deliver = (packet: DeliveredPacket, callback: () => void) => void;

/** A client's two delivery functions: QoS 0, and QoS 1/2 (which hands QoS 0 packets to the first). */
export interface Deliveries {
  deliver0: Deliver;
  deliverQoS: Deliver;
}

/** A will as aedes keeps it from CONNECT; keys added to it are stored with it (aedes-packet drops them before delivery). */
export interface ConnectWill {
  topic: string;
}

/**
 * What the broker does with a PUBLISH or a will the access policy looked at:
 * `allow` publishes it; `drop` acknowledges it as usual and publishes
 * nothing, the connection kept; `refuse` is aedes' own answer to a refused
 * publish: the connection closes without an acknowledgement.
 */
export type PublishVerdict = 'allow' | 'drop' | 'refuse';

/** `client` is null for a will left by an earlier run of the broker. */
export type PublishPolicy = (client: Client | null, packet: PublishPacket) => PublishVerdict;

/**
 * Runs for each new connection before aedes reads or writes it; what it
 * returns runs with the Client aedes made for it.
 */
export type ConnectionHook = (conn: Duplex, request: IncomingMessage | undefined) => ((client: Client) => void) | void;

type Callback = (error?: Error | null) => void;
type Publish = (packet: object, client?: Client | null | Callback, done?: Callback) => void;

/** aedes Client internals (lib/client.js); not in its typings. */
interface ClientInternals {
  deliver0: Deliver;
  deliverQoS: Deliver;
  duplicates: Record<string, number>;
  subscriptions: Record<string, { qos: QoS }>;
  _handleDrainTimeout: () => void;
  /** The will from CONNECT, kept while authenticating (handlers/connect.js) ... */
  _will: ConnectWill | null;
  /** ... and the one published when the connection fails (lib/client.js close). */
  will: ConnectWill | null;
  /** Set when aedes has written a CONNACK, accepting or refusing (handlers/connect.js). */
  connackSent?: boolean;
  /** Set when the connection closes; a refusing CONNACK closes it in the same callback that set `connackSent`. */
  closed: boolean;
}

/** aedes instance internals (aedes.js); not in its typings. */
interface AedesInternals {
  publish: Publish;
  counter: number;
  clients: Record<string, Client>;
  persistence: object;
}

const internals = (client: Client) => client as unknown as ClientInternals;

/** Replaces a client's delivery functions with what `wrap` makes of the current ones. Call right after aedes made the client. */
export function wrapDeliveries(client: Client, wrap: (current: Deliveries) => Deliveries): void {
  const state = internals(client);
  const wrapped = wrap({ deliver0: state.deliver0, deliverQoS: state.deliverQoS });
  state.deliver0 = wrapped.deliver0;
  state.deliverQoS = wrapped.deliverQoS;
}

/**
 * Turns off aedes' per-client dedupe (lib/client.js: a message counts as a
 * duplicate unless its broker counter is above the last one delivered): it
 * compares against `duplicates`, which then reads 0 for every broker.
 */
export function disableAedesDedupe(client: Client): void {
  internals(client).duplicates = new Proxy(Object.create(null) as Record<string, number>, {
    get: () => 0,
    set: () => true,
  });
}

/** The client's current subscriptions by filter, as aedes keeps them (filled asynchronously after SUBSCRIBE). */
export function subscriptionsOf(client: Client): Readonly<Record<string, { qos: QoS }>> {
  return internals(client).subscriptions;
}

/** Runs `listener` when aedes gives up on a client whose socket stayed full for drainTimeout, before aedes closes it. */
export function onDrainTimeout(client: Client, listener: () => void): void {
  const state = internals(client);
  const handleDrainTimeout = state._handleDrainTimeout;
  state._handleDrainTimeout = () => {
    listener();
    handleDrainTimeout.call(client);
  };
}

/** Whether aedes has written a CONNACK that accepts the client (see connect-hold.ts). */
export function connackAccepted(client: Client): boolean {
  const state = internals(client);
  return state.connackSent === true && !state.closed;
}

/** The will a connecting client sent, while aedes authenticates it (null: none). The same object is stored. */
export function connectWill(client: Client): ConnectWill | null {
  return internals(client)._will;
}

/** Makes a connected client's coming close skip its will (it stays stored); whether it had one. */
export function withholdWill(client: Client): boolean {
  const state = internals(client);
  const had = state.will !== null && state.will !== undefined;
  state.will = null;
  return had;
}

/**
 * Puts `filter` between the connection and aedes' parser: every chunk aedes
 * reads passes it, and aedes gets what it returns (null: nothing for now).
 * Once `closed()` is true aedes reads nothing more.
 */
export function interceptReads(conn: Duplex, filter: (chunk: Uint8Array) => Uint8Array | null, closed: () => boolean): void {
  const read = conn.read.bind(conn);
  conn.read = (size?: number) => {
    if (closed()) return null;
    const chunk: unknown = read(size);
    return chunk instanceof Uint8Array ? filter(chunk) : chunk;
  };
}

/** A QoS 1 PUBLISH from the wire: it carries a packet identifier, wills do not. */
function isWireQoS1(packet: PublishPacket): boolean {
  return packet.cmd === 'publish' && packet.qos === 1 && typeof packet.messageId === 'number';
}

/** aedes' answer to a refused publish; for a will, aedes then skips it (lib/client.js close). */
const REFUSED = 'publish not authorized';

/**
 * One aedes instance with the hooks above installed. Construct it instead of
 * `new Aedes()`; then `listen()` it as usual through `aedes`.
 */
export class AedesSeam {
  readonly aedes: Aedes;
  readonly #instance: AedesInternals;
  readonly #connectionHooks: ConnectionHook[] = [];
  /** Packets already published, or dropped, whose next broker.publish is answered at once. */
  readonly #published = new WeakSet<object>();

  /** Checks the installed aedes version first (checkAedesVersion). */
  constructor(options: AedesOptions, policy: PublishPolicy, version: string = installedAedesVersion()) {
    checkAedesVersion(version);
    const published = this.#published;
    // aedes calls it as broker.publish (handlers, wills, $SYS); replaced below.
    const publish = Aedes.prototype.publish as unknown as Publish;
    const aedes = new Aedes({
      ...options,
      authorizePublish(client, packet, done) {
        const verdict = policy(client, packet);
        if (verdict === 'refuse') {
          done(new Error(REFUSED));
          return;
        }
        if (verdict === 'drop') {
          published.add(packet);
          done(null);
          return;
        }
        if (!isWireQoS1(packet)) {
          done(null);
          return;
        }
        // Step 3 of the path above: aedes' own publish, not the hook below.
        publish.call(aedes, packet, client, (error) => {
          if (error) {
            done(error);
            return;
          }
          published.add(packet);
          done(null);
        });
      },
    });
    this.aedes = aedes;
    const instance = aedes as unknown as AedesInternals;
    this.#instance = instance;

    instance.publish = function publishOnce(packet, client, done) {
      if (published.delete(packet)) {
        const callback = typeof client === 'function' ? client : done;
        callback?.();
        return;
      }
      publish.call(aedes, packet, client, done);
    };

    const hooks = this.#connectionHooks;
    const handle = aedes.handle;
    aedes.handle = (conn, request) => {
      const stream = conn as Duplex;
      let after: Array<(client: Client) => void> | undefined;
      for (const hook of hooks) {
        const then = hook(stream, request);
        if (then) (after ??= []).push(then);
      }
      const client = handle(conn, request);
      if (after) for (const then of after) then(client);
      return client;
    };
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
