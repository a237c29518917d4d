/**
 * The HTTP listener: health endpoints, and MQTT over WebSocket on its path.
 * With `http.tls` it is an HTTPS listener (and WebSocket becomes WSS).
 */
import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createServer as createHttpsServer } from 'node:https';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import type { CertIdentities } from './cert-identity.js';
import { ServerCertificate, tlsServerOptions, type CertificateReloadable, type TlsSettings } from './tls-context.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { handleHealthRequest, sendJson, type ReadinessCheck } from '../observability/health.js';
import type { ConnectionBroker, Listener } from './listener.js';
import { Admission, whileWaiting } from './admission.js';
import { ServerLifecycle } from './server-lifecycle.js';
import { createWebSocketUpgrade, refuseUpgrade } from './websocket.js';

/**
 * A handler the daemon mounts on the HTTP listener (metrics, admin API,
 * dashboard): true when it took the request (and answers it, now or later),
 * false to let the next one look.
 */
export type HttpRoute = (request: IncomingMessage, response: ServerResponse) => boolean;

export interface HttpListenerDeps {
  broker: ConnectionBroker;
  logger: Logger;
  readiness: ReadinessCheck;
  /** Tried in order after the health endpoints; a request none takes gets 404. */
  routes?: readonly HttpRoute[];
  /** Where client-certificate user names go (http.tls.useCnAsUsername). */
  identities?: CertIdentities;
}

