/**
 * Sends the outbox to JetStream: a window of publishes in flight (a
 * JetStream publish is a request, so throughput comes from the window), in
 * outbox order, each with `Nats-Msg-Id: <site>:<outbox sequence>` so that a
 * resend is dropped by the stream as a duplicate [JetStream duplicate
 * window]. An entry leaves the outbox only on its PubAck (one flagged
 * duplicate counts: the stream has it).
 *
 * Any failure, a time-out, "no responders" while a stream elects a leader,
 * a dropped connection, means the
 * outcome is unknown: nothing is given up. The sender stops taking new
 * entries, lets what is in flight settle, then starts again from the oldest
 * entry still in the outbox after a jittered, growing pause, so order per
 * publisher holds and each unacknowledged entry goes again under its id.
 * The one exception is a message refused for good (larger than the server's
 * max_payload or the stream's max_msg_size, see MessageRefusedError): it is
 * dropped, counted and logged, or it would hold up every entry behind it for
 * ever.
 */
import { MsgHdrsImpl, type MsgHdrs } from '@nats-io/transport-node';
import type { Logger } from '../observability/logger.js';
import type { GroupCommit } from '../persistence/index.js';
import type { Outbox, OutboxRecord } from './outbox.js';
import { HEADER, writeMetadataHeaders } from './metadata.js';
import { MessageRefusedError, type StreamPublisher } from './stream-publisher.js';
import { RateLimitedLog } from '../util/rate-limited-log.js';
import type { SubjectCache } from './subjects.js';

export interface SenderOptions {
  siteId: string;
  /** The topic → subject mapping (subjects.ts), shared with the export tap. */
  subjects: SubjectCache;
  window: number;
  /** Awaited before entries are sent again after a failure (the bridge checks the stream there). */
  beforeResend?: () => Promise<void>;
}

export interface SenderStats {
  exported: number;
  /** PubAcks flagged duplicate: the stream already had the message (a resend after an unknown outcome). */
  duplicates: number;
  /** Entries sent again after a failure or a reconnect. */
  resent: number;
  publishFailures: number;
  /** Entries refused for good (larger than the server's max_payload or the stream's max_msg_size): dropped from the outbox. */
  refused: number;
  inflight: number;
}

const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5000;

export class Sender {
  readonly #outbox: Outbox;
  readonly #commit: GroupCommit;
  readonly #options: SenderOptions;
  readonly #log: Logger;
  #publisher: StreamPublisher | undefined;
  #cursor: number;
  /** Highest sequence ever handed to JetStream: what is at or below it is a resend. */
  #highestSent = 0;
  readonly #inflight = new Set<number>();
  #reading = false;
  #again = false;
  #generation = 0;
  /** Entries up to this sequence are known to be on disk (recovered, or added before a barrier passed). */
  #committed: number;
  #rewinding = false;
  #retryMs = RETRY_MIN_MS;
  #retryTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #counters = { exported: 0, duplicates: 0, resent: 0, publishFailures: 0, refused: 0 };
  /** A client can publish oversized messages at will: one line per 10 s. */
  readonly #rateLimited: RateLimitedLog;
  readonly #idle = new Set<() => void>();

  constructor(outbox: Outbox, commit: GroupCommit, options: SenderOptions, logger: Logger) {
    this.#outbox = outbox;
    this.#commit = commit;
    this.#options = options;
    this.#log = logger.child({ component: 'bridge' });
    this.#rateLimited = new RateLimitedLog(this.#log);
    this.#cursor = outbox.head;
    this.#committed = outbox.lastAdded;
  }

  /** JetStream is reachable (again): send from the oldest entry on. */
  attach(publisher: StreamPublisher): void {
    this.#generation++;
    this.#publisher = publisher;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#rewinding = false;
    this.#cursor = this.#outbox.head;
    void this.#pump();
  }

  /** The connection is gone: nothing new goes out until attach(). */
  detach(): void {
    this.#publisher = undefined;
  }

  /** New entries may be in the outbox. */
  wake(): void {
    void this.#pump();
  }

  stats(): SenderStats {
    return { ...this.#counters, inflight: this.#inflight.size };
  }

  /** Resolves once nothing is in flight and the outbox is empty, or when `deadline` (ms, performance.now()) passes. */
  async drain(deadline: number): Promise<void> {
    while (performance.now() < deadline && (this.#inflight.size > 0 || (this.#publisher !== undefined && this.#outbox.depth > 0))) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.max(1, deadline - performance.now()));
        function done() {
          clearTimeout(timer);
          resolve();
        }
        this.#idle.add(done);
      });
    }
  }

