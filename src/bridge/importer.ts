/**
 * Imports what the other sites exported: one durable JetStream consumer per
 * site (`edgemqtt-<site>`, file-backed like its stream, no inactivity
 * threshold, recreated if it disappears), each message published to the
 * local broker with the retain flag it was published with and the QoS of the
 * import rule (never above the one it was published with), and acknowledged
 * to JetStream only once that local publish is durable. Its MQTT 5.0
 * metadata goes with it as the PUBLISH's properties (metadata.ts), the
 * expiry interval less the time it waited since its site took it; one that
 * expired on the way is acknowledged and dropped (stats: expired).
 *
 * Exactly once: each message applied leaves a record of its stream
 * sequence in the same durable batch as its local publish (a publish tap,
 * see LevelPersistence.addPublishTap), removed once the consumer's ack floor
 * has passed it. A redelivery that finds its record (a crash between the
 * local publish and the ack) is acknowledged and skipped.
 *
 * In order, also across a crash: JetStream redelivers the messages a dead
 * process left unacknowledged only after ack_wait, after newer ones. So
 * before consuming, the messages between the consumer's ack floor and its
 * last delivery that have no record are read from the stream and applied, in
 * order; their redeliveries later find their records.
 *
 * Loops: a message whose origin header names this site is skipped, and an
 * imported message is never exported again (tap answers for it, so the
 * export tap does not see it).
 */
