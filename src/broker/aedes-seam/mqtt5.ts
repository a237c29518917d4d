/**
 * The seam's touches of aedes 2's MQTT 5 client state (lib/handlers/connect.js
 * init, lib/client.js disconnect): the limits a v5 client imposes on the
 * broker, the Server Keep Alive the broker imposes on it, and the
 * server-initiated DISCONNECT with a Reason Code.
 */
import type { Duplex } from 'node:stream';
import type { Client } from 'aedes';

/** What a client told the broker about itself in its CONNECT; read after aedes accepted it. */
export interface ClientLimits {
  /** The CONNECT's protocol level (3, 4, 5); 0 before CONNECT. */
  version: number;
  /** MQTT 5 Receive Maximum [MQTT-3.3.4-9]: QoS 1/2 messages in flight to it; undefined = none given (3.1.1: none). */
  receiveMaximum: number | undefined;
  /** MQTT 5 Maximum Packet Size [MQTT-3.1.2-24]: the largest packet it accepts; undefined = no limit. */
  maximumPacketSize: number | undefined;
}

/** aedes 2 Client fields set at CONNECT (handlers/connect.js init); `_serverKeepAlive` is not in its typings. */
interface Mqtt5Internals {
  version: number | null;
  receiveMaximum?: number;
  maximumPacketSize?: number;
  /** Read by setKeepAlive (the timer) and doConnack (the Server Keep Alive property). */
  _serverKeepAlive?: number;
}

const internals = (client: Client) => client as unknown as Mqtt5Internals;

/** The answer for protocol levels without MQTT 5 limits, by level (0: before CONNECT). */
const BEFORE_V5: Readonly<Record<number, Readonly<ClientLimits>>> = Object.fromEntries(
  [0, 3, 4].map((version) => [version, Object.freeze({ version, receiveMaximum: undefined, maximumPacketSize: undefined })]),
);

/** aedes' default when the CONNECT has no Receive Maximum (lib/constants.js RECEIVE_MAXIMUM_DEFAULT). */
const RECEIVE_MAXIMUM_DEFAULT = 65_535;

/** An MQTT 5 client's limits, read once: aedes sets them at CONNECT and never changes them. */
const v5Limits = new WeakMap<Client, Readonly<ClientLimits>>();

export function clientLimits(client: Client): Readonly<ClientLimits> {
  const state = internals(client);
  const version = state.version ?? 0;
  // Every delivery asks: no allocation per call.
  if (version !== 5) return BEFORE_V5[version] ?? { version, receiveMaximum: undefined, maximumPacketSize: undefined };
  let limits = v5Limits.get(client);
  if (limits === undefined) {
    // aedes fills in 65,535 when the CONNECT had none: the same as no bound in practice.
    const receiveMaximum = state.receiveMaximum === RECEIVE_MAXIMUM_DEFAULT ? undefined : state.receiveMaximum;
    limits = Object.freeze({ version, receiveMaximum, maximumPacketSize: state.maximumPacketSize });
    v5Limits.set(client, limits);
  }
  return limits;
}

/**
 * Makes aedes use `seconds` as the keep-alive of an MQTT 5 client and
 * announce it as Server Keep Alive in the CONNACK [MQTT-3.2.2-21]. Call from
 * preConnect: aedes' init() only ever sets the field when its own
 * keepaliveLimit applies (unset here), and reads it in setKeepAlive and
 * doConnack after.
 */
export function imposeServerKeepAlive(client: Client, seconds: number): void {
  internals(client)._serverKeepAlive = seconds;
}

/**
 * Closes the connection of a client aedes has accepted; an MQTT 5 client is
 * sent a DISCONNECT with `reasonCode` first [MQTT-3.14.2-1] (aedes'
 * Client.disconnect, which a 3.1.1 client just has closed). Whatever was
 * written before goes out first (write-coalescer.ts flushes on close).
 */
export function disconnectWithReason(client: Client, reasonCode: number): void {
  if (client.closed) return;
  client.disconnect({ reasonCode });
  // mqtt-packet's writeToStream corks the stream until the next tick
  // (lib/write.js); a close within this turn (aedes' keep-alive timer emits
  // 'error' right after its event) would discard the corked DISCONNECT.
  const conn = client.conn as Duplex;
  while (conn.writableCorked > 0) conn.uncork();
}
