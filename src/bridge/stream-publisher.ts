/**
 * JetStream publishes with many in flight over the bridge's NATS connection.
 *
 * A JetStream publish is a core NATS publish with a reply subject: the
 * stream that takes the subject answers there with a PubAck, `{"stream",
 * "seq", "duplicate"?}`, or with `{"error": {code, err_code, description}}`;
 * when nothing takes the subject the server answers with a 503 status
 * ("no responders", also while a stream elects a leader). Each message
 * here goes out with a reply subject of its own under one inbox
 * subscription, and the answer is matched by that token.
 *
 * Why not nats.js' `JetStreamClient.publish`: it is a request per message,
 * each with a promise chain, a timer of its own and, when it settles, an
 * Error built with a stack trace even on success (RequestOne.cancel in
 * @nats-io/nats-core 3.4.0). Under `npm run bench:bridge` with
 * BENCH_CPU_PROF, that Error alone was 11% of the daemon's CPU while it
 * exported. nats.js has nothing like the Go client's PublishAsync, which is
 * what this is.
 *
 * Time-outs: every publish has the same time-out, so they expire in the order
 * they were sent; one timer, armed for the oldest, covers them all. A
 * dropped connection fails what is in flight at once: a PubAck sent before
 * the drop is lost with it, and waiting out the time-out would hold the
 * sender up for that long after every reconnect.
 */
import { createInbox, InvalidArgumentError, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/transport-node';

/**
 * The message itself is refused, for good: larger than the server's
 * max_payload (nats.js checks that before it leaves, against the server's
 * INFO) or than the stream's max_msg_size (the PubAck says so). Sending it
 * again cannot work; every other error may.
 */
export class MessageRefusedError extends Error {}

/** JSStreamMessageExceedsMaximumErr (nats-server's errors.json): "message size exceeds maximum allowed". */
const MESSAGE_EXCEEDS_MAXIMUM = 10054;

/** What a publish came to: `duplicate` when the stream already had a message with its Nats-Msg-Id. */
export type PublishDone = (error: Error | undefined, duplicate: boolean) => void;

/** What the sender needs of JetStream: one message to the stream, and its outcome. */
export interface StreamPublisher {
  publish(subject: string, payload: Uint8Array, headers: MsgHdrs, done: PublishDone): void;
}

interface Pending {
  done: PublishDone;
  /** performance.now() after which the outcome is unknown. */
  deadline: number;
}

/** The PubAck's JSON [JetStream API: PubAck]. */
interface PubAckJson {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  error?: { code?: number; err_code?: number; description?: string };
}

export class JetStreamPublisher implements StreamPublisher {
  readonly #nc: NatsConnection;
  readonly #timeoutMs: number;
  #inbox = '';
  #subscription: Subscription | undefined;
  #next = 0;
  /** In the order sent, which is the order of the deadlines (Maps iterate in insertion order). */
  readonly #pending = new Map<number, Pending>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Between a 'disconnect' and the 'reconnect': nats.js drops what is published meanwhile when it dials again. */
  #disconnected = false;

  constructor(nc: NatsConnection, options: { timeoutMs: number }) {
    this.#nc = nc;
    this.#timeoutMs = options.timeoutMs;
    void this.#watch();
  }

  get inflight(): number {
    return this.#pending.size;
  }

  publish(subject: string, payload: Uint8Array, headers: MsgHdrs, done: PublishDone): void {
    if (this.#closed || this.#disconnected) {
      const why = this.#closed ? 'the JetStream publisher is closed' : 'not connected to NATS';
      queueMicrotask(() => done(new Error(why), false));
      return;
    }
    const id = this.#next++;
    try {
      this.#subscribe();
      this.#nc.publish(subject, payload, { reply: `${this.#inbox}.${id.toString(36)}`, headers });
    } catch (error) {
      // Not sent: a closed or draining connection (worth trying again), or the message refused.
      const refused = error instanceof InvalidArgumentError && !this.#nc.isClosed();
      const reported = refused ? new MessageRefusedError(`NATS refused the message (${payload.length} bytes): ${error.message}`) : (error as Error);
      queueMicrotask(() => done(reported, false));
      return;
    }
    this.#pending.set(id, { done, deadline: performance.now() + this.#timeoutMs });
    this.#timer ??= setTimeout(() => this.#expire(), this.#timeoutMs);
  }

  /** Every publish still waiting fails (its outcome unknown); later ones fail at once. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#subscription?.unsubscribe();
    this.#subscription = undefined;
    this.#failAll(new Error('the JetStream publisher closed'));
  }

  /** The inbox subscription, made again if nats.js closed it (a permissions error on it). */
  #subscribe(): void {
    if (this.#subscription && !this.#subscription.isClosed()) return;
    this.#inbox = createInbox();
    this.#subscription = this.#nc.subscribe(`${this.#inbox}.*`, {
      callback: (error, msg) => {
        if (error) {
          // The server refused the subscription: no answer will come for anything in flight.
          this.#failAll(error);
          return;
        }
        const id = parseInt(msg.subject.slice(this.#inbox.length + 1), 36);
        const pending = this.#pending.get(id);
        if (!pending) return; // Timed out already: the sender has moved on, and resends under the same id.
        this.#pending.delete(id);
        let outcome: { error?: Error; duplicate: boolean };
        try {
          outcome = pubAck(msg.headers?.code ?? 0, msg.data);
        } catch (parseError) {
          outcome = { error: new Error(`JetStream answered with an unreadable PubAck: ${(parseError as Error).message}`), duplicate: false };
        }
        pending.done(outcome.error, outcome.duplicate);
      },
    });
  }

  async #watch(): Promise<void> {
    // Ends when the connection closes.
    for await (const status of this.#nc.status()) {
      if (this.#closed) break;
      if (status.type === 'disconnect') {
        this.#disconnected = true;
        this.#failAll(new Error('connection to NATS lost'));
      } else if (status.type === 'reconnect') {
        this.#disconnected = false;
      }
    }
  }

  #expire(): void {
    this.#timer = undefined;
    const now = performance.now();
    for (const [id, pending] of this.#pending) {
      if (pending.deadline > now) {
        this.#timer = setTimeout(() => this.#expire(), Math.max(1, pending.deadline - now));
        return;
      }
      this.#pending.delete(id);
      pending.done(new Error(`no JetStream acknowledgement within ${this.#timeoutMs} ms`), false);
    }
  }

  #failAll(error: Error): void {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const { done } of pending) done(error, false);
  }
}

/** The outcome an answer on a reply subject gives: a status code (0 for none) and the body. */
export function pubAck(status: number, data: Uint8Array): { error?: Error; duplicate: boolean } {
  if (status === 503) return { error: new Error('no responders: no JetStream stream takes the subject, or it has no leader'), duplicate: false };
  if (status >= 400) return { error: new Error(`JetStream answered with status ${status}`), duplicate: false };
  const ack = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8')) as PubAckJson;
  if (ack.error) {
    const { description = 'unknown error', err_code: code } = ack.error;
    const message = `JetStream refused the message: ${description}${code ? ` (err_code ${code})` : ''}`;
    return { error: code === MESSAGE_EXCEEDS_MAXIMUM ? new MessageRefusedError(message) : new Error(message), duplicate: false };
  }
  if (typeof ack.stream !== 'string' || ack.stream === '' || typeof ack.seq !== 'number') {
    return { error: new Error('JetStream answered without a stream and sequence'), duplicate: false };
  }
  return { duplicate: ack.duplicate === true };
}
