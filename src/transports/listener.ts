import type { AddressInfo } from 'node:net';

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
