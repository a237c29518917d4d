/**
 * One client's deliveries under the flow control (flow-control.ts explains
 * the bounds): its outgoing buffer, inflight window and queue, the wait for
 * the resend after CONNECT, and what the session store decides for a
 * persistent session's messages.
 */
import type { Client } from 'aedes';
import type { Duplex } from 'node:stream';
import { clientLimits, wrapDeliveries, type Deliver, type DeliveredPacket, type Deliveries, type QoS } from './aedes-seam/index.js';
import type { FlowOwner } from './flow-types.js';
import { publishBytes } from './publish-size.js';

interface Entry {
  packet: DeliveredPacket;
  bytes: number;
  qos: QoS;
  /** For paced deliveries (retained), the caller's callback, due once the message is written or dropped. */
  callback: (() => void) | undefined;
}

/**
 * Paced messages (retained, on SUBSCRIBE) whose stream is told to go on as
 * soon as each is handed down, while the outgoing buffer has room, before
 * one waits for its write (see #send): a burst each event-loop turn, written
 * in one flush, instead of one message and one system call a turn.
 */
const PACED_BURST = 64;

/** Whether aedes' write callback was called by writeQoS (as `packet.writeCallback()`), i.e. the PUBLISH went out. */
function isWrittenPublish(self: unknown): boolean {
  return typeof self === 'object' && self !== null && (self as { cmd?: unknown }).cmd === 'publish';
}

const unset: Deliver = () => {
  throw new Error('flow control: deliveries not wrapped');
};
const NO_DELIVERIES: Deliveries = { deliver0: unset, deliverQoS: unset };
/** The empty queue of every client until one has to wait (#enqueue replaces it); never written. */
const NO_ENTRIES: Entry[] = Object.freeze([]) as unknown as Entry[];

export class ClientFlow implements Deliveries {
  readonly #owner: FlowOwner;
  readonly #client: Client;
  readonly #conn: Duplex;
  /** Bytes handed to aedes whose write has not completed yet (see #usage). */
  #reservedBytes = 0;
  #inflight = 0;
  /** The deliveries beneath: aedes' own, as shared subscriptions watch them. */
  #inner: Deliveries = NO_DELIVERIES;
  /** Made on the first message that has to wait: an idle connection keeps none. */
  #queue: Entry[] = NO_ENTRIES;
  #head = 0;
  #queueBytes = 0;
  #closed = false;
  #watching = false;
  /** The resend after CONNECT waiting for room in the window (roomForResend). */
  #resendWaiter: (() => void) | undefined = undefined;
  /** Paced messages whose callback was not kept for their write, since the last one that was (see #send). */
  #pacedEarly = 0;

  constructor(owner: FlowOwner, client: Client, conn: Duplex) {
    this.#owner = owner;
    this.#client = client;
    this.#conn = conn;
    wrapDeliveries(client, (inner) => {
      this.#inner = inner;
      return this;
    });
  }

  deliver0(packet: DeliveredPacket, callback: () => void): void {
    this.#deliver(packet, 0, callback);
  }

  deliverQoS(packet: DeliveredPacket, callback: () => void): void {
    // aedes' deliverQoS hands QoS 0 packets to deliver0; do that here, once.
    this.#deliver(packet, packet.qos, callback);
  }

