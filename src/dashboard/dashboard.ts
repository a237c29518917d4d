/**
 * The live dashboard: a static page at `/` and its files under /dashboard/,
 * served on the HTTP listener. Everything live comes afterwards from the
 * browser itself: MQTT over WebSocket on this same origin for $SYS and the
 * topic tree, the admin API for the clients table. The daemon keeps no
 * state for it beyond the files in memory.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import type { HttpRoute } from '../transports/http.js';
import { ASSETS, loadAsset, type Asset } from './assets.js';

/** Written into the page's <meta name="edgemqtt-websocket-path">; the page connects there. */
const WEBSOCKET_PATH_MARK = '%WEBSOCKET_PATH%';

export interface DashboardDeps {
  logger: Logger;
}

export function createDashboardRoute(config: Config, deps: DashboardDeps): HttpRoute {
  const log = deps.logger.child({ component: 'dashboard' });
  const { websocket, tls } = config.http;
  // Empty when MQTT over WebSocket is off: the page says so instead of connecting.
  const websocketPath = websocket.enabled ? websocket.path : '';
  // Read on first request, not at start: most daemons never serve the page,
  // and the mqtt.js build is ~340 KB to read and gzip.
  const loaded = new Map<string, Promise<Asset>>();

  function asset(path: string): Promise<Asset> | undefined {
    const source = ASSETS.get(path);
    if (!source) return undefined;
    let promise = loaded.get(path);
    if (!promise) {
      const transform = path === '/' ? (text: string) => text.replace(WEBSOCKET_PATH_MARK, escapeAttribute(websocketPath)) : undefined;
      promise = loadAsset(source, transform);
      // A missing file is a packaging fault, not a client's: logged once, and
      // the failure is kept so that requests cannot make the daemon re-read it.
      promise.catch((error: unknown) => log.error({ err: error, file: source.file }, 'a dashboard file cannot be read; the dashboard is incomplete'));
      loaded.set(path, promise);
    }
    return promise;
  }

  return (request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    const pending = asset(path);
    if (!pending) return false;
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      sendText(response, 405, 'method not allowed', { Allow: 'GET, HEAD' });
      return true;
    }
    pending.then(
      (file) => send(request, response, file, securityHeaders(request, tls.enabled)),
      () => sendText(response, 500, 'this dashboard file is missing from the installation; see the daemon log'),
    );
    return true;
  };
}

function send(request: IncomingMessage, response: ServerResponse, asset: Asset, headers: Record<string, string>): void {
  const zipped = asset.gzip && acceptsGzip(request) ? asset.gzip : undefined;
  const etag = zipped?.etag ?? asset.etag;
  const common: Record<string, string> = {
    ...headers,
    'Content-Type': asset.contentType,
    // Revalidate every time (a cheap 304): an upgraded daemon serves new files at the same names.
    'Cache-Control': 'no-cache',
    ETag: etag,
    ...(asset.gzip ? { Vary: 'Accept-Encoding' } : {}),
  };
  if (matches(request.headers['if-none-match'], etag)) {
    response.writeHead(304, common).end();
    return;
  }
  const body = zipped?.body ?? asset.body;
  response.writeHead(200, { ...common, 'Content-Length': String(body.length), ...(zipped ? { 'Content-Encoding': 'gzip' } : {}) });
  response.end(request.method === 'HEAD' ? undefined : body);
}

/**
 * What the page may do: scripts and styles only from this origin (no inline
 * script, so injected markup cannot run), network only to this origin and
 * its MQTT WebSocket, no framing.
 */
function securityHeaders(request: IncomingMessage, tls: boolean): Record<string, string> {
  const host = request.headers.host;
  // CSP Level 3 lets 'self' cover ws(s): of the same host, older browsers do
  // not; the host is named only when it is a plain host[:port], since it
  // comes from the client and goes into a header.
  const socketSource = host && HOST.test(host) ? ` ${tls ? 'wss' : 'ws'}://${host}` : '';
  return {
    // worker-src blob: mqtt.js runs its keep-alive timer in a worker built
    // from a blob, as timers in a background tab are throttled to once a
    // minute and PINGREQs would come too late for the broker's keep-alive.
    'Content-Security-Policy':
      "default-src 'none'; script-src 'self'; worker-src blob:; style-src 'self'; img-src 'self'; " +
      `connect-src 'self'${socketSource}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
    'X-Content-Type-Options': 'nosniff',
    'X-Frame-Options': 'DENY',
    'Referrer-Policy': 'no-referrer',
  };
}

/** A DNS name or IPv4 address, or a bracketed IPv6 address, with an optional port. */
const HOST = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

function acceptsGzip(request: IncomingMessage): boolean {
  const accept = request.headers['accept-encoding'];
  if (typeof accept !== 'string') return false;
  return accept.split(',').some((part) => {
    const [coding, ...params] = part.trim().toLowerCase().split(';');
    return coding === 'gzip' && !params.some((p) => /^\s*q=0(?:\.0*)?\s*$/.test(p));
  });
}

/** If-None-Match: a list of entity tags or `*` (RFC 9110 §13.1.2; weak comparison). */
function matches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === '*') return true;
  return header.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag);
}

function sendText(response: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  const body = `${text}\n`;
  response.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': String(Buffer.byteLength(body)),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    ...headers,
  });
  response.end(response.req.method === 'HEAD' ? undefined : body);
}

function escapeAttribute(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
