/**
 * CONNECT checks that aedes leaves out, applied through its
 * preConnect/authenticate hooks so the client still receives a CONNACK with
 * the right return code.
 */
import type { Client, ConnectPacket } from 'aedes';

/**
 * CONNACK return code 0x02 "Identifier rejected" [MQTT-3.2.2-3, table 3.1];
 * aedes sends it to an MQTT 5 client as 0x85 Client Identifier not valid
 * (its connackReasonCodes, lib/handlers/connect.js).
 */
const IDENTIFIER_REJECTED = 2;

export interface ConnectRejection {
  returnCode: number;
  reason: string;
  /** Set when a configured limit, not the protocol, refused it. */
  limit?: 'minKeepalive' | 'maxKeepalive' | 'maxClientIdLength';
}

export interface ConnectRules {
  /** broker.minKeepaliveSec; 0 = none. */
  minKeepaliveSec: number;
  /** broker.maxKeepaliveSec; 0 = none. */
  maxKeepaliveSec: number;
  /** broker.maxClientIdLength: the longest client id, in UTF-8 bytes. */
  maxClientIdBytes: number;
}

/**
 * - Client id length (broker.maxClientIdLength), in UTF-8 bytes, for every
 *   protocol version: MQTT 3.1.1 and 5 let a client send up to 65,535 bytes
 *   [MQTT-1.5.3], which the broker would keep in every session record and
 *   log line; a server may refuse ids over 23 [MQTT-3.1.3-5]. (aedes'
 *   maxClientsIdLength applies to MQTT 3.1 only, and counts UTF-16 units.)
 *   CONNACK 0x02, which aedes sends an MQTT 5 client as 0x85.
 *
 * (aedes 2 answers a zero-length client id with CleanSession=0 with CONNACK
 * 0x02 itself [MQTT-3.1.3-8], and assigns an MQTT 5 client one
 * [MQTT-3.1.3-6].)
 * - Keep-alive bounds (broker.minKeepaliveSec, maxKeepaliveSec; with a
 *   maximum, 0 = none is refused too). MQTT 3.1.1 has neither a return code
 *   for them nor a way to impose another value; like Mosquitto's
 *   max_keepalive for 3.1.1 clients, the CONNECT gets 0x02. (aedes' own
 *   keepaliveLimit answers 6, which table 3.1 reserves.) An MQTT 5 CONNECT
 *   is not refused for it: see serverKeepAlive.
 */
export function checkConnect(packet: ConnectPacket, rules: ConnectRules): ConnectRejection | null {
  const idBytes = Buffer.byteLength(packet.clientId ?? '');
  if (idBytes > rules.maxClientIdBytes) {
    return {
      returnCode: IDENTIFIER_REJECTED,
      reason: `client id of ${idBytes} bytes is over broker.maxClientIdLength (${rules.maxClientIdBytes})`,
      limit: 'maxClientIdLength',
    };
  }
  if (packet.protocolVersion === 5) return null;
  const keepalive = packet.keepalive ?? 0;
  switch (keepaliveBreach(keepalive, rules)) {
    case 'maxKeepalive':
      return {
        returnCode: IDENTIFIER_REJECTED,
        reason: `keep-alive of ${keepalive} s${keepalive === 0 ? ' (none)' : ''} is not within broker.maxKeepaliveSec (${rules.maxKeepaliveSec} s)`,
        limit: 'maxKeepalive',
      };
    case 'minKeepalive':
      return {
        returnCode: IDENTIFIER_REJECTED,
        reason: `keep-alive of ${keepalive} s is below broker.minKeepaliveSec (${rules.minKeepaliveSec} s)`,
        limit: 'minKeepalive',
      };
    default:
      return null;
  }
}

/** Which keep-alive bound a CONNECT's keep-alive breaks (none, 0, counting as above a maximum), if any. */
function keepaliveBreach(keepalive: number, rules: ConnectRules): 'maxKeepalive' | 'minKeepalive' | undefined {
  if (rules.maxKeepaliveSec > 0 && (keepalive === 0 || keepalive > rules.maxKeepaliveSec)) return 'maxKeepalive';
  if (rules.minKeepaliveSec > 0 && keepalive > 0 && keepalive < rules.minKeepaliveSec) return 'minKeepalive';
  return undefined;
}

/**
 * aedes sends no CONNACK when preConnect fails, and authenticate does not see
 * the packet; this remembers preConnect's verdict per client for authenticate.
 */
export class PendingRejections {
  readonly #byClient = new WeakMap<Client, ConnectRejection>();

  remember(client: Client, rejection: ConnectRejection): void {
    this.#byClient.set(client, rejection);
  }

  take(client: Client): ConnectRejection | undefined {
    const rejection = this.#byClient.get(client);
    this.#byClient.delete(client);
    return rejection;
  }
}

/**
 * MQTT 5: the keep-alive the broker imposes on a client whose own is outside
 * broker.minKeepaliveSec/maxKeepaliveSec (none, 0, counting as above the
 * maximum), announced as Server Keep Alive in the CONNACK, which the client
 * MUST then use [MQTT-3.2.2-21]; undefined when the client's own stands.
 */
export function serverKeepAlive(packet: ConnectPacket, rules: ConnectRules): number | undefined {
  if (packet.protocolVersion !== 5) return undefined;
  const breach = keepaliveBreach(packet.keepalive ?? 0, rules);
  return breach === 'maxKeepalive' ? rules.maxKeepaliveSec : breach === 'minKeepalive' ? rules.minKeepaliveSec : undefined;
}
