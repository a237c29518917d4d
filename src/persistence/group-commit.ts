/**
 * Group commit: many small durable writes share one LevelDB batch and one
 * fsync. Writers call `write(ops)` and await it; ops written in the same
 * event-loop turn (or within `maxDelayMs`) land in one `batch(ops, { sync })`,
 * and while that batch is being written the next one fills up, so under load
 * each fsync carries everything that arrived during the previous one.
 *
 * Guarantees:
 * - The ops of one `write()` call are never split across batches (atomic).
 * - Writes made in one event-loop turn (one I/O callback and the microtasks
 *   it queues) land in one batch, under every policy: no batch is started
 *   before the turn that opened it has ended. The broker relies on this to
 *   store an incoming QoS 2 packet, the retained message and the offline
 *   queue entries of one PUBLISH atomically (see level-persistence.ts).
 * - Batches are written one at a time, in order: a later write never lands
 *   before an earlier one.
 * - `pending(key)` answers with the value a key will have once queued writes
 *   land, so readers see their own writes before the commit.
 * - A failed batch rejects every writer of that batch with StoreWriteError;
 *   later batches are still attempted.
 * - A write to a key that the batch still filling already writes replaces
 *   that op in place (LevelDB applies a batch's ops in order and atomically,
 *   so the outcome is the same): a queued message stored, renumbered when
 *   sent and deleted when acknowledged within one fsync costs one op, not three.
 *
 * - Lazy writes (writeLazily: what nobody waits for, reads again or minds
 *   losing in a crash, the deletes of acknowledged messages) join the batch
 *   filling now, or else wait in one of their own for the next write, at
 *   most lazyDelayMs or lazyMaxOps ops: one batch, and one fsync, per
 *   lazyDelayMs instead of one per event-loop turn. A batch of lazy writes
 *   alone is fsync'd too (under `batch` and `always`): LevelDB fsyncs only
 *   its current log file, so an unsynced batch in a log it has since closed
 *   could be lost in a power cut while later, fsync'd batches survive. They
 *   keep their place in the order: a later write lands after them, in the
 *   same batch or a later one. They are not indexed (no key string or map
 *   entry per op): pending() and whenWritten() do not see them, and a write
 *   to a key the batch wrote before a lazy op is added after that op, never
 *   in its earlier place (`lazyEnd`), so LevelDB, applying a batch's ops in
 *   order, keeps the later write.
 *
 * This is also the extension point for other components (the NATS bridge
 * outbox): they call `write()` with keys under their `componentPrefix()`, and
 * their records share the batch, and the fsync, of whatever the broker writes
 * in the same turn.
 */
import { StoreClosedError, StoreWriteError } from './errors.js';

/**
 * When a write counts as done:
 * - `always`: the writes of one event-loop turn are one fsync'd batch, and a
 *   batch never takes writes from a later turn: no write waits to share an
 *   fsync with writes that arrive after it. (Not one fsync per write() call:
 *   that would split one PUBLISH's records across batches; see above.)
 * - `batch`: writes of one turn and the next (or of maxDelayMs) share one
 *   fsync'd batch, and while a batch is being written the next one collects
 *   every turn's writes, so each fsync carries everything that arrived
 *   during the last. The batch starts after the second turn (see schedule).
 * - `os`: like `batch` but without fsync: done once LevelDB handed the batch
 *   to the kernel (write(2)); survives a process crash, not a power cut.
 */
export type SyncPolicy = 'always' | 'batch' | 'os';

export type BatchOp = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/** The part of a LevelDB (classic-level) the group commit needs. */
export interface BatchTarget {
  batch(ops: BatchOp[], options: { sync: boolean }): Promise<void>;
}

