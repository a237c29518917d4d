/**
 * The store core's counters and the figures it reports (PersistenceStats,
 * for metrics and the admin API): the counters are bumped by the store and
 * its parts, the rest is read off the in-memory state when asked.
 */
import type { KeptRecord } from './codec.js';
import type { GroupCommitStats } from './group-commit.js';
import type { OutgoingQueues } from './outgoing-queues.js';
import type { QueueLimiter } from './queue-limits.js';
import type { SessionClock } from './session-clock.js';
import type { SubscriptionIndex } from './subscription-index.js';
import type { TopicTree } from './topic-tree.js';
import type { PersistenceState, PersistenceStats } from './types.js';

/** Events counted by the store and its parts since start (recovery: of the last start), as PersistenceStats reports them. */
export type StoreCounters = Pick<
  PersistenceStats,
  | 'sessionsExpired'
  | 'expiredMessages'
  | 'expiredRetained'
  | 'decodeErrors'
  | 'quarantinedRecords'
  | 'retainedLookups'
  | 'resentMessages'
  | 'repeatSendsAvoided'
  | 'packetIdConflicts'
  | 'packetIdsExhausted'
> & {
  recoveryRecords: number;
  recoveryMs: number;
};

export function newStoreCounters(): StoreCounters {
  return {
    sessionsExpired: 0,
    expiredMessages: 0,
    expiredRetained: 0,
    decodeErrors: 0,
    quarantinedRecords: 0,
    retainedLookups: 0,
    resentMessages: 0,
    repeatSendsAvoided: 0,
    packetIdConflicts: 0,
    packetIdsExhausted: 0,
    recoveryRecords: 0,
    recoveryMs: 0,
  };
}

/** The store's in-memory state the figures are read from (LevelStore's members). */
export interface StatsSources {
  readonly subscriptions: SubscriptionIndex;
  readonly retained: TopicTree<KeptRecord>;
  readonly retainedBytes: number;
  readonly queues: OutgoingQueues;
  readonly incoming: ReadonlyMap<string, ReadonlySet<number>>;
  readonly wills: ReadonlyMap<string, unknown>;
  readonly willsHeldUntil: ReadonlyMap<string, number>;
  readonly sessions: SessionClock;
  readonly limiter: QueueLimiter;
  readonly counters: StoreCounters;
}

export function persistenceStats(state: PersistenceState, store: StatsSources, commit: GroupCommitStats | undefined): PersistenceStats {
  const totals = store.queues.totals();
  let incomingPackets = 0;
  for (const ids of store.incoming.values()) incomingPackets += ids.size;
  const c = store.counters;
  return {
    state,
    retainedMessages: store.retained.size,
    retainedBytes: store.retainedBytes,
    subscriptions: store.subscriptions.matchableCount,
    subscribedClients: store.subscriptions.clientCount,
    sessions: store.sessions.size,
    queuedClients: totals.clients,
    queuedEntries: totals.entries,
    queuedBytes: totals.publishBytes,
    queueCacheBytes: store.queues.cache.bytes,
    incomingPackets,
    wills: store.wills.size,
    delayedWills: store.willsHeldUntil.size,
    queueDroppedMessages: store.limiter.droppedMessages,
    queueOverflows: store.limiter.overflows,
    resentMessages: c.resentMessages,
    repeatSendsAvoided: c.repeatSendsAvoided,
    packetIdConflicts: c.packetIdConflicts,
    packetIdsExhausted: c.packetIdsExhausted,
    sessionsExpired: c.sessionsExpired,
    expiredMessages: c.expiredMessages,
    expiredRetained: c.expiredRetained,
    decodeErrors: c.decodeErrors,
    quarantinedRecords: c.quarantinedRecords,
    retainedLookups: c.retainedLookups,
    retainedNodesVisited: store.retained.nodesVisited,
    recovery: { records: c.recoveryRecords, durationMs: c.recoveryMs },
    commit,
  };
}
