/**
 * MQTT over WebSocket [MQTT-6.0]: upgrades on one path only, picks the `mqtt`
 * subprotocol, enforces the Origin allowlist, and hands aedes a byte stream.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Logger } from '../observability/logger.js';
import { isOriginAllowed } from './origin-policy.js';
import { WebSocketStream, type WebSocketStreamHooks } from './websocket-stream.js';

export interface WebSocketUpgradeOptions {
  path: string;
  allowedOrigins: readonly string[];
  /** Largest WebSocket message accepted; larger ones close the socket (1009). */
  maxPayloadBytes: number;
  logger: Logger;
  /**
   * Called with the MQTT byte stream of each accepted connection and its
   * socket (the upgrade request itself is not kept: its headers are of no
   * use once the handshake is done).
   */
  onConnection(stream: Duplex, socket: Socket): void;
  /** Called when a connection is closed for a message over maxPayloadBytes. */
  onOversize?(remote: string | undefined): void;
}

export interface WebSocketUpgrade {
  /** MQTT-over-WebSocket connections open now. */
  readonly openConnections: number;
  handleUpgrade(request: IncomingMessage, socket: Socket, head: Buffer): void;
  /** Closes the WebSocket server; connections are cut by their listener. */
  close(): Promise<void>;
}

/** Subprotocols in order of preference: `mqtt` for 3.1.1, `mqttv3.1` for older clients. */
const SUBPROTOCOLS = ['mqtt', 'mqttv3.1'];

export function createWebSocketUpgrade(options: WebSocketUpgradeOptions): WebSocketUpgrade {
  const log = options.logger;
  const server = new WebSocketServer({
    noServer: true,
    maxPayload: options.maxPayloadBytes,
    // MQTT payloads are often already compact or encrypted; per-message
    // deflate costs CPU and memory per connection (a zip-bomb vector too).
    perMessageDeflate: false,
    handleProtocols: (offered) => SUBPROTOCOLS.find((name) => offered.has(name)) ?? false,
    // The server's set of clients would add an entry and a 'close' closure
    // per connection; connections are counted here and cut by the listener.
    clientTracking: false,
  });

  let openConnections = 0;
  // One hooks object for every connection of this listener.
  const hooks: WebSocketStreamHooks = {
    // MQTT control packets travel in binary frames; a text frame closes the
    // connection before the broker sees it [MQTT-6.0.0-1].
    onTextFrame: (remote) => log.info({ remote }, 'WebSocket closed: MQTT sent in a text frame'),
    onOversize: (remote) => options.onOversize?.(remote),
    onClose: () => openConnections--,
  };

  function accept(ws: WebSocket, socket: Socket): void {
    openConnections++;
    options.onConnection(new WebSocketStream(ws, hooks), socket);
  }

  return {
    get openConnections() {
      return openConnections;
    },
    handleUpgrade(request, socket, head) {
      // The path alone, as clients send it, needs no URL parser (one per upgrade otherwise).
      if (request.url !== options.path && new URL(request.url ?? '/', 'http://localhost').pathname !== options.path) {
        refuseUpgrade(socket, 404, 'Not Found', `WebSocket upgrades are served on ${options.path} only`);
        return;
      }
      const origin = request.headers.origin;
      if (!isOriginAllowed(origin, request.headers.host, options.allowedOrigins)) {
        log.warn({ origin, remote: request.socket.remoteAddress }, 'WebSocket refused: origin not allowed');
        refuseUpgrade(socket, 403, 'Forbidden', `origin ${origin ?? ''} is not allowed`);
        return;
      }
      server.handleUpgrade(request, socket, head, (ws) => accept(ws, socket));
    },
    close() {
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Answers an upgrade request with an HTTP error and closes its socket.
 *
 * Node's HTTP server removes its own 'error' listener from a socket it hands
 * to 'upgrade', so the socket is ours to guard: without a listener a peer
 * that resets the connection (ECONNRESET, EPIPE) raises an uncaught exception
 * and takes the daemon down. The socket is destroyed once the answer is
 * flushed, as ws does for the handshakes it refuses, so a peer that never
 * closes its half cannot hold it open.
 */
export function refuseUpgrade(socket: Socket, status: number, statusText: string, reason: string): void {
  socket.on('error', () => socket.destroy());
  socket.once('finish', () => socket.destroy());
  const body = `${reason}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${statusText}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}
