/**
 * The NATS JetStream bridge as a component: exports the messages that match
 * the export rules through the durable outbox (outbox.ts) and the sender
 * (sender.ts), over one NATS connection kept up forever. Built only when
 * `bridge.enabled` is true; the daemon uses disabled.ts otherwise.
 *
 * It never holds up the broker: start() returns once the outbox is ready,
 * whether NATS answers or not; an unreachable or misconfigured NATS shows in
 * the state, the stats and one log line per change, and messages wait on
 * disk. A planned stop drains what it can within its deadline; the rest
 * waits on disk for the next start.
 */
import { readFile } from 'node:fs/promises';
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  type NatsConnection,
  type NodeConnectionOptions,
} from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { storedSince, WINDOW_MARGIN_MS } from './reconcile.js';
import { RetainedVersions } from './retained.js';
import type { Logger } from '../observability/logger.js';
import type { BatchOp, GroupCommit, PacketLike, PublishTap } from '../persistence/index.js';
import { topicMatches } from '../config/topic-filter.js';
import { RateLimitedLog } from '../util/rate-limited-log.js';
import { Outbox, type OutboxStats, type OutboxStore, type QoS } from './outbox.js';
import type { BridgeConfig } from '../config/schema.js';
import { jittered, Sender, type SenderStats } from './sender.js';
import { JetStreamPublisher } from './stream-publisher.js';
import { SubjectCache } from './subjects.js';
import { Importer, type ImporterStats, type ImporterStore, type LocalPublish } from './importer.js';
import { EMPTY_OUTBOX, NO_IMPORTS, NO_SENDS } from './disabled.js';

export type BridgeState = 'disabled' | 'connecting' | 'connected' | 'disconnected' | 'misconfigured' | 'stopped';

export interface BridgeStats extends SenderStats, ImporterStats {
  state: BridgeState;
  /** Why the bridge is not connected, when it is not. */
  problem: string | undefined;
  outbox: OutboxStats;
  /** Messages matching an export rule whose topic has no reversible subject (never exported). */
  unmappable: number;
  /** Outbox entries found already in the stream beyond its duplicate window, removed without a resend. */
  reconciled: number;
}

/** The parts of the store the bridge uses. */
export interface BridgeStore extends OutboxStore, ImporterStore {
  readonly commit: GroupCommit;
  addPublishTap(tap: PublishTap): () => void;
}

export interface Bridge {
  readonly state: BridgeState;
  start(): Promise<void>;
  /** Drains the outbox until `deadline` (performance.now() ms), then closes the connection. */
  stop(deadline?: number): Promise<void>;
  stats(): BridgeStats;
}

const RECONNECT_WAIT_MS = 1000;
/** Retained, QoS 0: the bridge's state and counters as JSON, like mosquitto's $SYS tree. */
export const STATUS_TOPIC = '$SYS/edgemqtt/bridge';
const STATUS_INTERVAL_MS = 10_000;
const STREAM_RETRY_MAX_MS = 30_000;
const CONNECT_RETRY_MAX_MS = 4000;

