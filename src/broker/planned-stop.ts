/**
 * What a planned stop (SIGTERM, systemctl restart, daemon.stop()) does with
 * the wills of the clients still connected: it does not publish them.
 *
 * aedes' close() closes every client as if its connection had failed, which
 * publishes every will (lib/client.js close → finish). But those clients did
 * not fail: the broker went away, and they reconnect once it is back. A
 * restart announcing every device "offline" (and, for retained wills,
 * leaving that state behind until each device publishes again) would be a
 * false alarm on every upgrade.
 *
 * The wills stay stored. After the restart, a client that reconnects
 * replaces or deletes its will with its CONNECT [MQTT-3.1.2-8]. A client
 * that does not come back within about four heartbeat intervals
 * (broker.heartbeatIntervalSec, 60 s by default) has its will published
 * then: aedes publishes the stored wills of dead broker instances every four
 * heartbeat intervals, and the persistence reports a will left by an earlier
 * run as one (src/persistence/types.ts, PREVIOUS_RUN_BROKER_ID).
 * The same holds after a crash, where nothing could be published anyway.
 *
 * MQTT 5 wills with a Will Delay Interval:
 * - of a client connected at the stop: withheld as above, and after the
 *   restart not published before the delay has passed either (the store
 *   holds it back: persistence/session-expiry.ts holdWills);
 * - of a client whose connection had already closed, its delay running:
 *   the stop does not cancel it. Its due time is stored with it, and after
 *   the restart it is published when due (time the broker was down does
 *   not count), unless the client has reconnected (aedes-seam/sessions.ts).
 */
import { withholdWill, type AedesSeam } from './aedes-seam/index.js';

/** Makes the coming close() skip the wills of connected clients; returns how many it skipped. */
export function withholdWills(seam: AedesSeam): number {
  let withheld = 0;
  for (const client of seam.connectedClients()) if (withholdWill(client)) withheld++;
  return withheld;
}
