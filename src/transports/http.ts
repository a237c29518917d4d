/**
 * The HTTP listener: health endpoints, and MQTT over WebSocket on its path.
 */
import { createServer } from 'node:http';
import type { Config } from '../config/schema.js';
import type { Broker } from '../broker/broker.js';
import type { Logger } from '../observability/logger.js';
import { handleHealthRequest, sendJson, type ReadinessCheck } from '../observability/health.js';
import type { Listener } from './listener.js';
import { ServerLifecycle } from './server-lifecycle.js';
import { guardPacketSize } from './packet-size-guard.js';
import { createWebSocketUpgrade, refuseUpgrade } from './websocket.js';

export interface HttpListenerDeps {
  broker: Broker;
  logger: Logger;
  readiness: ReadinessCheck;
}

export function createHttpListener(config: Config, deps: HttpListenerDeps): Listener {
  const { host, port, websocket } = config.http;
  const log = deps.logger.child({ component: 'listener', listener: 'http' });
  const server = createServer((request, response) => {
    if (handleHealthRequest(request, response, deps.readiness)) return;
    if (websocket.enabled && new URL(request.url ?? '/', 'http://localhost').pathname === websocket.path) {
      sendJson(response, 426, { error: 'this path speaks MQTT over WebSocket only' }, { Upgrade: 'websocket' });
      return;
    }
    sendJson(response, 404, { error: 'not found' });
  });
  const lifecycle = new ServerLifecycle('http', server);
  server.on('connection', (socket) => lifecycle.track(socket));

  const upgrade = createWebSocketUpgrade({
    path: websocket.path,
    allowedOrigins: websocket.allowedOrigins,
    maxPayloadBytes: config.broker.maxPacketSizeBytes,
    logger: log,
    onConnection(stream, request) {
      guardPacketSize(stream, config.broker.maxPacketSizeBytes, (reason) =>
        log.info({ remote: request.socket.remoteAddress, reason }, 'WebSocket closed: packet too large'),
      );
      deps.broker.aedes.handle(stream, request);
    },
  });
  server.on('upgrade', (request, socket, head) => {
    if (!websocket.enabled) {
      refuseUpgrade(socket as import('node:net').Socket, 404, 'Not Found', 'MQTT over WebSocket is disabled');
      return;
    }
    upgrade.handleUpgrade(request, socket as import('node:net').Socket, head);
  });

  return {
    name: 'http',
    async start() {
      await lifecycle.listen(host, port);
      log.info({ address: lifecycle.address(), websocketPath: websocket.enabled ? websocket.path : null }, 'listening for HTTP');
    },
    stopAccepting: () => lifecycle.stopAccepting(),
    async stop() {
      await lifecycle.stop();
      await upgrade.close();
    },
    address: () => lifecycle.address(),
  };
}
