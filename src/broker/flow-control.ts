/**
 * Slow consumers never hold up anyone else.
 *
 * Why aedes stalls everyone: each publish is one mqemitter emit, and an
 * emit holds one of `concurrency` (100) slots until the delivery callback of
 * every matching subscriber has returned. A delivery's callback returns only
 * once its bytes are written, and when the socket is full that means after
 * 'drain' (lib/write.js → client.waitForDrain, up to `drainTimeout`, 60 s).
 * So a subscriber that stops reading pins one slot per message it matches;
 * a hundred messages later every slot is pinned and every emit, to every
 * client, waits in mqemitter's queue until aedes cuts the slow client off.
 * The publisher is held too: aedes reads its next packet only when its
 * publish has completed.
 *
 * Here every delivery callback returns within one event-loop turn, whatever
 * the subscriber's socket does, and each client's output is bounded instead:
 *
 * - Outgoing buffer (`maxOutgoingBufferBytes`): bytes handed to the client's
 *   stream and not yet taken by the network. A message that does not fit is
 *   not written: QoS 0 is dropped (counted); QoS 1/2 waits in the client's
 *   queue. An empty buffer always takes one message, however large.
 * - Inflight window (`maxInflightMessages`): QoS 1/2 messages sent and not
 *   yet acknowledged (PUBACK, or PUBCOMP for QoS 2, or an MQTT 5 PUBREC with
 *   an error Reason Code, which ends the flow: 4.9). For an MQTT 5
 *   client the window is at most its Receive Maximum [MQTT-3.3.4-9] (aedes
 *   2 ignores it, #829). Further ones wait in the queue; aedes itself sends
 *   without limit.
 * - An MQTT 5 client's Maximum Packet Size: a PUBLISH larger than it is not
 *   sent to that client [MQTT-3.1.2-24], and for a persistent session is
 *   removed from its queue, as it never can be sent [MQTT-3.1.2-25]; counted
 *   (aedes 2 sends it, and the client disconnects).
 * - Queue (`maxQueuedMessagesPerClient`, `maxQueuedBytesPerClient`): QoS 1/2
 *   messages waiting for room, in order. When full the oldest is dropped
 *   (fresh data wins, as in the persistent offline queue). For a persistent
 *   session this is the store's decision: aedes stored every QoS 1/2 message
 *   in the session's queue before delivering it, and that queue has the same
 *   limits, also while the client is connected, its messages in flight
 *   included: it drops its oldest messages not sent yet (queue-store.ts, queue-limits.ts).
 *   So what this queue drops (counted as deferred) the store has normally
 *   dropped already; a copy still there goes out on reconnect. Before sending
 *   a persistent session's message this asks the store (claimOutgoing)
 *   whether to send it and under which packet identifier: the store owns the
 *   identifiers of a session's messages (see client-flow.ts #claim).
 * - While a persistent session resumes (aedes sends its stored messages after
 *   CONNECT), its live QoS 1/2 messages wait here, and go once aedes is done
 *   (see client-flow.ts #resuming).
 * - A client whose socket stays full for `drainTimeout` is disconnected by
 *   aedes' own timer, which this counts and logs.
 *
 * Retained messages sent on SUBSCRIBE come from a stream that waits for each
 * callback: those wait for room instead of being dropped, which paces the
 * stream to the client without holding anyone else.
 */
import type { Client } from 'aedes';
import type { Duplex } from 'node:stream';
import type { LogFields } from '../util/rate-limited-log.js';
import { TurnCallbacks } from '../util/turn-callbacks.js';
import { ClientFlow } from './client-flow.js';
import type { ClaimOutgoing, DiscardOutgoing, FlowControlOptions, FlowControlStats, FlowCounter, FlowEvent, FlowEventSink, FlowOwner } from './flow-types.js';

export { ClientFlow } from './client-flow.js';
export type { ClaimOutgoing, DiscardOutgoing, FlowControlOptions, FlowControlStats, FlowEvent, FlowEventSink } from './flow-types.js';

/** later()'s deferred call: no closure per callback. */
function call(_error: Error | null, callback: () => void): void {
  callback();
}

export class FlowControl implements FlowOwner {
  readonly #options: FlowControlOptions;
  readonly #report: FlowEventSink;
  readonly #stats: Record<FlowCounter, number> = {
    droppedQos0Messages: 0,
    droppedQueuedMessages: 0,
    deferredQueuedMessages: 0,
    bufferFullWaits: 0,
    inflightWaits: 0,
    resumeWaits: 0,
    slowClientDisconnects: 0,
    oversizeDrops: 0,
  };
  #queuedMessages = 0;
  #queuedBytes = 0;
  readonly #claimOutgoing: ClaimOutgoing | undefined;
  readonly #discardOutgoing: DiscardOutgoing | undefined;
  readonly #later = new TurnCallbacks();

  constructor(options: FlowControlOptions, report: FlowEventSink, claimOutgoing?: ClaimOutgoing, discardOutgoing?: DiscardOutgoing) {
    this.#options = options;
    this.#report = report;
    this.#claimOutgoing = claimOutgoing;
    this.#discardOutgoing = discardOutgoing;
  }

  /** Counts and reports a client aedes cuts off after drainTimeout: one function for all clients (limits.ts passes it to onDrainTimeout). */
  readonly slowClient = (client: Client): void => {
    this.count('slowClientDisconnects');
    this.report('slowClient', {
      clientId: client.id,
      drainTimeoutMs: this.#options.drainTimeoutMs,
      bufferedBytes: client.conn.writableLength,
    });
  };

  /** For ClientFlow: the session store's removal of a message, if there is a store. */
  get discardOutgoing(): DiscardOutgoing | undefined {
    return this.#discardOutgoing;
  }

  get options(): FlowControlOptions {
    return this.#options;
  }

  /** For ClientFlow: the session store's lookup, if there is one. */
  get claimOutgoing(): ClaimOutgoing | undefined {
    return this.#claimOutgoing;
  }

  stats(): FlowControlStats {
    return { ...this.#stats, queuedMessages: this.#queuedMessages, queuedBytes: this.#queuedBytes };
  }

  /** For ClientFlow: one more of `key`. */
  count(key: FlowCounter): void {
    this.#stats[key]++;
  }

  /** For ClientFlow: a message entered (+1) or left (-1) a client's queue. */
  queued(messages: 1 | -1, bytes: number): void {
    this.#queuedMessages += messages;
    this.#queuedBytes += messages * bytes;
  }

  /** For ClientFlow: `callback` after this turn's I/O, with the turn's others from one setImmediate. */
  later(callback: () => void): void {
    this.#later.defer(call, null, callback, undefined);
  }

  /** For ClientFlow: an event worth a counter and a log line. */
  report(event: FlowEvent, fields: LogFields): void {
    this.#report(event, fields);
  }

  /**
   * Takes over a new client's deliveries. Call right after aedes created it
   * and before anything wraps deliver0/deliverQoS again (subscriptions
   * capture them at SUBSCRIBE time). Returns the client's flow (its acknowledged() is the hook for acknowledgements).
   */
  attach(client: Client, conn: Duplex): ClientFlow {
    return new ClientFlow(this, client, conn);
  }
}
