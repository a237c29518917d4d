/**
 * Mosquitto's `$SYS/broker/...` statistics, so that dashboards and
 * `mosquitto_sub -t '$SYS/#' -v` written for mosquitto work here: published
 * through the broker as its own messages, retained, QoS 0, every
 * broker.sysIntervalSec (0 = off). As in mosquitto (src/sys_tree.c), a topic
 * is published again only when its value changed; `version` once at start.
 *
 * Only what we count is published, and some figures count less than
 * mosquitto's do: messages/* are PUBLISH packets (mosquitto counts every
 * packet), bytes/* are PUBLISH payload bytes (not bytes on the wire). The
 * README's "$SYS" section lists every topic and what it means here.
 *
 * Besides, for the dashboard, `$SYS/edgemqtt/store` (JSON) with the store's
 * sizes; the bridge publishes `$SYS/edgemqtt/bridge` itself.
 */
import { getHeapStatistics } from 'node:v8';
import type { LimitsStats } from '../broker/limits.js';
import type { TrafficStats } from '../broker/traffic.js';
import type { Logger } from '../observability/logger.js';
import type { PersistenceStats } from '../persistence/index.js';
import { deliveryDrops } from './drops.js';

export const STORE_STATUS_TOPIC = '$SYS/edgemqtt/store';

/** A connected client as aedes keeps it: its id and its subscriptions, keyed by topic filter. */
export interface SysClient {
  readonly id: string;
  readonly subscriptions?: Record<string, unknown>;
}

export interface SysTopicsSources {
  traffic(): TrafficStats;
  limits(): LimitsStats;
  store(): PersistenceStats;
  storeWritesFailing(): boolean;
  storeSizeBytes(): Promise<number>;
  /** The clients connected now. */
  clients(): Iterable<SysClient>;
  /** Whether the store holds a persistent session for this client id. */
  hasSession(clientId: string): boolean;
}

export interface SysMessage {
  topic: string;
  payload: Buffer;
  qos: 0;
  retain: true;
}

export interface SysTopicsDeps {
  sources: SysTopicsSources;
  /** Publishes a message as the broker's own. */
  publish(message: SysMessage): Promise<void>;
  logger: Logger;
  /** Monotonic clock in ms (uptime and load averages). */
  now?: () => number;
}

export interface SysTopics {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Publishes the current figures now (start() does, then every interval). */
  update(): Promise<void>;
}

/** mosquitto's load averages: 1, 5 and 15 minutes. */
const LOAD_WINDOWS: ReadonlyArray<[name: string, seconds: number]> = [
  ['1min', 60],
  ['5min', 300],
  ['15min', 900],
];

/** One `$SYS/broker/load/<family>/{1min,5min,15min}` family: a counter's rate per minute, exponentially decayed. */
interface Load {
  family: string;
  read(figures: Figures): number;
  last: number;
  averages: number[];
}

interface Figures {
  publishReceived: number;
  publishSent: number;
  bytesReceived: number;
  bytesSent: number;
  dropped: number;
  connects: number;
}

const sum = (values: readonly number[]) => values.reduce((total, value) => total + value, 0);

