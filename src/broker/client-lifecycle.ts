/**
 * Each client's life as an operator reads it: one `client connected` line
 * when aedes accepts it (CONNACK 0) and one `client disconnected` line when
 * it is gone, with why; both counted in the traffic counters (traffic.ts).
 *
 * Why a client left is tagged where the broker learns it, always before the
 * connection closes (Traffic.tagDisconnect, first tag wins): its DISCONNECT
 * (the protocol guard, limits.ts), its keep-alive running out, a protocol
 * violation (the guard; aedes' parser), a full socket for
 * broker.drainTimeoutSec, a takeover by its client id, the broker stopping,
 * an operator's kick (the admin API). Untagged, the connection was lost.
 *
 * When it is gone: aedes emits 'clientDisconnect' from the client's close
 * (lib/client.js close → aedes.js unregisterClient) once per connected
 * client (close runs once), after a takeover too (for the old client,
 * before the new one is registered) and after errors (_onError closes). It
 * does not for a client whose id entry another connection's close removed
 * (a connection that closes while it is taking over the id, aedes.js
 * deleteClient by id), so the connection's own 'close' is the backstop:
 * whichever comes first counts, once.
 */
import type { Client, ConnectPacket } from 'aedes';
import type { Logger } from '../observability/logger.js';
import type { DisconnectDetail, DisconnectReason, ProtocolName, Traffic } from './traffic.js';

/** What the CONNECT said, kept from preConnect until aedes accepts it. */
interface Connecting {
  /** Clean Session (3.1.1) / Clean Start (5). */
  clean: boolean;
  /** The keep-alive in force: the client's, or the Server Keep Alive imposed on an MQTT 5 client. */
  keepAliveSec: number;
}

/** Known of a connected client besides its counters. */
interface Connected {
  /** Whose client it is: its connection's 'close' listener (goneOnClose) is one function for all. */
  owner: ClientLifecycle;
  user: string | null;
  remote: string | undefined;
  /** The first error aedes reported for the connection ('clientError'), for the disconnect line. */
  error: string | undefined;
  /** Its disconnect line is written: a later error is for debugging only. */
  gone: boolean;
}

export interface ClientLifecycleDeps {
  traffic: Traffic;
  logger: Logger;
  /** The user a client was verified as; null: anonymous. */
  userOf(client: Client): string | null;
  remoteOf(client: Client): string | undefined;
  listenerOf(client: Client): string;
  protocolOf(client: Client): ProtocolName;
}

// Kept in fields of aedes' Client (so nothing outlives it) rather than WeakMaps: an entry per client each.
const CONNECTING = Symbol('edgemqtt.connecting');
const CONNECTED = Symbol('edgemqtt.connected');
type Tracked = Client & { [CONNECTING]?: Connecting | undefined; [CONNECTED]?: Connected | undefined };

/** A connected client's connection closed (aedes sets `conn.client`, lib/client.js): the backstop above. */
function goneOnClose(this: { client?: Client }): void {
  const client = this.client as Tracked | undefined;
  if (client !== undefined) client[CONNECTED]?.owner.gone(client);
}

export class ClientLifecycle {
  readonly #deps: ClientLifecycleDeps;
  readonly #log: Logger;

  constructor(deps: ClientLifecycleDeps) {
    this.#deps = deps;
    this.#log = deps.logger.child({ component: 'broker' });
  }

  /** preConnect: what the CONNECT asked for, for the connected line. */
  connecting(client: Client, packet: ConnectPacket, keepAliveSec: number): void {
    (client as Tracked)[CONNECTING] = { clean: packet.clean !== false, keepAliveSec };
  }

  /** aedes' 'client': accepted (CONNACK 0 on its way), registered under its id. */
  connected(client: Client): void {
    const deps = this.#deps;
    const listener = deps.listenerOf(client);
    const protocol = deps.protocolOf(client);
    deps.traffic.clientConnected(client, listener, protocol);
    const tracked = client as Tracked;
    const connect = tracked[CONNECTING];
    tracked[CONNECTING] = undefined;
    const state: Connected = { owner: this, user: deps.userOf(client), remote: deps.remoteOf(client), error: undefined, gone: false };
    tracked[CONNECTED] = state;
    this.#log.info(
      {
        clientId: client.id,
        user: state.user,
        remote: state.remote,
        listener,
        protocol,
        clean: connect?.clean,
        keepAliveSec: connect?.keepAliveSec,
      },
      'client connected',
    );
    const conn = client.conn;
    // Already closed: aedes registered a client whose connection ended
    // while it waited for a takeover; it is gone at once.
    if (conn.destroyed) this.gone(client);
    else conn.on('close', goneOnClose);
  }

  /** Why a connected client is about to be closed; the first reason given wins. */
  leaving(client: Client, reason: DisconnectReason, detail?: DisconnectDetail): void {
    this.#deps.traffic.tagDisconnect(client, reason, detail);
  }

  /**
   * aedes' 'clientError' (a client with an id): the first one is kept for the
   * disconnect line of a connected client; one not (yet) connected gets its
   * own line, unless it is a refused CONNECT (aedes sets the CONNACK code on
   * the error, handlers/connect.js), which was logged, rate-limited, where it was refused.
   */
  error(client: Client, error: Error): void {
    const state = (client as Tracked)[CONNECTED];
    if (state === undefined) {
      const refused = 'errorCode' in error || 'reasonCode' in error;
      this.#log[refused ? 'debug' : 'info']({ clientId: client.id, remote: this.#deps.remoteOf(client), err: error.message }, 'connection error before CONNACK');
      return;
    }
    if (!state.gone) state.error ??= error.message;
    this.#log.debug({ clientId: client.id, err: error.message }, 'client error');
  }

  /** aedes' 'clientDisconnect', or the connection's 'close': counted and logged once. */
  gone(client: Client): void {
    const state = (client as Tracked)[CONNECTED];
    const record = this.#deps.traffic.clientDisconnected(client, 'connection_lost');
    if (record === undefined || state === undefined) return;
    state.gone = true;
    const detail = record.leavingDetail;
    this.#log.info(
      {
        clientId: client.id,
        user: state.user,
        remote: state.remote,
        listener: record.listener,
        protocol: record.protocol,
        reason: record.reason,
        ...(detail?.rule !== undefined ? { rule: detail.rule } : {}),
        ...(detail?.limit !== undefined ? { limitExceeded: detail.limit } : {}),
        ...((detail?.error ?? state.error) !== undefined ? { error: detail?.error ?? state.error } : {}),
        connectedSec: Math.round((Date.now() - record.connectedAt) / 100) / 10,
        messagesIn: record.messagesIn,
        messagesOut: record.messagesOut,
      },
      'client disconnected',
    );
  }
}
