/**
 * The composition root and the public embedding API. It builds every
 * component from one validated config and owns the start order
 * (data dir → store → broker → listeners → ready) and its reverse on stop.
 * The CLI drives the daemon through exactly this API.
 */
import { mkdir, access, constants } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { validateConfig } from './config/load.js';
import { configKeys } from './config/load.js';
import { getPath } from './config/keys.js';
import type { Config, ConfigInput } from './config/schema.js';
import { EdgeMqttError } from './errors.js';
import { createBroker, type Broker } from './broker/broker.js';
import type { LimitsStats } from './broker/limits.js';
import type { TrafficStats } from './broker/traffic.js';
import { createLevelPersistence, type LevelPersistence, type PacketLike, type PersistenceStats } from './persistence/index.js';
import type { Bridge, BridgeStats } from './bridge/bridge.js';
import { disabledBridge } from './bridge/disabled.js';
import { createLogger, type Logger } from './observability/logger.js';
import type { ReadinessReport } from './observability/health.js';
import { createTcpListener } from './transports/tcp.js';
import { createTlsListener } from './transports/tls.js';
import type { CertificateReloadable } from './transports/tls-context.js';
import { createAuthorizer, type AuthStats, type ReloadFailure } from './auth/authorizer.js';
import { CertIdentities } from './transports/cert-identity.js';
import { reloadSecurity } from './daemon/security-reload.js';
import { createOperations } from './daemon/operations.js';
import type { Metrics } from './metrics/prometheus.js';
import { createHttpListener, type HttpRoute } from './transports/http.js';
import { createDashboardRoute } from './dashboard/dashboard.js';
import { createAdminApi, type AdminApi } from './admin/api.js';
import type { Listener } from './transports/listener.js';
import { withDeadline } from './util/deadline.js';

export type DaemonState = 'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

export interface DaemonAddresses {
  /** MQTT over TCP, when enabled and listening. */
  mqtt?: AddressInfo;
  /** MQTT over TLS, when enabled and listening. */
  tls?: AddressInfo;
  /** HTTP (health, MQTT over WebSocket, metrics), when enabled and listening. */
  http?: AddressInfo;
  /** The metrics' own listener (metrics.ownListener), when enabled and listening. */
  metrics?: AddressInfo;
}

export interface ReloadResult {
  /** Keys whose new value is in effect. */
  applied: string[];
  /** Keys that changed but take effect only after a restart. */
  needsRestart: string[];
  /**
   * Password, ACL or certificate files that could not be used, each with its
   * problems; the one in use before stays in use. Present only when one failed.
   */
  failed?: ReloadFailure[];
}

export interface Daemon {
  readonly config: Config;
  readonly state: DaemonState;
  readonly logger: Logger;
  start(): Promise<void>;
  /** Graceful stop; idempotent. Connections still open at the deadline are cut. */
  stop(): Promise<void>;
  addresses(): DaemonAddresses;
  readiness(): ReadinessReport;
  /**
   * Applies what can change live (log level, auth settings; password, ACL and
   * certificate files are re-read) and lists what needs a restart.
   */
  reload(next: Config): ReloadResult;
  /** Login, publish and subscribe decisions since start. */
  authStats(): AuthStats;
  /** Open connections, limit hits, protocol violations and slow-client counters since start. */
  limitsStats(): LimitsStats;
  /** The session store's sizes and counters (queued entries, drops by the queue limits, ...). */
  storeStats(): PersistenceStats;
  /** The NATS JetStream bridge: state, outbox, exports (state `disabled` unless configured). */
  bridgeStats(): BridgeStats;
  /** Clients connected per listener and protocol, disconnects by reason, messages and bytes in and out by QoS. */
  trafficStats(): TrafficStats;
}

export interface DaemonDeps {
  /** Logger to use; by default a JSON logger on stdout at `config.log.level`. */
  logger?: Logger;
  /**
   * Reads the config again as SIGHUP does (`edgemqtt start` passes its
   * loader), for a reload asked through the admin API. Without it (embedded)
   * that reload applies the current config, re-reading the files it names.
   */
  reloadConfig?: () => Promise<Config>;
}

/** Keys a running daemon applies on reload; every other change needs a restart. */
const LIVE_KEYS = new Set(['log.level']);
/** Admin API keys a reload applies (the token file is re-read); admin.enabled needs a restart. */
const ADMIN_LIVE_KEYS = new Set(['admin.users', 'admin.tokenFile', 'admin.allowRemote']);

