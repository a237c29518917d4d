/**
 * Start-up recovery: reads the store once, range by range, and rebuilds the
 * in-memory indexes (subscriptions, retained topics, queues, pending QoS 2
 * packets, wills, session times, retained messages with their payloads).
 * Progress is logged every `progressEvery` records and the total with its
 * duration at the end.
 *
 * A record that fails to decode is logged, counted and moved to the
 * quarantine range (kept for inspection, out of the hot ranges); recovery goes
 * on. An error from LevelDB itself (corruption, I/O) stops start-up.
 */
import type { Logger } from '../observability/logger.js';
import { decodePacket, decodeSubscription, keptRecord, messageExpiryOf, WILL_DUE_AT, type KeptRecord, type PacketLike } from './codec.js';
import { classifyStoreError, StoreIncompatibleError } from './errors.js';
import type { BatchOp } from './group-commit.js';
import {
  decodeSession,
  decodeTime,
  encodeTime,
  metaKey,
  namespaceRange,
  parseClientOnlyKey,
  parseIncomingKey,
  parseOutgoingKey,
  parseRetainedKey,
  parseSubscriptionKey,
  quarantineKey,
  type Namespace,
  type SessionTimes,
} from './keys.js';
import type { Store } from './open-store.js';
import { newQueueEntry, OutgoingQueues } from './outgoing-queues.js';
import { SubscriptionIndex } from './subscription-index.js';
import { TopicTree } from './topic-tree.js';

/** Layout version in meta 'format'; bump on any incompatible key or value change. */
export const FORMAT_VERSION = 1;
export const META_FORMAT = metaKey('format');
/** Last time (ms since epoch) the store was known to be in use; see session expiry. */
export const META_ALIVE = metaKey('alive');

/** Individual decode failures logged before they are only counted. */
const DECODE_ERRORS_LOGGED = 10;
const SCAN_CHUNK = 1000;

export interface Recovered {
  subscriptions: SubscriptionIndex;
  /** Retained topic → its encoded record. */
  retained: TopicTree<KeptRecord>;
  retainedBytes: number;
  queues: OutgoingQueues;
  /** clientId → packet identifiers of stored incoming QoS 2 packets. */
  incoming: Map<string, Set<number>>;
  /** clientId → its stored will (written by an earlier run): see RecoveredWill. */
  wills: Map<string, RecoveredWill>;
  /** clientId → last seen (ms since epoch) of each persistent session, and its MQTT 5 Session Expiry Interval. */
  sessions: Map<string, SessionTimes>;
  /** Next free outgoing sequence number. */
  nextSeq: number;
  /** Highest brokerCounter queued per brokerId (see LevelPersistence.setup). */
  maxCounters: Map<string, number>;
  aliveAt: number | undefined;
  /** Writes recovery wants made: format marker, quarantine moves. */
  repairOps: BatchOp[];
  decodeErrors: number;
  quarantined: number;
  records: number;
  durationMs: number;
}

/** What start-up needs of a stored will: when it falls due, if its connection closed with a Will Delay Interval running. */
export interface RecoveredWill {
  /** The will as stored; kept only for a delayed will, whose due time start-up may move. */
  packet?: PacketLike;
  /** When the broker was to publish it (ms since epoch): its connection closed, the delay was running [MQTT-3.1.3-9]. */
  dueAt?: number;
  /** Its Will Delay Interval (s), when it has one. */
  delaySec?: number;
}

export function quarantineOps(key: Buffer, value: Buffer): BatchOp[] {
  return [
    { type: 'put', key: quarantineKey(key), value },
    { type: 'del', key },
  ];
}

