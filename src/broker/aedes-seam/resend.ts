/**
 * The resend of a persistent session's stored messages after CONNECT, many
 * messages per event-loop turn.
 *
 * aedes (handlers/connect.js emptyQueue) pipes persistence.outgoingStream
 * through a transform that takes one message at a time: outgoingUpdate, then
 * emptyQueueFilter (ACL, expiry, Clean Start), then lib/write.js, whose
 * callback, the transform's `next`, comes in setImmediate. So each message
 * costs an event-loop iteration and, as the write coalescer flushes once per
 * turn (write-coalescer.ts), its own socket write: a backlog of 20,000 QoS 1
 * messages went out at ~11k msg/s, a tenth of Mosquitto's rate
 * (bench/persistence-resend.ts).
 *
 * Here the stream aedes is handed for that call does emptyQueue's work itself,
 * the same steps in the same order with aedes' own QoSPacket and write (or,
 * for a stored QoS 1/2 PUBLISH in its usual shape from the store, the same
 * bytes written in one buffer: storedFrame), and pushes nothing: aedes' transform sees no message, and aedes goes on when it
 * ends (the client becomes `connected`, and the live messages held meanwhile
 * go, client-flow.ts #resuming). What changes is only when the next message
 * starts: right after the previous one is in the socket's stream, instead of
 * on the next turn. It waits for a write's callback when the socket is full
 * (aedes calls it after 'drain') and every BATCH messages (one turn, so that
 * other connections are served during a long backlog), and ends once every
 * callback came. The store (src/persistence) hands the messages over a
 * chunk at a time and records a QoS 1 message's identifier without a
 * promise (outgoingResendChunks, outgoingUpdateNow): no stream step or
 * promise per message; another persistence is read through its stream. What
 * stays as aedes does it, per message:
 * - order: one message at a time, each one's outgoingUpdate resolved before
 *   it is written [MQTT-4.6.0-2]; so a QoS 2 message's identifier is stored
 *   before its PUBLISH leaves (the store's record waits for its write);
 * - the packet identifier and DUP flag the stream gives (QoSPacket keeps a
 *   packet's identifier, numbers one that has none);
 * - the Message Expiry Interval set to what remains, and an expired message
 *   cleared instead of sent [MQTT-3.3.2-5] [MQTT-3.3.2-6]; authorizeForward
 *   asked for each PUBLISH, a refused one cleared; a Clean Start session's
 *   queue cleared (`clean`, `_cleanStart`) [MQTT-3.1.2-4];
 * - errors: outgoingUpdate's reported on the client and the message skipped;
 *   outgoingClearMessageId's and write's end the resend with that error, as
 *   they end aedes' pipeline.
 * Unlike aedes' resend, it keeps to the client's inflight window: aedes
 * writes the stored queue without one (the flow control wraps deliverQoS,
 * which the resend does not go through), so a backlog went out whatever the
 * client's Receive Maximum [MQTT-3.3.4-9]. Each stored QoS 1/2 PUBLISH and
 * each PUBREL takes a slot of the window the flow control keeps for live
 * messages (limits.maxInflightMessages, at most the Receive Maximum) before
 * it is written, and when there is none the resend waits for the client's
 * next acknowledgement (or its close). A client that acknowledges nothing
 * gets no more than its window, and stays resuming (its live messages wait
 * behind the backlog, in order) until it acknowledges or goes. Nor does
 * aedes' resend heed an MQTT 5 client's Maximum Packet Size: here a stored
 * PUBLISH larger than it is not sent but cleared, as if sent and
 * acknowledged [MQTT-3.1.2-25], as the flow control does with a live one
 * (queued while the client was away, it would otherwise go out on every
 * connection, and a client that enforces its maximum would refuse it each
 * time).
 *
 * aedes' other caller of outgoingStream, Client#emptyOutgoingQueue (a session
 * wiped on close), gets the persistence's stream unchanged: the resend is
 * told apart by the client's state, CONNACK sent and not yet `connected`
 * (handlers/connect.js: doConnack, then emptyQueue, then `connected`).
 * Canary: test/aedes-canaries-v5.test.ts, one stored message per turn. A
 * frame written here goes where lib/write.js writes (the connection, through
 * the write coalescer and the guards on it), told to the written-PUBLISH
 * tap as packet-writes.ts tells it; a full socket waits for aedes'
 * waitForDrain, as lib/write.js does, so the drain timeout holds.
 */
import { Readable, type Writable } from 'node:stream';
import type { Aedes, Client } from 'aedes';
import { publishRewrite, publishTap, type PublishTap } from './packet-writes.js';
import { encodePublish } from './packet-encoding.js';
import { loadAedesWrites, type AedesWrite, type QoSPacketClass } from './aedes-lib.js';
import type { DeliveredPacket } from './client.js';

/** Messages written back to back before the resend waits one turn. */
export const RESEND_BATCH = 512;

type Packet = Record<string, unknown> & { cmd?: string; messageExpiry?: number; properties?: Record<string, unknown> };
type WriteDone = (error: Error | null) => void;

