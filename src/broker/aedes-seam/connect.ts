/**
 * An MQTT 3.1/3.1.1 CONNECT accepted with aedes' own steps, in aedes' order,
 * without aedes' per-CONNECT machinery.
 *
 * aedes (handlers/connect.js) runs every CONNECT through runSeries over
 * authenticate, setKeepAlive, fetchSubs, restoreSubs, storeWill,
 * registerClient, doConnack and emptyQueue. emptyQueue resends the stored
 * queue with `pipeline(persistence.outgoingStream(client), through(…))`
 * whether or not anything is queued: a Readable, a Transform, a pipeline
 * with its AbortController, and at its end an abort() that builds a
 * DOMException with a stack trace. In a storm of 5,000 clean clients that
 * was ~17% of the broker's CPU (with the garbage it leaves, more), and the
 * CONNACK went through mqtt-packet's generator for four constant bytes.
 *
 * Here the seam takes the CONNECT from the client's parser before aedes'
 * listener (lib/client.js `enqueue`, then handlers/index.js `handle`) and
 * runs the same steps through the same broker hooks (preConnect,
 * authenticate, the persistence, registerClient: every wrapper the seam and
 * the broker put on them still runs), with one state object per CONNECT:
 * - preConnect, then init; a refusal from preConnect ends the CONNECT with
 *   its error, no CONNACK (handlers/connect.js negate). aedes runs init in
 *   setImmediate, one more event-loop turn per CONNECT, which in a storm
 *   (hundreds of connections per turn) is what a client waits for; here
 *   init follows at once, its steps are the same;
 * - init's fields as aedes sets them for 3.1/3.1.1 (client id, assigned
 *   when empty; version; session expiry from the clean flag, clamped;
 *   `clean`, `_cleanStart`, the will kept in `_will` while authenticating);
 * - authenticate: the client paused; a refusal answered with CONNACK
 *   return code 2–5 (the error's `returnCode`, else 5), then the close
 *   [MQTT-3.2.2-5]; a client closed meanwhile is left as aedes leaves it;
 * - the keep-alive timer [MQTT-3.1.2-24] (keepalive.ts moves it to the
 *   broker's sweep once connected);
 * - Clean Session 0: the stored subscriptions restored through aedes' own
 *   handleSubscribe, session present when there were any [MQTT-3.2.2-2];
 *   Clean Session 1: the stored subscriptions cleaned, session present 0
 *   [MQTT-3.2.2-1];
 * - the will: the stored one deleted, the new one stored;
 * - registerClient (the takeover of a connected client with the same id,
 *   [MQTT-3.1.4-2], 'client', $SYS) before the CONNACK, as aedes;
 * - the CONNACK, as the same four bytes mqtt-packet writes, through the
 *   connection's write and aedes' write rules (lib/write.js: refused on a
 *   closed client, waitForDrain on a full socket, the callback in
 *   setImmediate), then 'connackSent';
 * - the client resumed; the stored queue resent only when the persistence
 *   cannot tell it is empty (`queued`), then with aedes' own emptyQueue
 *   steps (this file's resendQueue, through the persistence's
 *   outgoingStream, which the batch resend replaces, resend.ts);
 * - `connecting` cleared, `connected` set, 'clientReady' and 'connected'.
 * Left to aedes, unchanged: MQTT 5 CONNECTs (properties, reason codes,
 * redirects), every CONNECT aedes' init refuses (unacceptable version,
 * identifier rejected, keep-alive over the limit), one over the Maximum
 * Packet Size, and any CONNECT that is not the first packet of its
 * connection. Canaries: test/aedes-canaries-connect.test.ts.
 */
import { randomUUID } from 'node:crypto';
import { pipeline, Transform, type Readable } from 'node:stream';
import type { Client } from 'aedes';
import {
  loadAedesParts,
  type AedesParts,
  type ClientInternals,
  type ConnectPacket,
  type Done,
  type Packet,
  type PacketListener,
  type ParserInternals,
} from './connect-internals.js';
import { variableByteIntegerBytes } from './publish-frames.js';
import type { AedesSeam } from './seam.js';
import { keepAliveTimedOut } from './keepalive.js';

/** handlers/connect.js errorMessages, for the return codes an authenticate refusal can carry. */
const ERROR_MESSAGES = ['', 'unacceptable protocol version', 'identifier rejected', 'Server unavailable', 'bad user name or password', 'not authorized'];

