/**
 * The QoS 1/2 messages of shared subscriptions sent to each connected
 * member and not yet acknowledged (shared-subscriptions.ts): a member that
 * leaves hands them to another. A message is the member's once it sent
 * PUBACK, or PUBREC for QoS 2 [MQTT-4.3.3-1]; the packet identifier it went
 * out under is learnt from aedes' write (aedes-seam/shared.ts
 * watchDeliveries).
 */
import type { Client } from 'aedes';
import type { DeliveredPacket } from './aedes-seam/index.js';

/**
 * Records kept per connection. A connection cannot hold more messages
 * awaiting acknowledgement than it has packet identifiers (65535); records
 * beyond that are of messages the flow control never sent (dropped from a
 * clean session's full queue), forgotten oldest first so a stalled member
 * cannot grow memory without bound.
 */
const MAX_IN_FLIGHT_PER_MEMBER = 65_535;

/** A QoS 1/2 message sent to a connected member and not yet acknowledged. */
export interface InFlight {
  /** The group's name as aedes keeps it. */
  group: string;
  /** The message as published (shared with other subscribers: never changed). */
  source: DeliveredPacket;
  /** In the member's session store too. */
  queued: boolean;
  messageId?: number;
}

interface Ledger {
  byKey: Map<string, InFlight>;
  byMessageId: Map<number, string>;
}

export class SharedInFlight {
  readonly #ledgers = new Map<Client, Ledger>();
  /** A member's copy → its entry's key. */
  readonly #copies = new WeakMap<object, string>();

  /** Follows `copy`, a member's own copy of `entry.source`, until the member acknowledges it. */
  track(client: Client, copy: DeliveredPacket, entry: InFlight): void {
    let ledger = this.#ledgers.get(client);
    if (!ledger) {
      ledger = { byKey: new Map(), byMessageId: new Map() };
      this.#ledgers.set(client, ledger);
    }
    const key = `${entry.group}\u0000${String(entry.source.brokerId)}\u0000${String(entry.source.brokerCounter)}`;
    ledger.byKey.set(key, entry);
    if (ledger.byKey.size > MAX_IN_FLIGHT_PER_MEMBER) forgetOldest(ledger);
    this.#copies.set(copy, key);
  }

  /** Whether `copy` is followed (for watchDeliveries). */
  follows(copy: DeliveredPacket): boolean {
    return this.#copies.has(copy);
  }

  /** aedes wrote a member's copy under `messageId`, or decided not to send it (undefined: the ACL, a duplicate). */
  written(client: Client, copy: DeliveredPacket, messageId: number | undefined): void {
    const ledger = this.#ledgers.get(client);
    const key = this.#copies.get(copy);
    if (!ledger || key === undefined) return;
    const entry = ledger.byKey.get(key);
    if (!entry) return;
    if (messageId === undefined) ledger.byKey.delete(key);
    else {
      entry.messageId = messageId;
      ledger.byMessageId.set(messageId, key);
    }
  }

  /** PUBACK ends a QoS 1 message, PUBREC a QoS 2 one: the member has it [MQTT-4.3.3]. */
  acknowledged(client: Client, messageId: number): void {
    const ledger = this.#ledgers.get(client);
    const key = ledger?.byMessageId.get(messageId);
    if (!ledger || key === undefined) return;
    ledger.byMessageId.delete(messageId);
    ledger.byKey.delete(key);
  }

  /** What the member's connection left unacknowledged, forgotten here. */
  take(client: Client): Iterable<InFlight> {
    const ledger = this.#ledgers.get(client);
    if (!ledger) return [];
    this.#ledgers.delete(client);
    return ledger.byKey.values();
  }
}

function forgetOldest(ledger: Ledger): void {
  const [key, entry] = ledger.byKey.entries().next().value as [string, InFlight];
  ledger.byKey.delete(key);
  if (entry.messageId !== undefined && ledger.byMessageId.get(entry.messageId) === key) ledger.byMessageId.delete(entry.messageId);
}
