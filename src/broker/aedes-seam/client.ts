/**
 * The seam's types, and its touches of one aedes Client or connection
 * (lib/client.js, handlers/connect.js): delivery functions, dedupe,
 * subscriptions, drain timeout, wills, reads.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Aedes, Client, PublishPacket } from 'aedes';
import { compactListenerLists, compactListeners, withoutPrototype } from '../../util/fast-object.js';
import { keepAliveBySweep } from './keepalive.js';
import { parkParserBuffers } from './parser-parking.js';

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

/** The top of a client's stack of deliveries (wrapDeliveries), in a symbol-keyed field of the client. */
const TOP_DELIVERIES = Symbol('edgemqtt.deliveries');
type Stacked = ClientInternals & { [TOP_DELIVERIES]?: Deliveries };

/** The client's two delivery functions once wrapped: one context (the client) and two closures per client, whatever the number of layers. */
function stackOn(state: Stacked): void {
  state.deliver0 = (packet, callback) => state[TOP_DELIVERIES]!.deliver0(packet, callback);
  state.deliverQoS = (packet, callback) => state[TOP_DELIVERIES]!.deliverQoS(packet, callback);
}

/**
 * Puts what `wrap` makes of the client's current deliveries on top of them.
 * Call right after aedes made the client. Each layer is an object whose
 * `deliver0` and `deliverQoS` are called as its methods (one object per
 * client, methods shared on a prototype: no closures per layer), and calls
 * those of the layer beneath it the same way; aedes' own two functions are
 * the bottom layer. The client's `deliver0`/`deliverQoS`, which subscription
 * handlers capture and call unbound (handlers/subscribe.js), are two
 * closures that call the top layer, installed with the first one.
 */
export function wrapDeliveries(client: Client, wrap: (current: Deliveries) => Deliveries): void {
  const state = internals(client) as Stacked;
  let current = state[TOP_DELIVERIES];
  if (current === undefined) {
    current = { deliver0: state.deliver0, deliverQoS: state.deliverQoS };
    stackOn(state);
  }
  state[TOP_DELIVERIES] = wrap(current);
}

/**
 * What every client's `duplicates` becomes (disableAedesDedupe): it reads 0
 * for every broker and keeps nothing, so one serves all clients.
 */
const NO_DUPLICATES = new Proxy(Object.create(null) as Record<string, number>, {
  get: () => 0,
  set: () => true,
});

/**
 * Turns off aedes' per-client dedupe (lib/client.js: a message counts as a
 * duplicate unless its broker counter is above the last one delivered): it
 * compares against `duplicates`, which then reads 0 for every broker.
 */
export function disableAedesDedupe(client: Client): void {
  internals(client).duplicates = NO_DUPLICATES;
}

/** Whether disableAedesDedupe turned aedes' dedupe off for `client`. */
export function aedesDedupeDisabled(client: Client): boolean {
  return internals(client).duplicates === NO_DUPLICATES;
}

/** Counts the changes to a client's subscription map (see subscriptionChanges). */
export interface SubscriptionChanges {
  readonly count: number;
}

/**
 * The Proxy handler of one client's subscription map, and its change count:
 * one object per client, its traps shared on the prototype.
 */
class CountingHandler implements ProxyHandler<Record<string, ClientSubscription>>, SubscriptionChanges {
  count = 0;

  set(target: Record<string, ClientSubscription>, key: string | symbol, value: ClientSubscription): boolean {
    this.count++;
    return Reflect.set(target, key, value);
  }

  deleteProperty(target: Record<string, ClientSubscription>, key: string | symbol): boolean {
    this.count++;
    return Reflect.deleteProperty(target, key);
  }
}

/** A client's change count, in a symbol-keyed field of the client (cheaper than a WeakMap's entry). */
const CHANGES = Symbol('edgemqtt.subscriptionChanges');
type WithChanges = { [CHANGES]?: SubscriptionChanges };

/**
 * Gives a new client a prototype-free subscription map (NoPrototype, util/fast-object.ts; lib/client.js keeps
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
  const handler = new CountingHandler();
  const map = withoutPrototype(state.subscriptions);
  state.subscriptions = new Proxy(map, handler);
  (client as unknown as WithChanges)[CHANGES] = handler;
}

/**
 * The change count of a client's subscription map: it goes up whenever aedes
 * adds, replaces or removes one of its subscriptions. Call once per client,
 * after aedes made it (the seam's connection hooks run then); read `count`
 * when needed.
 */
