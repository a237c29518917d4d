/**
 * Steps on one entry of a client's outgoing queue, shared by the queue's
 * updates (queue-store.ts) and its streams (queue-streams.ts): numbering,
 * expiry, removal, and which connection a message was handed out on.
 */
import type { BatchOp } from './group-commit.js';
import { outgoingKey } from './keys.js';
import type { ClientQueue, QueueEntry } from './outgoing-queues.js';
import type { LevelStore } from './store.js';
import type { ClientLike } from './types.js';

/** A number per aedes client object: which connection a queued message was handed out on. */
export class Connections {
  readonly #connections = new WeakMap<ClientLike, number>();
  #nextConnection = 1;

  /** A number for each aedes client object, i.e. each connection. */
  of(client: ClientLike): number {
    let connection = this.#connections.get(client);
    if (connection === undefined) {
      connection = this.#nextConnection++;
      this.#connections.set(client, connection);
    }
    return connection;
  }
}

/** Gives a queued message its packet identifier (in memory; record() stores it with the record). */
export function numberEntry(store: LevelStore, clientId: string, queue: ClientQueue, entry: QueueEntry): boolean {
  const messageId = queue.allocateMessageId();
  if (messageId === undefined) {
    store.counters.packetIdsExhausted++;
    store.log.warn({ clientId }, 'all 65535 packet identifiers of this session are in use: the message waits for the next connection');
    return false;
  }
  queue.number(entry, messageId);
  return true;
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
export function isExpired(store: LevelStore, entry: QueueEntry): boolean {
  return entry.expiresAt !== undefined && entry.cmd === 'publish' && entry.messageId === undefined && entry.expiresAt <= store.now();
}

/** Drops an expired message from its queue (ops delete its record) and counts it. */
export function expireEntry(store: LevelStore, clientId: string, entry: QueueEntry, ops: BatchOp[]): void {
  removeEntry(store, clientId, entry, ops);
  store.counters.expiredMessages++;
}

/** Drops an entry from its queue, its record with `ops`, and the session's bookkeeping if nothing is left. */
export function removeEntry(store: LevelStore, clientId: string, entry: QueueEntry, ops: BatchOp[]): void {
  dropEntry(store, clientId, entry);
  ops.push({ type: 'del', key: outgoingKey(clientId, entry.seq) });
  store.forgetIfStateless(clientId, ops);
}

export function holdsEntry(store: LevelStore, clientId: string, entry: QueueEntry): boolean {
  return store.queues.get(clientId)?.holds(entry) ?? false;
}

export function dropEntry(store: LevelStore, clientId: string, entry: QueueEntry): void {
  store.queues.get(clientId)?.remove(entry);
  store.queues.release(clientId);
}
