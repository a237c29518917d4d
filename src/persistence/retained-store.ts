/**
 * The store's retained messages: all of them in memory, payloads included
 * (store.ts explains why), each also a LevelDB record. In memory each record
 * is a one-byte string of its bytes, or a buffer when large (codec.ts keptRecord says why).
 */
import { Readable } from 'node:stream';
import { encodeRetained, keptRecord, keptRecordBytes, type KeptRecord, type PacketLike } from './codec.js';
import { retainedKey } from './keys.js';
import type { LevelStore } from './store.js';

const SYS_PREFIX = '$SYS/';

export class RetainedStore {
  readonly #store: LevelStore;

  constructor(store: LevelStore) {
    this.#store = store;
  }

  /**
   * Stores `packet` as its topic's retained message, or clears it when the
   * payload is empty [MQTT-3.3.1-10]. Write-behind: returns once memory holds
   * it and its write is queued (the adapter's header says why).
   */
  retain(packet: PacketLike): void {
    const store = this.#store;
    store.ready();
    const topic = packet.topic as string;
    const key = retainedKey(topic);
    const payload = packet.payload as { length: number } | undefined;
    if (!payload || payload.length === 0) {
      const previous = store.retained.take(topic);
      if (previous === undefined) return;
      store.retainedBytes -= previous.length;
      store.writeBehind([{ type: 'del', key }], 'retained message');
      return;
    }
    const value = encodeRetained(packet);
    const previous = store.retained.replace(topic, keptRecord(value));
    store.retainedBytes += value.length - (previous?.length ?? 0);
    // The broker's own $SYS figures change every few seconds and are
    // published again at each start: kept in memory only, as mosquitto does,
    // so that they cost the disk (an SD card, often) nothing.
    if (topic.startsWith(SYS_PREFIX)) return;
    store.writeBehind([{ type: 'put', key, value }], 'retained message');
  }

  /**
   * The retained messages matching `patterns`, from memory: the set is taken
   * synchronously (a message stored or cleared later is not in it), and the
   * stream never waits for the disk. Records are decoded as they are read.
   */
  matching(patterns: readonly string[]): Readable {
    const store = this.#store;
    store.ready();
    // A Map: a topic matched by two of the filters is sent once.
    const matches = new Map<string, KeptRecord>();
    for (const pattern of patterns) store.retained.match(pattern, (topic, value) => matches.set(topic, value));
    store.counters.retainedLookups++;
    function* generate(): Generator<PacketLike> {
      for (const [topic, value] of matches) {
        const packet = store.decode(() => retainedKey(topic), keptRecordBytes(value), () => forget(topic, value));
        if (!packet) continue;
        if (typeof packet.messageExpiry === 'number' && packet.messageExpiry <= store.now()) {
          // Its Message Expiry Interval has passed: no longer sent, and removed
          // [MQTT-3.3.2-5]. aedes would clear it too, uncounted
          // (handlers/subscribe.js), and gives the ones sent the interval
          // that remains [MQTT-3.3.2-6]. Wall-clock time, as for queued
          // messages (queue-store.ts): time the broker was down counts.
          expire(topic, value);
          continue;
        }
        yield packet;
      }
    }
    /** Drops `topic` from memory if `value` is still its message; whether it was. */
    function forget(topic: string, value: KeptRecord): boolean {
      if (store.retained.get(topic) !== value) return false;
      store.retained.delete(topic);
      store.retainedBytes -= value.length;
      return true;
    }
    function expire(topic: string, value: KeptRecord): void {
      if (!forget(topic, value)) return;
      store.counters.expiredRetained++;
      store.writeBehind([{ type: 'del', key: retainedKey(topic) }], 'removal of an expired retained message');
    }
    return Readable.from(generate());
  }
}
