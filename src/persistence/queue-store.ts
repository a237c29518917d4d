/**
 * The store's outgoing queues: the QoS 1/2 messages (and PUBRELs) each
 * persistent session still owes its client, and which packet identifier
 * each message goes out under.
 */
import { Readable } from 'node:stream';
import { detached, encodeQueued, encodePacket, packetData, type PacketLike, type QueuedRecord } from './codec.js';
import type { BatchOp } from './group-commit.js';
import { outgoingKey } from './keys.js';
import type { ClientQueue, QueueEntry } from './outgoing-queues.js';
import { STREAM_CHUNK, type LevelStore } from './store.js';
import type { ClientLike, OutgoingClaim } from './types.js';

/** Who a message is queued for, and the QoS granted to them (the published QoS when absent). */
export interface Recipient {
  clientId: string;
  qos?: number;
  /** false: RETAIN cleared for this recipient (no subscription with Retain As Published [MQTT-3.3.1-12]). */
  retain?: boolean;
  /** MQTT 5: the identifiers of the recipient's matching subscriptions [MQTT-3.3.4-3]. */
  subscriptionIdentifiers?: readonly number[];
}


/** The message as queued for one recipient: its QoS, RETAIN and Subscription Identifiers (see Recipient). */
function adjustedPacket(packet: PacketLike, { qos, retain, subscriptionIdentifiers: ids }: Recipient): PacketLike {
  const adjusted: PacketLike = { ...packet };
  if (qos !== undefined && qos < (packet.qos as number)) adjusted.qos = qos;
  if (retain === false) adjusted.retain = false;
  if (ids !== undefined && ids.length > 0) {
    // A new object: the published one is shared with every other copy.
    const properties = (packet.properties ?? {}) as Record<string, unknown>;
    adjusted.properties = { ...properties, subscriptionIdentifier: ids.length === 1 ? ids[0] : [...ids] };
  }
  return adjusted;
}

export class QueueStore {
  readonly #store: LevelStore;
  /** A number per aedes client object: which connection a queued message was handed out on. */
  readonly #connections = new WeakMap<ClientLike, number>();
  #nextConnection = 1;

  constructor(store: LevelStore) {
    this.#store = store;
  }

  /**
   * Queues `packet` for each recipient, at min(published QoS, granted QoS)
   * [MQTT-3.8.4-6], and resolves once that is durable. The publish taps see
   * the message as published, once. This is the last persistence step of a
   * QoS 1/2 PUBLISH before anything is delivered or acknowledged, usually
   * with nobody offline: the barrier of the write-behind records of the same
   * PUBLISH (see the adapter's header). Its own write goes into the newest
   * batch, which holds them; without one, a PUBLISH that wrote something
   * before (a retained message, a QoS 2 packet) waits for the newest batch.
   */
  enqueue(packet: PacketLike, recipients: readonly Recipient[], tap = true): Promise<void> {
    try {
      return this.#enqueue(packet, recipients, tap);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * See enqueue. Not async: the promise is the batch's own, shared by every
   * write in it, so queuing a message makes no promise of its own.
   */
  #enqueue(packet: PacketLike, recipients: readonly Recipient[], tap: boolean): Promise<void> {
    const store = this.#store;
    const { commit } = store.ready();
    const ops: BatchOp[] = [];
    if (tap) store.taps.collect(packet, ops);
    if (recipients.length === 0) {
      if (ops.length > 0) return store.write(ops);
      if (packet.retain === true || packet.qos === 2) return commit.barrier();
      return Promise.resolve();
    }
    // One encoding per outcome, shared by every recipient it applies to.
    let asPublished: QueuedRecord | undefined;
    let downgraded: Array<QueuedRecord | undefined> | undefined;
    let adjusted: Map<string, QueuedRecord> | undefined;
    for (const recipient of recipients) {
      const { clientId, qos } = recipient;
      let copy: QueuedRecord;
      if (recipient.retain === false || recipient.subscriptionIdentifiers !== undefined) {
        // MQTT 5 subscription options: one encoding per distinct outcome.
        adjusted ??= new Map();
        const key = `${qos ?? ''}|${recipient.retain ?? ''}|${recipient.subscriptionIdentifiers?.join(',') ?? ''}`;
        let found = adjusted.get(key);
        if (!found) {
          found = encodeQueued(adjustedPacket(packet, recipient));
          adjusted.set(key, found);
        }
        copy = found;
      } else if (qos !== undefined && qos < (packet.qos as number)) {
        downgraded ??= [];
        copy = downgraded[qos] ??= encodeQueued({ ...packet, qos });
      } else {
        copy = asPublished ??= encodeQueued(packet);
      }
      this.#append(clientId, copy, ops);
    }
    return store.write(ops);
  }

  #append(clientId: string, { value, cmd, brokerId, brokerCounter, messageExpiry }: QueuedRecord, ops: BatchOp[]): void {
    const store = this.#store;
    const online = store.isOnline(clientId);
    const queue = store.queues.getOrCreate(clientId);
    const seq = store.nextSeq();
    queue.append({
      seq,
      cmd,
      brokerId,
      brokerCounter,
      // None yet: each session gives its own when the message is sent [MQTT-2.3.1-2].
      messageId: undefined,
      bytes: value.length,
      expiresAt: messageExpiry,
      // Not cached even for a connected client: aedes sends it under a new
      // packet identifier, and record() caches that record instead. A
      // stalled client's backlog thus stays on disk, not in RAM.
      value: undefined,
    });
    ops.push({ type: 'put', key: outgoingKey(clientId, seq), value });
    store.sessions.start(clientId, store.now(), ops);
    // Bounded whether the client is connected or not: a stalled persistent
    // subscriber would otherwise grow the store without limit. Online, only
    // messages not sent yet are dropped (see queue-limits.ts); aedes or the
    // flow control skip them (claim). A message larger than
    // maxQueuedBytesPerClient drops itself: release an emptied queue.
    if (store.limiter.enforce(clientId, queue, ops, online) > 0) store.queues.release(clientId);
  }

