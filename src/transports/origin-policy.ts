/**
 * Which web pages may open an MQTT WebSocket. Browsers always send Origin on
 * a WebSocket handshake, so without a check any page a user visits could
 * reach the gateway from inside the LAN with the user's network position.
 *
 * - no Origin header: not a browser (a device or a server), allowed;
 * - "*" in the list: any origin;
 * - an origin in the list (scheme://host[:port], compared case-insensitively);
 * - otherwise only a page served by this same host and port (Origin's host
 *   equals the Host header), such as a dashboard the gateway serves itself.
 */
export function isOriginAllowed(
  origin: string | undefined,
  hostHeader: string | undefined,
  allowedOrigins: readonly string[],
): boolean {
  if (origin === undefined) return true;
  if (allowedOrigins.includes('*')) return true;
  const normalized = normalizeOrigin(origin);
  if (normalized === null) return false;
  if (allowedOrigins.some((allowed) => normalizeOrigin(allowed) === normalized)) return true;
  return hostHeader !== undefined && new URL(normalized).host === hostHeader.toLowerCase();
}

function normalizeOrigin(origin: string): string | null {
  try {
    const url = new URL(origin);
    if (url.origin === 'null') return null;
    return url.origin.toLowerCase();
  } catch {
    return null;
  }
}
