/**
 * The Prometheus metrics: one prom-client Registry per daemon (never the
 * global one), filled at scrape time from the counters the parts already
 * keep (traffic, limits, auth, store, bridge). Nothing here runs per message:
 * the only hot-path hook is the group commit's observer, called once per
 * batch. Labels are bounded sets (listener, protocol, QoS, reason, limit,
 * rule, cause, state); never a client id or a topic.
 *
 * Names follow the Prometheus conventions: `edgemqtt_` prefix, base units
 * (seconds, bytes) in the name, `_total` on counters (`promtool check
 * metrics` is clean; test/metrics.test.ts runs it).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AuthStats } from '../auth/authorizer.js';
import type { BridgeState, BridgeStats } from '../bridge/bridge.js';
import type { LimitsStats } from '../broker/limits.js';
import type { TrafficStats } from '../broker/traffic.js';
import { deliveryDrops } from './drops.js';
import { COMMIT_LATENCY_BUCKETS_MS, type CommitObserver, type PersistenceStats } from '../persistence/index.js';

/** Where the figures come from; the daemon passes its parts' stats. */
export interface MetricsSources {
  traffic(): TrafficStats;
  limits(): LimitsStats;
  auth(): AuthStats;
  store(): PersistenceStats;
  /** Whether store writes fail now (a full disk). */
  storeWritesFailing(): boolean;
  /** Bytes the store takes on disk. */
  storeSizeBytes(): Promise<number>;
  bridge(): BridgeStats;
}

export interface Metrics {
  readonly registry: Registry;
  /** The Content-Type of scrape()'s text. */
  readonly contentType: string;
  /** For the group commit (persistence deps.onCommit): one call per committed batch. */
  readonly observeCommit: CommitObserver;
  /** The metrics in the Prometheus text format, read now. */
  scrape(): Promise<string>;
  /**
   * Empties the registry, once the daemon stopped. prom-client's GC observer
   * and event-loop monitor cannot be stopped and hold the registry; emptied,
   * it no longer holds the daemon's parts (an embedder that makes a new
   * daemon in the same process does not keep the old one alive).
   */
  close(): void;
}

/** Every bridge state, each a series of edgemqtt_bridge_state (1 for the current one). */
const BRIDGE_STATES = Object.keys({
  disabled: true,
  connecting: true,
  connected: true,
  disconnected: true,
  misconfigured: true,
  stopped: true,
} satisfies Record<BridgeState, true>) as BridgeState[];

/** Operations per group-commit batch: one PUBLISH writes a few; a busy second writes thousands. */
const BATCH_OPERATIONS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

interface Snapshot {
  traffic: TrafficStats;
  limits: LimitsStats;
  auth: AuthStats;
  store: PersistenceStats;
  writesFailing: boolean;
  storeSizeBytes: number;
  bridge: BridgeStats;
}

type Labels = Record<string, string>;
type Emit = (labels: Labels, value: number) => void;

