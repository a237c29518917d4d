/**
 * Start/stop plumbing shared by every listener: bind with a clear error,
 * track open sockets so that stop() can cut the ones still open.
 */
import type { Server as NetServer, Socket, AddressInfo } from 'node:net';
import { ListenError } from '../errors.js';
import { formatAddress } from './listener.js';

/**
 * Connections the kernel may hold completed, not yet accepted, per listener.
 * Node's default (511) overflows when thousands of clients reconnect at once
 * after a restart (a NAT or proxy's clients, a fleet's): the kernel drops the
 * handshakes it has no room for and each client waits out a SYN or ACK
 * retransmission (1 s, then 3 s, 7 s…) before it is even seen. The kernel
 * caps the figure at net.core.somaxconn (4,096 on current Linux); it costs
 * nothing until used.
 */
const LISTEN_BACKLOG = 4096;

export class ServerLifecycle {
  readonly #server: NetServer;
  readonly #name: string;
  readonly #sockets = new Set<Socket>();
  #listening = false;

  constructor(name: string, server: NetServer) {
    this.#name = name;
    this.#server = server;
  }

  /** One listener for every socket ('close' comes once): no closure, nor once()'s wrapper, per connection. */
  readonly #untrack = ((sockets: Set<Socket>) =>
    function untrack(this: Socket): void {
      sockets.delete(this);
    })(this.#sockets);

  /** Remembers a socket until it closes, so that stop() can cut it. */
  track(socket: Socket): void {
    this.#sockets.add(socket);
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
      this.#server.listen({ host, port, backlog: LISTEN_BACKLOG });
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
