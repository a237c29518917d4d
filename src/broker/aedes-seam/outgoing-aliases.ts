/**
 * Topic Aliases the broker assigns to what it sends an MQTT 5 client
 * [MQTT-3.3.2.3.4]; aedes 2.0.0-beta.1 assigns none (aedes #1117, see
 * test/aedes-canaries-v5.test.ts).
 *
 * Where: at serialization. aedes writes every packet through mqtt-packet's
 * writeToStream, looked up on the module's exports object at each call
 * (lib/write.js `mqtt.writeToStream(packet, client.conn, ...)`). Earlier,
 * in the delivery functions, the packet is still the message as stored
 * (outgoingUpdate keeps it for a resend on a later connection, whose alias
 * map is empty) and as the ACL judges it (authorizeForward reads its
 * topic): replacing the topic there would corrupt both. At serialization
 * only the bytes change: a copy of the packet goes to mqtt-packet, the
 * stored one is untouched.
 *
 * Per connection: the aliases belong to the connection's stream, so they
 * never cross connections [MQTT-3.3.2-10]; a session resumed on a new
 * connection starts with none, and a message resent there (DUP) carries its
 * topic again, or sets up an alias anew. Within a connection aedes never
 * resends. Aliases go from 1 up to the client's Topic Alias Maximum, never
 * above it [MQTT-3.3.2-9]; once all are in use, one not used recently is
 * given to the new topic (a PUBLISH with topic and alias replaces the
 * mapping, 3.3.2.3.4). The first PUBLISH on a topic carries topic and
 * alias, later ones the alias and an empty topic.
 *
 * Written through the seam's hook on serialization (packet-writes.ts).
 */
import type { Client } from 'aedes';
import { rewritePublishes, type WrittenPublish } from './packet-writes.js';

/** One alias in use: its topic, and whether it was used since the clock hand last passed it. */
interface Slot {
  topic: string;
  used: boolean;
}

/**
 * One connection's aliases. Which one a new topic takes once all are in use
 * is the CLOCK approximation of least recently used: a hit only sets a
 * flag (a Map reordering per delivery cost twice the rest of the work), and
 * the hand skips, clearing their flag, the aliases used since it last
 * passed them.
 */
class OutgoingTopicAliases {
  readonly #maximum: number;
  readonly #byTopic = new Map<string, number>();
  /** Alias n is slot n - 1. */
  readonly #slots: Slot[] = [];
  #hand = 0;

  constructor(maximum: number) {
    if (!Number.isInteger(maximum) || maximum < 1 || maximum > 65535) throw new RangeError(`topic alias maximum ${maximum} is not 1..65535`);
    this.#maximum = maximum;
  }

  /** The packet to write instead of `packet` (a copy; the original is never changed), or `packet` itself. */
  apply(packet: WrittenPublish): WrittenPublish {
    const topic = packet.topic;
    // An empty topic, or an alias set already, is someone else's decision.
    if (typeof topic !== 'string' || topic.length === 0 || packet.properties?.['topicAlias'] !== undefined) return packet;
    const known = this.#byTopic.get(topic);
    if (known !== undefined) {
      (this.#slots[known - 1] as Slot).used = true;
      return { ...packet, topic: '', properties: withAlias(known, packet.properties) };
    }
    const slots = this.#slots;
    let alias: number;
    if (slots.length < this.#maximum) {
      slots.push({ topic, used: false });
      alias = slots.length;
    } else {
      let slot = slots[this.#hand] as Slot;
      while (slot.used) {
        slot.used = false;
        this.#hand = (this.#hand + 1) % this.#maximum;
        slot = slots[this.#hand] as Slot;
      }
      this.#byTopic.delete(slot.topic);
      slot.topic = topic;
      alias = this.#hand + 1;
      this.#hand = (this.#hand + 1) % this.#maximum;
    }
    this.#byTopic.set(topic, alias);
    return { ...packet, properties: withAlias(alias, packet.properties) };
  }
}

/**
 * A copy of `properties` with the alias. The alias goes first: V8 copies a
 * spread into a fresh literal fast (~0.1 µs), while a key added after the
 * spread costs ~20 times that; mqtt-packet writes properties in any order.
 */
function withAlias(topicAlias: number, properties: Record<string, unknown> | undefined): Record<string, unknown> {
  return { topicAlias, ...properties };
}

/**
 * Gives the client's connection Topic Aliases for what the broker sends it,
 * at most `maximum` (the smaller of the client's Topic Alias Maximum and the
 * broker's setting). Call before the CONNACK (preConnect): nothing is
 * published to it before.
 */
export function assignOutgoingTopicAliases(client: Client, maximum: number): void {
  const aliases = new OutgoingTopicAliases(maximum);
  rewritePublishes(client, (packet) => aliases.apply(packet));
}