/**
 * The 3.1/3.1.1 CONNACKs, as mqtt-packet writes them: type 2, remaining
 * length 2, the Session Present flag, the return code. Shared: nothing
 * writes into a chunk it was handed (shared.ts copies before it changes one).
 */
const ACCEPTED = [Buffer.from([0x20, 0x02, 0x00, 0x00]), Buffer.from([0x20, 0x02, 0x01, 0x00])] as const;
/** By return code; 2–5 are the ones a refusal here carries. */
const REFUSED = [0, 1, 2, 3, 4, 5].map((code) => Buffer.from([0x20, 0x02, 0x00, code]));

/** Tells whether anything may be queued for a client id (false only when a resend would find nothing). */
export type QueuedCheck = (clientId: string) => boolean;

/** One installed connect path: aedes' parts, its own parser listener, the persistence's check. */
interface ConnectPath {
  parts: AedesParts;
  enqueue: PacketListener;
  queued: QueuedCheck | undefined;
}

/** The connect path of an aedes instance, found through `client.broker`: nothing per client. */
const PATH = Symbol('edgemqtt.connectPath');
type WithPath = { [PATH]?: ConnectPath };

/**
 * Takes the 3.1/3.1.1 CONNECTs of `seam`'s connections from now on (see the
 * header). `queued` is the persistence's in-memory answer to whether a
 * client id may have stored messages; without it the stored queue is read
 * for every CONNECT, as aedes does.
 */
export async function installConnectPath(seam: AedesSeam, queued?: QueuedCheck): Promise<void> {
  const parts = await loadAedesParts();
  const broker = seam.aedes as unknown as WithPath;
  const take = (client: Client) => {
    const parser = (client as unknown as ClientInternals)._parser;
    let path = broker[PATH];
    if (path === undefined) {
      // aedes' own listener, the first time it is seen (lib/client.js: the same function for every parser).
      const listeners = parser._events.packet;
      const enqueue = (Array.isArray(listeners) ? listeners : [listeners]).find((listener) => listener?.name === 'enqueue');
      if (enqueue === undefined) return;
      path = broker[PATH] = { parts, enqueue, queued };
    }
    replaceListener(parser, path.enqueue, takeConnect);
  };
  seam.onConnection(() => take);
}

/** Puts `by` where `listener` is in the parser's 'packet' listeners (same place, same table); whether it was there. */
function replaceListener(parser: ParserInternals, listener: PacketListener, by: PacketListener): boolean {
  const listeners = parser._events.packet;
  if (listeners === listener) {
    parser._events.packet = by;
    return true;
  }
  if (Array.isArray(listeners)) {
    const at = listeners.indexOf(listener);
    if (at !== -1) {
      listeners[at] = by;
      return true;
    }
  }
  return false;
}

/**
 * The parser's 'packet' listener until the first packet: a CONNECT this path
 * serves goes to `connect`, anything else to aedes' enqueue; aedes' listener
 * is back in its place from then on.
 */
function takeConnect(this: ParserInternals, packet: Packet): void {
  const client = this.client as unknown as ClientInternals;
  // Set on the broker before this listener was put on any of its parsers.
  const path = (client.broker as unknown as WithPath)[PATH]!;
  replaceListener(this, takeConnect, path.enqueue);
  if (packet.cmd === 'connect' && served(client, packet as unknown as ConnectPacket)) {
    // lib/client.js enqueue: the first packet of a read is handled at once.
    client._parsingBatch++;
    connect(client, packet as unknown as ConnectPacket, path.parts, path.queued);
    return;
  }
  path.enqueue.call(this, packet);
}

/** Whether `packet` is a CONNECT this path serves: one aedes' handle and init would accept, 3.1 or 3.1.1 (see the header). */
function served(client: ClientInternals, packet: ConnectPacket): boolean {
  // lib/client.js enqueue handles it at once; handlers/index.js handle: not connecting already [MQTT-3.1.0-2].
  if (client._parsingBatch !== 0 || client.connackSent || client.connecting || client.connected) return false;
  const broker = client.broker;
  if (broker.maximumPacketSize > 0 && 1 + variableByteIntegerBytes(packet.length) + packet.length > broker.maximumPacketSize) return false;
  const version = packet.protocolVersion;
  if (version !== 3 && version !== 4) return false;
  // handlers/connect.js init's refusals: aedes answers them.
  if (version === 3 && packet.clientId.length > broker.maxClientsIdLength) return false;
  if (broker.keepaliveLimit && (!packet.keepalive || packet.keepalive > broker.keepaliveLimit)) return false;
  if (packet.clientId.length === 0 && packet.clean === false) return false;
  return true;
}

