/**
 * Versions of the bridged retained messages: for each topic, the time (at
 * the site that published it, ms since the epoch) of the retained value in
 * force here. A retained message imported from another site is applied as
 * retained only if it is not older than that, so a site replaying its
 * backlog after a long outage does not overwrite a newer value set elsewhere
 * meanwhile; it is still delivered, as a message that is no longer current.
 * Written in the batch of the message that set it; read back at start.
 *
 * Times come from the sites' clocks: keep them in step (NTP). Equal times
 * are applied (the later arrival wins).
 */
import type { BatchOp } from '../persistence/index.js';
import { componentPrefix, prefixRange } from '../persistence/index.js';
import { u64, type RangeReader } from './outbox.js';

const PREFIX = Buffer.concat([componentPrefix('bridge'), Buffer.from('r')]);
const RANGE_END = prefixRange(PREFIX).lt;

export interface RetainedVersionsStore {
  readonly db: RangeReader;
}

export class RetainedVersions {
  readonly #times = new Map<string, number>();

  async load(store: RetainedVersionsStore): Promise<void> {
    for await (const [key, value] of store.db.iterator({ gte: PREFIX, lt: RANGE_END })) {
      this.#times.set(key.subarray(PREFIX.length).toString('utf8'), Number(value.readBigUInt64BE(0)));
    }
  }

  /**
   * Whether a retained value from `time` may replace the one in force for
   * `topic`; if so it is in force from now on (decided here, at once, so
   * that of two imports in flight together the older cannot win).
   */
  claim(topic: string, time: number): boolean {
    if (time < (this.#times.get(topic) ?? 0)) return false;
    this.#times.set(topic, time);
    return true;
  }

  /** A retained value set here now: in force, newest by definition; the ops go into its message's batch. */
  set(topic: string, time: number): BatchOp[] {
    this.#times.set(topic, Math.max(time, this.#times.get(topic) ?? 0));
    return this.persist(topic);
  }

  /** The ops that store the time in force for `topic`. */
  persist(topic: string): BatchOp[] {
    const value = u64(Math.max(0, Math.round(this.#times.get(topic) ?? 0)));
    return [{ type: 'put', key: Buffer.concat([PREFIX, Buffer.from(topic, 'utf8')]), value }];
  }
}