export interface GroupCommitOptions {
  policy: SyncPolicy;
  /**
   * How long a batch waits for more writes after its first one, in ms.
   * 0 (default): at the end of the current event-loop turn (`always`), or of
   * the next one (`batch`, `os`; see schedule).
   */
  maxDelayMs?: number;
  /** Monotonic clock in ms, for latency figures. */
  now?: () => number;
  /**
   * Hears every committed batch: its op count and how long it took to write
   * (fsync included), in seconds. Called once per batch, never per write, so
   * it may feed histograms (the Prometheus metrics) at no cost per message.
   */
  onCommit?: CommitObserver;
  /** How long a batch of lazy writes alone waits for a write to join, in ms (default 50). */
  lazyDelayMs?: number;
  /** A batch of lazy writes alone is started once it holds this many ops (default 1024). */
  lazyMaxOps?: number;
}

/** See GroupCommitOptions.onCommit. */
export type CommitObserver = (ops: number, seconds: number) => void;

/** Upper bounds (ms) of the commit latency histogram buckets; the last bucket is +Inf. */
export const COMMIT_LATENCY_BUCKETS_MS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500] as const;

export interface GroupCommitStats {
  /** write() calls that carried ops. */
  writes: number;
  ops: number;
  batches: number;
  /** Batches written with fsync. */
  syncs: number;
  failedBatches: number;
  /** Keys with a write waiting for, or in, a batch not yet committed (a key in two such batches counts twice). */
  pendingKeys: number;
  largestBatchOps: number;
  /** Time from a batch's start to its completion (the fsync cost), in ms. */
  commitMs: { last: number; max: number; sum: number; count: number; buckets: number[] };
}

export interface GroupCommit {
  readonly policy: SyncPolicy;
  /** Resolves once `ops` are written per the policy; rejects with StoreWriteError. */
  write(ops: readonly BatchOp[]): Promise<void>;
  /**
   * Queues `ops` that nobody waits for or reads again and that a crash may
   * lose (see the header): they ride with the next write, or go after
   * lazyDelayMs in a batch of their own; pending() does not see them. The
   * promise is their batch's, for failures.
   */
  writeLazily(ops: readonly BatchOp[]): Promise<void>;
  /**
   * Resolves once every write made so far is written per the policy; rejects
   * with StoreWriteError when the batch holding the latest of them failed.
   * Batches land in order, so this is the promise of the newest batch.
   */
  barrier(): Promise<void>;
  /**
   * The promise of the batch that carries the latest queued write to `key`,
   * or undefined when no queued write touches it.
   */
  whenWritten(key: Buffer): Promise<void> | undefined;
  /**
   * The value `key` will hold when queued writes land: a Buffer, `null` for a
   * queued delete, or `undefined` when no queued write touches the key.
   */
  pending(key: Buffer): Buffer | null | undefined;
  /** Resolves once everything written so far has settled (committed or failed). */
  flush(): Promise<void>;
  /** Flushes, then refuses further writes with StoreClosedError. Idempotent. */
  close(): Promise<void>;
  stats(): GroupCommitStats;
}

interface Batch {
  readonly generation: number;
  readonly ops: BatchOp[];
  /**
   * Where in `ops` the write to each key is (the key as a latin1 string, one
   * char per byte), to replace it while the batch fills and to answer
   * pending() and whenWritten() until the batch settles (then cleared). One
   * map per batch, not one across batches: a write costs one Map.set and no
   * object of its own, and a settled batch drops its keys at once.
   */
  readonly index: Map<string, number>;
  ready: boolean;
  /** Lazy writes only (see writeLazily) and not started: waits for a write to join, or lazyDelayMs. */
  lazy: boolean;
  /** The ops before this index come before a lazy op: a write to one of their keys is appended, not put in their place. */
  lazyEnd: number;
  timer: NodeJS.Timeout | undefined;
  readonly promise: Promise<void>;
  resolve(): void;
  reject(error: Error): void;
}