/** A resend's messages a chunk at a time: next() answers the next chunk, undefined once all were. */
interface Chunks {
  next(): Promise<Packet[] | undefined>;
  /** Lets go of what the source holds once the resend ends early. */
  destroy?(): void;
}

interface ResendPersistence {
  outgoingStream(client: Client): Readable;
  outgoingUpdate(client: Client, packet: Packet): Promise<unknown>;
  outgoingClearMessageId(client: Client, packet: Packet): Promise<unknown>;
  /**
   * The store's (src/persistence/level-persistence.ts): outgoingStream's
   * resend a chunk at a time, and outgoingUpdate with no promise when
   * nothing waits for the disk (undefined then). Without them (another
   * persistence), the stream and a promise per message.
   */
  outgoingResendChunks?(client: Client): Chunks | undefined;
  outgoingUpdateNow?(client: Client, packet: Packet): Promise<unknown> | undefined;
}

/** The client fields emptyQueue and lib/write.js read (lib/client.js, handlers/connect.js). */
interface ResumingClient {
  connecting?: boolean;
  connackSent?: boolean;
  connected?: boolean;
  clean?: boolean;
  _cleanStart?: boolean;
  errored?: boolean;
  version?: number | null;
  /** lib/client.js: calls back once the connection drains (or its drain timeout ends it). */
  waitForDrain(done: WriteDone): void;
  conn: Writable;
  broker: { authorizeForward(client: Client, packet: Packet): unknown };
  emit(event: 'error', error: unknown): boolean;
}

/** The inflight window the resend keeps to (the flow control's, see the header). */
export interface ResendWindow {
  /** Counts one more QoS 1/2 message in flight to `client` if its window has room; false when it is full. */
  reserve(client: Client): boolean;
  /** Resolves at the client's next acknowledgement, or once its connection has closed. */
  room(client: Client): Promise<void>;
  /**
   * Whether a stored PUBLISH fits the client's Maximum Packet Size; false
   * when it must not be sent (the flow control counts and reports it), and
   * the resend clears it from the queue instead [MQTT-3.1.2-25].
   */
  fits(client: Client, packet: DeliveredPacket): boolean;
}

/** No window: every message may go (plain aedes in tests, a broker without flow control). */
const UNBOUNDED: ResendWindow = { reserve: () => true, room: () => Promise.resolve(), fits: () => true };

/**
 * Takes over the resend after CONNECT (see the header). Call after `listen()`
 * (the persistence exists then) and before any client connects.
 */
export async function installBatchResend(aedes: unknown, window: ResendWindow = UNBOUNDED): Promise<void> {
  const { write, QoSPacket } = await loadAedesWrites();
  const persistence = (aedes as { persistence: ResendPersistence }).persistence;
  const outgoingStream = persistence.outgoingStream;
  if (typeof outgoingStream !== 'function') return;
  persistence.outgoingStream = function resendStream(client: Client): Readable {
    const resuming = client as unknown as ResumingClient;
    if (!(resuming.connecting === true && resuming.connackSent === true && resuming.connected !== true)) {
      return outgoingStream.call(persistence, client);
    }
    const source = persistence.outgoingResendChunks?.(client) ?? streamChunks(outgoingStream.call(persistence, client));
    let started = false;
    const out = new Readable({
      objectMode: true,
      read() {
        if (started) return;
        started = true;
        resend(persistence, write, QoSPacket, window, publishTap(aedes as Aedes), client, resuming, source, out).then(
          () => out.push(null),
          (error: unknown) => out.destroy(error instanceof Error ? error : new Error(String(error))),
        );
      },
      destroy(error, callback) {
        source.destroy?.();
        callback(error);
      },
    });
    return out;
  };
}

/** Another persistence's stream as chunks of one message. */
function streamChunks(stream: Readable): Chunks {
  const messages = stream[Symbol.asyncIterator]() as AsyncIterator<Packet>;
  return {
    next: async () => {
      const { done, value } = await messages.next();
      return done === true ? undefined : [value];
    },
    destroy: () => stream.destroy(),
  };
}

/**
 * The wire bytes of a stored QoS 1/2 PUBLISH in its usual shape, written by
 * the resend itself: what aedes' QoSPacket and write (mqtt-packet's
 * writeToStream, ~5 small writes, a bound function and an object copy per
 * message) made of it, in one buffer. Undefined for any other shape, which
 * goes through aedes: MQTT 5 properties (the expiry's remaining interval,
 * Subscription Identifiers...), an expiry, a connection whose PUBLISHes are
 * rewritten (outgoing Topic Aliases, packet-writes.ts), a packet the store
 * did not number. The store's packet has every field QoSPacket would set
 * (codec.ts queuedPacket: none of aedes-packet's defaults applies).
 */
