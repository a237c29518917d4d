/**
 * CONNECT checks that aedes 1.2 leaves out, applied through its
 * preConnect/authenticate hooks so the client still receives a CONNACK with
 * the right return code.
 */
import type { Client, ConnectPacket } from 'aedes';

/** CONNACK return code 0x02 "Identifier rejected" [MQTT-3.2.2-3, table 3.1]. */
export const IDENTIFIER_REJECTED = 2;

export interface ConnectRejection {
  returnCode: number;
  reason: string;
}

/**
 * aedes invents an id for an empty client id whatever the clean-session flag,
 * but a zero-length id with CleanSession=0 must be answered with CONNACK 0x02
 * and the connection closed [MQTT-3.1.3-8].
 */
export function checkConnect(packet: ConnectPacket): ConnectRejection | null {
  if ((packet.clientId ?? '') === '' && packet.clean === false) {
    return { returnCode: IDENTIFIER_REJECTED, reason: 'empty client id with clean session 0 [MQTT-3.1.3-8]' };
  }
  return null;
}

/**
 * aedes sends no CONNACK when preConnect fails, and authenticate does not see
 * the packet; this remembers preConnect's verdict per client for authenticate.
 */
export class PendingRejections {
  readonly #byClient = new WeakMap<Client, ConnectRejection>();

  remember(client: Client, rejection: ConnectRejection): void {
    this.#byClient.set(client, rejection);
  }

  take(client: Client): ConnectRejection | undefined {
    const rejection = this.#byClient.get(client);
    this.#byClient.delete(client);
    return rejection;
  }
}