export function createGroupCommit(target: BatchTarget, options: GroupCommitOptions): GroupCommit {
  const { policy } = options;
  const maxDelayMs = options.maxDelayMs ?? 0;
  const now = options.now ?? (() => performance.now());
  const onCommit = options.onCommit;
  const lazyDelayMs = options.lazyDelayMs ?? 50;
  const lazyMaxOps = options.lazyMaxOps ?? 1024;
  const sync = policy !== 'os';
  // Batches not yet started, oldest first; only the last one accepts new ops.
  const queue: Batch[] = [];
  let running: Batch | undefined;
  let generation = 0;
  let closed = false;
  const counters = {
    writes: 0,
    ops: 0,
    batches: 0,
    syncs: 0,
    failedBatches: 0,
    largestBatchOps: 0,
  };
  const commitMs = { last: 0, max: 0, sum: 0, count: 0, buckets: COMMIT_LATENCY_BUCKETS_MS.map(() => 0).concat(0) };

  function newBatch(lazy: boolean): Batch {
    let resolve!: () => void;
    let reject!: (error: Error) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const batch: Batch = { generation: ++generation, ops: [], index: new Map(), ready: false, lazy, lazyEnd: 0, timer: undefined, promise, resolve, reject };
    queue.push(batch);
    if (lazy) batch.timer = setTimeout(() => markReady(batch), lazyDelayMs);
    else schedule(batch);
    return batch;
  }

  function markReady(batch: Batch): void {
    if (batch.ready) return;
    batch.ready = true;
    pump();
  }

  function schedule(batch: Batch): void {
    if (maxDelayMs > 0 && policy !== 'always') setTimeout(() => markReady(batch), maxDelayMs);
    // setImmediate runs after this turn's I/O callbacks, so every write made
    // while handling one poll phase (a socket read, a timer) joins this batch.
    else if (policy === 'always') setImmediate(() => markReady(batch));
    // `batch` and `os`: a turn later. The deliveries and replies the first
    // turn wrote leave first (the broker's write coalescer flushes them in a
    // setImmediate queued after this one), before the batch is handed to
    // LevelDB and its thread woken; and what the next poll phase brings (the
    // subscribers' acknowledgements of those deliveries, typically) shares
    // its fsync. At 2,000 QoS 1 messages a second this cut a delivery's
    // latency (p50) by a sixth to a quarter and the broker's CPU per message
    // by ~15% (bench/persistence-latency.ts, docs/performance.md ◉).
    else setImmediate(nextTurn, batch);
  }

  /** schedule's second turn: setImmediate from a setImmediate callback runs in the next loop iteration. */
  function nextTurn(batch: Batch): void {
    setImmediate(markReady, batch);
  }

  /**
   * A batch of lazy writes not started yet that someone now waits for:
   * written with fsync as any other, at the end of the turn unless it is due already.
   */
  function promote(batch: Batch | undefined): void {
    if (batch === undefined || !batch.lazy || batch === running) return;
    batch.lazy = false;
    if (batch.ready) return;
    clearTimeout(batch.timer);
    schedule(batch);
  }

  /** Adds `ops` to the batch filling now, or to a new one. */
  function add(ops: readonly BatchOp[], lazy: boolean): Batch {
    let batch = queue.at(-1);
    // `always`: a sealed batch (its turn has ended) takes no more writes.
    if (!batch || (policy === 'always' && batch.ready)) batch = newBatch(lazy);
    else if (!lazy) promote(batch);
    const { index } = batch;
    if (lazy) {
      // Not indexed: see the header.
      for (const op of ops) batch.ops.push(op);
      batch.lazyEnd = batch.ops.length;
    } else {
      for (const op of ops) {
        const id = op.key.toString('latin1');
        const at = index.get(id);
        // In place only after the last lazy op: before it, the lazy op (a delete of the same key) would undo this write.
        if (at !== undefined && at >= batch.lazyEnd) batch.ops[at] = op;
        else index.set(id, batch.ops.push(op) - 1);
      }
    }
    counters.writes++;
    counters.ops += ops.length;
    if (batch.lazy && batch.ops.length >= lazyMaxOps) markReady(batch);
    return batch;
  }

  function record(ms: number): void {
    commitMs.last = ms;
    commitMs.max = Math.max(commitMs.max, ms);
    commitMs.sum += ms;
    commitMs.count++;
    let bucket = COMMIT_LATENCY_BUCKETS_MS.findIndex((bound) => ms <= bound);
    if (bucket === -1) bucket = COMMIT_LATENCY_BUCKETS_MS.length;
    commitMs.buckets[bucket]! += 1;
  }

  function settle(batch: Batch): void {
    batch.index.clear();
  }

  /** The newest batch not yet settled that writes `key`, and where in its ops. */
  function latest(key: Buffer): { batch: Batch; at: number } | undefined {
    // Nothing indexed (no writes, or lazy ones only): no key string to make.
    if ((running === undefined || running.index.size === 0) && queue.every((batch) => batch.index.size === 0)) return undefined;
    const id = key.toString('latin1');
    for (let i = queue.length - 1; i >= 0; i--) {
      const at = queue[i]!.index.get(id);
      if (at !== undefined) return { batch: queue[i]!, at };
    }
    const at = running?.index.get(id);
    return at === undefined ? undefined : { batch: running!, at };
  }

  function pump(): void {
    if (running) return;
    const batch = queue[0];
    if (!batch?.ready) return;
    queue.shift();
    running = batch;
    clearTimeout(batch.timer);
    // A batch of lazy writes alone too (see the header: LevelDB fsyncs its current log only).
    counters.batches++;
    if (sync) counters.syncs++;
    counters.largestBatchOps = Math.max(counters.largestBatchOps, batch.ops.length);
    const started = now();
    let outcome: Promise<void>;
    try {
      outcome = target.batch(batch.ops, { sync });
    } catch (error) {
      outcome = Promise.reject(error);
    }
    outcome.then(
      () => {
        const ms = now() - started;
        record(ms);
        onCommit?.(batch.ops.length, ms / 1000);
        settle(batch);
        batch.resolve();
      },
      (error: unknown) => {
        counters.failedBatches++;
        settle(batch);
        batch.reject(new StoreWriteError(error));
      },
    ).finally(() => {
      running = undefined;
      pump();
    });
  }

  /** write() and writeLazily(): `ops` into a batch, which is started if it is due; its promise. */
  function submit(ops: readonly BatchOp[], lazy: boolean): Promise<void> {
    if (closed) return Promise.reject(new StoreClosedError('group commit'));
    if (ops.length === 0) return Promise.resolve();
    const batch = add(ops, lazy);
    pump();
    return batch.promise;
  }

  /** Starts a waiting batch of lazy writes now (flush, close). */
  function startLazy(): void {
    const last = queue.at(-1);
    if (last?.lazy) markReady(last);
  }

  function lastPromise(): Promise<void> | undefined {
    return queue.at(-1)?.promise ?? running?.promise;
  }

  return {
    policy,
    write: (ops) => submit(ops, false),
    writeLazily: (ops) => submit(ops, true),
    barrier() {
      promote(queue.at(-1));
      return lastPromise() ?? Promise.resolve();
    },
    whenWritten(key) {
      // latest() finds indexed batches only, which add() has promoted already.
      return latest(key)?.batch.promise;
    },
    pending(key) {
      const found = latest(key);
      if (!found) return undefined;
      const op = found.batch.ops[found.at]!;
      return op.type === 'put' ? op.value : null;
    },
    async flush() {
      startLazy();
      const last = lastPromise();
      if (last) await last.catch(() => undefined);
    },
    async close() {
      closed = true;
      startLazy();
      // Batches settle in order, so waiting for the last one covers all.
      const last = lastPromise();
      if (last) await last.catch(() => undefined);
    },
    stats() {
      return {
        ...counters,
        pendingKeys: queue.reduce((keys, batch) => keys + batch.index.size, running?.index.size ?? 0),
        commitMs: { ...commitMs, buckets: [...commitMs.buckets] },
      };
    },
  };
}
