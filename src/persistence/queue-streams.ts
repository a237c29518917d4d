/**
 * A client's stored outgoing queue as a stream, a chunk at a time: as
 * stored (storedStream), and as resent on a new connection (resendStream),
 * which hands out the packet identifiers the messages go under. QueueStore
 * (queue-store.ts) owns the queue's updates; both share queue-entries.ts.
 */
import { Readable } from 'node:stream';
import { detached, encodePacket, packetData, type PacketLike } from './codec.js';
import type { BatchOp } from './group-commit.js';
import { dropEntry, expireEntry, holdsEntry, isExpired, numberEntry, type Connections } from './queue-entries.js';
import type { QueueEntry } from './outgoing-queues.js';
import type { LevelStore } from './store.js';
import { STREAM_CHUNK } from './stored-packets.js';
import type { ClientLike } from './types.js';

/**
 * Messages per chunk of the resend after CONNECT: one LevelDB getMany, and
 * for QoS 2 one write of their identifiers, which they wait for.
 */
const RESEND_CHUNK = 256;

/** A queue read a chunk at a time: next() answers the next chunk's messages, undefined once all were. */
export interface QueueChunks {
  next(): Promise<PacketLike[] | undefined>;
}

/** The chunks' messages as a stream, one at a time. */
function chunksStream(chunks: QueueChunks): Readable {
  async function* generate(): AsyncGenerator<PacketLike> {
    for (let packets = await chunks.next(); packets !== undefined; packets = await chunks.next()) yield* packets;
  }
  return Readable.from(generate());
}

export class QueueStreams {
  readonly #store: LevelStore;
  readonly #connections: Connections;

  constructor(store: LevelStore, connections: Connections) {
    this.#store = store;
    this.#connections = connections;
  }

