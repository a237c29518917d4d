/**
 * The LevelDB persistence for aedes: values and types of its public surface.
 * LevelPersistence (level-persistence.ts) is the aedes adapter on the store
 * core (store.ts), which stays inside this directory.
 */
export { createLevelPersistence, LevelPersistence } from './level-persistence.js';
export type { BrokerLike, ClientLike, PersistenceState, PersistenceStats, PublishTap, StoreWriteFailure } from './types.js';
export type { PacketLike } from './codec.js';
export { owned } from './codec.js';
export { persistenceDefaults } from './options.js';
export type { LevelPersistenceDeps, LevelPersistenceOptions, SyncPolicy } from './options.js';
export { createGroupCommit, COMMIT_LATENCY_BUCKETS_MS } from './group-commit.js';
export type { BatchOp, BatchTarget, CommitObserver, GroupCommit, GroupCommitOptions, GroupCommitStats } from './group-commit.js';
export { componentPrefix, prefixRange } from './keys.js';
export {
  StoreClosedError,
  StoreCorruptError,
  StoreIncompatibleError,
  StoreLockedError,
  StoreUnreadableError,
  StoreWriteError,
} from './errors.js';