  /**
   * Called (through the adapter's claimOutgoing) by the flow control
   * (src/broker/flow-control.ts) right before it hands a live QoS 1/2
   * message for a connected persistent session to aedes' deliverQoS, which
   * will call outgoingUpdate for it. Answers with the packet identifier to
   * send it under, or undefined when it must not be sent: no longer queued
   * (dropped by the queue limits, or acknowledged), already past PUBREC, or
   * already handed out on this connection (by the resend stream after
   * CONNECT, see resendStream). A message handed out on an earlier
   * connection keeps its identifier and is a resend (DUP) [MQTT-4.3.3-1]; a
   * new one gets a free identifier (allocateMessageId).
   */
  claim(client: ClientLike, brokerId: unknown, brokerCounter: unknown): OutgoingClaim | undefined {
    const store = this.#store;
    if (store.state !== 'running') return {};
    const queue = store.queues.get(client.id);
    const entry = queue?.findByCounter(brokerId, brokerCounter);
    if (!queue || !entry || entry.cmd !== 'publish') return undefined;
    if (this.#expired(entry)) {
      const ops: BatchOp[] = [];
      this.#expire(client.id, entry, ops);
      store.writeBehind(ops, 'removal of an expired message');
      return undefined;
    }
    const connection = this.#connectionOf(client);
    if (entry.sentOn === connection) {
      store.counters.repeatSendsAvoided++;
      return undefined;
    }
    const resend = entry.messageId !== undefined;
    if (!resend && !this.#numberEntry(client.id, queue, entry)) return undefined;
    if (resend) store.counters.resentMessages++;
    entry.sentOn = connection;
    return { messageId: entry.messageId as number, resend };
  }

  /** Gives a queued message its packet identifier (in memory; record() stores it with the record). */
  #numberEntry(clientId: string, queue: ClientQueue, entry: QueueEntry): boolean {
    const messageId = queue.allocateMessageId();
    if (messageId === undefined) {
      this.#store.counters.packetIdsExhausted++;
      this.#store.log.warn({ clientId }, 'all 65535 packet identifiers of this session are in use: the message waits for the next connection');
      return false;
    }
    queue.update(entry, { messageId });
    return true;
  }

