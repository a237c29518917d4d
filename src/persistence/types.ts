/**
 * The shapes the store and its aedes adapter share with their callers: the
 * parts of aedes they look at, the publish taps, the figures they report,
 * and the broker id given to wills left by an earlier run.
 */
import type { BatchOp, GroupCommitStats } from './group-commit.js';
import type { PacketLike } from './codec.js';

/**
 * The broker id streamWill reports for a will stored by an earlier run of the
 * broker. That broker instance is gone even when the id is configured to stay
 * the same, so aedes treats the will as one of a dead broker and publishes it
 * (aedes.js _clearWills, every 4 heartbeat intervals) unless its client has
 * reconnected meanwhile, which replaces or deletes it.
 */
export const PREVIOUS_RUN_BROKER_ID = 'edgemqtt:previous-run';

/** The parts of an aedes broker the persistence uses. */
export interface BrokerLike {
  id: string;
  /** aedes' brokerCounter source, raised past queued entries on setup. */
  counter?: number;
  /** Connected clients by id (aedes keeps them in `broker.clients`). */
  clients?: Record<string, unknown>;
  on?(event: string, listener: (client: ClientLike) => void): unknown;
  removeListener?(event: string, listener: (client: ClientLike) => void): unknown;
}

export interface ClientLike {
  id: string;
  clean?: boolean;
  /** Only in aedes' delWill calls after it published a will; see delWill. */
  brokerId?: unknown;
  /** Set on aedes' own client objects (one per connection): the broker the connection belongs to. */
  broker?: unknown;
}

/** A component riding on each PUBLISH's durable batch (addPublishTap): the ops to add, if any. */
export type PublishTap = (packet: PacketLike) => BatchOp[] | undefined;

/** What claimOutgoing answers for a message that may be sent: the packet identifier to use, and whether it is a resend. Empty while the store is not running (aedes decides). */
export interface OutgoingClaim {
  messageId?: number;
  resend?: boolean;
}

export type PersistenceState = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

/** Why writes are refused: the first failed write since the store was last (re)opened. */
export interface StoreWriteFailure {
  /** EDGEMQTT_STORE_FULL when the file system is full, else EDGEMQTT_STORE_WRITE_FAILED. */
  code: 'EDGEMQTT_STORE_FULL' | 'EDGEMQTT_STORE_WRITE_FAILED';
  message: string;
  /** Wall-clock ms when the write failed. */
  since: number;
  cause: unknown;
}

/** Counters and gauges for metrics; a plain object, safe to serialise. */
export interface PersistenceStats {
  state: PersistenceState;
  retainedMessages: number;
  /** Encoded bytes of the retained messages held in memory (and on disk). */
  retainedBytes: number;
  /** Subscriptions with QoS > 0 (aedes' countOffline subsCount). */
  subscriptions: number;
  subscribedClients: number;
  sessions: number;
  queuedClients: number;
  queuedEntries: number;
  /** Encoded bytes of queued PUBLISH entries. */
  queuedBytes: number;
  /** Memory the queue cache holds (copies of messages queued for offline clients, overhead counted). */
  queueCacheBytes: number;
  incomingPackets: number;
  wills: number;
  /** Of those, wills waiting for their Will Delay Interval to pass [MQTT-3.1.3-9]. */
  delayedWills: number;
  /** Messages dropped by the per-client queue limits. */
  queueDroppedMessages: number;
  /** Stored messages sent again on a later connection, under the packet identifier they had, DUP set. */
  resentMessages: number;
  /** Times a stored message already handed out on a connection was not sent on it again (a live delivery racing the resend after CONNECT). */
  repeatSendsAvoided: number;
  /** Times aedes offered a stored message under a second packet identifier and the first was kept; above 0 means a delivery path bypassed claimOutgoing. */
  packetIdConflicts: number;
  /** Times a message had to wait for the next connection because all 65,535 packet identifiers of its session were in use. */
  packetIdsExhausted: number;
  /** Times a client's queue hit a limit (one per enqueue that dropped something). */
  queueOverflows: number;
  sessionsExpired: number;
  /** Queued messages dropped unsent because their Message Expiry Interval had passed [MQTT-3.3.2-5]. */
  expiredMessages: number;
  /** Retained messages removed because their Message Expiry Interval had passed [MQTT-3.3.2-5]. */
  expiredRetained: number;
  /** Records that failed to decode, at recovery or later; each was skipped. */
  decodeErrors: number;
  /** Records in the quarantine range. */
  quarantinedRecords: number;
  retainedLookups: number;
  /** Topic-tree nodes visited by retained lookups; small unless the filters are broad. */
  retainedNodesVisited: number;
  recovery: { records: number; durationMs: number };
  commit: GroupCommitStats | undefined;
}
