import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * What a listener needs of the broker (src/broker/broker.ts, which the
 * daemon passes in): admission before any MQTT state exists for a
 * connection, counting the limits a listener enforces itself, and the MQTT
 * session for each accepted stream. Declared here so that transports import
 * nothing from src/broker.
 */
export interface ConnectionBroker {
  readonly limits: {
    /** Why the connection may not proceed to MQTT (limits.maxConnections, connection rate), or null. */
    admit(listener: string, remoteAddress: string | undefined): { limit: 'maxConnections' | 'connectRate'; reason: string } | null;
    hit(limit: 'listenerMaxConnections' | 'connectTimeout' | 'maxPacketSize', fields: Record<string, unknown>): void;
  };
  readonly aedes: { handle(stream: Duplex, request?: IncomingMessage): unknown };
}

/** A network listener owned by the daemon. */
export interface Listener {
  /** Short name used in logs, errors and `addresses()`: `mqtt`, `http`. */
  readonly name: string;
  /** Binds the address; rejects with a ListenError. */
  start(): Promise<void>;
  /** Stops accepting new connections; open ones stay. */
  stopAccepting(): void;
  /** Cuts connections still open and releases the port. */
  stop(): Promise<void>;
  /** The bound address, or null when not listening. */
  address(): AddressInfo | null;
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
