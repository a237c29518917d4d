/**
 * A delivery written in the call that hands it over, instead of in a
 * setImmediate (and for a persistent session after a promise).
 *
 * aedes' deliver0 and deliverQoS (lib/client.js) check a message (No Local,
 * dedupe, authorizeForward), then in a setImmediate make the subscriber's
 * copy; deliverQoS asks the persistence to record its packet identifier
 * (outgoingUpdate, a promise) and writes it once that settles (writeQoS →
 * lib/write.js). So each delivery cost an event-loop turn, a closure and a
 * promise; and the write coalescer (src/broker/write-coalescer.ts), called
 * from that setImmediate, could flush only on the turn after: a persistent
 * subscriber's PUBACK led to its next message two turns later, with every
 * publisher's reads handled in between, and with an inflight window of 20
 * that round trip paced the whole flow (the persistent-session QoS 1
 * benchmark).
 *
 * Here the same steps run at once, with aedes' own aedes-packet, QoSPacket
 * (made as newQoSPacket says) and lib/write.js's steps (aedes-write.ts): the store's outgoingUpdateNow
 * records a QoS 1 identifier without a promise (in memory, queue-store.ts
 * record) and answers a QoS 2 one with the promise of its write, which the
 * PUBLISH waits for, as in aedes; the write callback comes after the turn's
 * I/O as from aedes' write, but from one setImmediate for all of a turn's
 * writes (aedes-write.ts), or after 'drain'. Every delivery of a client takes this path, in the order handed
 * over, as aedes' setImmediates kept it (a QoS 2 message still waits for the
 * disk, as in aedes). Left to aedes' own functions: a message of the
 * client's own under No Local (aedes drops it, and clears it from a
 * persistent session's queue) and any when aedes' dedupe is on for the
 * client (the delivery rules turn it off, client.ts disableAedesDedupe).
 * Installed as the lowest layer of each client's deliveries (wrapDeliveries),
 * under the shared subscriptions' watch and the flow control, which see the
 * QoSPacket as `this` of the write callback as before; with
 * `broker.fastPublish: false`, aedes' own run (the reference the tests
 * compare with).
 */
import type { Client } from 'aedes';
import { aedesDedupeDisabled, wrapDeliveries, type Deliveries, type DeliveredPacket } from './client.js';
import { loadAedesWrites, type AedesPacket, type AedesWrites } from './aedes-lib.js';
import type { AedesSeam } from './seam.js';
import { writeAsAedes, type WritingClient } from './aedes-write.js';
import type { TurnCallbacks } from '../../util/turn-callbacks.js';

interface DeliveryPersistence {
  outgoingUpdateNow?(client: Client, packet: AedesPacket): Promise<unknown> | undefined;
  outgoingClearMessageId(client: Client, packet: object): Promise<unknown>;
}

/** The client fields aedes' deliveries read (lib/client.js). */
interface DeliveringClient {
  id: string;
  clean: boolean;
  broker: { persistence: DeliveryPersistence; authorizeForward(client: Client, packet: object): object | null | undefined };
  emit(event: 'error', error: unknown): boolean;
  _onError(error: Error | null): void;
}

function noop(): void {}

/** deliver0's write callback (lib/client.js deliver0). */
function zeroWritten(error: Error | null, client: DeliveringClient, callback: () => void): void {
  client._onError(error);
  callback();
}

/** writeQoS's write callback (lib/client.js writeQoS): the packet's own, called as its method. */
function qosWritten(error: Error | null, client: DeliveringClient, packet: AedesPacket): void {
  if (error) client.emit('error', error);
  packet.writeCallback();
}

/** The client fields QoSPacket reads to number a packet (lib/client.js). */
interface NumberingClient {
  broker: unknown;
  _nextId: number;
}

/**
 * lib/qos-packet.js's QoSPacket as deliverQoS makes it, without the bound
 * `client._onError` its constructor makes for every packet and deliverQoS
 * replaces with its callback at once (~70 B of garbage a delivery):
 * aedes-packet's Packet constructed as a QoSPacket (its prototype, the same
 * fields in the same order), then QoSPacket's own two, the write callback
 * and the packet identifier, kept or numbered from the client's counter.
 * Canary: test/aedes-canaries-client.test.ts.
 */
export function newQoSPacket(parts: AedesWrites, original: object, client: NumberingClient, writeCallback: () => void): AedesPacket {
  const packet = Reflect.construct(parts.Packet, [original, client.broker], parts.QoSPacket) as AedesPacket;
  packet.writeCallback = writeCallback;
  const messageId = (original as { messageId?: unknown }).messageId;
  if (!messageId) {
    packet.messageId = client._nextId;
    client._nextId = client._nextId >= 65535 ? 1 : client._nextId + 1;
  } else {
    packet.messageId = messageId;
  }
  return packet;
}

