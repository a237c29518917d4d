/**
 * Where Prometheus scrapes: a route on the HTTP listener at metrics.path, or,
 * with metrics.ownListener, a small HTTP listener of its own (e.g. on a
 * loopback port while the HTTP listener faces the network).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Logger } from '../observability/logger.js';
import { sendJson } from '../observability/health.js';
import type { HttpRoute } from '../transports/http.js';
import type { Listener } from '../transports/listener.js';
import { ServerLifecycle } from '../transports/server-lifecycle.js';
import type { Metrics } from './prometheus.js';

/** The route serving `metrics` at `path`: GET and HEAD; any other method gets 405. */
export function metricsRoute(path: string, metrics: Metrics, logger: Logger): HttpRoute {
  const log = logger.child({ component: 'metrics' });
  return (request, response) => {
    if (new URL(request.url ?? '/', 'http://localhost').pathname !== path) return false;
    serve(request, response, metrics, log);
    return true;
  };
}

function serve(request: IncomingMessage, response: ServerResponse, metrics: Metrics, log: Logger): void {
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    sendJson(response, 405, { error: 'metrics answer GET and HEAD only' }, { Allow: 'GET, HEAD' });
    return;
  }
  metrics.scrape().then(
    (text) => {
      response.writeHead(200, {
        'Content-Type': metrics.contentType,
        'Content-Length': Buffer.byteLength(text),
        'Cache-Control': 'no-store',
      });
      response.end(request.method === 'HEAD' ? undefined : text);
    },
    (error: unknown) => {
      // Our bug, not the scraper's: a stack trace belongs in the log.
      log.error({ err: error }, 'metrics scrape failed');
      if (!response.headersSent) sendJson(response, 500, { error: 'metrics scrape failed' });
      else response.destroy();
    },
  );
}

export interface MetricsListenerOptions {
  host: string;
  port: number;
  path: string;
}

/** metrics.ownListener: an HTTP listener that serves the metrics only (404 elsewhere). */
export function createMetricsListener(options: MetricsListenerOptions, metrics: Metrics, logger: Logger): Listener {
  const log = logger.child({ component: 'listener', listener: 'metrics' });
  const route = metricsRoute(options.path, metrics, logger);
  const server = createServer((request, response) => {
    if (!route(request, response)) sendJson(response, 404, { error: 'not found' });
  });
  // A scraper keeps its connection open between scrapes; no need to wait for it on stop.
  const lifecycle = new ServerLifecycle('metrics', server);
  server.on('connection', (socket) => lifecycle.track(socket));
  return {
    name: 'metrics',
    async start() {
      await lifecycle.listen(options.host, options.port);
      log.info({ address: lifecycle.address(), path: options.path }, 'listening for metrics scrapes');
    },
    stopAccepting: () => lifecycle.stopAccepting(),
    stop: () => lifecycle.stop(),
    address: () => lifecycle.address(),
  };
}
