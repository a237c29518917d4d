/**
 * The client parser's 'packet' event (lib/client.js listens with `enqueue`;
 * shared.ts prepends its own listener), for the packets the fast path reads
 * in place (fast-publish.ts) and hands on as mqtt-packet's parser would.
 */

export type PacketListener = (this: PacketParser, packet: object) => void;

/** The client's parser as an EventEmitter of parsed packets. */
export interface PacketParser {
  _events: { packet?: PacketListener | PacketListener[] };
  emit(event: 'packet', packet: object): boolean;
}

/**
 * The parser's 'packet' event as EventEmitter's emit delivers it (every
 * listener in order, each called on the parser, the list as it was when the
 * event began), without the copy of the list emit makes per event when there
 * are several (node:events arrayClone). There are two, the shared
 * subscriptions' and aedes' (shared.ts): that copy was ~120 B of garbage for
 * each QoS 1 PUBLISH and PUBACK read in place.
 */
export function emitPacket(parser: PacketParser, packet: object): void {
  const listeners = parser._events.packet;
  if (Array.isArray(listeners) && listeners.length === 2) {
    // Both read before the first runs: one that removes or replaces a listener changes only later events, as with emit's copy.
    const first = listeners[0]!;
    const second = listeners[1]!;
    first.call(parser, packet);
    second.call(parser, packet);
    return;
  }
  parser.emit('packet', packet);
}
