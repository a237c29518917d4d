/**
 * A QoS 1 PUBLISH from an MQTT 3.1 or 3.1.1 client, read in place
 * (fast-publish.ts), taken from the parser's event to its PUBACK without
 * aedes' handler chain: the same steps in aedes' order (2.0.0-beta.1), each
 * one's outcome the same, without what the chain makes per message. aedes
 * runs a QoS 1 PUBLISH through lib/client.js enqueue, handlers/index.js
 * handle, handlers/publish.js handlePublish and runSeries (a bound callback
 * and a closure), authorizePublish, enqueuePublish (a PubAck object and a
 * closure) and lib/write.js (a setImmediate per packet): V8's sampling heap
 * profiler put 0.5–1 KB of the ~5 KB allocated per message on the QoS 1
 * path to a persistent session there (bench/persistence-qos1.ts). Here:
 *
 *  1. lib/client.js enqueue: the packet counts in the client's batch
 *     (`_parsingBatch`; its next read waits for every packet of the batch);
 *     the client has had its CONNACK, so the packet is handled at once;
 *  2. handlers/index.js handle: a connecting or connected client (else
 *     aedes' own way, which closes it); the keep-alive refreshed once the
 *     handler returns [MQTT-3.1.2-22];
 *  3. handlePublish: a topic that is empty, holds a wildcard or has more
 *     levels than aedes allows goes aedes' way, for aedes' error (the
 *     protocol guard below refuses these first);
 *  4. authorizePublish: the access policy's verdict, asked once (a refused
 *     or dropped message goes aedes' way with the verdict, seam.ts
 *     prejudge); an allowed one is published as the seam's hook publishes
 *     it (seam.ts publishAllowedQoS1: stored for every matching session,
 *     then to the live subscribers); if that fails, the connection is
 *     closed without a PUBACK and the error ends the batch, as there;
 *  5. enqueuePublish, QoS 1: the PUBACK written with lib/write.js's steps
 *     (aedes-write.ts: not to a closed connection, whose batch ends with
 *     'connection closed'; on a full socket the batch waits for 'drain'
 *     through the client's waitForDrain, so the drain timeout holds), then
 *     broker.publish, which for a message published at step 4 only calls
 *     back;
 *  6. the batch's callback (`_nextBatch`), which aedes calls from a
 *     setImmediate per packet: here from one setImmediate for all of the
 *     turn's callbacks (src/util/turn-callbacks.ts), in order.
 *
 * An MQTT 5 client's PUBLISH goes aedes' way (Topic Aliases, reason codes,
 * properties). Canary: test/aedes-canaries-client.test.ts holds aedes to steps 1,
 * 5 and 6 (a QoS 1 PUBLISH counted in `_parsingBatch`, its PUBACK written
 * before its batch's callback, which comes from a setImmediate).
 */
import type { Duplex } from 'node:stream';
import type { Client, PublishPacket } from 'aedes';
import { writeAsAedes, type WritingClient } from './aedes-write.js';
import type { AedesSeam } from './seam.js';
import { topicLevelCount } from './qos-publish.js';

type BatchDone = (error?: Error | null) => void;

/** The aedes Client fields the steps read (lib/client.js, handlers/index.js, lib/write.js). */
export interface WireQoS1Client extends WritingClient {
  id: string;
  version: number | null;
  connected: boolean;
  conn: Duplex;
  broker: { maxTopicLevels: number };
  _parsingBatch: number;
  _nextBatch: BatchDone;
  _keepaliveInterval: number;
  _keepaliveTimer: { refresh(): void } | null;
}

/** A QoS 1 PUBLISH as parsedInPlace makes it. */
interface WirePublish {
  cmd: string;
  qos: number;
  topic: string;
  messageId?: number;
}

/** Step 6: the batch's callback once the PUBACK is written, with lib/write.js's error if it was not. */
function batchDone(error: Error | null, client: WireQoS1Client): void {
  client._nextBatch(error);
}

/** handlePublish's topic checks (step 3), in its words: a topic that passes them all. */
function plainPublishTopic(topic: string, maxTopicLevels: number): boolean {
  return topic.length > 0 && topic.indexOf('#') === -1 && topic.indexOf('+') === -1 && topicLevelCount(topic) <= maxTopicLevels;
}

/** The steps above for one broker; one per FastPublish. */
export class WireQoS1 {
  readonly #seam: AedesSeam;

  constructor(seam: AedesSeam) {
    this.#seam = seam;
  }

  /**
   * Takes `packet`, a QoS 1 PUBLISH read in place from `client`, through
   * the steps above; false, having done nothing, when it goes aedes' way.
   */
  take(client: WireQoS1Client, packet: WirePublish): boolean {
    const messageId = packet.messageId;
    if (client.version === 5 || packet.cmd !== 'publish' || packet.qos !== 1 || typeof messageId !== 'number') return false;
    if (!(client.connecting === true || client.connected)) return false;
    if (!plainPublishTopic(packet.topic, client.broker.maxTopicLevels)) return false;
    const seam = this.#seam;
    const verdict = seam.judge(client as unknown as Client, packet as unknown as PublishPacket);
    if (verdict !== 'allow') {
      seam.prejudge(packet as unknown as PublishPacket, verdict);
      return false;
    }
    client._parsingBatch++;
    seam.publishAllowedQoS1(client as unknown as Client, packet as unknown as PublishPacket, (error) => this.#published(client, messageId, error));
    if (client._keepaliveInterval > 0) client._keepaliveTimer?.refresh();
    return true;
  }

  /** Step 5, once the message is published (step 4), or the error that kept it from being stored. */
  #published(client: WireQoS1Client, messageId: number, error: Error | null | undefined): void {
    if (error) {
      // seam.ts: not stored, so no PUBACK; the client sends it again on its next connection [MQTT-4.4.0-1].
      client.conn.destroy();
      client._nextBatch(error);
      return;
    }
    // enqueuePublish: the PUBACK [MQTT-3.4.0], through lib/write.js's steps (aedes-write.ts).
    writeAsAedes(client, { cmd: 'puback', messageId }, this.#seam.turnCallbacks, batchDone, client, undefined);
  }
}
