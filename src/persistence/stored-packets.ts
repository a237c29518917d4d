/**
 * Stored packets read back: decoding a record, where one that fails is
 * counted, skipped and quarantined, and streaming the records under a list
 * of keys a chunk at a time. The store core's decode and streamKeys
 * (store.ts), which its parts use.
 */
import { Readable } from 'node:stream';
import type { Logger } from '../observability/logger.js';
import { decodePacket, type PacketLike } from './codec.js';
import type { BatchOp } from './group-commit.js';
import { quarantineOps } from './recover.js';

// Values fetched per LevelDB getMany while streaming.
export const STREAM_CHUNK = 64;

/** What decoding and streaming need of the store (LevelStore's members). */
export interface StoredPacketSource {
  readonly log: Logger;
  readonly counters: { decodeErrors: number; quarantinedRecords: number };
  pending(key: Buffer): Buffer | null | undefined;
  write(ops: readonly BatchOp[]): Promise<void>;
  readMany(keys: readonly Buffer[]): Promise<Array<Buffer | undefined>>;
  decode(key: StoredKey, value: Buffer, forget: (() => void) | undefined): PacketLike | undefined;
}

/** A record's key, or how to make it: needed only when the record fails to decode (a retained message's is made from its topic). */
export type StoredKey = Buffer | (() => Buffer);

/**
 * Decodes a stored packet. One that fails is logged, counted and skipped:
 * `forget` drops it from the in-memory index, and unless a newer write to
 * the key is queued it moves to the quarantine range.
 */
export function decodeStored(store: StoredPacketSource, storedKey: StoredKey, value: Buffer, forget: (() => void) | undefined): PacketLike | undefined {
  try {
    return decodePacket(value);
  } catch (error) {
    const key = typeof storedKey === 'function' ? storedKey() : storedKey;
    store.counters.decodeErrors++;
    store.log.warn({ key: key.toString('hex'), err: (error as Error).message }, 'skipping a record that fails to decode');
    if (forget) {
      forget();
      if (store.pending(key) === undefined) {
        store.counters.quarantinedRecords++;
        store.write(quarantineOps(key, value)).catch((writeError: unknown) =>
          store.log.warn({ err: writeError }, 'could not quarantine a record'),
        );
      }
    }
    return undefined;
  }
}

/** The packets stored under `keys`, read a chunk at a time; `amend` adjusts each before it is yielded. */
export function streamStored(store: StoredPacketSource, keys: readonly Buffer[], amend: (packet: PacketLike) => void): Readable {
  async function* generate(): AsyncGenerator<PacketLike> {
    for (let start = 0; start < keys.length; start += STREAM_CHUNK) {
      const chunk = keys.slice(start, start + STREAM_CHUNK);
      const values = await store.readMany(chunk);
      const packets: PacketLike[] = [];
      values.forEach((value, i) => {
        if (!value) return;
        const packet = store.decode(chunk[i]!, value, undefined);
        if (!packet) return;
        amend(packet);
        packets.push(packet);
      });
      yield* packets;
    }
  }
  return Readable.from(generate());
}
