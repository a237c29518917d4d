/**
 * Wiring of what an operator sees: the Prometheus metrics (a route on the
 * HTTP listener, or a listener of their own) and the mosquitto-style $SYS
 * topics, fed from the stats the daemon's parts keep.
 */
import type { Config } from '../config/schema.js';
import type { Broker } from '../broker/broker.js';
import type { Bridge } from '../bridge/bridge.js';
import type { AuthStats } from '../auth/authorizer.js';
import type { LevelPersistence } from '../persistence/index.js';
import type { Logger } from '../observability/logger.js';
import type { HttpRoute } from '../transports/http.js';
import type { Listener } from '../transports/listener.js';
import { createMetrics, type Metrics, type MetricsSources } from '../metrics/prometheus.js';
import { createMetricsListener, metricsRoute } from '../metrics/endpoint.js';
import { createSysTopics, type SysTopics } from '../metrics/sys-topics.js';
import { directorySize } from '../metrics/store-size.js';
import { packageVersion } from '../util/package-version.js';

export interface OperationsParts {
  broker: Broker;
  persistence: LevelPersistence;
  authorizer: { stats(): AuthStats };
  bridge: Bridge;
  /** The store's directory, for its size on disk. */
  storePath: string;
  logger: Logger;
}

export interface Operations {
  /** Absent when metrics.enabled is false. */
  metrics: Metrics | undefined;
  /** Routes for the HTTP listener. */
  routes: HttpRoute[];
  /** metrics.ownListener, when enabled. */
  listeners: Listener[];
  sysTopics: SysTopics;
}

export function createOperations(config: Config, parts: OperationsParts): Operations {
  const { broker, persistence, authorizer, bridge, storePath, logger } = parts;
  const version = packageVersion();
  const sources: MetricsSources = {
    traffic: () => broker.traffic.stats(),
    limits: () => broker.limits.stats(),
    auth: () => authorizer.stats(),
    store: () => persistence.stats(),
    storeWritesFailing: () => persistence.state === 'running' && persistence.writeFailure !== undefined,
    storeSizeBytes: () => directorySize(storePath),
    bridge: () => bridge.stats(),
  };
  const metrics = config.metrics.enabled ? createMetrics(sources, { version }) : undefined;
  const routes: HttpRoute[] = [];
  const listeners: Listener[] = [];
  if (metrics) {
    const { ownListener, path } = config.metrics;
    if (ownListener.enabled) listeners.push(createMetricsListener({ host: ownListener.host, port: ownListener.port, path }, metrics, logger));
    else routes.push(metricsRoute(path, metrics, logger));
  }
  const sysTopics = createSysTopics(
    { intervalSec: config.broker.sysIntervalSec, version },
    {
      sources: {
        ...sources,
        clients: () => broker.connectedClients(),
        hasSession: (clientId) => persistence.hasSession(clientId),
      },
      publish: (message) => broker.publishOwn(message, () => undefined),
      logger,
    },
  );
  return { metrics, routes, listeners, sysTopics };
}