/** One CONNECT's way through the steps: the state aedes keeps in its ClientPacketStatus and runSeries' arg. */
class Connecting {
  sessionPresent = false;

  constructor(
    readonly client: ClientInternals,
    readonly packet: ConnectPacket,
    readonly parts: AedesParts,
    readonly queued: QueuedCheck | undefined,
  ) {}

  /** runSeries' final callback (handlers/connect.js init). */
  finish(error?: Error | null): void {
    const client = this.client;
    client.connecting = false;
    if (!error) {
      client.connected = true;
      client.broker.emit('clientReady', client);
      client.emit('connected');
    }
    client._nextBatch(error ?? undefined);
  }
}

/** handlers/connect.js handleConnect for a CONNECT `served` accepts. */
function connect(client: ClientInternals, packet: ConnectPacket, parts: AedesParts, queued: QueuedCheck | undefined): void {
  clearTimeout(client._connectTimer ?? undefined);
  client._connectTimer = null;
  client.connecting = true;
  client.broker.preConnect(client as unknown as Client, packet, (error, success) => {
    if (!error && success === true) {
      init(new Connecting(client, packet, parts, queued));
      return;
    }
    client.connecting = false;
    client._nextBatch(error ?? undefined);
  });
}

/** handlers/connect.js init, for 3.1/3.1.1, after its refusals (`served`). */
function init(state: Connecting): void {
  const { client, packet, parts } = state;
  const broker = client.broker;
  client.id = packet.clientId || 'aedes_' + randomUUID();
  client.version = packet.protocolVersion;
  client._wireVersion = packet.protocolVersion;
  client._assignedClientId = packet.clientId ? undefined : client.id;
  const requestedSessionExpiry = packet.clean ? 0 : parts.constants.SESSION_NEVER_EXPIRES;
  client._connectSessionExpiryInterval = requestedSessionExpiry;
  client.sessionExpiryInterval = broker.clampSessionExpiry(requestedSessionExpiry);
  client._sessionExpiryClamped = false;
  client.clean = client.sessionExpiryInterval === 0;
  client._cleanStart = packet.clean === true;
  client.maximumPacketSize = undefined;
  client.receiveMaximum = parts.constants.RECEIVE_MAXIMUM_DEFAULT;
  client._requestProblemInformation = true;
  client._requestResponseInformation = false;
  client._will = packet.will;
  authenticate(state);
}

function authenticate(state: Connecting): void {
  const client = state.client;
  client.pause();
  client.broker.authenticate(client as unknown as Client, state.packet.username, state.packet.password, (error, successful) => {
    // As aedes: a client or broker closed meanwhile is neither registered nor answered.
    if (client.closed || client.broker.closed) return;
    if (!error && successful) {
      client._authorized = true;
      setKeepAlive(state);
      return;
    }
    let returnCode = 5;
    let refusal: Error & { returnCode?: number; errorCode?: number };
    if (error) {
      const code = error.returnCode;
      if (code && code >= 2 && code <= 5) returnCode = code;
      if (!error.message) error.message = ERROR_MESSAGES[returnCode]!;
      refusal = error;
    } else {
      refusal = new Error(ERROR_MESSAGES[returnCode]);
    }
    refusal.errorCode = returnCode;
    // [MQTT-3.2.2-5]: the refusing CONNACK, then the close.
    writeConnack(state, REFUSED[returnCode]!, returnCode, () => client.close(() => state.finish(refusal)));
  });
}

function setKeepAlive(state: Connecting): void {
  const client = state.client;
  // A server keep-alive set in preConnect (mqtt5.ts imposeServerKeepAlive) wins, as in aedes.
  const keepalive = client._serverKeepAlive ?? state.packet.keepalive;
  if (keepalive > 0) {
    // [MQTT-3.1.2-24]
    client._keepaliveInterval = keepalive * 1500 + 1;
    client._keepaliveTimer = setTimeout(keepAliveTimedOut, client._keepaliveInterval, client);
  }
  fetchSubs(state);
}

function fetchSubs(state: Connecting): void {
  const client = state.client;
  const persistence = client.broker.persistence;
  const failed = (error: Error) => state.finish(error);
  if (!state.packet.clean) {
    persistence.subscriptionsByClient({ id: client.id! }).then((subs) => restoreSubs(state, subs.length > 0 ? subs : null), failed);
    return;
  }
  // [MQTT-3.2.2-1]
  persistence.cleanSubscriptions(client as unknown as Client).then(() => restoreSubs(state, null), failed);
}

