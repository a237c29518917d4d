/**
 * Components riding on each PUBLISH's durable batch (the NATS bridge outbox
 * and importer): each tap adds its records to the batch that the message's
 * PUBACK or PUBREC waits for, so they commit together with the message's
 * session records or not at all.
 */
import type { BatchOp } from './group-commit.js';
import type { PacketLike } from './codec.js';
import type { PublishTap } from './types.js';

export class PublishTaps {
  #taps: PublishTap[] = [];

  /** Adds a tap; returns the function that removes it. */
  add(tap: PublishTap): () => void {
    this.#taps.push(tap);
    return () => {
      this.#taps = this.#taps.filter((other) => other !== tap);
    };
  }

  /** Adds every tap's records for `packet` to `ops`. */
  collect(packet: PacketLike, ops: BatchOp[]): void {
    for (const tap of this.#taps) {
      const extra = tap(packet);
      if (extra) ops.push(...extra);
    }
  }
}
