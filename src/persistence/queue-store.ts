/**
 * The store's outgoing queues: the QoS 1/2 messages (and PUBRELs) each
 * persistent session still owes its client, and which packet identifier
 * each message goes out under.
 */
import type { Readable } from 'node:stream';
import { detached, encodeQueued, encodePacket, packetData, type PacketLike, type QueuedRecord } from './codec.js';
import type { BatchOp } from './group-commit.js';
import { Connections, dropEntry, expireEntry, isExpired, numberEntry, removeEntry } from './queue-entries.js';
import { QueueStreams, type QueueChunks } from './queue-streams.js';
import type { LevelStore } from './store.js';
import { newQueueEntry, type QueueEntry } from './outgoing-queues.js';
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

/** An entry queued for an offline client, its record to cache once durable (QueueStore.#cache). */
interface ToCache {
  clientId: string;
  entry: QueueEntry;
  record: Buffer;
}

function noop(): void {}

export class QueueStore {
  readonly #store: LevelStore;
  /** A number per aedes client object: which connection a queued message was handed out on. */
  readonly #connections = new Connections();
  readonly #streams: QueueStreams;

  constructor(store: LevelStore) {
    this.#store = store;
    this.#streams = new QueueStreams(store, this.#connections);
  }

  /**
   * Queues `packet` for each recipient, at min(published QoS, granted QoS)
   * [MQTT-3.8.4-6], and resolves once that is durable. The publish taps see
   * the message as published, once. This is the last persistence step of a
   * QoS 1/2 PUBLISH before anything is acknowledged (a QoS 1 message's live
   * deliveries do not wait for it, src/broker/aedes-seam/qos-publish.ts), usually
   * with nobody offline: the barrier of the write-behind records of the same
   * PUBLISH (see the adapter's header). Its own write goes into the newest
   * batch, which holds them; without one, a PUBLISH that wrote something
   * before (a retained message, a QoS 2 packet) waits for the newest batch.
   */
  enqueue(packet: PacketLike, recipients: readonly Recipient[], tap = true): Promise<void> {
    try {
      return this.enqueueNow(packet, recipients, tap) ?? Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * enqueue, with undefined instead of a promise when there is nothing to
   * wait for (no recipient and nothing else written: a QoS 1 message nobody
   * persistent subscribes to, the usual case), and its errors thrown. Not
   * async: the promise is the batch's own, shared by every write in it, so
   * queuing a message makes no promise of its own.
   */
  enqueueNow(packet: PacketLike, recipients: readonly Recipient[], tap = true): Promise<void> | undefined {
    const store = this.#store;
    const { commit } = store.ready();
    const ops: BatchOp[] = [];
    if (tap) store.taps.collect(packet, ops);
    if (recipients.length === 0) {
      if (ops.length > 0) return store.write(ops);
      if (packet.retain === true || packet.qos === 2) return commit.barrier();
      return undefined;
    }
    // One encoding per outcome, shared by every recipient it applies to.
    let asPublished: QueuedRecord | undefined;
    let downgraded: Array<QueuedRecord | undefined> | undefined;
    let adjusted: Map<string, QueuedRecord> | undefined;
    // Entries queued for offline clients, with their records, for the queue cache.
    let toCache: ToCache[] | undefined;
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
      const offline = this.#append(clientId, copy, ops);
      if (offline !== undefined) (toCache ??= []).push({ clientId, entry: offline, record: copy.value });
    }
    const written = store.write(ops);
    // Cached once durable: until then the record may never reach the disk (a failed write leaves
    // the entry to be dropped when its record is found missing), and a copy would be sent anyway.
    if (toCache !== undefined) written.then(() => this.#cache(toCache!), noop);
    return written;
  }

  /** Hands the queue cache the records of entries queued for offline clients (see #enqueue), those still queued and never sent. */
  #cache(held: readonly ToCache[]): void {
    for (const { clientId, entry, record } of held) {
      const queue = this.#store.queues.get(clientId);
      if (queue?.holds(entry) === true && !this.#store.isOnline(clientId)) queue.cache(entry, record);
    }
  }

  /** Queues one copy; answers the entry when its client is offline and the queue cache has room for it now (see #cache). */
  #append(clientId: string, { value, cmd, brokerId, brokerCounter, messageExpiry }: QueuedRecord, ops: BatchOp[]): QueueEntry | undefined {
    const store = this.#store;
    const online = store.isOnline(clientId);
    const queue = store.queues.getOrCreate(clientId);
    const seq = store.nextSeq();
    // Not kept in memory even for a connected client: aedes sends it under a
    // new packet identifier, and record() keeps that record instead. A
    // stalled client's backlog thus stays on disk, not in RAM (an offline
    // one's goes to the queue cache while it has room, see #cache).
    const entry = newQueueEntry({
      seq,
      cmd,
      brokerId,
      brokerCounter,
      // None yet: each session gives its own when the message is sent [MQTT-2.3.1-2].
      messageId: undefined,
      bytes: value.length,
      expiresAt: messageExpiry,
    });
    queue.append(entry);
    ops.push({ type: 'put', key: queue.keyOf(clientId, seq), value });
    store.sessions.start(clientId, store.now(), ops);
    // Bounded whether the client is connected or not: a stalled persistent
    // subscriber would otherwise grow the store without limit. Online, only
    // messages not sent yet are dropped (see queue-limits.ts); aedes or the
    // flow control skip them (claim). A message larger than
    // maxQueuedBytesPerClient drops itself: release an emptied queue.
    if (store.limiter.enforce(clientId, queue, ops, online) > 0) store.queues.release(clientId);
    return online || !store.queues.cache.hasRoom(value.length) ? undefined : entry;
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
    if (isExpired(this.#store, entry)) {
      const ops: BatchOp[] = [];
      expireEntry(this.#store, client.id, entry, ops);
      store.writeBehind(ops, 'removal of an expired message');
      return undefined;
    }
    const connection = this.#connections.of(client);
    if (entry.sentOn === connection) {
      store.counters.repeatSendsAvoided++;
      return undefined;
    }
    const resend = entry.messageId !== undefined;
    if (!resend && !numberEntry(this.#store, client.id, queue, entry)) return undefined;
    if (resend) store.counters.resentMessages++;
    entry.sentOn = connection;
    return { messageId: entry.messageId as number, resend };
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
      // claim numbered the entry already; only a packet aedes numbered itself differs.
      if (entry.messageId !== packet.messageId || entry.brokerId !== packet.brokerId || entry.brokerCounter !== packet.brokerCounter) {
        queue.update(entry, { brokerId: packet.brokerId, brokerCounter: packet.brokerCounter, messageId: packet.messageId });
      }
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
    const ops: BatchOp[] = [{ type: 'put', key: queue.keyOf(client.id, entry.seq), value }];
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
    removeEntry(this.#store, clientId, entry, ops);
    return { removed: true, written: store.write(ops) };
  }

  /**
   * Removes the entry a PUBACK/PUBCOMP acknowledges and returns its packet.
   *
   * The delete is written lazily (LevelStore.writeLazily): nothing is owed
   * to the client for its acknowledgement, and waiting for the fsync would
   * hold up aedes' reading of that client (it reads the next packets once
   * these are handled), so a subscriber's inflight window would turn over
   * once per fsync. Nor does it get an fsync, or a batch, of its own: it
   * rides with the next write, or goes with the other deletes of the next
   * 50 ms in one batch (a resent backlog of 20,000 QoS 1 messages wrote a
   * batch and an fsync per event-loop turn for its acknowledgements
   * alone). A crash that loses the delete resends the
   * message on the next connection: a duplicate QoS 1 allows [MQTT-4.3.2],
   * a PUBREL the receiver answers again [MQTT-4.3.3-11]. Writes land in
   * order, so a later record that reuses the packet identifier is never
   * durable without this delete.
   */
  acknowledge(clientId: string, messageId: unknown): Promise<PacketLike | undefined> {
    try {
      const acknowledged = this.acknowledgeNow(clientId, messageId);
      return acknowledged instanceof Promise ? acknowledged : Promise.resolve(acknowledged);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * acknowledge without a promise where the packet is at hand (nearly
   * always): the packet, or undefined when no entry holds `messageId`; a
   * promise only when the record must be read from disk. Errors are thrown.
   */
  acknowledgeNow(clientId: string, messageId: unknown): PacketLike | undefined | Promise<PacketLike | undefined> {
    const store = this.#store;
    store.ready();
    const queue = store.queues.get(clientId);
    const entry = queue?.findForClear(messageId);
    if (!queue || !entry) return undefined;
    const key = queue.keyOf(clientId, entry.seq);
    dropEntry(this.#store, clientId, entry);
    // A session left without state loses its clock record: written behind, not lazily, since
    // that key may be written again (the client subscribes) and is read through pending().
    const sessionOps: BatchOp[] = [];
    store.forgetIfStateless(clientId, sessionOps);
    if (sessionOps.length > 0) store.writeBehind(sessionOps, 'removal of a session record');
    const ops: BatchOp[] = [{ type: 'del', key }];
    const sent = entry.sent;
    if (sent !== undefined) {
      // Sent live (see record): the packet is at hand, no read or decode.
      // It is handed back as it is, as aedes' own persistence hands back the
      // object it queued: aedes is done with it once acknowledged.
      entry.sent = undefined;
      store.writeLazily(ops, 'removal of an acknowledged message');
      return sent;
    }
    const known = entry.value ?? store.pending(key);
    if (known !== undefined) {
      // The record is at hand (cached while in flight, as a PUBREL's is, or
      // still to be written): decoded now, no read to wait for or track.
      store.writeLazily(ops, 'removal of an acknowledged message');
      return known === null ? undefined : store.decode(key, known, undefined);
    }
    return store.track(async () => {
      // Neither cached nor pending (see above): read from the disk.
      const value = await store.readAndDelete(key, [], undefined, false);
      return value ? store.decode(key, value, undefined) : undefined;
    });
  }

  /** The queue as stored, packet identifiers as they are (see QueueStreams.storedStream). */
  storedStream(clientId: string): Readable {
    return this.#streams.storedStream(clientId);
  }

  /** The stored messages to send again on a new connection, in queue order (see QueueStreams.resendStream). */
  resendStream(client: ClientLike): Readable {
    return this.#streams.resendStream(client);
  }

  /** resendStream a chunk at a time (see QueueStreams.resendChunks). */
  resendChunks(client: ClientLike): QueueChunks {
    return this.#streams.resendChunks(client);
  }
}