function restoreSubs(state: Connecting, subs: unknown[] | null): void {
  if (subs) {
    // [MQTT-3.2.2-2]
    state.sessionPresent = true;
    state.parts.handleSubscribe(state.client as unknown as Client, { subscriptions: subs }, true, (error) => (error ? state.finish(error) : storeWill(state)));
    return;
  }
  state.sessionPresent = false;
  storeWill(state);
}

function storeWill(state: Connecting): void {
  const client = state.client;
  const persistence = client.broker.persistence;
  client.will = client._will;
  // aedes' `.finally()`: the new will is stored whether or not the old one could be deleted.
  const afterDelete = () => {
    if (client.will) {
      persistence.putWill(client as unknown as Client, client.will).then(
        () => registerClient(state),
        (error: Error) => state.finish(error),
      );
    } else {
      registerClient(state);
    }
  };
  persistence.delWill(client as unknown as Client).then(afterDelete, afterDelete);
}

function registerClient(state: Connecting): void {
  const client = state.client;
  // Closed while its session was fetched or its will stored: registered now it would stay in
  // aedes.clients for good, its close long past (aedes registers it regardless, a leak kept
  // out here).
  if (client.closed) {
    state.finish(new Error('connection closed'));
    return;
  }
  client.broker.registerClient(client as unknown as Client);
  writeConnack(state, ACCEPTED[state.sessionPresent ? 1 : 0], 0, (error) => (error ? state.finish(error) : emptyQueue(state)));
}

/** handlers/connect.js doConnack and lib/write.js, for a 3.1/3.1.1 CONNACK: its bytes written as they are. */
function writeConnack(state: Connecting, bytes: Buffer, returnCode: number, then: Done): void {
  const client = state.client;
  const done: Done = (error) => {
    if (!error) {
      client.broker.emit('connackSent', { cmd: 'connack', sessionPresent: bytes[2] === 1, returnCode }, client);
      client.connackSent = true;
    }
    then(error);
  };
  let error: Error | null = null;
  if (client.connecting || client.connected) {
    if (!client.conn.write(bytes) && !client.errored) {
      client.waitForDrain(done);
      return;
    }
  } else {
    error = new Error('connection closed');
  }
  setImmediate(done, error);
}

function emptyQueue(state: Connecting): void {
  const client = state.client;
  // The stored queue's stream is opened before the client resumes, as in aedes: resuming parses
  // what the client sent meanwhile, which may close it, and the batch resend tells a resend after
  // CONNECT from the client's state when the stream is asked for (resend.ts).
  const outgoing = state.queued === undefined || state.queued(client.id!) ? client.broker.persistence.outgoingStream(client as unknown as Client) : undefined;
  client.resume();
  if (outgoing === undefined) {
    state.finish(null);
    return;
  }
  resendQueue(state, outgoing);
}

/** handlers/connect.js emptyQueue and emptyQueueFilter, as they are (the batch resend replaces the stream they read, resend.ts). */
function resendQueue(state: Connecting, outgoing: Readable): void {
  const { parts } = state;
  const client = state.client;
  const aedesClient = client as unknown as Client;
  const persistence = client.broker.persistence;
  const filter = (error: Error | null, packet: Packet) => {
    const next = packet.writeCallback!;
    if (error) {
      client.emit('error', error);
      next();
      return;
    }
    const authorized = packet.cmd === 'publish' ? client.broker.authorizeForward(aedesClient, packet) : true;
    const expired = packet.messageExpiry !== undefined && packet.messageExpiry <= Date.now();
    // [MQTT-3.1.2-4]
    if (client.clean || client._cleanStart || !authorized || expired) {
      persistence.outgoingClearMessageId(aedesClient, packet).then(() => next(null), next);
    } else {
      parts.write(aedesClient, packet, next);
    }
  };
  const clearQueue = new Transform({
    objectMode: true,
    transform(data: Packet, _encoding, next) {
      // [MQTT-3.3.2-5]
      const now = Date.now();
      if (data.messageExpiry !== undefined && data.messageExpiry > now) {
        data.properties = data.properties || {};
        data.properties.messageExpiryInterval = Math.ceil((data.messageExpiry - now) / 1000);
      }
      const packet = new parts.QoSPacket(data, aedesClient);
      packet.writeCallback = (error) => next(error);
      persistence.outgoingUpdate(aedesClient, packet).then(
        () => filter(null, packet),
        (error: Error) => filter(error, packet),
      );
    },
  });
  pipeline(outgoing, clearQueue, (error) => state.finish(error));
}