  /** The queue as stored, packet identifiers as they are (none for a message never sent). */
  storedStream(clientId: string): Readable {
    this.#store.ready();
    return chunksStream(this.#queueChunks(clientId, STREAM_CHUNK, (chunk, keys, values) =>
      chunk.flatMap((entry, i): PacketLike[] => {
        // Acknowledged or dropped since its chunk was read.
        if (!holdsEntry(this.#store, clientId, entry)) return [];
        // In flight, its identifier not stored yet (see QueueStore.record): as it will be stored.
        if (entry.sent !== undefined) return [packetData(entry.sent)];
        const packet = this.#storedPacket(clientId, entry, keys[i]!, values[i]);
        return packet ? [packet] : [];
      }),
    ));
  }

  /**
   * The stored messages to send again on a new connection, in queue order.
   * Each is decided when its chunk has been read, from the in-memory index,
   * the truth for what a message is now:
   * - a PUBREL stays a PUBREL: the PUBLISH is never sent again once the
   *   client's PUBREC arrived [MQTT-4.3.3-1];
   * - a PUBLISH that has a packet identifier is sent again under it, with
   *   DUP set [MQTT-3.3.1-1], [MQTT-4.4.0-1];
   * - a PUBLISH without one gets a free one (allocateMessageId);
   * - one already handed out on this connection (a live delivery that went
   *   first) is skipped, and the ones handed out here are skipped by live
   *   deliveries (QueueStore.claim): each message leaves once per connection.
   * The identifiers given here to QoS 2 messages and PUBRELs are stored with
   * one write per chunk, which a QoS 2 message waits for before it is sent
   * (see QueueStore.record); aedes' outgoingUpdate then finds the record unchanged and
   * writes nothing. So a backlog costs one fsync per chunk, not one per
   * message. A QoS 1 message's identifier stays in memory, as for one sent
   * live (see #resends).
   */
  resendStream(client: ClientLike): Readable {
    return chunksStream(this.resendChunks(client));
  }

  /**
   * resendStream a chunk at a time, for a caller that takes a chunk's
   * messages in one go (the broker's resend, src/broker/aedes-seam/resend.ts):
   * no promise or stream step per message.
   */
  resendChunks(client: ClientLike): QueueChunks {
    const store = this.#store;
    store.ready();
    const connection = this.#connections.of(client);
    return this.#queueChunks(client.id, RESEND_CHUNK, async (chunk, keys, values) => {
      const { packets, ops, durable } = this.#resends(client, connection, chunk, keys, values);
      if (ops.length > 0) {
        if (durable) await store.write(ops);
        else store.writeBehind(ops, 'resent message identifier');
      }
      return packets;
    });
  }

  /**
   * A client's queue as it is now (like the reference implementation: what
   * is queued later reaches the client live), read a chunk at a time;
   * `decide` turns each chunk, right after it was read, into what to yield.
   * Entries removed meanwhile (acknowledged, dropped) are skipped. The next
   * chunk's records are read while the caller handles one (LevelDB reads on
   * its thread pool); what a record means is decided only when its chunk is
   * taken, from the in-memory entry.
   */
  #queueChunks(
    clientId: string,
    size: number,
    decide: (chunk: QueueEntry[], keys: Buffer[], values: Array<Buffer | undefined>) => PacketLike[] | Promise<PacketLike[]>,
  ): QueueChunks {
    const queue = this.#store.queues.get(clientId);
    const entries = [...(queue?.entries() ?? [])];
    let start = 0;
    const read = (): Promise<{ chunk: QueueEntry[]; keys: Buffer[]; values: Array<Buffer | undefined> }> | undefined => {
      if (start >= entries.length) return undefined;
      const chunk = entries.slice(start, start + size).filter((entry) => holdsEntry(this.#store, clientId, entry));
      start += size;
      const keys = chunk.map((entry) => queue!.keyOf(clientId, entry.seq));
      const reading = this.#readValues(chunk, keys).then((values) => ({ chunk, keys, values }));
      // A failed read ahead is reported by the next() that takes it, not left unhandled meanwhile.
      reading.catch(() => undefined);
      return reading;
    };
    let started = false;
    let ahead: ReturnType<typeof read>;
    return {
      async next() {
        if (!started) {
          started = true;
          ahead = read();
        }
        while (ahead !== undefined) {
          const { chunk, keys, values } = await ahead;
          ahead = read();
          const packets = await decide(chunk, keys, values);
          if (packets.length > 0) return packets;
        }
        return undefined;
      },
    };
  }

  /** Decides, in one synchronous step, what resendStream sends of one chunk (see there). */
  #resends(
    client: ClientLike,
    connection: number,
    chunk: readonly QueueEntry[],
    keys: readonly Buffer[],
    values: ReadonlyArray<Buffer | undefined>,
  ): { packets: PacketLike[]; ops: BatchOp[]; durable: boolean } {
    const store = this.#store;
    const clientId = client.id;
    const queue = store.queues.get(clientId);
    const online = store.isOnline(clientId);
    const packets: PacketLike[] = [];
    const ops: BatchOp[] = [];
    let durable = false;
    chunk.forEach((entry, i) => {
      // Acknowledged, dropped or sent live while the chunk was read.
      if (!queue || !queue.holds(entry) || entry.sentOn === connection) return;
      if (isExpired(this.#store, entry)) {
        expireEntry(this.#store, clientId, entry, ops);
        return;
      }
      const value = values[i];
      const stored = this.#storedPacket(clientId, entry, keys[i]!, value);
      if (!stored || !value) return;
      let packet: PacketLike;
      if (entry.cmd !== 'publish') {
        packet = stored.cmd === entry.cmd ? stored : { cmd: entry.cmd, messageId: entry.messageId };
      } else if (entry.messageId !== undefined) {
        // Decoded for this send alone: completed in place rather than copied.
        packet = stored;
        packet.cmd = 'publish';
        packet.messageId = entry.messageId;
        packet.dup = true;
        store.counters.resentMessages++;
      } else {
        if (!numberEntry(this.#store, clientId, queue, entry)) return;
        packet = stored;
        packet.cmd = 'publish';
        packet.messageId = entry.messageId;
      }
      entry.sentOn = connection;
      if (online && packet.cmd === 'publish' && packet.qos === 1) {
        // As for one sent live (see QueueStore.record): the identifier stays in memory
        // (entry.sent) until a disconnect or stop, so no encoding, put or
        // decode per message; a crash loses only the identifier [MQTT-4.3.2].
        entry.value = undefined;
        entry.sent = packet;
        packets.push(packet);
        return;
      }
      // The record written below (or found equal) holds the identifier.
      entry.sent = undefined;
      const encoded = encodePacket(packetData(packet));
      if (!encoded.equals(value)) {
        ops.push({ type: 'put', key: keys[i]!, value: encoded });
        queue.update(entry, { bytes: encoded.length });
        if (packet.cmd !== 'publish' || packet.qos === 2) durable = true;
      }
      // aedes resends it next (outgoingUpdate): an unchanged resend then writes nothing.
      entry.value = online ? detached(encoded) : undefined;
      packets.push(packet);
    });
    return { packets, ops, durable };
  }

  /**
   * The records of queued entries: the copy in memory where there is one (in
   * flight, or in the queue cache), else the group commit's queued write or
   * the disk.
   */
  async #readValues(chunk: readonly QueueEntry[], keys: readonly Buffer[]): Promise<Array<Buffer | undefined>> {
    const cached = chunk.map((entry) => entry.value ?? entry.cached);
    const missing = keys.filter((_, i) => cached[i] === undefined);
    const read = missing.length > 0 ? await this.#store.readMany(missing) : [];
    let next = 0;
    return chunk.map((_, i) => cached[i] ?? read[next++]);
  }

  /** Decodes a queued entry's record; undefined (and the entry dropped) when it is missing or undecodable. */
  #storedPacket(clientId: string, entry: QueueEntry, key: Buffer, value: Buffer | undefined): PacketLike | undefined {
    if (!value) {
      // Indexed but not stored: its write failed. Drop it so limits and counts stay true.
      if (holdsEntry(this.#store, clientId, entry)) dropEntry(this.#store, clientId, entry);
      return undefined;
    }
    return this.#store.decode(key, value, () => dropEntry(this.#store, clientId, entry));
  }
}