  stop(): void {
    this.#stopped = true;
    this.#publisher = undefined;
    clearTimeout(this.#retryTimer);
  }

  async #pump(): Promise<void> {
    if (this.#reading) {
      // The loop running now may have read before this entry landed: it goes round once more.
      this.#again = true;
      return;
    }
    this.#reading = true;
    this.#again = false;
    try {
      while (this.#publisher && !this.#rewinding && !this.#stopped && this.#inflight.size < this.#options.window) {
        if (this.#cursor > this.#committed) {
          // Entries added since the last look may be in a batch being written: read after it.
          const added = this.#outbox.lastAdded;
          await this.#commit.barrier().catch(() => undefined);
          this.#committed = added;
        }
        const generation = this.#generation;
        const records = await this.#outbox.read(this.#cursor, this.#options.window - this.#inflight.size);
        // attach() reset the cursor while this read ran: what it read may skip entries; read again.
        if (generation !== this.#generation) continue;
        if (records.length === 0) break;
        for (const record of records) {
          const publisher = this.#publisher;
          if (!publisher || this.#rewinding || this.#stopped) break;
          this.#cursor = record.seq + 1;
          this.#send(publisher, record);
        }
      }
    } catch (error) {
      this.#log.warn({ err: error }, 'could not read the outbox; retrying');
      this.#failed();
    } finally {
      this.#reading = false;
      this.#settled();
    }
    if (this.#again) void this.#pump();
  }

  #send(publisher: StreamPublisher, record: OutboxRecord): void {
    const mapped = this.#options.subjects.subjectOf(record.topic);
    if (!mapped.ok) {
      // Checked when the message entered; a prefix changed since would end here.
      this.#log.warn({ topic: record.topic, reason: mapped.reason }, 'outbox entry has no subject; dropped');
      this.#outbox.remove(record.seq);
      return;
    }
    if (record.seq <= this.#highestSent) this.#counters.resent++;
    else this.#highestSent = record.seq;
    this.#inflight.add(record.seq);
    publisher.publish(mapped.subject, record.payload, this.#headers(record), (error, duplicate) => {
      this.#inflight.delete(record.seq);
      if (error instanceof MessageRefusedError) {
        this.#outbox.remove(record.seq);
        this.#counters.refused++;
        this.#rateLimited.warn('refused', { err: error.message, topic: record.topic.slice(0, 200), refused: this.#counters.refused }, 'NATS refused an outbox message for good; dropped');
        this.#settled();
        void this.#pump();
        return;
      }
      if (error) {
        this.#counters.publishFailures++;
        if (!this.#rewinding) this.#log.warn({ err: error.message, seq: record.seq }, 'JetStream publish failed; resending from the oldest unacknowledged message');
        this.#failed();
        return;
      }
      this.#outbox.remove(record.seq);
      this.#counters.exported++;
      if (duplicate) this.#counters.duplicates++;
      this.#retryMs = RETRY_MIN_MS;
      this.#settled();
      void this.#pump();
    });
  }

  /** Who published it and how, for the importing sites (the names and their encoding: metadata.ts). */
  #headers(record: OutboxRecord): MsgHdrs {
    // fromRecord takes the values as they are: each here is digits, the id (site id and a
    // number) or the site id, which the config schema limits to [A-Za-z0-9_-]. MsgHdrs.set
    // would check each name and value again, for a tenth of an outbox drain's CPU.
    const h = MsgHdrsImpl.fromRecord({
      // The stream drops a message whose id it has seen within its duplicate window [JetStream: Nats-Msg-Id].
      'Nats-Msg-Id': [`${this.#options.siteId}:${record.seq}`],
      [HEADER.origin]: [this.#options.siteId],
      [HEADER.qos]: [String(record.qos)],
      [HEADER.retain]: [record.retain ? '1' : '0'],
      [HEADER.time]: [String(record.time)],
    });
    // MQTT 5.0 properties carry what clients wrote: set() checks and encodes them.
    if (record.metadata) writeMetadataHeaders(h, record.metadata);
    return h;
  }

  /** An outcome is unknown: stop, let the window settle, start again from the oldest entry. */
  #failed(): void {
    this.#rewinding = true;
    this.#settled();
  }

  /** Called whenever something in flight settled: finishes a rewind once nothing is. */
  #settled(): void {
    if (this.#rewinding && this.#inflight.size === 0 && !this.#reading && this.#retryTimer === undefined && !this.#stopped) {
      const delay = jittered(this.#retryMs);
      this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
      this.#retryTimer = setTimeout(() => {
        const generation = this.#generation;
        // Entries older than the stream's duplicate window are checked against it first (reconcile.ts).
        (this.#options.beforeResend?.() ?? Promise.resolve()).then(
          () => {
            this.#retryTimer = undefined;
            if (generation !== this.#generation || this.#stopped) return;
            this.#cursor = this.#outbox.head;
            this.#rewinding = false;
            void this.#pump();
          },
          (error: unknown) => {
            // Not checked: resending could store twice; try again after the next pause.
            this.#retryTimer = undefined;
            this.#log.warn({ err: (error as Error).message }, 'could not check the stream before resending; retrying');
            this.#settled();
          },
        );
      }, delay);
    }
    if (this.#inflight.size === 0 && (this.#outbox.depth === 0 || !this.#publisher)) {
      for (const wake of this.#idle) wake();
      this.#idle.clear();
    }
  }
}

/** `ms` spread over half to one and a half times itself, so that sites do not retry in step. */
export function jittered(ms: number): number {
  return Math.round(ms * (0.5 + Math.random()));
}
