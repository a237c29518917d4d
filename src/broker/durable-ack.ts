/**
 * Acknowledge after durable, for QoS 1 (DESIGN.md, the data path, step 2).
 *
 * aedes 1.2.0 answers a QoS 1 PUBLISH in this order (lib/handlers/publish.js,
 * enqueuePublish): authorizePublish → write PUBACK → broker.publish(packet),
 * and only that publish stores the retained message and queues the copies
 * for offline persistent sessions. A crash between the PUBACK and the end of
 * the publish loses a message the publisher was told is safe. (QoS 2 is in
 * order already: the PUBREC follows the publish, and level-persistence.ts
 * makes that publish's records durable together, in one batch.)
 *
 * The window is closed without changing aedes: authorizePublish, the hook
 * aedes calls before it writes the PUBACK, runs the publish itself once the
 * real authorization has passed, and calls back (letting aedes write the
 * PUBACK) only when that publish has completed. A publish completes only
 * after its records are durable: the persistence resolves
 * outgoingEnqueueCombi, aedes' last step before delivering, once the batch
 * holding them has been written per `persistence.sync`. aedes then calls
 * broker.publish with the same packet object, and the gate turns that second
 * call into a no-op. A publish that fails (a store write failed) is reported
 * to aedes as an authorization error: aedes closes the connection without a
 * PUBACK, and the client resends the message on its next connection.
 *
 * Only QoS 1 PUBLISH packets from the wire (`cmd: 'publish'` with a packet
 * identifier) take this path. Wills have no identifier and no acknowledgement:
 * aedes calls authorizePublish and then publish for them (lib/client.js
 * close, aedes.js _clearWills), and they are published once, by that call.
 *
 * The gate is reusable: `suppress(packet)` turns the next broker.publish of
 * that packet object into a no-op that calls back without error, e.g. for a
 * denied PUBLISH that is acknowledged and dropped with the connection kept.
 */
import type { Aedes, Client, PublishPacket } from 'aedes';

type Callback = (error?: Error | null) => void;
type Publish = (packet: object, client?: Client | null | Callback, done?: Callback) => void;
type AuthorizePublish = (client: Client | null, packet: PublishPacket, done: Callback) => void;

export interface PublishGate {
  /** The next broker.publish() of this very packet object calls back at once and publishes nothing. */
  suppress(packet: object): void;
}

/** Installs the gate on a listening instance, before any client connects. */
export function installDurableAck(aedes: Aedes): PublishGate {
  const instance = aedes as unknown as { publish: Publish; authorizePublish: AuthorizePublish };
  const suppressed = new WeakSet<object>();
  const gate: PublishGate = {
    suppress(packet) {
      suppressed.add(packet);
    },
  };

  const publish = instance.publish;
  instance.publish = function gatedPublish(packet, client, done) {
    if (suppressed.delete(packet)) {
      const callback = typeof client === 'function' ? client : done;
      callback?.();
      return;
    }
    publish.call(aedes, packet, client, done);
  };

  const authorize = instance.authorizePublish;
  instance.authorizePublish = function authorizeAndPublish(client, packet, done) {
    authorize.call(aedes, client, packet, (error) => {
      if (error || !isWireQoS1(packet)) {
        done(error);
        return;
      }
      // Through instance.publish, not the one captured above: other wrappers
      // (the ACL's drop of a denied PUBLISH) see this call as the real one.
      instance.publish(packet, client, (publishError) => {
        if (publishError) {
          done(publishError);
          return;
        }
        gate.suppress(packet);
        done(null);
      });
    });
  };
  return gate;
}

function isWireQoS1(packet: PublishPacket): boolean {
  return packet.cmd === 'publish' && packet.qos === 1 && typeof packet.messageId === 'number';
}