  /** A number for each aedes client object, i.e. each connection. */
  #connectionOf(client: ClientLike): number {
    let connection = this.#connections.get(client);
    if (connection === undefined) {
      connection = this.#nextConnection++;
      this.#connections.set(client, connection);
    }
    return connection;
  }

  /**
   * Records the packet identifier a queued message was sent with, or replaces
   * a PUBLISH by its PUBREL; false when no queued entry matches. The passed
   * packet is what gets stored: it is what went on the wire (the granted
   * QoS, the identifier), so a resend after a restart repeats exactly that
   * [MQTT-4.4.0-1].
   *
   * aedes sends the packet once this resolves. A PUBREL, and a QoS 2 PUBLISH,
   * wait for the disk: a QoS 2 message resent under another identifier after
   * a crash could be delivered twice by a receiver that delivers on PUBLISH.
   * A QoS 1 PUBLISH does not: resent after a crash it may be delivered
   * twice anyway, and aedes resends a reconnecting client's queue one
   * message at a time, so an fsync per message would pace the whole
   * backlog. A resend that changes nothing writes nothing.
   *
   * A QoS 1 PUBLISH sent live (no record cached: not prepared by the resend
   * stream) is not written at all here: its identifier stays in memory
   * (entry.sent) and is stored when the client disconnects or the store
   * stops (LevelStore.clientSeen / stop), unless the PUBACK comes first, as
   * it nearly always does; then only the delete is written. Without this,
   * each message cost a second encoding and a second put. What a crash can
   * lose is the identifier of a message in flight: the message itself is
   * on disk (its publisher's PUBACK waited for that), and it is resent on
   * the next connection under a fresh identifier, as it would be when a
   * crash beat the write-behind of the identifier. For QoS 1 the receiver
   * keeps no state per identifier once it has sent its PUBACK (section
   * 4.3.2 of MQTT 3.1.1 and 5), so the resend is a duplicate either way,
   * which QoS 1 allows; the durable acknowledgement of the publisher is
   * untouched.
   *
   * Synchronous (a boolean) unless it waits for the disk: aedes calls this
   * for every delivery to a persistent session, and a promise made only to
   * be resolved at once costs as much as the rest of this path.
   */
  record(client: ClientLike, packet: PacketLike): boolean | Promise<true> {
    const store = this.#store;
    store.ready();
    const queue = store.queues.get(client.id);
    const entry = queue?.findForUpdate(packet);
    if (!queue || !entry) return false;
    if (packet.cmd === 'publish' && entry.cmd === 'publish' && entry.messageId !== undefined && packet.messageId !== entry.messageId) {
      // A message already sent under one identifier must never be sent
      // under another: a receiver that completed the first would deliver it
      // twice. claim and resendStream hand out the identifier, so this means
      // aedes numbered it itself; `packet` is what aedes writes next, so it
      // goes out under the identifier already given.
      store.counters.packetIdConflicts++;
      store.log.warn({ clientId: client.id, kept: entry.messageId, offered: packet.messageId }, 'queued message offered under a second packet identifier; the first is kept');
      packet.messageId = entry.messageId;
    }
    if (
      packet.cmd === 'publish' &&
      packet.qos === 1 &&
      entry.cmd === 'publish' &&
      entry.value === undefined &&
      store.isOnline(client.id)
    ) {
      queue.update(entry, { brokerId: packet.brokerId, brokerCounter: packet.brokerCounter, messageId: packet.messageId });
      entry.sent = packet;
      return true;
    }
    const data = packetData(packet);
    const value = encodePacket(data);
    entry.sent = undefined;
    if (entry.value?.equals(value)) return true;
    const cmd = typeof data.cmd === 'string' ? data.cmd : 'publish';
    queue.update(entry, {
      cmd,
      brokerId: data.brokerId,
      brokerCounter: data.brokerCounter,
      messageId: data.messageId,
      bytes: value.length,
    });
    entry.value = store.isOnline(client.id) ? detached(value) : undefined;
    const ops: BatchOp[] = [{ type: 'put', key: outgoingKey(client.id, entry.seq), value }];
    if (cmd === 'publish' && data.qos === 1) {
      store.writeBehind(ops, 'queued message identifier');
      return true;
    }
    return store.write(ops).then(() => true);
  }

  /**
   * Removes a queued message not yet past PUBREC, found by its broker id and
   * counter; false when there is none. The delete is queued in this call, so
   * it lands in the same batch as writes made in the same turn.
   */
  take(clientId: string, brokerId: unknown, brokerCounter: unknown): { removed: boolean; written: Promise<void> } {
    const store = this.#store;
    store.ready();
    const queue = store.queues.get(clientId);
    const entry = queue?.findByCounter(brokerId, brokerCounter);
    if (!queue || !entry || entry.cmd !== 'publish') return { removed: false, written: Promise.resolve() };
    const ops: BatchOp[] = [];
    this.#removeEntry(clientId, entry, ops);
    return { removed: true, written: store.write(ops) };
  }

  /**
   * Removes the entry a PUBACK/PUBCOMP acknowledges and returns its packet.
   *
   * The delete is written behind: nothing is owed to the client for its
   * acknowledgement, and waiting for the fsync would hold up aedes' reading
   * of that client (it reads the next packets once these are handled), so a
   * subscriber's inflight window would turn over once per fsync. A crash
   * that loses the delete resends the message on the next connection: a
   * duplicate QoS 1 allows [MQTT-4.3.2], a PUBREL the receiver answers
   * again [MQTT-4.3.3-11]. Batches land in order, so a later record that
   * reuses the packet identifier is never durable without this delete.
   */
  acknowledge(clientId: string, messageId: unknown): Promise<PacketLike | undefined> {
    const store = this.#store;
    try {
      store.ready();
    } catch (error) {
      return Promise.reject(error);
    }
    const queue = store.queues.get(clientId);
    const entry = queue?.findForClear(messageId);
    if (!queue || !entry) return Promise.resolve(undefined);
    this.#dropEntry(clientId, entry);
    const key = outgoingKey(clientId, entry.seq);
    const ops: BatchOp[] = [];
    store.forgetIfStateless(clientId, ops);
    const sent = entry.sent;
    if (sent !== undefined) {
      // Sent live (see record): the packet is at hand, no read or decode.
      // It is handed back as it is, as aedes' own persistence hands back the
      // object it queued: aedes is done with it once acknowledged.
      entry.sent = undefined;
      ops.unshift({ type: 'del', key });
      store.writeBehind(ops, 'removal of an acknowledged message');
      return Promise.resolve(sent);
    }
    return store.track(async () => {
      const value = await store.readAndDelete(key, ops, entry.value, false);
      return value ? store.decode(key, value, undefined) : undefined;
    });
  }

  /** The queue as stored, packet identifiers as they are (none for a message never sent). */
  storedStream(clientId: string): Readable {
    this.#store.ready();
    return this.#queueStream(clientId, (chunk, keys, values) =>
      chunk.flatMap((entry, i): PacketLike[] => {
        // In flight, its identifier not stored yet (see record): as it will be stored.
        if (entry.sent !== undefined) return [packetData(entry.sent)];
        const packet = this.#storedPacket(clientId, entry, keys[i]!, values[i]);
        return packet ? [packet] : [];
      }),
    );
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
   *   deliveries (claim): each message leaves once per connection.
   * The identifiers given here to QoS 2 messages and PUBRELs are stored with
   * one write per chunk, which a QoS 2 message waits for before it is sent
   * (see record); aedes' outgoingUpdate then finds the record unchanged and
   * writes nothing. So a backlog costs one fsync per chunk, not one per
   * message. A QoS 1 message's identifier stays in memory, as for one sent
   * live (see #resends).
   */
  resendStream(client: ClientLike): Readable {
    const store = this.#store;
    store.ready();
    const connection = this.#connectionOf(client);
    return this.#queueStream(client.id, async (chunk, keys, values) => {
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
   * Entries removed meanwhile (acknowledged, dropped) are skipped.
   */
  #queueStream(
    clientId: string,
    decide: (chunk: QueueEntry[], keys: Buffer[], values: Array<Buffer | undefined>) => PacketLike[] | Promise<PacketLike[]>,
  ): Readable {
    const entries = [...(this.#store.queues.get(clientId)?.entries() ?? [])];
    const queues = this;
    async function* generate(): AsyncGenerator<PacketLike> {
      for (let start = 0; start < entries.length; start += STREAM_CHUNK) {
        const chunk = entries.slice(start, start + STREAM_CHUNK).filter((entry) => queues.#holds(clientId, entry));
        const keys = chunk.map((entry) => outgoingKey(clientId, entry.seq));
        const values = await queues.#readValues(chunk, keys);
        yield* await decide(chunk, keys, values);
      }
    }
    return Readable.from(generate());
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
      if (this.#expired(entry)) {
        this.#expire(clientId, entry, ops);
        return;
      }
      const value = values[i];
      const stored = this.#storedPacket(clientId, entry, keys[i]!, value);
      if (!stored || !value) return;
      let packet: PacketLike;
      if (entry.cmd !== 'publish') {
        packet = stored.cmd === entry.cmd ? stored : { cmd: entry.cmd, messageId: entry.messageId };
      } else if (entry.messageId !== undefined) {
        packet = { ...stored, cmd: 'publish', messageId: entry.messageId, dup: true };
        store.counters.resentMessages++;
      } else {
        if (!this.#numberEntry(clientId, queue, entry)) return;
        packet = { ...stored, cmd: 'publish', messageId: entry.messageId };
      }
      entry.sentOn = connection;
      if (online && packet.cmd === 'publish' && packet.qos === 1) {
        // As for one sent live (see record): the identifier stays in memory
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

  /** The records of queued entries: the cached copy where there is one, else the group commit's queued write or the disk. */
  async #readValues(chunk: readonly QueueEntry[], keys: readonly Buffer[]): Promise<Array<Buffer | undefined>> {
    const cached = chunk.map((entry) => entry.value);
    const missing = keys.filter((_, i) => cached[i] === undefined);
    const read = missing.length > 0 ? await this.#store.readMany(missing) : [];
    let next = 0;
    return chunk.map((_, i) => cached[i] ?? read[next++]);
  }

  /** Decodes a queued entry's record; undefined (and the entry dropped) when it is missing or undecodable. */
  #storedPacket(clientId: string, entry: QueueEntry, key: Buffer, value: Buffer | undefined): PacketLike | undefined {
    if (!value) {
      // Indexed but not stored: its write failed. Drop it so limits and counts stay true.
      if (this.#holds(clientId, entry)) this.#dropEntry(clientId, entry);
      return undefined;
    }
    return this.#store.decode(key, value, () => this.#dropEntry(clientId, entry));
  }

  /**
   * Whether a queued message may no longer be sent: its Message Expiry
   * Interval has passed and it was never sent [MQTT-3.3.2-5]. The interval is
   * wall-clock time (aedes stores the instant it ends, `messageExpiry`), so
   * time the broker was down counts, unlike for sessions: the message's
   * publisher said how long its content is worth anything. One already sent
   * is on its way and is completed (resent) as usual. aedes gives the ones
   * sent the interval that remains (handlers/connect.js emptyQueue) [MQTT-3.3.2-6].
   */
  #expired(entry: QueueEntry): boolean {
    return entry.expiresAt !== undefined && entry.cmd === 'publish' && entry.messageId === undefined && entry.expiresAt <= this.#store.now();
  }

  /** Drops an expired message from its queue (ops delete its record) and counts it. */
  #expire(clientId: string, entry: QueueEntry, ops: BatchOp[]): void {
    this.#removeEntry(clientId, entry, ops);
    this.#store.counters.expiredMessages++;
  }

  /** Drops an entry from its queue, its record with `ops`, and the session's bookkeeping if nothing is left. */
  #removeEntry(clientId: string, entry: QueueEntry, ops: BatchOp[]): void {
    this.#dropEntry(clientId, entry);
    ops.push({ type: 'del', key: outgoingKey(clientId, entry.seq) });
    this.#store.forgetIfStateless(clientId, ops);
  }

  #holds(clientId: string, entry: QueueEntry): boolean {
    return this.#store.queues.get(clientId)?.holds(entry) ?? false;
  }

  #dropEntry(clientId: string, entry: QueueEntry): void {
    this.#store.queues.get(clientId)?.remove(entry);
    this.#store.queues.release(clientId);
  }
}
