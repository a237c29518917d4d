/**
 * Liveness and readiness for supervisors and load balancers.
 * /healthz: 200 while the process can answer at all.
 * /readyz: 200 only when every check passes, else 503 with the failing reasons.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface ReadinessReport {
  ready: boolean;
  /** Why the daemon is not ready; empty when ready. */
  reasons: string[];
  /**
   * True when every reason is one the daemon recovers from by itself (store
   * writes failing: it reopens the store once it can). A load balancer should
   * still avoid the daemon, but a watchdog need not restart it: a restart
   * would drop every client and, on a full disk, fail to start anyway.
   */
  recovering?: boolean;
}

export type ReadinessCheck = () => ReadinessReport;

export function handleHealthRequest(
  request: IncomingMessage,
  response: ServerResponse,
  readiness: ReadinessCheck,
): boolean {
  const path = new URL(request.url ?? '/', 'http://localhost').pathname;
  if (path !== '/healthz' && path !== '/readyz') return false;
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    sendJson(response, 405, { error: 'method not allowed' }, { Allow: 'GET, HEAD' });
    return true;
  }
  if (path === '/healthz') {
    sendJson(response, 200, { status: 'ok' });
    return true;
  }
  const report = readiness();
  sendJson(response, report.ready ? 200 : 503, report);
  return true;
}

export function sendJson(
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = `${JSON.stringify(body)}\n`;
  response.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    ...headers,
  });
  response.end(response.req.method === 'HEAD' ? undefined : text);
}
