/**
 * What the broker's clients did since start: who is connected (per listener
 * and protocol), why connected clients left, and the PUBLISH packets and
 * payload bytes in and out per QoS. Plain counters, incremented on the hot
 * path and read when someone asks (metrics scrape, $SYS, the admin API).
 */

/** MQTT protocol of a connection, as CONNECT named it (3.1 is protocol level 3). */
export type ProtocolName = '3.1' | '3.1.1' | '5';

/** Why a connected client (one that got CONNACK 0) is gone. */
export const DISCONNECT_REASONS = [
  /** It sent DISCONNECT. */
  'client_disconnect',
  /** Its connection closed or failed without DISCONNECT. */
  'connection_lost',
  /** Nothing from it within 1.5 × its keep-alive [MQTT-3.1.2-24]. */
  'keepalive_timeout',
  /** It broke MQTT 3.1.1 or 5.0 (the protocol guard, aedes' parser). */
  'protocol_violation',
  /** Its socket stayed full for broker.drainTimeoutSec. */
  'slow_consumer',
  /** A new connection with its client id took its session [MQTT-3.1.4-2]. */
  'taken_over',
  /** An operator disconnected it (admin API). */
  'kicked',
  /** The broker stopped. */
  'server_stop',
] as const;
export type DisconnectReason = (typeof DISCONNECT_REASONS)[number];

export interface ListenerProtocolCount {
  /** The listener's name: mqtt, tls, http (WebSocket). */
  listener: string;
  protocol: ProtocolName;
  count: number;
}

/** Indexed by QoS. */
export type PerQos = [qos0: number, qos1: number, qos2: number];

export interface TrafficStats {
  /** Clients connected now (CONNACK 0 sent, not yet gone), per listener and protocol. */
  connected: ListenerProtocolCount[];
  /** Accepted connections since start, per listener and protocol. */
  connects: ListenerProtocolCount[];
  /** Connected clients gone since start, per reason. */
  disconnects: Record<DisconnectReason, number>;
  /** PUBLISH packets received from clients, per QoS. */
  messagesIn: PerQos;
  /** Their payload bytes. */
  bytesIn: PerQos;
  /** PUBLISH packets sent to clients, per QoS (the QoS each was sent at). */
  messagesOut: PerQos;
  /** Their payload bytes. */
  bytesOut: PerQos;
  /** Of messagesIn at QoS 0, those the fast path took past aedes (aedes-seam/fast-publish.ts). */
  fastPathMessagesIn: number;
}

/** What else is known of why a client left: the clause or limit it broke, the error that ended it. */
export interface DisconnectDetail {
  /** The clause of a protocol violation, e.g. `MQTT-3.3.1-4`. */
  rule?: string;
  /** The configured limit a connection went over (a protocol violation of the broker's own bounds), e.g. `maxPacketSize`. */
  limit?: string;
  /** The error's message (a violation's reason, a parse error, a socket error). */
  error?: string;
}

/** One connected client's counters, kept until it is gone. */
export interface ClientTraffic {
  listener: string;
  protocol: ProtocolName;
  /** When its CONNACK 0 went out, epoch milliseconds. */
  connectedAt: number;
  messagesIn: number;
  bytesIn: number;
  messagesOut: number;
  bytesOut: number;
  /** Why it is leaving, when something other than the connection itself ended it (tagDisconnect). */
  leaving?: DisconnectReason;
  /** With `leaving`: what else is known of it. */
  leavingDetail?: DisconnectDetail;
}

/**
 * A client's record, in a field of aedes' Client object (so that nothing
 * outlives the client): a WeakMap entry per client cost more, and a lookup
 * per message in and out.
 */
const RECORD = Symbol('edgemqtt.traffic');
type Recorded = { [RECORD]?: ClientTraffic | undefined };
const recordOf = (client: object): ClientTraffic | undefined => (client as Recorded)[RECORD];