export function createSysTopics(options: { intervalSec: number; version: string }, deps: SysTopicsDeps): SysTopics {
  const log = deps.logger.child({ component: 'sys-topics' });
  const now = deps.now ?? (() => performance.now());
  const { sources } = deps;
  let timer: NodeJS.Timeout | undefined;
  let startedAt = 0;
  let lastUpdate = 0;
  let updating: Promise<void> | undefined;
  let maximumConnected = 0;
  let maximumHeap = 0;
  /** The payload last published per topic: unchanged ones are not published again. */
  const published = new Map<string, string>();
  const loads: Load[] = (
    [
      ['messages/received', (f) => f.publishReceived],
      ['messages/sent', (f) => f.publishSent],
      ['publish/received', (f) => f.publishReceived],
      ['publish/sent', (f) => f.publishSent],
      ['publish/dropped', (f) => f.dropped],
      ['bytes/received', (f) => f.bytesReceived],
      ['bytes/sent', (f) => f.bytesSent],
      ['connections', (f) => f.connects],
    ] as Array<[string, (f: Figures) => number]>
  ).map(([family, read]) => ({ family, read, last: 0, averages: LOAD_WINDOWS.map(() => 0) }));

  function figures(traffic: TrafficStats, limits: LimitsStats, store: PersistenceStats): Figures {
    return {
      publishReceived: sum(traffic.messagesIn),
      publishSent: sum(traffic.messagesOut),
      bytesReceived: sum(traffic.bytesIn),
      bytesSent: sum(traffic.bytesOut),
      // Messages a subscriber did not get: full queues, full sockets (QoS 0), over its maximum packet size, expired.
      dropped: sum(Object.values(deliveryDrops(limits, store))),
      connects: sum(traffic.connects.map((entry) => entry.count)),
    };
  }

  /**
   * mosquitto's calc_load: the counter's change since the last update as a
   * rate per minute, folded into each average with weight exp(-dt/window).
   */
  function advanceLoads(current: Figures, seconds: number): void {
    for (const load of loads) {
      const value = load.read(current);
      const perMinute = seconds > 0 ? ((value - load.last) * 60) / seconds : 0;
      load.last = value;
      LOAD_WINDOWS.forEach(([, window], index) => {
        const weight = Math.exp(-seconds / window);
        load.averages[index] = perMinute + weight * (load.averages[index]! - perMinute);
      });
    }
  }

  async function collect(): Promise<Array<[string, string]>> {
    const traffic = sources.traffic();
    const limits = sources.limits();
    const store = sources.store();
    const sizeBytes = await sources.storeSizeBytes();
    const at = now();
    const current = figures(traffic, limits, store);
    advanceLoads(current, (at - lastUpdate) / 1000);
    lastUpdate = at;

    let connected = 0;
    let connectedWithSession = 0;
    let subscriptions = 0;
    for (const client of sources.clients()) {
      connected++;
      if (sources.hasSession(client.id)) connectedWithSession++;
      for (const _filter in client.subscriptions ?? {}) subscriptions++;
    }
    // Persistent sessions whose client is not connected (mosquitto's "inactive").
    const disconnected = Math.max(0, store.sessions - connectedWithSession);
    maximumConnected = Math.max(maximumConnected, connected);
    const heap = getHeapStatistics().used_heap_size;
    maximumHeap = Math.max(maximumHeap, heap);
    const storedMessages = store.retainedMessages + store.queuedEntries;

    const topics: Array<[string, string | number]> = [
      ['uptime', `${Math.floor((at - startedAt) / 1000)} seconds`],
      ['clients/connected', connected],
      ['clients/active', connected],
      ['clients/disconnected', disconnected],
      ['clients/inactive', disconnected],
      ['clients/total', connected + disconnected],
      ['clients/maximum', maximumConnected],
      ['clients/expired', store.sessionsExpired],
      ['messages/received', current.publishReceived],
      ['messages/sent', current.publishSent],
      ['messages/stored', storedMessages],
      ['store/messages/count', storedMessages],
      ['store/messages/bytes', store.retainedBytes + store.queuedBytes],
      ['publish/messages/received', current.publishReceived],
      ['publish/messages/sent', current.publishSent],
      ['publish/messages/dropped', current.dropped],
      ['publish/bytes/received', current.bytesReceived],
      ['publish/bytes/sent', current.bytesSent],
      ['bytes/received', current.bytesReceived],
      ['bytes/sent', current.bytesSent],
      ['retained messages/count', store.retainedMessages],
      ['subscriptions/count', subscriptions],
      ['heap/current', heap],
      ['heap/maximum', maximumHeap],
    ];
    const messages: Array<[string, string]> = topics.map(([topic, value]) => [`$SYS/broker/${topic}`, String(value)]);
    for (const load of loads) {
      LOAD_WINDOWS.forEach(([window], index) => messages.push([`$SYS/broker/load/${load.family}/${window}`, load.averages[index]!.toFixed(2)]));
    }
    messages.push([
      STORE_STATUS_TOPIC,
      JSON.stringify({
        sessions: store.sessions,
        queuedMessages: store.queuedEntries,
        retainedMessages: store.retainedMessages,
        sizeBytes,
        writesFailing: sources.storeWritesFailing(),
      }),
    ]);
    return messages;
  }

  async function publishChanged(messages: Array<[string, string]>): Promise<void> {
    const changed = messages.filter(([topic, payload]) => published.get(topic) !== payload);
    for (const [topic, payload] of changed) published.set(topic, payload);
    await Promise.all(changed.map(([topic, payload]) => deps.publish({ topic, payload: Buffer.from(payload), qos: 0, retain: true })));
  }

  async function runUpdate(): Promise<void> {
    try {
      await publishChanged(await collect());
    } catch (error) {
      // The broker stopping under a late update; nothing to tell anyone.
      log.debug({ err: (error as Error).message }, '$SYS update not published');
    }
  }

  function update(): Promise<void> {
    // One at a time: a slow store-size read must not let updates pile up.
    updating ??= runUpdate().finally(() => (updating = undefined));
    return updating;
  }

  return {
    async start() {
      if (options.intervalSec === 0 || timer) return;
      startedAt = now();
      lastUpdate = startedAt;
      await publishChanged([[`$SYS/broker/version`, `edgemqtt version ${options.version}`]]).catch((error: Error) =>
        log.debug({ err: error.message }, '$SYS version not published'),
      );
      const current = figures(sources.traffic(), sources.limits(), sources.store());
      for (const load of loads) load.last = load.read(current);
      await update();
      timer = setInterval(() => void update(), options.intervalSec * 1000);
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      timer = undefined;
      await updating;
    },
    update,
  };
}