export async function createDaemon(input: ConfigInput | Config = {}, deps: DaemonDeps = {}): Promise<Daemon> {
  let config = validateConfig(input);
  const logger = deps.logger ?? createLogger({ level: config.log.level });
  const log = logger.child({ component: 'daemon' });
  const storePath = path.join(path.resolve(config.dataDir), 'store');
  // Made below, once the parts it reads exist; the group commit reports to it from the start.
  let metrics: Metrics | undefined;
  const persistence: LevelPersistence = createLevelPersistence(
    { path: storePath, ...config.persistence },
    { logger, ...(config.metrics.enabled ? { onCommit: (ops: number, seconds: number) => metrics?.observeCommit(ops, seconds) } : {}) },
  );
  // Client certificates name users on listeners with useCnAsUsername.
  const identities = new CertIdentities();
  const authorizer = createAuthorizer(config, {
    logger,
    identities,
    certificateUsers:
      (config.tls.enabled && config.tls.useCnAsUsername) ||
      (config.http.enabled && config.http.tls.enabled && config.http.tls.useCnAsUsername),
  });
  const broker: Broker = createBroker(config, { logger, persistence, access: authorizer.hooks });
  // Never part of readiness: the broker serves local clients whatever NATS
  // does. Loaded only when configured: the NATS client is the largest part
  // of an idle daemon's heap that a broker without a bridge never uses.
  const bridge: Bridge = config.bridge.enabled
    ? (await import('./bridge/bridge.js')).createBridge(config.bridge, {
        logger,
        store: persistence,
        // Imported messages enter as the broker's own publishes, numbered
        // first: the store's taps and the QoS 0 publish event below see which
        // message it is.
        publish: (packet, register) => broker.publishOwn(packet, register),
      })
    : disabledBridge();
  const operations = createOperations(config, { broker, persistence, authorizer, bridge, storePath, logger });
  metrics = operations.metrics;
  const listeners: Listener[] = [];
  let state: DaemonState = 'created';
  let starting: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;

  const readiness = (): ReadinessReport => {
    const reasons: string[] = [];
    if (state !== 'running') reasons.push(`daemon is ${state}`);
    if (persistence.state !== 'running') reasons.push(`store is ${persistence.state}`);
    if (!broker.running) reasons.push('broker is not running');
    for (const listener of listeners) {
      if (listener.address() === null) reasons.push(`${listener.name} listener is not bound`);
    }
    // Not ready while store writes fail (a full disk): QoS 1/2 publishes get
    // no acknowledgement, so a load balancer should send publishers elsewhere.
    // The persistence reopens the store by itself once it can (persistence/write-failures.ts).
    const writeFailure = persistence.state === 'running' ? persistence.writeFailure : undefined;
    if (writeFailure) {
      const recovering = reasons.length === 0;
      reasons.push(`store writes are failing (${writeFailure.code}): ${writeFailure.message}`);
      return { ready: false, reasons, recovering };
    }
    return { ready: reasons.length === 0, reasons };
  };

  if (config.mqtt.enabled) listeners.push(createTcpListener(config, { broker, logger }));
  const certificates: CertificateReloadable[] = [];
  if (config.tls.enabled) {
    const tlsListener = createTlsListener(config, { broker, logger, identities });
    listeners.push(tlsListener);
    certificates.push(tlsListener);
  }
  // The admin API lives on the HTTP listener: without it, there is no API.
  const admin: AdminApi | undefined =
    config.admin.enabled && config.http.enabled
      ? createAdminApi(config.admin, {
          logger,
          broker,
          store: persistence,
          logins: authorizer,
          userOf: authorizer.hooks.userOf,
          bridgeStats: () => bridge.stats(),
          reload: async () => daemon.reload(deps.reloadConfig ? await deps.reloadConfig() : config),
        })
      : undefined;
  if (config.admin.enabled && !config.http.enabled) log.warn('admin.enabled is set but http.enabled is not: the admin API is not served');
  const routes: HttpRoute[] = admin ? [admin.route] : [];
  if (config.http.enabled) {
    routes.push(...operations.routes);
    if (config.dashboard.enabled) routes.push(createDashboardRoute(config, { logger }));
    const httpListener = createHttpListener(config, { broker, logger, readiness, identities, routes });
    listeners.push(httpListener);
    if (httpListener.reloadCertificates && httpListener.tlsConfigKey) {
      certificates.push(httpListener as typeof httpListener & CertificateReloadable);
    }
  }
  listeners.push(...operations.listeners);

  async function prepareDataDir(): Promise<void> {
    const dir = path.resolve(config.dataDir);
    try {
      await mkdir(dir, { recursive: true });
      await access(dir, constants.R_OK | constants.W_OK);
    } catch (cause) {
      const reason = (cause as NodeJS.ErrnoException).code ?? String(cause);
      throw new EdgeMqttError('EDGEMQTT_DATA_DIR', `data directory ${dir} is not usable: ${reason}`, { cause });
    }
  }

  async function stopComponents(deadlineMs: number): Promise<void> {
    for (const listener of listeners) listener.stopAccepting();
    await operations.sysTopics.stop();
    // Half the deadline to send what waits; the rest stays on disk for the next start.
    await bridge.stop(performance.now() + deadlineMs / 2);
    try {
      await withDeadline(broker.stop(), deadlineMs, 'closing MQTT clients');
    } catch (error) {
      log.warn({ err: (error as Error).message }, 'cutting connections that did not close in time');
    }
    await Promise.all(listeners.map((listener) => listener.stop()));
    await admin?.stop();
    // Last: writes made while clients closed (wills, session times) land first.
    await persistence.stop();
    metrics?.close();
  }

  async function startComponents(): Promise<void> {
    state = 'starting';
    const startedAt = performance.now();
    try {
      await prepareDataDir();
      await persistence.start();
      await broker.start();
      authorizer.load();
      log.info(authorizer.describe(), 'authentication ready');
      await admin?.start();
      // Before the listeners: every message a client can publish passes the bridge's tap.
      await bridge.start();
      // QoS 0 PUBLISHes write nothing the store is asked for: hand them to its publish taps here.
      if (config.bridge.enabled) broker.aedes.on('publish', (packet) => packet.qos === 0 && persistence.tapUngated(packet as unknown as PacketLike));
      // Before the listeners: the retained $SYS figures are there for the first subscriber.
      await operations.sysTopics.start();
      for (const listener of listeners) await listener.start();
    } catch (error) {
      state = 'failed';
      await stopComponents(config.shutdown.timeoutSec * 1000);
      throw error;
    }
    state = 'running';
    authorizer.warnAboutExposure(
      [
        ...(config.mqtt.enabled ? [{ name: 'mqtt', host: config.mqtt.host }] : []),
        ...(config.tls.enabled ? [{ name: 'tls', host: config.tls.host }] : []),
        ...(config.http.enabled && config.http.websocket.enabled ? [{ name: 'http', host: config.http.host }] : []),
      ],
    );
    log.info({ addresses: daemon.addresses(), startMs: Math.round(performance.now() - startedAt) }, 'edgemqtt ready');
  }

  const daemon: Daemon = {
    get config() {
      return config;
    },
    get state() {
      return state;
    },
    logger,
    start() {
      if (state !== 'created') return Promise.reject(new Error(`cannot start a daemon that is ${state}`));
      starting = startComponents();
      return starting;
    },
    stop() {
      stopping ??= (async () => {
        // A stop during start waits for start to settle; otherwise start
        // would bind listeners after stop had released everything.
        if (starting) await starting.catch(() => undefined);
        if (state === 'created' || state === 'stopped') {
          state = 'stopped';
          return;
        }
        state = 'stopping';
        log.info('stopping');
        await stopComponents(config.shutdown.timeoutSec * 1000);
        state = 'stopped';
        log.info('stopped');
      })();
      return stopping;
    },
    addresses() {
      const result: DaemonAddresses = {};
      for (const listener of listeners) {
        const address = listener.address();
        if (address) result[listener.name as keyof DaemonAddresses] = address;
      }
      return result;
    },
    readiness,
    reload(next) {
      const applied: string[] = [];
      const needsRestart: string[] = [];
      // Before start, there are no files in use to fall back on: nothing to re-read.
      const security = state === 'created' ? undefined : reloadSecurity(config, next, { authorizer, certificates });
      const adminReload = state === 'created' ? undefined : admin?.reload(next.admin);
      for (const key of configKeys) {
        const before = getPath(config, key.path);
        const after = getPath(next, key.path);
        if (JSON.stringify(before) === JSON.stringify(after)) continue;
        if (LIVE_KEYS.has(key.name)) applied.push(key.name);
        else if (adminReload && ADMIN_LIVE_KEYS.has(key.name)) continue;
        else if (!security?.handled.has(key.name)) needsRestart.push(key.name);
      }
      for (const key of [...(security?.applied ?? []), ...(adminReload?.applied ?? [])]) if (!applied.includes(key)) applied.push(key);
      if (applied.includes('log.level')) logger.level = next.log.level;
      const base = security?.config ?? config;
      config = { ...base, log: next.log, admin: adminReload?.effective ?? base.admin };
      const failed = [...(security?.failed ?? []), ...(adminReload?.failed ?? [])];
      for (const failure of failed) {
        log.error(failure, `reload: ${failure.key} refused, the one in use stays`);
      }
      log.info({ applied, needsRestart, ...(failed.length > 0 ? { failed: failed.map((f) => f.key) } : {}) }, 'configuration reloaded');
      return failed.length > 0 ? { applied, needsRestart, failed } : { applied, needsRestart };
    },
    authStats: () => authorizer.stats(),
    limitsStats: () => broker.limits.stats(),
    storeStats: () => persistence.stats(),
    bridgeStats: () => bridge.stats(),
    trafficStats: () => broker.traffic.stats(),
  };
  return daemon;
}