export async function recover(db: Store, location: string, log: Logger, progressEvery: number): Promise<Recovered> {
  const started = performance.now();
  const result: Recovered = {
    subscriptions: new SubscriptionIndex(),
    retained: new TopicTree<KeptRecord>(),
    retainedBytes: 0,
    queues: new OutgoingQueues(),
    incoming: new Map(),
    wills: new Map(),
    sessions: new Map(),
    nextSeq: 1,
    maxCounters: new Map(),
    aliveAt: undefined,
    repairOps: [],
    decodeErrors: 0,
    quarantined: 0,
    records: 0,
    durationMs: 0,
  };

  function bad(namespace: Namespace, key: Buffer, value: Buffer | undefined, error: unknown): void {
    result.decodeErrors++;
    if (result.decodeErrors <= DECODE_ERRORS_LOGGED) {
      log.warn({ namespace, key: key.toString('hex'), err: (error as Error).message }, 'skipping a record that fails to decode');
    }
    result.repairOps.push(...quarantineOps(key, value ?? Buffer.alloc(0)));
  }

  async function scan(
    namespace: Namespace,
    withValues: boolean,
    onRecord: (key: Buffer, value: Buffer | undefined) => void,
  ): Promise<void> {
    const iterator = db.iterator({ ...namespaceRange(namespace), keys: true, values: withValues });
    try {
      for (;;) {
        const entries = await iterator.nextv(SCAN_CHUNK);
        if (entries.length === 0) break;
        for (const [key, value] of entries) {
          try {
            onRecord(key, value);
          } catch (error) {
            bad(namespace, key, value, error);
          }
          result.records++;
          if (result.records % progressEvery === 0) {
            log.info(
              { records: result.records, namespace, elapsedMs: Math.round(performance.now() - started) },
              'recovering store',
            );
          }
        }
      }
    } finally {
      await iterator.close();
    }
  }

  try {
    await checkFormat(db, location, result);
    const aliveValue = await db.get(META_ALIVE);
    if (aliveValue) result.aliveAt = decodeTime(aliveValue);

    await scan('subscription', true, (key, value) => {
      const { clientId, topic } = parseSubscriptionKey(key);
      result.subscriptions.restore(clientId, topic, decodeSubscription(value!));
    });
    await scan('outgoing', true, (key, value) => {
      const { clientId, seq } = parseOutgoingKey(key);
      const packet = decodePacket(value!);
      result.queues.getOrCreate(clientId).append(
        newQueueEntry({
          seq,
          cmd: typeof packet.cmd === 'string' ? packet.cmd : 'publish',
          brokerId: packet.brokerId,
          brokerCounter: packet.brokerCounter,
          messageId: packet.messageId,
          bytes: value!.length,
          expiresAt: messageExpiryOf(packet),
        }),
      );
      result.nextSeq = Math.max(result.nextSeq, seq + 1);
      if (typeof packet.brokerId === 'string' && typeof packet.brokerCounter === 'number') {
        const max = result.maxCounters.get(packet.brokerId) ?? 0;
        if (packet.brokerCounter > max) result.maxCounters.set(packet.brokerId, packet.brokerCounter);
      }
    });
    await scan('incoming', false, (key) => {
      const { clientId, messageId } = parseIncomingKey(key);
      let ids = result.incoming.get(clientId);
      if (!ids) {
        ids = new Set();
        result.incoming.set(clientId, ids);
      }
      ids.add(messageId);
    });
    await scan('will', true, (key, value) => {
      const clientId = parseClientOnlyKey(key);
      const packet = decodePacket(value!);
      const dueAt = packet[WILL_DUE_AT];
      const delay = (packet.properties as { willDelayInterval?: unknown } | undefined)?.willDelayInterval;
      const will: RecoveredWill = {};
      if (typeof dueAt === 'number') {
        will.dueAt = dueAt;
        will.packet = packet;
      }
      if (typeof delay === 'number' && delay > 0) will.delaySec = delay;
      result.wills.set(clientId, will);
    });
    await scan('session', true, (key, value) => {
      result.sessions.set(parseClientOnlyKey(key), decodeSession(value!));
    });
    await scan('retained', true, (key, value) => {
      // Decoded once here so a bad record is quarantined now, not on a SUBSCRIBE.
      decodePacket(value!);
      result.retained.add(parseRetainedKey(key), keptRecord(value!));
      result.retainedBytes += value!.length;
    });
    await scan('quarantine', false, () => {
      result.quarantined++;
    });
  } catch (error) {
    throw classifyStoreError(location, error);
  }

  result.quarantined += result.decodeErrors;
  result.durationMs = Math.round(performance.now() - started);
  if (result.decodeErrors > DECODE_ERRORS_LOGGED) {
    log.warn({ decodeErrors: result.decodeErrors }, 'more records failed to decode; all were quarantined');
  }
  return result;
}

async function checkFormat(db: Store, location: string, result: Recovered): Promise<void> {
  const format = await db.get(META_FORMAT);
  if (format === undefined) {
    // No marker: a fresh store, or a LevelDB some other program wrote. Only
    // the first may be used; reading the second as ours would garble it.
    const keys = await db.keys({ limit: 1 }).all();
    if (keys.length > 0) {
      throw new StoreIncompatibleError(location, 'it holds data but no edgemqtt format marker (another program\'s LevelDB?)');
    }
    const value = Buffer.alloc(4);
    value.writeUInt32BE(FORMAT_VERSION, 0);
    result.repairOps.push({ type: 'put', key: META_FORMAT, value });
    return;
  }
  const version = format.length === 4 ? format.readUInt32BE(0) : -1;
  if (version !== FORMAT_VERSION) {
    throw new StoreIncompatibleError(
      location,
      version > FORMAT_VERSION ? `format ${version} was written by a newer edgemqtt` : `unknown format marker ${format.toString('hex')}`,
    );
  }
}

export function aliveOp(now: number): BatchOp {
  return { type: 'put', key: META_ALIVE, value: encodeTime(now) };
}
