/**
 * The keep-alive of every connected client on one timer per broker, instead
 * of a Node timer per client.
 *
 * aedes (handlers/connect.js setKeepAlive, and connect.ts for a 3.1/3.1.1
 * CONNECT) gives each client with a non-zero
 * Keep Alive its own `setTimeout` of 1.5 × Keep Alive + 1 ms, a closure and
 * its context, ~200 bytes per connection on the heap, and restarts it for
 * every packet (`_keepaliveTimer.refresh()`, handlers/index.js, and the QoS 0
 * fast path) [MQTT-3.1.2-24]. Once the client is connected, the seam stops
 * that timer and puts a Beat in its place: `refresh()` notes the time, and a
 * sweep once a second over aedes' table of connected clients (aedes.js
 * registerClient) closes those silent for longer than their interval, as
 * aedes' timer did: the broker's 'keepaliveTimeout', then the client's
 * 'error' "keep alive timeout". So a silent client is closed between 1.5 ×
 * Keep Alive and a second after, never before, as Mosquitto does with its
 * once-a-second check. aedes' close() hands a Beat to `clearTimeout`, which
 * ignores what is not a Node timer, and drops it.
 *
 * Between CONNECT and 'connected' (the CONNACK and any resend of a stored
 * session, resend.ts) aedes' own timer runs; the Beat starts from the
 * 'connected' moment, which can only make that one deadline later.
 */
import type { Aedes, Client } from 'aedes';

/** How often the sweep runs: the most a silent client outlives its keep-alive. */
export const KEEPALIVE_SWEEP_MS = 1000;

/** The client fields of aedes' keep-alive (lib/client.js, handlers/connect.js); not in its typings. */
interface KeptAlive {
  _keepaliveInterval: number;
  _keepaliveTimer: { refresh(): unknown } | null;
  broker: Aedes & { [SWEEP]?: KeepAliveSweep };
  emit(event: 'error', error: Error): boolean;
}

/** Stands in for a client's keep-alive timer: when its last packet came. */
class Beat {
  last = Date.now();
  /** Timed out already: a packet arriving during the close starts nothing again. */
  expired = false;

  refresh(): this {
    this.last = Date.now();
    return this;
  }
}

const SWEEP = Symbol('edgemqtt.keepAliveSweep');

/** aedes' table of registered clients by id (aedes.js registerClient). */
type ClientTable = { clients: Readonly<Record<string, Client | undefined>> };

/** One broker's keep-alive sweep; stops when the broker closes. */
class KeepAliveSweep {
  readonly #aedes: ClientTable;
  #timer: NodeJS.Timeout | null = null;

  constructor(aedes: Aedes) {
    this.#aedes = aedes as unknown as ClientTable;
    aedes.once('closed', () => this.stop());
  }

  watch(client: KeptAlive): void {
    const timer = client._keepaliveTimer;
    if (client._keepaliveInterval <= 0 || timer === null || timer instanceof Beat) return;
    clearTimeout(timer as NodeJS.Timeout);
    client._keepaliveTimer = new Beat();
    if (this.#timer === null) {
      this.#timer = setInterval(() => this.#sweep(), KEEPALIVE_SWEEP_MS);
      // Nothing to keep the process alive for: aedes' own timers do not either once closed.
      this.#timer.unref();
    }
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #sweep(): void {
    const now = Date.now();
    const clients = this.#aedes.clients;
    for (const id in clients) {
      const client = clients[id] as unknown as KeptAlive | undefined;
      const beat = client?._keepaliveTimer;
      if (!(beat instanceof Beat) || beat.expired || now - beat.last <= client!._keepaliveInterval) continue;
      beat.expired = true;
      keepAliveTimedOut(client!);
    }
  }
}

/**
 * What aedes' keep-alive timer does when it fires (handlers/connect.js
 * setKeepAlive): the broker's 'keepaliveTimeout', then the client's 'error',
 * which closes it. For the sweep and connect.ts' timer.
 */
export function keepAliveTimedOut(client: { broker: { emit(event: 'keepaliveTimeout', client: Client): unknown }; emit(event: 'error', error: Error): unknown }): void {
  client.broker.emit('keepaliveTimeout', client as unknown as Client);
  client.emit('error', new Error('keep alive timeout'));
}

/** Puts a keep-alive sweep on `aedes`, over its table of connected clients (`aedes.clients`). */
export function sweepKeepAlives(aedes: Aedes): void {
  (aedes as KeptAlive['broker'])[SWEEP] = new KeepAliveSweep(aedes);
}

/** Hands a just connected client's keep-alive to its broker's sweep, if the broker has one. */
export function keepAliveBySweep(client: Client): void {
  const kept = client as unknown as KeptAlive;
  kept.broker[SWEEP]?.watch(kept);
}