import { AckPolicy, DeliverPolicy, type Consumer, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { MsgHdrs } from '@nats-io/transport-node';
import type { Logger } from '../observability/logger.js';
import type { BatchOp, PacketLike } from '../persistence/index.js';
import { componentPrefix, prefixRange } from '../persistence/index.js';
import { topicMatches } from '../config/topic-filter.js';
import { HEADER, readMetadataHeaders, remainingExpiry, toPublishProperties, type PublishProperties } from './metadata.js';
import { filterToSubjects, SubjectCache } from './subjects.js';
import { u64, type QoS, type RangeReader } from './outbox.js';
import type { RetainedVersions } from './retained.js';

export interface ImportRule {
  filter: string;
  qos: number;
}

/**
 * Publishes to the local broker. The message gets its broker counter first
 * and `register` hears it before anything is published: the store's publish
 * taps (QoS 1/2) and the broker's publish event (QoS 0) name the message by
 * it, so the importer can tell its own messages from the others.
 */
export type LocalPublish = (
  packet: { topic: string; payload: Buffer; qos: QoS; retain: boolean; properties?: PublishProperties },
  register: (brokerCounter: number) => void,
) => Promise<void>;

export interface ImporterStore {
  read(key: Buffer): Promise<Buffer | undefined>;
  readonly commit: { write(ops: readonly BatchOp[]): Promise<void> };
  readonly db: RangeReader;
}

export interface ImporterStats {
  imported: number;
  /** Redeliveries of messages already applied (a crash between the local publish and the ack). */
  redeliveries: number;
  /** Messages of this site's own, come back through the stream. */
  loopSkipped: number;
  /** Subjects with no MQTT topic, or matching no import rule. */
  skipped: number;
  /** Retained messages older than the retained value in force here: delivered, not retained. */
  staleRetained: number;
  /** Messages whose Message Expiry Interval had passed when they arrived: not published [MQTT-3.3.2-5]. */
  expired: number;
}

/** The highest stream sequence applied: where a consumer made again starts. */
const LAST_APPLIED = Buffer.concat([componentPrefix('bridge'), Buffer.from('i')]);
/** `a` + sequence: applied, its ack not yet confirmed by JetStream. */
const APPLIED = Buffer.concat([componentPrefix('bridge'), Buffer.from('a')]);
const APPLIED_END = prefixRange(APPLIED).lt;
/** The stream's last sequence when the consumer was made: up to it, only retained messages are applied (the retained state of the other sites). */
const SNAPSHOT_END = Buffer.concat([componentPrefix('bridge'), Buffer.from('s')]);
/** A message to apply: from the consumer, or read from the stream while catching up (no ack then). */
interface Delivery {
  seq: number;
  subject: string;
  data: Uint8Array;
  headers: MsgHdrs | undefined;
  ack(): void;
  nak(millis: number): void;
}

const noop = () => undefined;
/** How often records the ack floor has passed are dropped. */
const SWEEP_MS = 5000;

/** Local publishes in flight at once: their batches share fsyncs. */
const PIPELINE = 256;

export class Importer {
  readonly #rules: ImportRule[];
  readonly #siteId: string;
  readonly #prefix: string;
  readonly #subjects: SubjectCache;
  readonly #stream: string;
  readonly #publish: LocalPublish;
  readonly #log: Logger;
  readonly #store: ImporterStore;
  #snapshotEnd = 0;
  /** brokerCounter → stream sequence (and the retained value's time), for the publish tap, until the local publish is done. */
  readonly #pending = new Map<number, { seq: number; topic: string; retainedAt: number | undefined }>();
  readonly #retained: RetainedVersions;
  #lastApplied = 0;
  /** Applied, ack not confirmed yet (records on disk). */
  readonly #applied = new Set<number>();
  /** Being applied now (a redelivery meanwhile waits for this one's ack). */
  readonly #inProgress = new Set<number>();
  #stopped = false;
  #messages: { stop(): void } | undefined;
  readonly #counters = { imported: 0, redeliveries: 0, loopSkipped: 0, skipped: 0, staleRetained: 0, expired: 0 };

  constructor(
    options: { rules: ImportRule[]; siteId: string; subjectPrefix: string; stream: string },
    deps: { publish: LocalPublish; logger: Logger; store: ImporterStore; retained: RetainedVersions },
  ) {
    this.#retained = deps.retained;
    this.#rules = options.rules;
    this.#siteId = options.siteId;
    this.#prefix = options.subjectPrefix;
    this.#subjects = new SubjectCache(options.subjectPrefix);
    this.#stream = options.stream;
    this.#publish = deps.publish;
    this.#log = deps.logger.child({ component: 'bridge' });
    this.#store = deps.store;
  }

  get durableName(): string {
    return `edgemqtt-${this.#siteId}`;
  }

  async recover(): Promise<void> {
    const value = await this.#store.read(LAST_APPLIED);
    this.#lastApplied = value ? Number(value.readBigUInt64BE(0)) : 0;
    const snapshot = await this.#store.read(SNAPSHOT_END);
    this.#snapshotEnd = snapshot ? Number(snapshot.readBigUInt64BE(0)) : 0;
    for await (const [key] of this.#store.db.iterator({ gte: APPLIED, lt: APPLIED_END })) {
      this.#applied.add(Number(key.readBigUInt64BE(APPLIED.length)));
    }
  }

  /**
   * The publish tap: the record of the applied stream sequence (and a
   * retained value's time) rides on the local publish's batch; undefined for
   * a PUBLISH this importer did not make.
   */
  tap(packet: PacketLike): BatchOp[] | undefined {
    const pending = typeof packet.brokerCounter === 'number' ? this.#pending.get(packet.brokerCounter) : undefined;
    if (pending === undefined) return undefined;
    this.#lastApplied = Math.max(this.#lastApplied, pending.seq);
    const ops: BatchOp[] = [
      { type: 'put', key: appliedKey(pending.seq), value: Buffer.alloc(0) },
      { type: 'put', key: LAST_APPLIED, value: u64(this.#lastApplied) },
    ];
    if (pending.retainedAt !== undefined) ops.push(...this.#retained.persist(pending.topic));
    return ops;
  }

  stats(): ImporterStats {
    return { ...this.#counters };
  }

  /** The one subject the consumer filters on: the rules' own when there is one, else the whole prefix (checked here per message). */
  #filterSubject(): string {
    const subjects = this.#rules.flatMap((rule) => {
      const mapped = filterToSubjects(this.#prefix, rule.filter);
      return mapped.ok ? mapped.subjects : [];
    });
    if (subjects.length === 1) return subjects[0]!;
    return this.#prefix ? `${this.#prefix}.>` : '>';
  }

  /** Creates the durable consumer if missing; a site that starts for the first time begins with the last message of each subject (the retained state). */
  async ensureConsumer(jsm: JetStreamManager): Promise<void> {
    try {
      const info = await jsm.consumers.info(this.#stream, this.durableName);
      await this.#sweep(info.ack_floor.stream_seq);
      return;
    } catch (error) {
      if (!/consumer not found/i.test((error as Error).message)) throw error;
    }
    if (this.#lastApplied === 0) {
      // A site new to the stream starts from the last message of each subject; of those it
      // applies only the retained ones: the others were news before it existed.
      this.#snapshotEnd = (await jsm.streams.info(this.#stream)).state.last_seq;
      await this.#store.commit.write([{ type: 'put', key: SNAPSHOT_END, value: u64(this.#snapshotEnd) }]);
    }
    const filter = this.#filterSubject();
    await jsm.consumers.add(this.#stream, {
      durable_name: this.durableName,
      ack_policy: AckPolicy.Explicit,
      // Made again after it disappeared: from after the last message applied.
      ...(this.#lastApplied === 0
        ? { deliver_policy: DeliverPolicy.LastPerSubject }
        : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.#lastApplied + 1 }),
      filter_subject: filter,
      max_ack_pending: 4 * PIPELINE,
      ack_wait: 30e9,
    });
    this.#log.info({ stream: this.#stream, consumer: this.durableName, filter }, 'created the import consumer');
  }

  /** Consumes until stop() or the connection closes; consume() itself rides through reconnects. */
  async run(js: JetStreamClient, jsm: JetStreamManager): Promise<void> {
    await this.#catchUp(jsm);
    const consumer: Consumer = await js.consumers.get(this.#stream, this.durableName);
    const sweep = async () => this.#sweep((await jsm.consumers.info(this.#stream, this.durableName)).ack_floor.stream_seq);
    const sweeper = setInterval(() => void sweep().catch(() => undefined), SWEEP_MS);
    try {
      await this.#consume(consumer);
    } finally {
      clearInterval(sweeper);
    }
  }

  /** Applies, in order, what the consumer delivered before and nobody applied (see the header). */
  async #catchUp(jsm: JetStreamManager): Promise<void> {
    const info = await jsm.consumers.info(this.#stream, this.durableName);
    for (let seq = info.ack_floor.stream_seq + 1; seq <= info.delivered.stream_seq && !this.#stopped; seq++) {
      if (this.#applied.has(seq)) continue;
      // null: gone from the stream (expired, deleted); any other error stops here and the run is retried.
      const stored = await jsm.streams.getMessage(this.#stream, { seq });
      if (!stored) continue;
      await this.#apply({ seq, subject: stored.subject, data: stored.data, headers: stored.header, ack: noop, nak: noop });
    }
  }

  /** Forgets the records the ack floor (`floor`) has passed: JetStream never delivers those again. */
  async #sweep(floor: number): Promise<void> {
    const settled = [...this.#applied].filter((seq) => seq <= floor);
    for (const seq of settled) this.#applied.delete(seq);
    if (settled.length > 0) await this.#store.commit.write(settled.map((seq) => ({ type: 'del' as const, key: appliedKey(seq) })));
  }

  async #consume(consumer: Consumer): Promise<void> {
    // A consumer deleted meanwhile ends the iteration, and run()'s caller makes it again.
    const messages = await consumer.consume({ max_messages: PIPELINE, abort_on_missing_resource: true });
    this.#messages = messages;
    // A count and one waiter, not Promise.race over what is in flight: that would
    // attach PIPELINE reactions for every message once the pipeline is full.
    let inflight = 0;
    let room: (() => void) | undefined;
    const settled = () => {
      inflight--;
      room?.();
      room = undefined;
    };
    for await (const message of messages) {
      if (this.#stopped) break;
      const applied = this.#apply({
        seq: message.seq,
        subject: message.subject,
        data: message.data,
        headers: message.headers,
        ack: () => message.ack(),
        nak: (ms) => message.nak(ms),
      });
      if (!applied) continue;
      inflight++;
      void applied.then(settled, settled);
      if (inflight >= PIPELINE) await new Promise<void>((resolve) => (room = resolve));
    }
    while (inflight > 0) await new Promise<void>((resolve) => (room = resolve));
  }

  stop(): void {
    this.#stopped = true;
    this.#messages?.stop();
  }

  /** Applies one message; returns the local publish to wait for, if any. */
  #apply(message: Delivery): Promise<void> | undefined {
    const origin = message.headers?.get(HEADER.origin);
    if (origin === this.#siteId) {
      this.#counters.loopSkipped++;
      message.ack();
      return undefined;
    }
    if (this.#inProgress.has(message.seq)) return undefined;
    if (this.#applied.has(message.seq)) {
      this.#counters.redeliveries++;
      message.ack();
      return undefined;
    }
    const mapped = this.#subjects.topicOf(message.subject);
    const rule = mapped.ok ? this.#rules.find((r) => topicMatches(r.filter, mapped.topic)) : undefined;
    if (!mapped.ok || !rule) {
      this.#counters.skipped++;
      message.ack();
      return undefined;
    }
    const published = Number(message.headers?.get(HEADER.qos) ?? '1');
    const qos = Math.min(rule.qos, Number.isInteger(published) ? published : 1) as QoS;
    let retain = message.headers?.get(HEADER.retain) === '1';
    if (message.seq <= this.#snapshotEnd && !retain) {
      this.#counters.skipped++;
      message.ack();
      return undefined;
    }
    const time = Number(message.headers?.get(HEADER.time) ?? 0);
    const metadata = readMetadataHeaders(message.headers);
    // The time it waited, at its site, in the stream and here, counts against its expiry interval [MQTT-3.3.2-6].
    const expiryLeft = remainingExpiry(metadata?.expiryInterval, time, Date.now());
    if (expiryLeft === 0) {
      // Expired on its way: delivered to nobody [MQTT-3.3.2-5], and not a retained value either.
      this.#counters.expired++;
      message.ack();
      return undefined;
    }
    if (retain && !this.#retained.claim(mapped.topic, time)) {
      // Older than the retained value in force here (a backlog replayed after an outage): delivered, not retained.
      retain = false;
      this.#counters.staleRetained++;
    }
    const seq = message.seq;
    const payload = Buffer.from(message.data);
    this.#inProgress.add(seq);
    let brokerCounter = -1;
    const packet = { topic: mapped.topic, payload, qos, retain, ...(metadata ? { properties: toPublishProperties(metadata, expiryLeft) } : {}) };
    const done = this.#publish(packet, (counter) => {
      brokerCounter = counter;
      this.#pending.set(counter, { seq, topic: mapped.topic, retainedAt: retain ? time : undefined });
    });
    return done.then(
      () => {
        this.#pending.delete(brokerCounter);
        this.#inProgress.delete(seq);
        this.#applied.add(seq);
        this.#counters.imported++;
        message.ack();
      },
      (error: unknown) => {
        this.#pending.delete(brokerCounter);
        this.#inProgress.delete(seq);
        // Not acknowledged: JetStream delivers it again after ack_wait.
        this.#log.warn({ err: (error as Error).message, subject: message.subject, seq }, 'could not publish an imported message locally; it comes again');
        message.nak(1000);
      },
    );
  }
}

function appliedKey(seq: number): Buffer {
  return Buffer.concat([APPLIED, u64(seq)]);
}
