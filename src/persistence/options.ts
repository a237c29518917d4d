/**
 * Options of the LevelDB persistence, with their defaults written once here so
 * the config schema can reuse them (`persistence.*` keys).
 */
import type { Logger } from '../observability/logger.js';
import type { CommitObserver, SyncPolicy } from './group-commit.js';

export type { SyncPolicy };

export interface LevelPersistenceOptions {
  /** Directory of the LevelDB store, created when missing (e.g. `<dataDir>/store`). */
  path: string;
  /**
   * When a write that gates an acknowledgement counts as done. Loss bound on a
   * crash or power cut:
   * - `always`: nothing acknowledged is lost. The writes of one event-loop
   *   turn are their own fsync'd batch and never wait to share it with later
   *   writes, so throughput is about one fsync per socket read (a baseline,
   *   rarely worth it). (Not one per write call: the records of one PUBLISH
   *   must land together; see group-commit.ts.)
   * - `batch` (default): nothing acknowledged is lost. Writes made in the same
   *   event-loop turn and the next (or within `commitDelayMs`) share one
   *   fsync'd batch; what a crash can lose is only messages whose
   *   acknowledgement had not been sent.
   * - `os`: no fsync. A process crash (kill -9, OOM) loses nothing, since each
   *   batch reaches the kernel before it counts as done; a power cut or kernel
   *   panic loses what the kernel had not written back yet (on Linux up to
   *   `vm.dirty_expire_centisecs`, 30 s by default, plus the writeback
   *   interval), acknowledged messages included.
   */
  sync?: SyncPolicy;
  /**
   * Extra time in ms a group commit waits for more writes after its first;
   * 0 = commit after the event-loop turn that follows the first write (under
   * `always`, at the end of that write's turn; see group-commit.ts). A few ms
   * trade latency for fewer fsyncs on slow storage (SD cards).
   */
  commitDelayMs?: number;
  /**
   * Messages (QoS 1/2 PUBLISH) a persistent session may hold, its client
   * connected or not; 0 = unlimited. Overflow policy: the oldest queued
   * message of that client is dropped to make room (fresh data wins on a
   * sensor network), counted in stats().queueDroppedMessages and logged (at
   * most once per 10 s per client). PUBREL entries (QoS 2 handshakes in
   * progress) are never dropped. While the client is connected only messages
   * not sent yet are dropped: one in flight (it has its packet identifier),
   * or handed to aedes for sending (it will call outgoingUpdate, which must
   * find it or aedes drops the connection), stays; the flow control skips a
   * dropped one (claimOutgoing). So a connected queue may exceed the limit by
   * its in-flight window, never more.
   */
  maxQueuedMessagesPerClient?: number;
  /** Bytes (encoded records) a persistent session may hold, connected or not; 0 = unlimited. Same overflow policy. */
  maxQueuedBytesPerClient?: number;
  /**
   * Memory, over all sessions, for copies of the messages queued while their
   * client is offline (each counted with ~128 bytes of overhead), so that a
   * client that comes back gets its backlog without the store reading it
   * back from disk; what does not fit is read from disk as before. The disk
   * holds every message either way. 0 = no copies.
   */
  queueCacheBytes?: number;
  /**
   * A persistent session whose client has not been connected for this long is
   * removed with its subscriptions, queue and pending QoS 2 packets (like
   * Mosquitto's persistent_client_expiration); 0 = never. Time the broker was
   * not running does not count. An MQTT 5 session expires after its own
   * Session Expiry Interval, at most this long (session-clock.ts).
   */
  sessionExpirySec?: number;
  /** How often expired sessions are looked for, in seconds. */
  expiryCheckIntervalSec?: number;
  /** Recovery logs progress every this many records. */
  recoveryProgressEvery?: number;
}

export interface LevelPersistenceDeps {
  logger: Logger;
  /** Wall clock in ms since the epoch (session expiry); Date.now when omitted. */
  now?: () => number;
  /** Hears every committed batch of the group commit (its op count, its write time in seconds): the metrics' histograms. */
  onCommit?: CommitObserver;
}

export const persistenceDefaults = {
  sync: 'batch' as SyncPolicy,
  commitDelayMs: 0,
  // Mosquitto's max_queued_messages default.
  maxQueuedMessagesPerClient: 1000,
  // 16 MiB: a thousand 16 KiB messages; bounds one client's share of the disk.
  maxQueuedBytesPerClient: 16 * 1024 * 1024,
  // 8 MiB: ~30,000 small sensor messages (64-byte payloads), a short outage's backlog.
  queueCacheBytes: 8 * 1024 * 1024,
  // A week: covers a device off over a long weekend plus a repair.
  sessionExpirySec: 7 * 24 * 3600,
  expiryCheckIntervalSec: 300,
  recoveryProgressEvery: 100_000,
} as const;

export type ResolvedOptions = Required<LevelPersistenceOptions>;

export function resolveOptions(options: LevelPersistenceOptions): ResolvedOptions {
  const resolved: ResolvedOptions = {
    path: options.path,
    sync: options.sync ?? persistenceDefaults.sync,
    commitDelayMs: options.commitDelayMs ?? persistenceDefaults.commitDelayMs,
    maxQueuedMessagesPerClient: options.maxQueuedMessagesPerClient ?? persistenceDefaults.maxQueuedMessagesPerClient,
    maxQueuedBytesPerClient: options.maxQueuedBytesPerClient ?? persistenceDefaults.maxQueuedBytesPerClient,
    queueCacheBytes: options.queueCacheBytes ?? persistenceDefaults.queueCacheBytes,
    sessionExpirySec: options.sessionExpirySec ?? persistenceDefaults.sessionExpirySec,
    expiryCheckIntervalSec: options.expiryCheckIntervalSec ?? persistenceDefaults.expiryCheckIntervalSec,
    recoveryProgressEvery: options.recoveryProgressEvery ?? persistenceDefaults.recoveryProgressEvery,
  };
  if (!['always', 'batch', 'os'].includes(resolved.sync)) throw new RangeError(`unknown sync policy ${resolved.sync}`);
  for (const key of [
    'commitDelayMs',
    'maxQueuedMessagesPerClient',
    'maxQueuedBytesPerClient',
    'queueCacheBytes',
    'sessionExpirySec',
  ] as const) {
    if (!(resolved[key] >= 0)) throw new RangeError(`${key} must be >= 0`);
  }
  if (!(resolved.expiryCheckIntervalSec > 0)) throw new RangeError('expiryCheckIntervalSec must be > 0');
  if (!(resolved.recoveryProgressEvery > 0)) throw new RangeError('recoveryProgressEvery must be > 0');
  return resolved;
}
