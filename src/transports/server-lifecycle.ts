/**
 * Start/stop plumbing shared by every listener: bind with a clear error,
 * track open sockets so that stop() can cut the ones still open.
 */
import type { Server as NetServer, Socket, AddressInfo } from 'node:net';
import { ListenError } from '../errors.js';
import { formatAddress } from './listener.js';

export class ServerLifecycle {
  readonly #server: NetServer;
  readonly #name: string;
  readonly #sockets = new Set<Socket>();
  /** Every tracked socket's 'close' listener, one for all (`this` is the socket): no closure per connection. */
  readonly #untrack: (this: Socket) => void;
  #listening = false;

  constructor(name: string, server: NetServer) {
    this.#name = name;
    this.#server = server;
    const sockets = this.#sockets;
    this.#untrack = function untrack(this: Socket) {
      sockets.delete(this);
    };
  }

  /** Remembers a socket until it closes, so that stop() can cut it. */
  track(socket: Socket): void {
    this.#sockets.add(socket);
    // A socket emits 'close' once: `on`, not `once`, spares a wrapper per connection.
    socket.on('close', this.#untrack);
  }

  get openSockets(): number {
    return this.#sockets.size;
  }

  listen(host: string, port: number): Promise<void> {
    if (this.#listening) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => {
        this.#server.off('listening', onListening);
        reject(new ListenError(this.#name, formatAddress(host, port), error));
      };
      const onListening = () => {
        this.#server.off('error', onError);
        this.#listening = true;
        resolve();
      };
      this.#server.once('error', onError);
      this.#server.once('listening', onListening);
      this.#server.listen({ host, port });
    });
  }

  stopAccepting(): void {
    if (this.#listening) {
      this.#listening = false;
      this.#server.close();
    }
  }

  async stop(): Promise<void> {
    this.stopAccepting();
    for (const socket of this.#sockets) socket.destroy();
    if (this.#server.listening) {
      await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    }
  }

  address(): AddressInfo | null {
    if (!this.#listening) return null;
    const address = this.#server.address();
    return address !== null && typeof address === 'object' ? address : null;
  }
}
