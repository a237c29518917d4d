/**
 * Why a connected client leaves, where aedes decides it without an event
 * that names the client (aedes.js registerClient, lib/client.js parser):
 * a takeover by a new connection with the same client id, and bytes its
 * MQTT parser refused. Each runs before aedes closes the client, so that
 * its departure can be told apart from a lost connection.
 */
import type { Aedes, Client } from 'aedes';
import { PARSE_ERROR } from './client.js';

/** aedes instance internals (aedes.js); not in its typings. */
interface RegistryInternals {
  clients: Record<string, Client>;
  registerClient(client: Client): void;
}

/**
 * Runs `listener` with the connected client a new connection takes over
 * [MQTT-3.1.4-2], before aedes disconnects it (aedes.js registerClient:
 * the client registered under the same id is disconnected, an MQTT 5 one
 * with 0x8E Session taken over, and only then is the new one registered).
 */
export function onTakeover(aedes: Aedes, listener: (taken: Client) => void): void {
  const instance = aedes as unknown as RegistryInternals;
  const registerClient = instance.registerClient;
  instance.registerClient = function registerClientAfterTakeover(this: RegistryInternals, client: Client) {
    const taken = this.clients[client.id];
    if (taken !== undefined && taken !== client) listener(taken);
    registerClient.call(this, client);
  };
}

/**
 * Runs `listener` when aedes' MQTT parser (mqtt-packet) refuses a client's
 * bytes, before aedes closes it (lib/client.js: the parser's 'error' becomes
 * the client's, then 'clientError' and close), for every client of `aedes`
 * made lighter by lightenClient (client.ts), whose shared parser listener
 * calls it. Once per aedes instance: one function for all its clients.
 */
export function onParseError(aedes: Aedes, listener: (client: Client, error: Error) => void): void {
  (aedes as unknown as { [PARSE_ERROR]?: typeof listener })[PARSE_ERROR] = listener;
}
