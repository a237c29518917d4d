/**
 * A PUBACK or PUBCOMP without Reason Code (2 bytes of packet identifier),
 * read in place (fast-publish.ts), taken from the bytes to its end without
 * aedes' handler chain: the same steps in aedes' order (2.0.0-beta.1), each
 * one's outcome the same, without what the chain makes per packet. aedes
 * runs an acknowledgement through a parsed packet, the parser's 'packet'
 * event, lib/client.js enqueue, handlers/index.js handle and
 * handlers/puback.js handlePuback, whose clearing of the message is a
 * promise with a closure and a reaction of its own: on a QoS 1 flow that
 * was ~0.45 KB of the ~2.5 KB allocated per message (`BENCH_ALLOC=1
 * BENCH_PUBLISHERS=1 BENCH_WINDOW=16 node dist-bench/bench/persistence-qos1.js`).
 * Here:
 *
 *  1. the parser's listeners: the shared subscriptions' (shared.ts
 *     sharedInPacket: the acknowledgement reported to the broker's
 *     onAcknowledgements listener), then aedes' lib/client.js enqueue,
 *     which counts the packet in the client's batch and hands it to handle
 *     (the client has had its CONNACK);
 *  2. handlers/index.js handle: a packet larger than the broker's Maximum
 *     Packet Size, or from a client neither connecting nor connected, goes
 *     aedes' way (for its error and close); the keep-alive refreshed once
 *     the handler returns [MQTT-3.1.2-22];
 *  3. handlePuback: the persistence clears the message the identifier
 *     acknowledges (the store's outgoingClearMessageIdNow: at once unless
 *     its record must be read from disk), then the broker's 'ack' event with
 *     the message cleared (none when there was none or it failed), then the
 *     batch's callback, with the error if clearing failed (aedes' client then
 *     reports it and reads no more).
 *
 * The batch is counted only while a clearing waits for the disk: one done at
 * once leaves the client's next read as it was, where aedes' callback came
 * after a microtask. Taken only while the parser's listeners are the two
 * above (or aedes' alone), and with a persistence that has
 * outgoingClearMessageIdNow; otherwise, and for a PUBREC, aedes' way.
 * Canary: test/aedes-canaries-client.test.ts (aedes clears, tells 'ack',
 * then calls the batch back).
 */
import type { Client } from 'aedes';
import { isSharedPacketListener, reportAcknowledgement } from './shared.js';
import { variableByteIntegerBytes } from './publish-frames.js';
import type { PacketParser } from './parser-events.js';

type BatchDone = (error?: Error | null) => void;
type Cleared = object | undefined;

interface AckPersistence {
  outgoingClearMessageIdNow?(client: Client, messageId: number): Cleared | Promise<Cleared>;
}

/** The aedes Client fields the steps read (lib/client.js, handlers/index.js, handlers/puback.js). */
export interface WireAckClient {
  connecting?: boolean;
  connected: boolean;
  broker: {
    maximumPacketSize: number;
    persistence: AckPersistence;
    emit(event: 'ack', packet: Cleared, client: Client): boolean;
  };
  _parser: PacketParser;
  _parsingBatch: number;
  _nextBatch: BatchDone;
  _keepaliveInterval: number;
  _keepaliveTimer: { refresh(): void } | null;
}

/** The body of a PUBACK or PUBCOMP without Reason Code: its packet identifier. */
const ACK_LENGTH = 2;

/**
 * Takes the PUBACK or PUBCOMP of `messageId` from `client` through the steps
 * above; false, having done nothing, when it goes aedes' way.
 */
export function takeWireAck(client: WireAckClient, messageId: number): boolean {
  const broker = client.broker;
  const persistence = broker.persistence;
  if (typeof persistence.outgoingClearMessageIdNow !== 'function') return false;
  const max = broker.maximumPacketSize;
  if (max > 0 && 1 + variableByteIntegerBytes(ACK_LENGTH) + ACK_LENGTH > max) return false;
  if (!(client.connecting === true || client.connected)) return false;
  const listeners = client._parser._events.packet;
  const shared = Array.isArray(listeners) && listeners.length === 2 && isSharedPacketListener(listeners[0]);
  if (!shared && (typeof listeners !== 'function' || isSharedPacketListener(listeners))) return false;
  const self = client as unknown as Client;
  if (shared) reportAcknowledgement(self, messageId);
  let cleared: Cleared | Promise<Cleared>;
  try {
    cleared = persistence.outgoingClearMessageIdNow(self, messageId);
  } catch (error) {
    cleared = Promise.reject(error instanceof Error ? error : new Error(String(error)));
  }
  if (cleared instanceof Promise) {
    client._parsingBatch++;
    cleared.then(
      (packet) => {
        broker.emit('ack', packet, self);
        client._nextBatch(null);
      },
      (error: Error) => {
        broker.emit('ack', undefined, self);
        client._nextBatch(error);
      },
    );
  } else {
    broker.emit('ack', cleared, self);
  }
  if (client._keepaliveInterval > 0) client._keepaliveTimer?.refresh();
  return true;
}
