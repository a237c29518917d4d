/**
 * Per-client bounds on persistent sessions' queues, the client connected or
 * not. Overflow policy: drop the client's oldest queued PUBLISH until the
 * queue fits (fresh data wins on a sensor network); PUBREL entries, QoS 2
 * handshakes in progress, are never dropped. While the client is connected
 * only messages not sent yet are dropped (ClientQueue.oldestUnsentPublish):
 * one in flight keeps its packet identifier until acknowledged, and one aedes
 * is about to send must still be there when it calls outgoingUpdate.
 * Each drop is counted; a warning is logged at most once per 10 s per client.
 */
import type { Logger } from '../observability/logger.js';
import type { BatchOp } from './group-commit.js';
import { outgoingKey } from './keys.js';
import type { ClientQueue } from './outgoing-queues.js';

const LOG_INTERVAL_MS = 10_000;

export interface QueueLimits {
  /** PUBLISH entries per client; 0 = unlimited. */
  maxMessages: number;
  /** Encoded bytes of PUBLISH entries per client; 0 = unlimited. */
  maxBytes: number;
}

export class QueueLimiter {
  readonly #limits: QueueLimits;
  readonly #log: Logger;
  readonly #now: () => number;
  // Drops not yet reported, and when the client's last warning went out.
  readonly #unreported = new Map<string, { dropped: number; loggedAt: number | undefined }>();
  droppedMessages = 0;
  overflows = 0;

  constructor(limits: QueueLimits, log: Logger, now: () => number) {
    this.#limits = limits;
    this.#log = log;
    this.#now = now;
  }

  /**
   * Drops the oldest messages of an over-limit queue; returns how many. With
   * `online`, only messages not sent yet: the queue may stay over its limit
   * by the messages in flight.
   */
  enforce(clientId: string, queue: ClientQueue, ops: BatchOp[], online = false): number {
    const { maxMessages, maxBytes } = this.#limits;
    let dropped = 0;
    while ((maxMessages > 0 && queue.publishCount > maxMessages) || (maxBytes > 0 && queue.publishBytes > maxBytes)) {
      const victim = online ? queue.oldestUnsentPublish() : queue.oldestPublish();
      if (!victim) break;
      queue.remove(victim);
      ops.push({ type: 'del', key: outgoingKey(clientId, victim.seq) });
      dropped++;
    }
    if (dropped > 0) this.#report(clientId, dropped, queue.publishCount, online);
    return dropped;
  }

  /** Forgets a client whose session ended. */
  forget(clientId: string): void {
    this.#unreported.delete(clientId);
  }

  #report(clientId: string, dropped: number, queued: number, online: boolean): void {
    this.droppedMessages += dropped;
    this.overflows++;
    const now = this.#now();
    const state = this.#unreported.get(clientId) ?? { dropped: 0, loggedAt: undefined };
    state.dropped += dropped;
    if (state.loggedAt === undefined || now - state.loggedAt >= LOG_INTERVAL_MS) {
      this.#log.warn(
        { clientId, online, dropped: state.dropped, maxMessages: this.#limits.maxMessages, maxBytes: this.#limits.maxBytes, queued },
        online ? 'session queue full: dropped the oldest messages not sent yet' : 'offline queue full: dropped the oldest messages',
      );
      state.dropped = 0;
      state.loggedAt = now;
    }
    this.#unreported.set(clientId, state);
  }
}