export class Traffic {
  readonly #connected = new Map<string, ListenerProtocolCount>();
  readonly #connects = new Map<string, ListenerProtocolCount>();
  readonly #disconnects = Object.fromEntries(DISCONNECT_REASONS.map((reason) => [reason, 0])) as Record<DisconnectReason, number>;
  readonly #messagesIn: PerQos = [0, 0, 0];
  #fastPathMessagesIn = 0;
  readonly #bytesIn: PerQos = [0, 0, 0];
  readonly #messagesOut: PerQos = [0, 0, 0];
  readonly #bytesOut: PerQos = [0, 0, 0];

  clientConnected(client: object, listener: string, protocol: ProtocolName): ClientTraffic {
    count(this.#connected, listener, protocol).count++;
    count(this.#connects, listener, protocol).count++;
    const record: ClientTraffic = { listener, protocol, connectedAt: Date.now(), messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0 };
    (client as Recorded)[RECORD] = record;
    return record;
  }

  /**
   * Records why a connected client is about to be closed, before it is; the
   * first reason given wins (a violation found while the broker stops is a violation).
   */
  tagDisconnect(client: object, reason: DisconnectReason, detail?: DisconnectDetail): void {
    const record = recordOf(client);
    if (record && record.leaving === undefined) {
      record.leaving = reason;
      if (detail) record.leavingDetail = detail;
    }
  }

  /**
   * A counted client is gone: with the reason tagged, else `fallback`.
   * Returns its record, or undefined when it was never counted (or already gone).
   */
  clientDisconnected(client: object, fallback: DisconnectReason): (ClientTraffic & { reason: DisconnectReason }) | undefined {
    const record = recordOf(client);
    if (!record) return undefined;
    // Not `delete`: a deleted field would turn the client into a dictionary.
    (client as Recorded)[RECORD] = undefined;
    const reason = record.leaving ?? fallback;
    count(this.#connected, record.listener, record.protocol).count--;
    this.#disconnects[reason]++;
    return { ...record, reason };
  }

  /** The counters of a connected client. */
  ofClient(client: object): Readonly<ClientTraffic> | undefined {
    return recordOf(client);
  }

  messageIn(client: object, qos: 0 | 1 | 2, payloadBytes: number): void {
    this.#messagesIn[qos]++;
    this.#bytesIn[qos] += payloadBytes;
    const record = recordOf(client);
    if (record) {
      record.messagesIn++;
      record.bytesIn += payloadBytes;
    }
  }

  /** One more QoS 0 PUBLISH taken by the fast path (counted by messageIn as well). */
  fastPathMessageIn(): void {
    this.#fastPathMessagesIn++;
  }

  messageOut(client: object, qos: 0 | 1 | 2, payloadBytes: number): void {
    this.#messagesOut[qos]++;
    this.#bytesOut[qos] += payloadBytes;
    const record = recordOf(client);
    if (record) {
      record.messagesOut++;
      record.bytesOut += payloadBytes;
    }
  }

  /** Clients connected now, over every listener and protocol. */
  get connectedClients(): number {
    let total = 0;
    for (const entry of this.#connected.values()) total += entry.count;
    return total;
  }

  stats(): TrafficStats {
    return {
      connected: [...this.#connected.values()].map((entry) => ({ ...entry })),
      connects: [...this.#connects.values()].map((entry) => ({ ...entry })),
      disconnects: { ...this.#disconnects },
      messagesIn: [...this.#messagesIn],
      bytesIn: [...this.#bytesIn],
      messagesOut: [...this.#messagesOut],
      bytesOut: [...this.#bytesOut],
      fastPathMessagesIn: this.#fastPathMessagesIn,
    };
  }
}

function count(map: Map<string, ListenerProtocolCount>, listener: string, protocol: ProtocolName): ListenerProtocolCount {
  const key = `${listener} ${protocol}`;
  let entry = map.get(key);
  if (!entry) {
    entry = { listener, protocol, count: 0 };
    map.set(key, entry);
  }
  return entry;
}
