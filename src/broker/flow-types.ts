/**
 * The flow control's options, counters and events, and the session store's
 * hooks it calls: shared by FlowControl (flow-control.ts, which explains the
 * bounds) and each client's ClientFlow (client-flow.ts).
 */
import type { Client } from 'aedes';
import type { LogFields } from '../util/rate-limited-log.js';

export interface FlowControlOptions {
  /** Per client; 0 = unlimited. */
  maxOutgoingBufferBytes: number;
  /** Per client; 0 = unlimited. */
  maxInflightMessages: number;
  /** Per client; 0 = unlimited. */
  maxQueuedMessagesPerClient: number;
  /** Per client; 0 = unlimited. */
  maxQueuedBytesPerClient: number;
  /** aedes' drainTimeout, for the log line when it cuts a client off. */
  drainTimeoutMs: number;
}

export interface FlowControlStats {
  /** QoS 0 messages not sent because the client's outgoing buffer was full. */
  droppedQos0Messages: number;
  /** QoS 1/2 messages dropped from a full queue of a clean session (lost). */
  droppedQueuedMessages: number;
  /** QoS 1/2 messages dropped from a full queue of a persistent session: the session store decides (it has the same limits); one still there is sent on reconnect. */
  deferredQueuedMessages: number;
  /** Deliveries that had to wait because the client's outgoing buffer was full. */
  bufferFullWaits: number;
  /** Deliveries that had to wait because the client's inflight window was full. */
  inflightWaits: number;
  /** Live messages of a persistent session that waited for its stored messages to be resent after CONNECT. */
  resumeWaits: number;
  /** Clients disconnected because their socket stayed full for the drain timeout. */
  slowClientDisconnects: number;
  /** Messages not sent to an MQTT 5 client because they exceed its Maximum Packet Size (that client's copy only). */
  oversizeDrops: number;
  /** Messages waiting in clients' queues now. */
  queuedMessages: number;
  /** Bytes of those messages. */
  queuedBytes: number;
}

/** Events worth a counter and a (rate-limited) log line, reported to the owner. */
export type FlowEvent = 'outgoingBufferFull' | 'maxInflight' | 'outgoingQueueFull' | 'slowClient' | 'clientMaxPacketSize';

/** `fields` may be a function that makes them: see LogFields. */
export type FlowEventSink = (event: FlowEvent, fields: LogFields) => void;

export type FlowCounter = Exclude<keyof FlowControlStats, 'queuedMessages' | 'queuedBytes'>;

/**
 * The session store's answer for a persistent session's live QoS 1/2
 * message (LevelPersistence claimOutgoing): undefined when it must not be
 * sent, else the packet identifier to send it under and whether it is a
 * resend. Without a store that numbers messages (aedes' memory
 * persistence), there is no lookup and aedes decides.
 */
export type ClaimOutgoing = (
  client: Client,
  brokerId: string,
  brokerCounter: number | undefined,
) => { messageId?: number; resend?: boolean } | undefined;

/** Removes a persistent session's queued message, claimed under `messageId`, that can never be sent to it. */
export type DiscardOutgoing = (client: Client, messageId: number) => Promise<unknown>;

/** What a ClientFlow needs from the FlowControl that made it: options, counters, reports and the session store's hooks. */
export interface FlowOwner {
  readonly options: FlowControlOptions;
  readonly claimOutgoing: ClaimOutgoing | undefined;
  readonly discardOutgoing: DiscardOutgoing | undefined;
  count(key: FlowCounter): void;
  queued(messages: 1 | -1, bytes: number): void;
  report(event: FlowEvent, fields: LogFields): void;
  /**
   * Calls `callback` after this turn's I/O, as setImmediate would, with the
   * turn's other callbacks from one setImmediate (src/util/turn-callbacks.ts):
   * a delivery's callback, due once it is handed over.
   */
  later(callback: () => void): void;
}
