/**
 * The seam's types, and its touches of one aedes Client or connection
 * (lib/client.js, handlers/connect.js): delivery functions, dedupe,
 * subscriptions, drain timeout, wills, reads.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Aedes, Client, PublishPacket } from 'aedes';

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
  /** The publishing client's id (aedes.js emitPacket), read for No Local. */
  clientId?: string;
  /** Set by aedes on each subscription's copy: that subscription's No Local (handlers/subscribe.js addSubs). */
  nl?: boolean;
  /** MQTT 5 properties; shared between copies by reference: replace, never mutate. */
  properties?: Readonly<Record<string, unknown>>;
}

/**
 * A subscription as aedes keeps it on the client (handlers/subscribe.js
 * Subscription): granted QoS and, for MQTT 5, Retain Handling, Retain As
 * Published, No Local and the Subscription Identifier.
 */
export interface ClientSubscription {
  qos: QoS;
  rh?: number;
  rap?: boolean;
  nl?: boolean;
  si?: number;
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

/** aedes Client internals (lib/client.js); not in its typings. */
interface ClientInternals {
  deliver0: Deliver;
  deliverQoS: Deliver;
  duplicates: Record<string, number>;
  subscriptions: Record<string, ClientSubscription>;
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

/** Counts the changes to a client's subscription map (see subscriptionChanges). */
export interface SubscriptionChanges {
  readonly count: number;
}

const changesOf = new WeakMap<Client, SubscriptionChanges>();

/**
 * Gives a new client a prototype-free subscription map (lib/client.js keeps
 * `{}` in 2.0.0-beta.1): a SUBSCRIBE to `constructor` would otherwise find
 * Object's constructor as an existing subscription and unsubscribe an
 * undefined handler, which mqemitter asserts on (GHSA-52qw-whmv-87c5).
 * aedes changes the map only by assigning a filter's Subscription
 * (handlers/subscribe.js addSubs) and deleting it (handlers/unsubscribe.js):
 * the map counts both, so that what is derived from it can be cached
 * (subscriptionChanges). Reads go straight to the map (no get trap).
 */
export function freeSubscriptionMap(client: Client): void {
  const state = internals(client);
  const changes = { count: 0 };
  const map = Object.assign(Object.create(null) as Record<string, ClientSubscription>, state.subscriptions);
  state.subscriptions = new Proxy(map, {
    set(target, key, value: ClientSubscription) {
      changes.count++;
      return Reflect.set(target, key, value);
    },
    deleteProperty(target, key) {
      changes.count++;
      return Reflect.deleteProperty(target, key);
    },
  });
  changesOf.set(client, changes);
}

/**
 * The change count of a client's subscription map: it goes up whenever aedes
 * adds, replaces or removes one of its subscriptions. Call once per client,
 * after aedes made it (the seam's connection hooks run then); read `count`
 * when needed.
 */
export function subscriptionChanges(client: Client): SubscriptionChanges {
  let changes = changesOf.get(client);
  if (!changes) {
    // Not made through the seam (tests that build aedes clients by hand): never cached as unchanged.
    changes = {
      get count() {
        return Number.NaN;
      },
    };
  }
  return changes;
}

/** The client's current subscriptions by filter, as aedes keeps them (filled asynchronously after SUBSCRIBE). */
export function subscriptionsOf(client: Client): Readonly<Record<string, ClientSubscription>> {
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

/**
 * The keep-alive in force for a client, in seconds (0 = none): aedes keeps
 * it only as its timer's interval, 1.5 × keep-alive + 1 ms
 * (handlers/connect.js setKeepAlive) [MQTT-3.1.2-24], with MQTT 5 Server
 * Keep Alive applied.
 */
export function keepAliveOf(client: Client): number {
  const interval = (client as unknown as { _keepaliveInterval?: number })._keepaliveInterval ?? -1;
  return interval > 0 ? Math.round((interval - 1) / 1500) : 0;
}

/** aedes' table of registered clients by id (aedes.js registerClient; prototype-free, seam.ts); not in its typings. */
export function clientTable(aedes: Aedes): Readonly<Record<string, Client | undefined>> {
  return (aedes as unknown as { clients: Record<string, Client> }).clients;
}
