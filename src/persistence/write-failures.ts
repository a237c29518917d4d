/**
 * What the store does after a failed write: refuse every later one until
 * LevelDB has been reopened, and reopen it in the background.
 *
 * What LevelDB (1.23, classic-level 3) does when a write fails, e.g. on
 * ENOSPC: the batch is not applied, and the next write is attempted as
 * usual (no sticky error for a failed append; a failed fsync or compaction
 * does make every later write fail until reopen). But the failed append can
 * leave part of its record in the write-ahead log while the log writer
 * counts it as written: records appended after it are misaligned, and when
 * the log is replayed at the next open they are dropped as corruption with
 * it. Writes that succeed after space is freed would be acknowledged and
 * then lost on restart (test/full-disk.test.ts shows it). So the first
 * failed write stops all writing until the store is reopened, which replays
 * the log up to the torn record (everything written before the failure) into
 * a table and starts a fresh log. Reopening is retried every REOPEN_RETRY_MS
 * in the background; meanwhile writes fail fast (QoS 1/2 publishers get no
 * acknowledgement, see src/broker/aedes-seam/index.ts, the publish path) and readiness reports the
 * failure.
 */
import { statfs } from 'node:fs/promises';
import type { Logger } from '../observability/logger.js';
import { isNoSpace } from './errors.js';
import type { BatchOp } from './group-commit.js';
import type { Store } from './open-store.js';
import type { StoreWriteFailure } from './types.js';

/**
 * After a failed write the store is reopened every this many ms until that
 * works, once at least REOPEN_MIN_FREE_BYTES are free on its file system
 * (reopening flushes the recovered log into a table: it needs room, and a
 * failed attempt leaves the store closed, so reads fail too, until the next
 * attempt).
 */
const REOPEN_RETRY_MS = 1000;
const REOPEN_MIN_FREE_BYTES = 1024 * 1024;

/**
 * abstract-level's interface for implementations (README, "Private API for
 * implementors"); not in its typings. `_chainedBatch()` gives classic-level's
 * native chained batch, whose `_put`, `_del` and `_write` go straight to the
 * binding; `detachResource` undoes what its constructor attached (the
 * public `write()` does the same when it ends).
 */
interface ImplementorBatch {
  _chainedBatch(): ImplementorChainedBatch;
  detachResource(resource: unknown): void;
}

interface ImplementorChainedBatch {
  _put(key: Buffer, value: Buffer): void;
  _del(key: Buffer): void;
  _write(options: { sync: boolean }): Promise<void>;
}

/**
 * Writes one batch. The store's ops are already what classic-level's
 * binding takes (Buffer keys and values, the 'buffer' encodings the store
 * opens with, no sublevels, hooks or 'write' listeners), so an open store
 * hands them to its native chained batch one call per op: db.batch() first
 * clones, validates and encodes every op in JavaScript (about 5 µs per op),
 * and even its implementor half `_batch(ops)` reads each op object's
 * `type`, `key` and `value` through N-API property lookups, measured at
 * 1.4–1.7 µs per op against 0.3 µs for a chained batch's `_put`/`_del`
 * (a put and a delete per message on a persistent session's QoS 1 path,
 * bench/persistence-qos1.ts). LevelDB gets the same WriteBatch either way.
 * Not open: db.batch(), for its errors; and db.batch() when it was replaced
 * on the instance (a wrapper that watches or holds the store's batches, as
 * tests do).
 */
function writeBatch(db: Store, ops: BatchOp[], options: { sync: boolean }): Promise<void> {
  if (db.status !== 'open' || Object.hasOwn(db, 'batch') || typeof (db as unknown as Partial<ImplementorBatch>)._chainedBatch !== 'function') {
    return db.batch(ops, options);
  }
  const implementor = db as unknown as ImplementorBatch;
  const batch = implementor._chainedBatch();
  implementor.detachResource(batch);
  for (const op of ops) {
    if (op.type === 'put') batch._put(op.key, op.value);
    else batch._del(op.key);
  }
  return batch._write(options);
}

export class WriteFailures {
  readonly #db: Store;
  readonly #path: string;
  readonly #log: Logger;
  readonly #now: () => number;
  /** False once the store is stopping: no reopen is started or finished then. */
  readonly #running: () => boolean;
  #failure: StoreWriteFailure | undefined;
  #reopenTimer: NodeJS.Timeout | undefined;
  #reopening: Promise<void> | undefined;

  constructor(db: Store, path: string, log: Logger, now: () => number, running: () => boolean) {
    this.#db = db;
    this.#path = path;
    this.#log = log;
    this.#now = now;
    this.#running = running;
  }

  /** Set while writes are refused; readiness reports it. */
  get failure(): StoreWriteFailure | undefined {
    return this.#failure;
  }

  /**
   * The group commit's only way to LevelDB. Once a write has failed, every
   * later one is refused without touching LevelDB until the store has been
   * reopened, so nothing is acknowledged meanwhile.
   */
  async batch(ops: BatchOp[], options: { sync: boolean }): Promise<void> {
    if (this.#failure) throw this.#failure.cause;
    try {
      await writeBatch(this.#db, ops, options);
    } catch (error) {
      this.#halt(error);
      throw error;
    }
  }

  /** Stops reopening; resolves once an attempt under way has ended. */
  async stop(): Promise<void> {
    clearTimeout(this.#reopenTimer);
    this.#reopenTimer = undefined;
    await this.#reopening;
  }

  #halt(error: unknown): void {
    if (this.#failure) return;
    const full = isNoSpace(error);
    const message = error instanceof Error ? error.message : String(error);
    this.#failure = {
      code: full ? 'EDGEMQTT_STORE_FULL' : 'EDGEMQTT_STORE_WRITE_FAILED',
      message,
      since: this.#now(),
      cause: error,
    };
    this.#log.error(
      { code: this.#failure.code, err: error, retryMs: REOPEN_RETRY_MS },
      full
        ? 'store is full: writes are refused and nothing is acknowledged until space is freed and the store reopens'
        : 'store write failed: writes are refused and nothing is acknowledged until the store reopens',
    );
    this.#scheduleReopen();
  }

  #scheduleReopen(): void {
    if (!this.#running() || this.#reopenTimer) return;
    this.#reopenTimer = setTimeout(() => {
      this.#reopenTimer = undefined;
      this.#reopening = this.#reopen().finally(() => (this.#reopening = undefined));
    }, REOPEN_RETRY_MS);
    this.#reopenTimer.unref();
  }

  async #reopen(): Promise<void> {
    if (!this.#running() || !this.#failure) return;
    const free = await statfs(this.#path).then(
      (stats) => stats.bavail * stats.bsize,
      () => Infinity, // cannot tell: try
    );
    if (free >= REOPEN_MIN_FREE_BYTES) {
      try {
        // The group commit writes nothing meanwhile (batch refuses); reads
        // made while closed fail, those made while opening wait for it.
        await this.#db.close();
        await this.#db.open();
        if (!this.#running()) return;
        const failedFor = this.#now() - this.#failure.since;
        this.#failure = undefined;
        this.#log.warn({ failedForMs: failedFor }, 'store reopened: writes are accepted again');
        return;
      } catch (error) {
        this.#log.warn({ err: error }, 'store could not be reopened yet');
      }
    }
    this.#scheduleReopen();
  }
}