  /** Hands the packet to the deliveries beneath: deliverQoS for QoS 1/2, deliver0 for QoS 0. */
  #handDown(packet: DeliveredPacket, qos: QoS, callback: () => void): void {
    if (qos > 0) this.#inner.deliverQoS(packet, callback);
    else this.#inner.deliver0(packet, callback);
  }

  /**
   * Listens for room in the socket, its close and the end of a session's
   * resend: from the first message that has to wait, since until then there
   * is nothing to pump or to give up (an idle connection keeps no listener).
   * A closed connection is seen as aedes' `client.closed` meanwhile.
   */
  #watch(): void {
    if (this.#watching) return;
    this.#watching = true;
    this.#conn.on('drain', () => this.#pump());
    this.#conn.once('close', () => this.#close());
    // Only a message waiting for the resend after CONNECT needs its end (#resuming); 'connected' comes once.
    if (!this.#client.connected) this.#client.once('connected', () => this.#pump());
  }

  /** QoS 1/2 messages sent and not yet acknowledged. */
  get inflight(): number {
    return this.#inflight;
  }

  /** Messages waiting in this queue for room in the window or the outgoing buffer. */
  get waiting(): number {
    return this.#queue.length - this.#head;
  }

  /**
   * The client ended the flow of a QoS 1/2 message: PUBACK, PUBCOMP, or an
   * MQTT 5 PUBREC with a Reason Code of 0x80 or more, after which no PUBREL
   * and no PUBCOMP follow (4.3.3, 4.13). Its window has room again.
   */
  acknowledged(): void {
    // A client acking what it never got only widens its own window, still
    // bounded by its outgoing buffer.
    if (this.#inflight > 0) this.#inflight--;
    this.#wakeResend();
    this.#pump();
  }

  /**
   * Counts a stored QoS 1/2 PUBLISH, or a PUBREL, that the resend after
   * CONNECT (aedes-seam/resend.ts) is about to write, if the window has room;
   * false when it is full. The resent messages are in flight like live ones:
   * the Receive Maximum bounds them all [MQTT-3.3.4-9], and the live messages
   * that follow the resend find the window as the resend left it.
   */
  reserveResend(): boolean {
    const max = this.#window();
    if (max !== 0 && this.#inflight >= max) return false;
    this.#inflight++;
    return true;
  }

  /**
   * Whether a stored PUBLISH that the resend after CONNECT is about to write
   * fits an MQTT 5 client's Maximum Packet Size, as a live one must
   * (#deliver); false when it must not be sent [MQTT-3.1.2-24] (counted and
   * reported here). The resend then discards it as if sent and acknowledged
   * [MQTT-3.1.2-25]: left in the queue, it would be resent, and refused
   * again, on every connection.
   */
  admitResend(packet: DeliveredPacket): boolean {
    const limits = clientLimits(this.#client);
    if (limits.maximumPacketSize === undefined) return true;
    const bytes = publishBytes(packet, limits.version === 5);
    if (bytes <= limits.maximumPacketSize) return true;
    this.#tooLarge(packet.qos, bytes, limits.maximumPacketSize);
    return false;
  }

  /** Counts and reports a message not sent for the client's Maximum Packet Size. */
  #tooLarge(qos: QoS, bytes: number, maximumPacketSize: number): void {
    this.#owner.count('oversizeDrops');
    this.#owner.report('clientMaxPacketSize', this.#fields({ qos, bytes, maximumPacketSize }));
  }

  /** Resolves at the client's next acknowledgement, or once its connection has closed. */
  roomForResend(): Promise<void> {
    if (this.#closed || this.#conn.destroyed) return Promise.resolve();
    // The close is heard by #watch's one listener (#close), not by a listener added and removed per wait.
    this.#watch();
    return new Promise((resolve) => {
      this.#resendWaiter = resolve;
    });
  }

  /** Ends the resend's wait for room, if it waits. */
  #wakeResend(): void {
    const waiter = this.#resendWaiter;
    if (waiter === undefined) return;
    this.#resendWaiter = undefined;
    waiter();
  }

  /**
   * Whether a live QoS 0 message of `bytes` may go out now: within an MQTT 5
   * client's Maximum Packet Size and the outgoing budget. False when it is to
   * be dropped (counted and reported here). For aedes' deliveries below and
   * the fast path (aedes-seam/fast-publish.ts), which writes it itself.
   */
  admitQoS0(bytes: number): boolean {
    if (this.#closed || this.#client.closed) return false;
    const { maximumPacketSize } = clientLimits(this.#client);
    if (maximumPacketSize !== undefined && bytes > maximumPacketSize) {
      this.#tooLarge(0, bytes, maximumPacketSize);
      return false;
    }
    if (this.#fits(bytes)) return true;
    this.#owner.count('droppedQos0Messages');
    this.#owner.report('outgoingBufferFull', this.#fields({ qos: 0, dropped: true }));
    return false;
  }

  #deliver(packet: DeliveredPacket, qos: QoS, callback: () => void): void {
    if (this.#closed || this.#client.closed) {
      // Nothing can be written any more. A persistent session's QoS 1/2
      // message stays in its store for the next connection; handed to aedes,
      // it would be numbered and "sent" to the dead connection.
      if (qos > 0 && !this.#client.clean) this.#owner.later(callback);
      else this.#handDown(packet, qos, callback);
      return;
    }
    // Live messages carry the id of the broker that published them; the
    // retained ones sent on SUBSCRIBE have none (handlers/subscribe.js), and
    // their stream waits for each callback: those can be paced.
    const paced = !packet.brokerId;
    const limits = clientLimits(this.#client);
    const entry: Entry = { packet, bytes: publishBytes(packet, limits.version === 5), qos, callback: paced ? callback : undefined };
    if (qos === 0 && !paced) {
      // QoS 0 never waits, not even behind queued QoS 1/2 messages: the fast path's check, then out.
      if (this.admitQoS0(entry.bytes)) this.#send(entry);
      this.#owner.later(callback);
      return;
    }
    if (limits.maximumPacketSize !== undefined && entry.bytes > limits.maximumPacketSize) {
      this.#dropOversize(entry, limits.maximumPacketSize);
      this.#owner.later(callback);
      return;
    }
    if (this.#queue.length === this.#head && this.#canSend(entry)) {
      if (this.#claim(entry)) this.#send(entry);
    } else {
      this.#enqueue(entry);
    }
    if (!paced) this.#owner.later(callback);
  }

  /**
   * Whether `entry` is a persistent session's live QoS 1/2 message that
   * arrived while aedes is still sending the session's stored messages after
   * CONNECT (handlers/connect.js emptyQueue; `connected` is set when it is
   * done). It waits until then: the stored messages go first, in order
   * [MQTT-4.6.0-2], and the store knows which of the waiting ones that
   * stream has sent already (#claim skips them).
   */
  #resuming(entry: Entry): boolean {
    return entry.qos > 0 && entry.callback === undefined && !this.#client.clean && !this.#client.connected;
  }

  /** Output not yet taken by the network: the stream's buffer, or the bytes in flight to it, whichever is larger. */
  #usage(): number {
    return Math.max(this.#conn.writableLength, this.#reservedBytes);
  }

  #fits(bytes: number): boolean {
    const max = this.#owner.options.maxOutgoingBufferBytes;
    if (max === 0) return true;
    const used = this.#usage();
    return used === 0 || used + bytes <= max;
  }

  /**
   * Whether a QoS 1/2 or paced message that does not fit would wait for
   * ever. One left waiting is sent by #pump, on the stream's 'drain' or on
   * the write of one of this flow's own. When neither is due (nothing of its
   * own is being written, and the stream, below its high-water mark, awaits
   * no 'drain'), the bytes there are another writer's (a SUBACK, a QoS 0
   * message from the fast path) or already taken by the stream, and nothing
   * would ever send it: it goes, as into an empty buffer. (A QoS 0 message
   * does not wait: admitQoS0 keeps to #fits alone.)
   */
  #wouldStall(): boolean {
    return this.#reservedBytes === 0 && !this.#conn.writableNeedDrain;
  }

  /** The inflight window: limits.maxInflightMessages, for an MQTT 5 client at most its Receive Maximum [MQTT-3.3.4-9]; 0 = none. */
  #window(): number {
    const configured = this.#owner.options.maxInflightMessages;
    const { receiveMaximum } = clientLimits(this.#client);
    if (receiveMaximum === undefined) return configured;
    return configured === 0 ? receiveMaximum : Math.min(configured, receiveMaximum);
  }

  #windowOpen(entry: Entry): boolean {
    if (entry.qos === 0) return true;
    const max = this.#window();
    return max === 0 || this.#inflight < max;
  }

  /**
   * A message larger than the client's Maximum Packet Size: the server MUST
   * NOT send it to this client, and discards it as if sent [MQTT-3.1.2-24]
   * [MQTT-3.1.2-25]; other subscribers are not concerned. A persistent
   * session's copy leaves its queue too (claimed first, which numbers it,
   * then acknowledged in the client's stead): left there, it would be
   * resent, and refused again, on every connection.
   */
  #dropOversize(entry: Entry, maximumPacketSize: number): void {
    this.#tooLarge(entry.qos, entry.bytes, maximumPacketSize);
    const discard = this.#owner.discardOutgoing;
    if (entry.qos === 0 || !entry.packet.brokerId || this.#client.clean || discard === undefined) return;
    if (!this.#claim(entry) || entry.packet.messageId === undefined) return;
    discard(this.#client, entry.packet.messageId).catch(() => {
      // The store reports its own write failures; the copy is then resent on the next connection and dropped again.
    });
  }

  #canSend(entry: Entry): boolean {
    return (this.#fits(entry.bytes) || this.#wouldStall()) && this.#windowOpen(entry) && !this.#resuming(entry);
  }

  /**
   * Asks the session store whether to send a persistent session's live QoS
   * 1/2 message, and under which packet identifier; false when it must not
   * go (dropped by the store's queue limits, acknowledged, or already sent
   * on this connection by the resend after CONNECT). The identifier is the
   * store's: one a message already had on an earlier connection, else one no
   * queued message holds. aedes keeps an identifier the packet carries
   * (lib/qos-packet.js) instead of numbering it itself, which could repeat
   * one the client still holds from the earlier connection.
   */
  #claim(entry: Entry): boolean {
    const { packet } = entry;
    if (entry.qos === 0 || !packet.brokerId || this.#client.clean || this.#client.id === null) return true;
    const claimOutgoing = this.#owner.claimOutgoing;
    if (claimOutgoing === undefined) return true;
    const claim = claimOutgoing(this.#client, packet.brokerId, packet.brokerCounter);
    if (!claim) return false;
    if (claim.messageId !== undefined) packet.messageId = claim.messageId;
    // [MQTT-3.3.1-1]: a message sent on an earlier connection goes again as a duplicate.
    if (claim.resend === true) packet.dup = true;
    return true;
  }

  #send(entry: Entry): void {
    this.#reservedBytes += entry.bytes;
    if (entry.qos > 0) this.#inflight++;
    // A paced stream goes on without waiting for this write while the buffer
    // has room, up to PACED_BURST messages: aedes calls `written` a turn
    // later (its write callbacks are deferred), so waiting for each would
    // send one retained message a turn. The buffer's bound still holds: the
    // message is counted in #reservedBytes until written, and one that does
    // not fit waits in the queue as before.
    const callback = entry.callback;
    const early = callback !== undefined && this.#pacedEarly < PACED_BURST && this.#roomLeft();
    if (early) {
      entry.callback = undefined;
      this.#pacedEarly++;
    }
    // aedes calls this once the bytes are in the stream (at once when it had
    // room, after 'drain' when full), or when it decided not to send.
    const flow = this;
    this.#handDown(entry.packet, entry.qos, function written(this: unknown) {
      flow.#reservedBytes -= entry.bytes;
      if (entry.qos > 0 && !isWrittenPublish(this) && flow.#inflight > 0) flow.#inflight--;
      if (entry.callback !== undefined) {
        flow.#pacedEarly = 0;
        entry.callback();
      }
      flow.#pump();
    });
    // After the hand-down, so that the stream's next message comes after this one.
    if (early) queueMicrotask(callback);
  }

  /** Whether the outgoing buffer can take more (maxOutgoingBufferBytes; 0 = unbounded). */
  #roomLeft(): boolean {
    const max = this.#owner.options.maxOutgoingBufferBytes;
    return max === 0 || this.#usage() < max;
  }

  #enqueue(entry: Entry): void {
    if (this.#resuming(entry)) {
      this.#owner.count('resumeWaits');
    } else if (!this.#fits(entry.bytes)) {
      this.#owner.count('bufferFullWaits');
      this.#owner.report('outgoingBufferFull', () => this.#fields({ qos: entry.qos, dropped: false }));
    } else {
      // Routine under load (nearly every message of a busy QoS 1 flow): the line's fields are made only when it is written.
      this.#owner.count('inflightWaits');
      this.#owner.report('maxInflight', () => this.#fields({ maxInflightMessages: this.#owner.options.maxInflightMessages, window: this.#window() }));
    }
    this.#watch();
    if (this.#queue === NO_ENTRIES) this.#queue = [];
    this.#queue.push(entry);
    this.#queueBytes += entry.bytes;
    this.#owner.queued(1, entry.bytes);
    const { maxQueuedMessagesPerClient: maxMessages, maxQueuedBytesPerClient: maxBytes } = this.#owner.options;
    let dropped = 0;
    while (
      (maxMessages > 0 && this.#queue.length - this.#head > maxMessages) ||
      (maxBytes > 0 && this.#queueBytes > maxBytes && this.#queue.length > this.#head)
    ) {
      const victim = this.#shift();
      // A persistent session's QoS 1/2 message stays in its session store;
      // a retained one sent on SUBSCRIBE was never stored there (see #1003).
      this.#owner.count(this.#client.clean || victim.callback ? 'droppedQueuedMessages' : 'deferredQueuedMessages');
      if (victim.callback) this.#owner.later(victim.callback);
      dropped++;
    }
    if (dropped > 0) {
      this.#owner.report('outgoingQueueFull', this.#fields({ maxQueuedMessagesPerClient: maxMessages, maxQueuedBytesPerClient: maxBytes, persistent: !this.#client.clean }));
    }
  }

  #shift(): Entry {
    const entry = this.#queue[this.#head] as Entry;
    this.#queue[this.#head] = undefined as unknown as Entry;
    this.#head++;
    this.#queueBytes -= entry.bytes;
    this.#owner.queued(-1, entry.bytes);
    // Compact once the consumed prefix dominates, so shifting stays O(1) amortized.
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
    return entry;
  }

  #pump(): void {
    while (!this.#closed && this.#queue.length > this.#head) {
      const entry = this.#queue[this.#head] as Entry;
      if (!this.#canSend(entry)) return;
      this.#shift();
      // Dropped from the session store meanwhile (its limits), or sent by
      // the resend after CONNECT: skipped, counted there.
      if (this.#claim(entry)) this.#send(entry);
    }
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wakeResend();
    while (this.#queue.length > this.#head) {
      const entry = this.#shift();
      // Paced streams must finish; the message goes nowhere, like any other for a closed client.
      if (entry.callback) this.#owner.later(entry.callback);
    }
  }

  #fields(extra: Record<string, unknown>): Record<string, unknown> {
    return { clientId: this.#client.id, bufferedBytes: this.#usage(), queued: this.#queue.length - this.#head, ...extra };
  }
}