export function createHttpListener(config: Config, deps: HttpListenerDeps): Listener & Partial<CertificateReloadable> {
  const { host, port, websocket, tls } = config.http;
  const log = deps.logger.child({ component: 'listener', listener: 'http' });
  const handleRequest: RequestListener = (request, response) => {
    if (handleHealthRequest(request, response, deps.readiness)) return;
    for (const route of deps.routes ?? []) if (route(request, response)) return;
    if (websocket.enabled && new URL(request.url ?? '/', 'http://localhost').pathname === websocket.path) {
      sendJson(response, 426, { error: 'this path speaks MQTT over WebSocket only' }, { Upgrade: 'websocket' });
      return;
    }
    sendJson(response, 404, { error: 'not found' });
  };
  const server = tls.enabled
    ? createHttpsServer(tlsServerOptions(tls, config.broker.connectTimeoutSec * 1000), handleRequest)
    : createServer(handleRequest);
  const certificate = tls.enabled ? new ServerCertificate(server as TlsServer, tls, log) : undefined;
  const lifecycle = new ServerLifecycle('http', server);
  server.on('connection', (socket) => lifecycle.track(socket));

  // Slowloris: a connection must complete its first request (a WebSocket
  // handshake, a health check) within broker.connectTimeoutSec; Node's own
  // headersTimeout is checked only every 30 s. With TLS the clock starts
  // after the handshake (bounded by the TLS handshake timeout), on the
  // socket that requests then arrive on.
  server.on(tls.enabled ? 'secureConnection' : 'connection', (socket: Socket) => limitFirstRequest(socket));
  const firstRequestMs = config.broker.connectTimeoutSec * 1000;
  // Timer and 'close' listener go once the first request is in: a WebSocket
  // connection that lives for days keeps neither (nor a closure per socket).
  const firstRequestTimers = new WeakMap<Duplex, NodeJS.Timeout>();
  function firstRequestTimeout(socket: Socket): void {
    firstRequestTimers.delete(socket);
    deps.broker.limits.hit('connectTimeout', { listener: 'http', remote: socket.remoteAddress, connectTimeoutSec: config.broker.connectTimeoutSec });
    socket.destroy();
  }
  function limitFirstRequest(socket: Socket): void {
    const timer = setTimeout(firstRequestTimeout, firstRequestMs, socket);
    timer.unref();
    firstRequestTimers.set(socket, timer);
    socket.once('close', closedBeforeFirstRequest);
  }
  function closedBeforeFirstRequest(this: Duplex): void {
    firstRequestDone(this);
  }
  function firstRequestDone(socket: Duplex): void {
    const timer = firstRequestTimers.get(socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    firstRequestTimers.delete(socket);
    socket.off('close', closedBeforeFirstRequest);
  }
  server.on('request', (request) => firstRequestDone(request.socket));

  const upgrade = createWebSocketUpgrade({
    path: websocket.path,
    allowedOrigins: websocket.allowedOrigins,
    maxPayloadBytes: config.broker.maxPacketSizeBytes,
    logger: log,
    onOversize(remote) {
      deps.broker.limits.hit('maxPacketSize', { listener: 'http', remote, maxPacketSizeBytes: config.broker.maxPacketSizeBytes });
    },
    onConnection(stream, socket) {
      // The broker guards every connection it handles: packet size, MQTT
      // 3.1.1 conformance, CONNECT timeout, bounded output (src/broker/limits.ts).
      if (tls.enabled && tls.useCnAsUsername) deps.identities?.record(stream, socket as TLSSocket);
      // aedes keeps its second argument as client.req; what is read from it
      // (the listener, the peer's address) is on the socket, so it gets that
      // alone instead of the whole upgrade request with its headers.
      deps.broker.aedes.handle(stream, { socket } as unknown as IncomingMessage);
    },
  });
  // First come, first served, a few per turn (admission.ts): the handshake
  // and the limits when an upgrade's turn comes, against the connections open then.
  const admission = new Admission<{ request: IncomingMessage; socket: Socket; head: Buffer }>(({ request, socket, head }) => {
    if (socket.destroyed) return;
    socket.off('error', whileWaiting);
    admitUpgrade(request, socket, head);
  });
  server.on('upgrade', (request: IncomingMessage, socket: Socket, head: Buffer) => {
    firstRequestDone(socket);
    if (!websocket.enabled) {
      refuseUpgrade(socket, 404, 'Not Found', 'MQTT over WebSocket is disabled');
      return;
    }
    // Node's server no longer listens for the socket's errors once it hands it over.
    socket.on('error', whileWaiting);
    admission.push({ request, socket, head });
  });
  function admitUpgrade(request: IncomingMessage, socket: Socket, head: Buffer): void {
    // Refused before the handshake and before aedes builds any state for it.
    if (websocket.maxConnections > 0 && upgrade.openConnections >= websocket.maxConnections) {
      deps.broker.limits.hit('listenerMaxConnections', { listener: 'http', remote: socket.remoteAddress, maxConnections: websocket.maxConnections });
      refuseUpgrade(socket, 503, 'Service Unavailable', 'too many MQTT-over-WebSocket connections');
      return;
    }
    const refusal = deps.broker.limits.admit('http', socket.remoteAddress);
    if (refusal) {
      const [status, text] = refusal.limit === 'connectRate' ? [429, 'Too Many Requests'] : [503, 'Service Unavailable'];
      refuseUpgrade(socket, status, text, refusal.reason);
      return;
    }
    upgrade.handleUpgrade(request, socket, head);
  }

  return {
    name: 'http',
    async start() {
      const summary = certificate?.load();
      await lifecycle.listen(host, port);
      log.info(
        { address: lifecycle.address(), websocketPath: websocket.enabled ? websocket.path : null, ...(summary ? { certificate: summary } : {}) },
        tls.enabled ? 'listening for HTTPS' : 'listening for HTTP',
      );
    },
    stopAccepting: () => lifecycle.stopAccepting(),
    async stop() {
      await lifecycle.stop();
      await upgrade.close();
    },
    address: () => lifecycle.address(),
    ...(certificate
      ? {
          tlsConfigKey: 'http.tls',
          reloadCertificates(next: TlsSettings) {
            const reloaded = certificate.load(next);
            log.info({ certificate: reloaded }, 'TLS certificate reloaded');
            return certificate.keys('http.tls');
          },
        }
      : {}),
  };
}
