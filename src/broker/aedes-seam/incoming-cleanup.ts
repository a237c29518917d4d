/**
 * Drops the stored incoming QoS 2 packets (those awaiting PUBREL) of a
 * session that ends: they are session state [MQTT-3.1.2-6] [MQTT-4.3.3-2],
 * and without this a client that publishes QoS 2 with a clean session and
 * never sends the PUBREL leaves its records behind for good; repeated with
 * fresh client ids, the store grows without bound.
 *
 * aedes 1.2.0 calls persistence.cleanIncoming at a clean CONNECT (after the
 * takeover of an earlier connection with the same id) and when a clean
 * session's connection closes. aedes 2.0.0-beta.1 was branched before that
 * and never calls it (lib/handlers/connect.js has no cleanIncoming step,
 * lib/client.js close() none either), so it is done here, from the broker's
 * events:
 * - 'client' (aedes.js _finishRegisterClient): after the takeover, before
 *   the CONNACK; packets sent after the CONNECT wait in aedes' queue until
 *   the connection is set up, and LevelPersistence takes the set of ids to
 *   drop synchronously, so none of the new connection's packets is lost.
 *   The session starts clean on Clean Session 1 (3.1.1), Clean Start 1 (5.0).
 * - 'clientDisconnect': a session that ends with its connection, i.e. Clean
 *   Session 1 (3.1.1) or Session Expiry Interval 0 (5.0; aedes 2 sets
 *   `client.clean` from it). Not when a new connection with the same client
 *   id takes the session over (aedes.js registerClient marks the id in
 *   `_takingOver` while it closes the old one, and keeps the session for the
 *   same reason): an MQTT 5 client that reconnects with Clean Start 0 resumes
 *   it [MQTT-3.1.2-5], and the QoS 2 message it resends must be found as
 *   received, not published a second time (4.3.3).
 * - 'sessionExpired' (aedes 2, MQTT 5.0): the Session Expiry Interval ran out
 *   on aedes' own timer. With the LevelDB store as the authority for
 *   session expiry (sessions.ts) aedes never arms that timer; the store
 *   drops an expired session's QoS 2 state itself.
 */
import type { Aedes, Client } from 'aedes';
import type { Logger } from '../../observability/logger.js';

interface IncomingCleanup {
  cleanIncoming?(client: Client): Promise<void>;
}

/** aedes 2 instance internals (aedes.js registerClient); not in its typings. */
interface TakeoverState {
  _takingOver: Set<string>;
}

/** The CONNECT's Clean Start flag, MQTT 5.0 only (lib/handlers/connect.js init); not in aedes' typings. */
interface ConnectState {
  _cleanStart?: boolean;
}

/** Installs the cleanup; call after `listen()` (the persistence exists then). */
export function installIncomingCleanup(aedes: Aedes, logger: Logger): void {
  const persistence = (aedes as unknown as { persistence: IncomingCleanup }).persistence;
  if (typeof persistence.cleanIncoming !== 'function') return;
  const log = logger.child({ component: 'broker' });
  const clean = (client: Client) => {
    persistence.cleanIncoming!(client).catch((error: unknown) =>
      // At debug: the store reports its own write failures; during a stop it is closing anyway.
      log.debug({ err: error, clientId: client.id }, 'could not drop the incoming QoS 2 state of an ended session'),
    );
  };
  aedes.on('client', (client) => {
    if (client.version === 5 ? (client as unknown as ConnectState)._cleanStart === true : client.clean) clean(client);
  });
  const takingOver = (aedes as unknown as TakeoverState)._takingOver;
  aedes.on('clientDisconnect', (client) => {
    if (client.clean && !takingOver.has(client.id)) clean(client);
  });
  (aedes as unknown as NodeJS.EventEmitter).on('sessionExpired', clean);
}