export function createBridge(config: BridgeConfig, deps: { logger: Logger; store: BridgeStore; publish: LocalPublish }): Bridge {
  const log = deps.logger.child({ component: 'bridge' });
  /** The JetStream domain, for the import and the stream checks (empty: none). */
  const domain = config.nats.jetstreamDomain || undefined;
  let state: BridgeState = 'connecting';
  let problem: string | undefined;
  let outbox: Outbox | undefined;
  let sender: Sender | undefined;
  let importer: Importer | undefined;
  let importing = false;
  let attachGeneration = 0;
  /** The JetStream handles of the current connection, once the stream is known good. */
  let attached: { js: JetStreamClient; jsm: JetStreamManager } | undefined;
  let connection: NatsConnection | undefined;
  /** The sender's way to the stream, over `connection` (its inbox subscription rides through reconnects). */
  let publisher: JetStreamPublisher | undefined;
  let stopping = false;
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  let running: Promise<void> | undefined;
  let statusTimer: NodeJS.Timeout | undefined;
  const retained = new RetainedVersions();
  const subjects = new SubjectCache(config.subjectPrefix);
  let unmappable = 0;
  let reconciled = 0;
  let duplicateWindowMs = config.stream.duplicateWindowSec * 1000;
  // A client can publish unmappable topics at will: one line per 10 s.
  const rateLimited = new RateLimitedLog(log);

  /** The status as a retained message on STATUS_TOPIC, for MQTT dashboards; published when it changed. */
  let lastStatus = '';
  function publishStatus(): void {
    const { state: current, problem: why, outbox: box, exported, imported, resent, duplicates } = bridge.stats();
    const status = JSON.stringify({ state: current, problem: why, outboxDepth: box.depth, oldestAgeMs: box.oldestAgeMs, exported, imported, resent, duplicates });
    if (status === lastStatus) return;
    lastStatus = status;
    try {
      deps.publish({ topic: STATUS_TOPIC, payload: Buffer.from(status), qos: 0, retain: true }, () => undefined).catch(() => undefined);
    } catch {
      // The broker is not running (start-up failed, or it stopped first): nobody to tell.
    }
  }

  function setState(next: BridgeState, why?: string, fields: Record<string, unknown> = {}): void {
    if (next === state && why === problem) return;
    state = next;
    problem = why;
    queueMicrotask(publishStatus);
    const line = { state: next, ...(why ? { problem: why } : {}), ...fields };
    if (next === 'connected') log.info(line, 'bridge connected to NATS JetStream');
    else if (next === 'misconfigured') log.error(line, `bridge: ${why}`);
    else if (why) log.warn(line, `bridge ${next}: ${why}`);
    else log.info(line, `bridge ${next}`);
  }

  /** The store's publish tap: the importer's record of what it applied, or the outbox entry of a message to export. */
  function tap(packet: PacketLike): BatchOp[] | undefined {
    return importer?.tap(packet) ?? exportOps(packet);
  }

  /** Keeps the import consumer running (consume() rides through reconnects; a deleted consumer is made again). */
  async function runImporter(nc: NatsConnection, jsm: JetStreamManager): Promise<void> {
    if (!importer || importing) return;
    importing = true;
    while (!stopping && !nc.isClosed()) {
      try {
        await importer.ensureConsumer(jsm);
        await importer.run(jetstream(nc, { domain }), jsm);
      } catch (error) {
        if (!stopping) log.warn({ err: (error as Error).message }, 'import consumer stopped; starting it again');
      }
      if (!stopping) await sleep(jittered(1000), stopped);
    }
    importing = false;
  }

  /** The export tap: which PUBLISHes enter the outbox (see Outbox). */
  function exportOps(packet: PacketLike): BatchOp[] | undefined {
    const topic = packet.topic;
    // $SYS and other broker topics are never exported.
    if (typeof topic !== 'string' || topic.startsWith('$') || !outbox) return undefined;
    const qos = (packet.qos ?? 0) as QoS;
    const retain = packet.retain === true;
    const rule = config.export.find((r) => r.qos.includes(qos) && (r.retained || !retain) && topicMatches(r.filter, topic));
    if (!rule) return undefined;
    const mapped = subjects.subjectOf(topic);
    if (!mapped.ok) {
      unmappable++;
      rateLimited.warn('unmappable', { topic: topic.slice(0, 200), reason: mapped.reason, unmappable }, 'not exported: the topic has no reversible NATS subject');
      return undefined;
    }
    const ops = outbox.add(packet);
    // A retained value set here is the newest one, for what other sites replay later (retained.ts).
    if (retain && ops.length > 0) ops.push(...retained.set(topic, Date.now()));
    return ops;
  }

  async function connectOptions(): Promise<NodeConnectionOptions> {
    const { nats } = config;
    const options: NodeConnectionOptions = {
      servers: nats.servers,
      name: `edgemqtt ${config.siteId}`,
      // nats.js gives up after 10 attempts by default; the outbox waits forever.
      maxReconnectAttempts: -1,
      reconnectTimeWait: RECONNECT_WAIT_MS,
      reconnectJitter: RECONNECT_WAIT_MS,
      pingInterval: 10_000,
      // Without it nats.js builds two errors with stack traces for every request
      // (the JetStream API calls; the sender's publishes go through stream-publisher.ts).
      noAsyncTraces: true,
    };
    const secret = async (file: string) => (await readFile(file, 'utf8')).trim();
    if (nats.credsFile) options.authenticator = credsAuthenticator(await readFile(nats.credsFile));
    else if (nats.nkeySeedFile) options.authenticator = nkeyAuthenticator(new TextEncoder().encode(await secret(nats.nkeySeedFile)));
    else if (nats.tokenFile) options.token = await secret(nats.tokenFile);
    else if (nats.user) {
      options.user = nats.user;
      if (nats.passwordFile) options.pass = await secret(nats.passwordFile);
    }
    if (nats.tls.enabled) {
      options.tls = {
        ...(nats.tls.caFile ? { caFile: nats.tls.caFile } : {}),
        ...(nats.tls.certFile ? { certFile: nats.tls.certFile, keyFile: nats.tls.keyFile } : {}),
      };
    }
    return options;
  }

  /**
   * Creates the stream if missing (and allowed), or checks that an existing
   * one takes our subjects; notes its duplicate window (see reconcile.ts).
   */
  async function ensureStream(jsm: JetStreamManager): Promise<string | undefined> {
    const { stream } = config;
    const wanted = config.subjectPrefix ? `${config.subjectPrefix}.>` : '>';
    try {
      const info = await jsm.streams.info(stream.name);
      const subjects = info.config.subjects ?? [];
      if (!subjects.includes(wanted) && !subjects.includes('>')) {
        return `stream ${stream.name} exists with subjects ${JSON.stringify(subjects)}; it must take ${wanted}`;
      }
      duplicateWindowMs = info.config.duplicate_window / 1e6;
      return undefined;
    } catch (error) {
      if (!isStreamNotFound(error)) throw error;
      if (!stream.create) return `stream ${stream.name} does not exist and bridge.stream.create is false`;
      await jsm.streams.add({
        name: stream.name,
        subjects: [wanted],
        num_replicas: stream.replicas,
        max_age: stream.maxAgeSec * 1e9,
        duplicate_window: stream.duplicateWindowSec * 1e9,
      });
      duplicateWindowMs = stream.duplicateWindowSec * 1000;
      log.info({ stream: stream.name, subjects: [wanted], replicas: stream.replicas }, 'created the JetStream stream');
      return undefined;
    }
  }

  /** Before resending entries the stream's duplicate check no longer covers: drop those it holds (reconcile.ts). */
  async function reconcile(js: JetStreamClient, jsm: JetStreamManager): Promise<void> {
    if (!outbox || outbox.depth === 0) return;
    const oldestAgeMs = outbox.stats().oldestAgeMs;
    if (oldestAgeMs < duplicateWindowMs - WINDOW_MARGIN_MS) return;
    const found = await storedSince(js, jsm, {
      stream: config.stream.name,
      siteId: config.siteId,
      sinceMs: Date.now() - oldestAgeMs - WINDOW_MARGIN_MS,
      fromSeq: outbox.head,
    });
    for (const seq of found) outbox.remove(seq);
    reconciled += found.size;
    log.info({ checkedFrom: outbox.head, alreadyStored: found.size }, 'outbox checked against the stream beyond its duplicate window');
  }

  /** Keeps the connection and the stream, forever, until stop. */
  async function run(): Promise<void> {
    let options: NodeConnectionOptions;
    try {
      options = await connectOptions();
    } catch (error) {
      setState('misconfigured', `cannot read a NATS credential file: ${(error as Error).message}`);
      return;
    }
    let waitMs = RECONNECT_WAIT_MS;
    while (!stopping && !connection) {
      try {
        const nc = await connect(options);
        if (stopping) {
          await nc.close().catch(() => undefined);
          return;
        }
        connection = nc;
      } catch (error) {
        const message = (error as Error).message;
        const refused = /authoriz|authenticat|permission/i.test(message);
        setState(refused ? 'misconfigured' : 'disconnected', refused ? `NATS refused the credentials (${message})` : `NATS unreachable (${message})`, {
          servers: config.nats.servers,
        });
        await sleep(jittered(waitMs), stopped);
        // A server back after a long outage is found within seconds.
        waitMs = Math.min(CONNECT_RETRY_MAX_MS, waitMs * 2);
      }
    }
    const nc = connection;
    if (!nc) return;
    publisher = new JetStreamPublisher(nc, { timeoutMs: config.sender.publishTimeoutMs });
    void watchStatus(nc);
    await attach(nc);
  }

  /** Makes sure the stream is there, then lets the sender go; retried until it works or the bridge stops. */
  async function attach(nc: NatsConnection): Promise<void> {
    // One loop at a time: a reconnect while one retries starts it over.
    const generation = ++attachGeneration;
    let waitMs = 250;
    while (!stopping && !nc.isClosed() && generation === attachGeneration) {
      try {
        const jsm = await jetstreamManager(nc, { domain, checkAPI: false });
        const misconfigured = await ensureStream(jsm);
        if (misconfigured) {
          setState('misconfigured', misconfigured);
        } else {
          const js = jetstream(nc, { domain, timeout: config.sender.publishTimeoutMs });
          // Before this site's own backlog lands: a new site's consumer starts from
          // the last message of each subject, which must be the other sites'.
          await importer?.ensureConsumer(jsm);
          await reconcile(js, jsm);
          if (generation !== attachGeneration || stopping) return;
          attached = { js, jsm };
          if (publisher) sender?.attach(publisher);
          setState('connected', undefined, { server: nc.getServer(), stream: config.stream.name });
          void runImporter(nc, jsm);
          return;
        }
      } catch (error) {
        // A fresh cluster answers on its JetStream API seconds after it listens; a stream
        // electing a leader answers "no responders": both mean wait and ask again.
        setState('connecting', `JetStream not ready (${(error as Error).message})`);
      }
      await sleep(jittered(waitMs), stopped);
      waitMs = Math.min(STREAM_RETRY_MAX_MS, waitMs * 2);
    }
  }

  async function watchStatus(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      if (stopping) return;
      if (status.type === 'disconnect') {
        sender?.detach();
        attached = undefined;
        setState('disconnected', 'connection to NATS lost; reconnecting');
      } else if (status.type === 'reconnect') {
        void attach(nc);
      }
    }
  }

  const bridge: Bridge = {
    get state() {
      return state;
    },
    async start() {
      outbox = new Outbox(deps.store, config.outbox, { logger: deps.logger });
      await outbox.recover();
      sender = new Sender(
        outbox,
        deps.store.commit,
        {
          siteId: config.siteId,
          subjects,
          ...config.sender,
          // A failure within one connection (a stream without a leader for long) can outlast the window too.
          beforeResend: async () => {
            if (attached) await reconcile(attached.js, attached.jsm);
          },
        },
        deps.logger,
      );
      const wake = sender;
      outbox.onAdded = () => wake.wake();
      await retained.load(deps.store);
      if (config.import.length > 0) {
        importer = new Importer(
          { rules: config.import, siteId: config.siteId, subjectPrefix: config.subjectPrefix, stream: config.stream.name },
          { publish: deps.publish, logger: deps.logger, store: deps.store, retained },
        );
        await importer.recover();
      }
      deps.store.addPublishTap(tap);
      if (outbox.depth > 0) log.info({ depth: outbox.depth }, 'outbox holds messages from an earlier run; they are sent once NATS answers');
      setState('connecting', undefined, { servers: config.nats.servers, siteId: config.siteId });
      statusTimer = setInterval(publishStatus, STATUS_INTERVAL_MS);
      statusTimer.unref();
      running = run();
    },
    async stop(deadline = performance.now() + 5000) {
      if (state === 'stopped') return;
      // The tap stays: clients still connected keep publishing until the broker stops, and
      // what they are acknowledged for must reach the outbox (it waits there for the next start).
      clearInterval(statusTimer);
      if (sender && state === 'connected') await sender.drain(deadline);
      stopping = true;
      stop();
      sender?.stop();
      publisher?.close();
      importer?.stop();
      await connection?.close().catch(() => undefined);
      await running?.catch(() => undefined);
      const left = outbox?.depth ?? 0;
      setState('stopped', undefined, left > 0 ? { outboxDepth: left } : {});
    },
    stats() {
      return { state, problem, ...(sender?.stats() ?? NO_SENDS), ...(importer?.stats() ?? NO_IMPORTS), outbox: outbox?.stats() ?? { ...EMPTY_OUTBOX }, unmappable, reconciled };
    },
  };
  return bridge;
}

function isStreamNotFound(error: unknown): boolean {
  const e = error as { code?: unknown; api_error?: { err_code?: number }; message?: string };
  return e?.api_error?.err_code === 10059 || /stream not found/i.test(e?.message ?? '');
}

/** Resolves after `ms`, or at once when `cancelled` settles first (a stop). */
function sleep(ms: number, cancelled: Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([new Promise<void>((resolve) => (timer = setTimeout(resolve, ms))), cancelled]).finally(() => clearTimeout(timer));
}