export function subscriptionChanges(client: Client): SubscriptionChanges {
  let changes = (client as unknown as WithChanges)[CHANGES];
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

/** Where onDrainTimeout keeps its listeners, the latest first: on the aedes instance, one list for all its clients. */
const DRAIN_TIMEOUT = Symbol('edgemqtt.drainTimeout');
type DrainTimeoutListener = (client: Client) => void;
type DrainTimeoutHolder = { [DRAIN_TIMEOUT]?: DrainTimeoutListener[] };

/** Every client's `_handleDrainTimeout` (shareDrainTimeout): its broker's listeners, then aedes' own. */
function handleDrainTimeout(this: Client): void {
  const listeners = (this as unknown as { broker: DrainTimeoutHolder }).broker[DRAIN_TIMEOUT];
  if (listeners) for (const listener of listeners) listener(this);
  (Object.getPrototypeOf(this) as ClientInternals)._handleDrainTimeout.call(this);
}

/**
 * Runs `listener` when aedes gives up on one of its clients whose socket
 * stayed full for drainTimeout (lib/client.js waitForDrain binds
 * `_handleDrainTimeout` when it sets its timer), before aedes closes it.
 * Listeners added later run first. Once per aedes instance, for the clients
 * the seam handles (shareDrainTimeout): it is told which client.
 */
export function onDrainTimeout(aedes: Aedes, listener: DrainTimeoutListener): void {
  ((aedes as unknown as DrainTimeoutHolder)[DRAIN_TIMEOUT] ??= []).unshift(listener);
}

/** Routes `client`'s drain timeout through its broker's onDrainTimeout listeners: one shared function instead of aedes' method. */
export function shareDrainTimeout(client: Client): void {
  internals(client)._handleDrainTimeout = handleDrainTimeout;
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
 * What stands between a connection and aedes' parser (interceptReads): every
 * chunk aedes reads passes `filter`, and aedes gets what it returns (null:
 * nothing for now); once `closed` is true aedes reads nothing more. An object
 * with methods rather than closures, one per connection.
 */
export interface ReadFilter {
  readonly closed: boolean;
  filter(chunk: Uint8Array): Uint8Array | null;
}

const READ_FILTER = Symbol('edgemqtt.readFilter');
const READ_BELOW = Symbol('edgemqtt.readBelow');
type Filtered = Duplex & { [READ_FILTER]: ReadFilter; [READ_BELOW]: (this: Duplex, size?: number) => unknown };

/** Installed as `conn.read` by interceptReads (one function for all connections; its callers call it on the connection). */
function readFiltered(this: Filtered, size?: number): unknown {
  const filter = this[READ_FILTER];
  if (filter.closed) return null;
  const chunk: unknown = this[READ_BELOW].call(this, size);
  return chunk instanceof Uint8Array ? filter.filter(chunk) : chunk;
}

/** Puts `filter` between the connection and aedes' parser (see ReadFilter); once per connection. */
export function interceptReads(conn: Duplex, filter: ReadFilter): void {
  const filtered = conn as Filtered;
  // Unbound: called on `conn` (the stream's own read, or a wrapper set before this one).
  filtered[READ_BELOW] = conn.read as Filtered[typeof READ_BELOW];
  filtered[READ_FILTER] = filter;
  conn.read = readFiltered as Duplex['read'];
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

// ---------------------------------------------------------------- lighter clients

/** What lightenClient replaces in an aedes Client (lib/client.js constructor); not in its typings. */
interface ClientWeight {
  conn: Duplex & { client?: Client };
  close(): void;
  emit(event: 'error', error: Error): boolean;
  /** end-of-stream's cleanup of `finished(conn, this.close.bind(this))`; aedes calls it in close(). */
  _eos: () => void;
  /** mqtt-packet's parser (its `client` set by aedes) and the BufferList it buffers partial packets in (parser-list.ts: a plain one from the start). */
  _parser: NodeJS.EventEmitter & { client?: Client; _list: { constructor: unknown; length: number }; _states: readonly string[]; settings: ParserSettings };
  /** The protocol level of the CONNECT (3, 4 or 5), set by handlers/connect.js. */
  version: number | null;
  /** MQTT 5 Topic Alias → topic name, this connection's (lib/client.js). */
  _topicAliases: ReadonlyMap<number, string>;
}

/** What mqtt-packet's parser reads of its `settings` (parser.js). */
interface ParserSettings {
  protocolVersion?: number;
  bridgeMode?: boolean;
}

type Owned = { client?: Client };

// Shared by every client: each finds its Client through the `client` aedes sets on its connection and its parser.
function closeOwnClient(this: Owned): void {
  (this.client as unknown as ClientWeight | undefined)?.close();
}
function emitOwnClientError(this: Owned, error: Error): void {
  (this.client as unknown as ClientWeight | undefined)?.emit('error', error);
}
/** Where onParseError keeps its listener: on the aedes instance, one for all its clients. */
export const PARSE_ERROR = Symbol('edgemqtt.parseError');
type ParseErrorHolder = { [PARSE_ERROR]?: (client: Client, error: Error) => void };

/** The parser's 'error' listener (aedes' bound `emit`): the broker's onParseError listener first, then aedes' own handling. */
function parserError(this: Owned, error: Error): void {
  const client = this.client as unknown as (ClientWeight & { broker: ParseErrorHolder }) | undefined;
  if (client === undefined) return;
  client.broker[PARSE_ERROR]?.(client as unknown as Client, error);
  client.emit('error', error);
}

/** Where the parser's listener could not be replaced: reports only, ahead of aedes' own. */
function reportParserError(this: Owned, error: Error): void {
  const client = this.client as unknown as { broker: ParseErrorHolder } | undefined;
  client?.broker[PARSE_ERROR]?.(this.client!, error);
}

function stopClosingOnClose(this: ClientWeight): void {
  this.conn.removeListener('close', closeOwnClient);
}

/**
 * Once the client is connected (handlers/connect.js emits 'connected' once;
 * aedes' own once('connected') listener has gone by then, once() removing
 * it before calling it): its listener table becomes a fast-mode copy of what
 * is left (NoPrototype), as a table from which 'connected' was deleted stays
 * a dictionary; its connection's listener lists become exact-size copies
 * (compactListenerLists: its 'close' alone had room for ~20); its parser
 * keeps a shared settings object instead of the
 * CONNECT (parserSettings); a 3.1/3.1.1 client shares one empty topic-alias
 * table; and its keep-alive goes to the broker's sweep (keepalive.ts). One
 * function for all clients.
 */
function settleConnectedClient(this: ClientWeight): void {
  compactListeners(this as unknown as NodeJS.EventEmitter);
  compactListenerLists(this.conn);
  this._parser.settings = parserSettings(this._parser.settings);
  if (this.version !== 5) this._topicAliases = NO_TOPIC_ALIASES;
  keepAliveBySweep(this as unknown as Client);
}

/**
 * What mqtt-packet's parser keeps reading of the CONNECT after it: its
 * `settings` become the CONNECT packet itself (parser.js _parseConnect, "need
 * for right parse auth packet"), of which it reads only protocolVersion and
 * bridgeMode; so each connection kept its whole CONNECT, client identifier,
 * will and password included, for its life. One frozen object per pair
 * instead (a later CONNECT, a protocol error [MQTT-3.1.0-2], assigns anew).
 */
const SETTINGS = new Map<string, Readonly<ParserSettings>>();
function parserSettings(settings: ParserSettings): Readonly<ParserSettings> {
  const key = `${settings.protocolVersion}/${settings.bridgeMode === true}`;
  let shared = SETTINGS.get(key);
  if (shared === undefined) {
    shared = Object.freeze(settings.bridgeMode === true ? { protocolVersion: settings.protocolVersion, bridgeMode: true } : { protocolVersion: settings.protocolVersion });
    SETTINGS.set(key, shared);
  }
  return shared;
}

/**
 * The topic-alias table of an MQTT 3.1/3.1.1 client, one for all: aedes makes
 * a Map per client (lib/client.js) that only a v5 PUBLISH's Topic Alias
 * property fills (handlers/publish.js resolveTopicAlias), and a 3.1.1 PUBLISH
 * has no properties. Frozen in effect: a set would be a fault, not silently
 * shared.
 */
class NoTopicAliases extends Map<number, string> {
  override set(): this {
    throw new Error('an MQTT 3.1.1 client has no topic aliases');
  }
}
const NO_TOPIC_ALIASES: ReadonlyMap<number, string> = new NoTopicAliases();

/** mqtt-packet's parser states (parser.js), which it only reads: one array for all parsers. */
const PARSER_STATES: readonly string[] = Object.freeze(['_parseHeader', '_parseLength', '_parsePayload', '_newPacket']);

/** Replaces the listener named `name` (a bound function's name: "bound close") by `shared`, which then runs last. */
function replaceBound(emitter: NodeJS.EventEmitter, event: string, name: string, shared: (this: Owned, error: Error) => void): boolean {
  const bound = emitter.rawListeners(event).find((listener) => listener.name === name);
  if (!bound) return false;
  emitter.removeListener(event, bound as (...args: unknown[]) => void);
  emitter.on(event, shared);
  return true;
}

/**
 * Makes an aedes Client lighter per connection, behaviour kept. aedes'
 * constructor (lib/client.js) makes for each connection: `finished(conn,
 * close.bind(this))` (end-of-stream: seven closures and their context), three
 * bound listeners (the connection's 'end' and 'error', the parser's
 * 'error'), and a parser buffering into a bl BufferListStream, a whole
 * Duplex stream of which mqtt-packet uses only the BufferList methods
 * (append, consume, length, read*, slice, toString: parser.js). Here: one
 * 'close' listener shared by all clients closes the client as end-of-stream
 * did (aedes' 'end' and 'error' listeners cover the rest of what it
 * watched), the three bound listeners become shared functions that find the
 * client through `conn.client` and `parser.client` (the parser's also
 * telling the broker's onParseError listener first), and the parser keeps
 * its plain BufferList (made so from the start, parser-list.ts; one made on a
 * bl BufferListStream is given bl's own plain one), one array of parser
 * states shared by all parsers, and the parser's EventEmitter table (the
 * client's once it is connected) is made a fast-mode object (NoPrototype)
 * instead of Node's `{ __proto__: null }` dictionary. A connection already
 * destroyed keeps aedes' end-of-stream, which would call back for it.
 * Call right after aedes made the client, before any byte is parsed.
 */
export function lightenClient(client: Client): void {
  const state = client as unknown as ClientWeight;
  const conn = state.conn;
  if (!conn.destroyed) {
    state._eos();
    conn.on('close', closeOwnClient);
    state._eos = stopClosingOnClose;
  }
  replaceBound(conn, 'end', 'bound close', closeOwnClient);
  replaceBound(conn, 'error', 'bound emit', emitOwnClientError);
  const parser = state._parser;
  if (!replaceBound(parser, 'error', 'bound emit', parserError)) parser.prependListener('error', reportParserError);
  const BufferList = (parser._list.constructor as { BufferList?: new () => ClientWeight['_parser']['_list'] }).BufferList;
  // A BufferListStream (bl) as mqtt-packet makes it, or already a plain BufferList (parser-list.ts).
  const plain = BufferList === undefined && typeof (parser._list as { pipe?: unknown }).pipe !== 'function';
  if ((BufferList || plain) && parser._list.length === 0) {
    if (BufferList) parser._list = new BufferList();
    // Between packets, its Packet and BufferList are shared empty ones (parser-parking.ts).
    parkParserBuffers(parser);
  }
  if (parser._states.length === PARSER_STATES.length && parser._states.every((name, i) => name === PARSER_STATES[i])) parser._states = PARSER_STATES;
  // The parser's listener table ('packet' and 'error', kept for the connection's life) in fast mode
  // (NoPrototype) instead of a 160-byte dictionary. The client's once it is connected: its
  // once('connected') is deleted from it then, which would make a fast table a dictionary again.
  compactListeners(parser);
  (client as unknown as NodeJS.EventEmitter).once('connected', settleConnectedClient);
}