export function createMetrics(sources: MetricsSources, options: { version: string }): Metrics {
  const registry = new Registry();
  // process_* (CPU, memory, file descriptors) and nodejs_* (event-loop lag, GC, heap), on this registry only.
  collectDefaultMetrics({ register: registry });
  // Not these: each scrape would list every libuv handle (one per client
  // socket: 10,000 on a busy gateway) to count them by type, and the
  // `_total` ones are gauges named like counters (promtool warns).
  // edgemqtt_connections_open counts the sockets that matter.
  for (const family of ['handles', 'requests', 'resources']) {
    registry.removeSingleMetric(`nodejs_active_${family}`);
    registry.removeSingleMetric(`nodejs_active_${family}_total`);
  }

  // Read once per scrape, so that every metric of one scrape agrees.
  let snapshot: Snapshot | undefined;
  let lastStoreSize = 0;
  const takeSnapshot = (storeSizeBytes: number): Snapshot => ({
    traffic: sources.traffic(),
    limits: sources.limits(),
    auth: sources.auth(),
    store: sources.store(),
    writesFailing: sources.storeWritesFailing(),
    storeSizeBytes,
    bridge: sources.bridge(),
  });
  // A scrape through the registry itself (not scrape()) still gets figures, with the last known store size.
  const current = (): Snapshot => snapshot ?? takeSnapshot(lastStoreSize);

  const counter = (name: string, help: string, labelNames: readonly string[], read: (s: Snapshot, emit: Emit) => void): void => {
    const metric: Counter = new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        metric.reset();
        read(current(), (labels, value) => metric.inc(labels, value));
      },
    });
  };
  const gauge = (name: string, help: string, labelNames: readonly string[], read: (s: Snapshot, emit: Emit) => void): void => {
    const metric: Gauge = new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        metric.reset();
        read(current(), (labels, value) => metric.set(labels, value));
      },
    });
  };
  const perQos = (values: readonly number[], emit: Emit) => values.forEach((value, qos) => emit({ qos: String(qos) }, value));

  new Gauge({ name: 'edgemqtt_build_info', help: 'Always 1; the version of edgemqtt as a label', labelNames: ['version'], registers: [registry] }).set(
    { version: options.version },
    1,
  );

  // ---- Clients and traffic (src/broker/traffic.ts, limits.ts)
  gauge('edgemqtt_clients_connected', 'MQTT clients connected now (CONNACK sent, not yet gone), per listener and protocol', ['listener', 'protocol'], (s, emit) => {
    for (const { listener, protocol, count } of s.traffic.connected) emit({ listener, protocol }, count);
  });
  gauge('edgemqtt_connections_open', 'Network connections open now on the MQTT listeners, CONNECT received or not', [], (s, emit) => emit({}, s.limits.openConnections));
  counter('edgemqtt_connects_total', 'Connections accepted (CONNACK 0) since start, per listener and protocol', ['listener', 'protocol'], (s, emit) => {
    for (const { listener, protocol, count } of s.traffic.connects) emit({ listener, protocol }, count);
  });
  counter('edgemqtt_disconnects_total', 'Connected clients gone since start, per reason', ['reason'], (s, emit) => {
    for (const [reason, count] of Object.entries(s.traffic.disconnects)) emit({ reason }, count);
  });
  counter('edgemqtt_received_messages_total', 'PUBLISH packets received from clients, per QoS', ['qos'], (s, emit) => perQos(s.traffic.messagesIn, emit));
  counter('edgemqtt_received_payload_bytes_total', 'Payload bytes of the PUBLISH packets received from clients, per QoS', ['qos'], (s, emit) =>
    perQos(s.traffic.bytesIn, emit),
  );
  counter('edgemqtt_sent_messages_total', 'PUBLISH packets sent to clients, per the QoS each was sent at', ['qos'], (s, emit) => perQos(s.traffic.messagesOut, emit));
  counter('edgemqtt_sent_payload_bytes_total', 'Payload bytes of the PUBLISH packets sent to clients, per QoS', ['qos'], (s, emit) => perQos(s.traffic.bytesOut, emit));

  // ---- Drops, limits, protocol violations
  counter('edgemqtt_dropped_messages_total', 'Messages not delivered to a subscriber (or not accepted from a publisher), per cause', ['cause'], (s, emit) => {
    for (const [cause, count] of Object.entries(deliveryDrops(s.limits, s.store))) emit({ cause }, count);
    emit({ cause: 'acl_publish' }, s.auth.publishesDenied);
    emit({ cause: 'acl_delivery' }, s.auth.deliveriesDenied);
  });
  counter('edgemqtt_limit_hits_total', 'Times a configured limit refused, closed, dropped or delayed something, per limit', ['limit'], (s, emit) => {
    for (const [limit, count] of Object.entries(s.limits.limitHits)) emit({ limit }, count);
  });
  counter('edgemqtt_protocol_violations_total', 'Connections closed for breaking MQTT 3.1.1 or 5.0, per rule (spec clause)', ['rule'], (s, emit) => {
    for (const [rule, count] of Object.entries(s.limits.protocolViolationsByRule)) emit({ rule }, count);
  });
  counter('edgemqtt_delivery_waits_total', 'Deliveries that had to wait, per cause', ['cause'], (s, emit) => {
    emit({ cause: 'outgoing_buffer_full' }, s.limits.flow.bufferFullWaits);
    emit({ cause: 'inflight_window_full' }, s.limits.flow.inflightWaits);
    emit({ cause: 'session_resume' }, s.limits.flow.resumeWaits);
  });
  gauge('edgemqtt_outgoing_queued_messages', "Messages waiting in connected clients' queues (their window or socket is full)", [], (s, emit) =>
    emit({}, s.limits.flow.queuedMessages),
  );
  gauge('edgemqtt_outgoing_queued_bytes', 'Bytes of those messages', [], (s, emit) => emit({}, s.limits.flow.queuedBytes));

  // ---- Authentication (src/auth/authorizer.ts)
  counter('edgemqtt_logins_total', 'CONNECT authentication outcomes since start', ['result'], (s, emit) => {
    emit({ result: 'success' }, s.auth.loginsSucceeded);
    emit({ result: 'bad_credentials' }, s.auth.loginsFailed);
    emit({ result: 'busy' }, s.auth.loginsBusy);
    emit({ result: 'rate_limited' }, s.auth.loginsRateLimited);
    emit({ result: 'anonymous_refused' }, s.auth.anonymousRefused);
  });
  counter('edgemqtt_subscriptions_denied_total', 'SUBSCRIBE topic filters refused by the ACL (0x80)', [], (s, emit) => emit({}, s.auth.subscriptionsDenied));
  gauge('edgemqtt_login_limited_sources', 'Sources tracked by the failed-login limiter now', [], (s, emit) => emit({}, s.auth.limitedSources));

  // ---- The session store (src/persistence)
  gauge('edgemqtt_retained_messages', 'Retained messages held', [], (s, emit) => emit({}, s.store.retainedMessages));
  gauge('edgemqtt_retained_bytes', 'Encoded bytes of the retained messages', [], (s, emit) => emit({}, s.store.retainedBytes));
  gauge('edgemqtt_sessions', 'Persistent sessions held (clients with subscriptions, queued messages or QoS 2 state), connected or not', [], (s, emit) =>
    emit({}, s.store.sessions),
  );
  gauge('edgemqtt_session_subscriptions', 'QoS 1/2 subscriptions of persistent sessions', [], (s, emit) => emit({}, s.store.subscriptions));
  gauge('edgemqtt_session_queued_messages', 'Messages queued in the store for persistent sessions', [], (s, emit) => emit({}, s.store.queuedEntries));
  gauge('edgemqtt_session_queued_bytes', 'Encoded bytes of those messages', [], (s, emit) => emit({}, s.store.queuedBytes));
  gauge('edgemqtt_session_queue_cache_bytes', 'Memory held by copies of messages queued for offline clients (persistence.queueCacheBytes)', [], (s, emit) =>
    emit({}, s.store.queueCacheBytes),
  );
  gauge('edgemqtt_wills', 'Wills held for connected clients and delayed wills', [], (s, emit) => emit({}, s.store.wills));
  counter('edgemqtt_sessions_expired_total', 'Persistent sessions removed because their expiry passed', [], (s, emit) => emit({}, s.store.sessionsExpired));
  counter('edgemqtt_session_resent_messages_total', 'Stored messages sent again on a later connection (DUP set)', [], (s, emit) => emit({}, s.store.resentMessages));
  counter('edgemqtt_retained_expired_total', 'Retained messages removed because their Message Expiry Interval passed', [], (s, emit) =>
    emit({}, s.store.expiredRetained),
  );
  counter('edgemqtt_store_decode_errors_total', 'Store records that failed to decode and were skipped', [], (s, emit) => emit({}, s.store.decodeErrors));
  gauge('edgemqtt_store_size_bytes', 'Bytes the store takes on disk', [], (s, emit) => emit({}, s.storeSizeBytes));
  gauge('edgemqtt_store_writes_failing', '1 while store writes fail (a full disk): QoS 1/2 publishes get no acknowledgement', [], (s, emit) =>
    emit({}, s.writesFailing ? 1 : 0),
  );
  counter('edgemqtt_store_failed_batches_total', 'Group-commit batches that failed to write', [], (s, emit) => emit({}, s.store.commit?.failedBatches ?? 0));
  gauge('edgemqtt_store_recovery_duration_seconds', 'Time the store took to load its records at start', [], (s, emit) =>
    emit({}, s.store.recovery.durationMs / 1000),
  );
  gauge('edgemqtt_store_recovered_records', 'Records the store loaded at start', [], (s, emit) => emit({}, s.store.recovery.records));
  const batchOperations = new Histogram({
    name: 'edgemqtt_store_commit_batch_operations',
    help: 'Writes and deletes per group-commit batch (one LevelDB batch, one fsync)',
    buckets: BATCH_OPERATIONS_BUCKETS,
    registers: [registry],
  });
  const commitSeconds = new Histogram({
    name: 'edgemqtt_store_commit_duration_seconds',
    help: 'Time to write one group-commit batch, fsync included',
    buckets: COMMIT_LATENCY_BUCKETS_MS.map((ms) => ms / 1000),
    registers: [registry],
  });

  // ---- The NATS JetStream bridge (src/bridge)
  gauge('edgemqtt_bridge_state', 'The bridge state: 1 for the current one, 0 for the others', ['state'], (s, emit) => {
    for (const state of BRIDGE_STATES) emit({ state }, s.bridge.state === state ? 1 : 0);
  });
  gauge('edgemqtt_bridge_outbox_messages', 'Messages in the outbox, waiting to be exported', [], (s, emit) => emit({}, s.bridge.outbox.depth));
  gauge('edgemqtt_bridge_outbox_bytes', 'Bytes of those messages', [], (s, emit) => emit({}, s.bridge.outbox.bytes));
  gauge('edgemqtt_bridge_outbox_oldest_age_seconds', 'Age of the oldest outbox message; 0 when empty', [], (s, emit) =>
    emit({}, s.bridge.outbox.oldestAgeMs / 1000),
  );
  gauge('edgemqtt_bridge_inflight_messages', 'Exports sent to JetStream and not yet acknowledged', [], (s, emit) => emit({}, s.bridge.inflight));
  const bridgeCounters: Array<[string, string, (b: BridgeStats) => number]> = [
    ['exported_messages', 'Messages exported to JetStream (acknowledged)', (b) => b.exported],
    ['resent_messages', 'Outbox messages sent again after a failure or a reconnect', (b) => b.resent],
    ['duplicate_messages', 'Exports JetStream acknowledged as duplicates (a resend of one it had)', (b) => b.duplicates],
    ['publish_failures', 'Exports that failed and will be retried', (b) => b.publishFailures],
    ['refused_messages', "Outbox messages refused for good (larger than the NATS server's max_payload or the stream's max_msg_size): dropped", (b) => b.refused],
    ['imported_messages', 'Messages imported from JetStream and published here', (b) => b.imported],
    ['redelivered_messages', 'Imports JetStream redelivered that had been applied already', (b) => b.redeliveries],
    ['loop_skipped_messages', "This site's own messages, come back through the stream and skipped", (b) => b.loopSkipped],
    ['skipped_messages', 'Imports with no MQTT topic or matching no import rule', (b) => b.skipped],
    ['stale_retained_messages', 'Imported retained messages older than the one here: delivered, not retained', (b) => b.staleRetained],
    ['expired_messages', 'Imports whose Message Expiry Interval had passed: not published', (b) => b.expired],
    ['unmappable_messages', 'Messages matching an export rule whose topic has no subject: not exported', (b) => b.unmappable],
    ['reconciled_messages', 'Outbox entries found already in the stream at start: removed without a resend', (b) => b.reconciled],
    ['outbox_failed_writes', 'Outbox entries whose store batch failed: forgotten', (b) => b.outbox.failedWrites],
  ];
  for (const [name, help, read] of bridgeCounters) {
    counter(`edgemqtt_bridge_${name}_total`, help, [], (s, emit) => emit({}, read(s.bridge)));
  }
  counter('edgemqtt_bridge_outbox_dropped_messages_total', 'Messages dropped because the outbox was full, per policy', ['policy'], (s, emit) => {
    emit({ policy: 'drop_oldest' }, s.bridge.outbox.droppedOldest);
    emit({ policy: 'drop_new' }, s.bridge.outbox.droppedNew);
  });

  return {
    registry,
    contentType: registry.contentType,
    observeCommit(ops, seconds) {
      batchOperations.observe(ops);
      commitSeconds.observe(seconds);
    },
    close() {
      registry.clear();
    },
    async scrape() {
      lastStoreSize = await sources.storeSizeBytes();
      snapshot = takeSnapshot(lastStoreSize);
      try {
        return await registry.metrics();
      } finally {
        snapshot = undefined;
      }
    },
  };
}