function storedFrame(data: Packet, resuming: ResumingClient): Buffer | undefined {
  if (data.cmd !== 'publish' || data.properties !== undefined || data.messageExpiry !== undefined) return undefined;
  const { topic, payload, qos, dup, retain, messageId } = data;
  if (typeof topic !== 'string' || !Buffer.isBuffer(payload) || (qos !== 1 && qos !== 2)) return undefined;
  if (typeof dup !== 'boolean' || typeof retain !== 'boolean' || typeof messageId !== 'number' || messageId < 1 || messageId > 0xffff) return undefined;
  if (publishRewrite(resuming.conn) !== undefined) return undefined;
  return encodePublish(data, resuming.version ?? undefined);
}

/** Resolves on the next turn of the event loop, after its I/O. */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

async function resend(
  persistence: ResendPersistence,
  write: AedesWrite,
  QoSPacket: QoSPacketClass,
  window: ResendWindow,
  tap: PublishTap | undefined,
  client: Client,
  resuming: ResumingClient,
  source: Chunks,
  out: Readable,
): Promise<void> {
  let outstanding = 0;
  let failure: Error | null = null;
  let settled: (() => void) | undefined;
  const written: WriteDone = (error) => {
    outstanding--;
    if (error && failure === null) failure = error;
    if (outstanding === 0 && settled !== undefined) settled();
  };
  /** Waits until every write so far has called back (aedes: after 'drain' for a full socket, else in setImmediate). */
  const allWritten = () => (outstanding === 0 ? Promise.resolve() : new Promise<void>((resolve) => (settled = resolve))).then(() => (settled = undefined));
  // A closed connection's client may still read as connecting until aedes' close has run its unsubscribe step.
  const gone = () => resuming.conn.destroyed || (resuming.connecting !== true && resuming.connected !== true);
  const update =
    persistence.outgoingUpdateNow !== undefined
      ? (packet: Packet) => persistence.outgoingUpdateNow!(client, packet)
      : (packet: Packet) => persistence.outgoingUpdate(client, packet);
  let sinceWait = 0;
  chunks: for (let chunk = await source.next(); chunk !== undefined; chunk = await source.next()) {
    for (const data of chunk) {
      if (out.destroyed) break chunks;
      if (failure) throw failure;
      // lib/write.js refuses a closed connection: stop before the next message is recorded as sent.
      if (gone()) throw new Error('connection closed');
      // handlers/connect.js clearQueue: the remaining lifetime before delivery [MQTT-3.3.2-6].
      if (data.messageExpiry !== undefined) {
        const now = Date.now();
        if (data.messageExpiry > now) {
          data.properties = data.properties || {};
          data.properties.messageExpiryInterval = Math.ceil((data.messageExpiry - now) / 1000);
        }
      }
      const frame = storedFrame(data, resuming);
      const packet: Packet = frame !== undefined ? data : (new QoSPacket(data, client) as Packet);
      try {
        // Only a write that waits for the disk (a QoS 2 identifier, a PUBREL) makes a promise here.
        const recorded = update(packet);
        if (recorded !== undefined) await recorded;
      } catch (error) {
        resuming.emit('error', error);
        continue;
      }
      // handlers/connect.js emptyQueueFilter.
      const authorized = packet.cmd === 'publish' ? resuming.broker.authorizeForward(client, packet) : true;
      const expired = packet.messageExpiry !== undefined && packet.messageExpiry <= Date.now();
      if (
        resuming.clean ||
        resuming._cleanStart ||
        !authorized ||
        expired ||
        // Too large for the client: not sent, and cleared as if sent and acknowledged [MQTT-3.1.2-25].
        (packet.cmd === 'publish' && !window.fits(client, packet as unknown as DeliveredPacket))
      ) {
        await persistence.outgoingClearMessageId(client, packet);
        continue;
      }
      if ((packet.cmd === 'publish' && (packet.qos as number) > 0) || packet.cmd === 'pubrel') {
        while (!window.reserve(client)) {
          // What is written leaves at the end of this turn (the write coalescer), so that the client can acknowledge it.
          await window.room(client);
          // room() answers at once for a closed connection: without this the loop would never end.
          if (gone()) throw new Error('connection closed');
        }
      }
      if (frame !== undefined) {
        // As lib/write.js: refused once the connection closed (a QoS 2 message waited for the disk above),
        // and a full socket waited for through the client (its drain timeout included).
        if (gone()) throw new Error('connection closed');
        const flowing = resuming.conn.write(frame);
        tap?.(client, packet.qos as 1 | 2, (packet.payload as Buffer).length);
        if (!flowing && !resuming.errored) {
          outstanding++;
          resuming.waitForDrain(written);
        }
      } else {
        outstanding++;
        write(client, packet, written);
      }
      if (resuming.conn.writableNeedDrain || ++sinceWait >= RESEND_BATCH) {
        sinceWait = 0;
        // aedes' writes call back in setImmediate, so waiting for them lets other connections in;
        // with none outstanding (frames written here), a turn is given up all the same.
        if (outstanding === 0) await nextTurn();
        await allWritten();
      }
    }
  }
  await allWritten();
  if (failure) throw failure;
}