/** The layer (one object per client, its methods shared). */
class DirectDeliveries implements Deliveries {
  readonly #client: Client;
  readonly #below: Deliveries;
  readonly #aedes: AedesWrites;
  readonly #later: TurnCallbacks;

  constructor(client: Client, below: Deliveries, aedes: AedesWrites, later: TurnCallbacks) {
    this.#client = client;
    this.#below = below;
    this.#aedes = aedes;
    this.#later = later;
  }

  /** What aedes leaves undelivered, or does with its own dedupe: its own functions then. */
  #aedesOwn(packet: DeliveredPacket): boolean {
    const client = this.#client as unknown as DeliveringClient;
    return (packet.nl === true && packet.clientId === client.id) || !aedesDedupeDisabled(this.#client);
  }

  /** aedes' deliverQoS0, written now. */
  deliver0(packet: DeliveredPacket, callback: () => void): void {
    if (this.#aedesOwn(packet)) {
      this.#below.deliver0(packet, callback);
      return;
    }
    const client = this.#client as unknown as DeliveringClient;
    const toForward = client.broker.authorizeForward(this.#client, packet);
    if (!toForward) {
      setImmediate(callback);
      return;
    }
    const sent = new this.#aedes.Packet(toForward, client.broker);
    sent.qos = 0;
    writeAsAedes(this.#client as unknown as WritingClient, sent, this.#later, zeroWritten, client, callback);
  }

  /** aedes' deliverQoS, written now (or once the store has recorded a QoS 2 identifier). */
  deliverQoS(packet: DeliveredPacket, callback: () => void): void {
    // aedes hands QoS 0 to the client's deliver0 from here; its own function does that.
    if (packet.qos === 0 || this.#aedesOwn(packet)) {
      this.#below.deliverQoS(packet, callback);
      return;
    }
    const client = this.#client as unknown as DeliveringClient;
    const persistence = client.broker.persistence;
    const toForward = client.broker.authorizeForward(this.#client, packet);
    if (!toForward) {
      // As aedes: nothing to send, and a persistent session's copy leaves its queue.
      if (!client.clean) persistence.outgoingClearMessageId(this.#client, packet).then(noop, noop);
      setImmediate(callback);
      return;
    }
    const sent = newQoSPacket(this.#aedes, toForward, this.#client as unknown as NumberingClient, callback);
    // Not as aedes, which sends at the QoS of a subscription whose filter is the topic itself when
    // that is lower: the delivery rules above (delivery-rules.ts, rule 2; aedes' dedupe is off
    // only under them, #aedesOwn) have set the QoS to the highest grant among all matching
    // subscriptions [MQTT-3.3.5-1], and the exact one may be a lower grant among them.
    if (!client.clean && !sent.retain) {
      let recorded: Promise<unknown> | undefined;
      try {
        recorded = persistence.outgoingUpdateNow!(this.#client, sent);
      } catch (error) {
        this.#writeQoS(error, sent);
        return;
      }
      if (recorded !== undefined) {
        recorded.then(
          () => this.#writeQoS(null, sent),
          (error: unknown) => this.#writeQoS(error, sent),
        );
        return;
      }
    }
    this.#writeQoS(null, sent);
  }

  /** aedes' writeQoS (lib/client.js, not exported): the write callback is called as the packet's method. */
  #writeQoS(error: unknown, packet: AedesPacket): void {
    const client = this.#client as unknown as DeliveringClient;
    if (error) {
      client.emit('error', error);
      packet.writeCallback();
      return;
    }
    writeAsAedes(this.#client as unknown as WritingClient, packet, this.#later, qosWritten, client, packet);
  }
}

/**
 * Puts the direct deliveries under every client's others. Call after
 * listen() (the persistence exists then) and before any other hook that
 * wraps deliveries is installed (its connection hook must run first), before
 * any client connects. Not installed over a persistence without
 * outgoingUpdateNow: a persistent session's messages would wait for a
 * promise each, and could be overtaken by its retained ones.
 */
export async function installDirectDeliveries(seam: AedesSeam): Promise<void> {
  const persistence = (seam.aedes as unknown as { persistence: DeliveryPersistence }).persistence;
  if (typeof persistence.outgoingUpdateNow !== 'function') return;
  const parts = await loadAedesWrites();
  seam.onConnection(() => (client) => wrapDeliveries(client, (below) => new DirectDeliveries(client, below, parts, seam.turnCallbacks)));
}
