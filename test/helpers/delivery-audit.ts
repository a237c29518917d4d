/**
 * What a persistent subscriber saw, across all its connections: every
 * PUBLISH the broker sent it (payload, packet identifier, DUP flag, which
 * connection) and every message delivered to the application. Checks what
 * MQTT promises a receiver: a message keeps its packet identifier on every
 * resend [MQTT-4.3.3-1], [MQTT-4.4.0-1]; two messages never share one while
 * the first is unacknowledged [MQTT-2.3.1-2]; QoS 2 arrives exactly once.
 */
import type { MqttClient } from 'mqtt';
import type { Packet } from 'mqtt-packet';

interface Sent {
  messageId: number;
  dup: boolean;
  qos: number;
  connection: number;
}

export class DeliveryAudit {
  /** payload → PUBLISH packets the broker sent for it, in order. */
  readonly sent = new Map<string, Sent[]>();
  /** payload → times delivered to the application. */
  readonly delivered = new Map<string, number>();
  /** Delivered payloads in order. */
  readonly order: string[] = [];
  /** A payload sent under a second packet identifier: `payload: id1 → id2`. */
  readonly renumbered: string[] = [];
  /** A PUBLISH under an identifier still held by another message: `id: held → new`. */
  readonly conflicts: string[] = [];
  /** Connections the client completed (CONNACK received). */
  connections = 0;
  /** QoS 2 identifiers between PUBLISH and PUBREL (what the client holds). */
  readonly #holding = new Map<number, string>();
  readonly #waiters = new Set<() => void>();

  readonly #keyOf: (topic: string, payload: Buffer) => string;

  /** `keyOf` names a message; by default its payload, which the tests keep unique. */
  constructor(client: MqttClient, keyOf = (_topic: string, payload: Buffer) => payload.toString()) {
    this.#keyOf = keyOf;
    client.on('connect', () => this.connections++);
    client.on('packetreceive', (packet: Packet) => this.#received(packet));
    client.on('message', (topic, payload) => {
      const key = keyOf(topic, payload);
      this.delivered.set(key, (this.delivered.get(key) ?? 0) + 1);
      this.order.push(key);
      for (const wake of this.#waiters) wake();
    });
  }

  #received(packet: Packet): void {
    if (packet.cmd === 'pubrel') {
      this.#holding.delete(packet.messageId!);
      return;
    }
    if (packet.cmd !== 'publish' || packet.qos === 0) return;
    const key = this.#keyOf(packet.topic, Buffer.from(packet.payload));
    const messageId = packet.messageId!;
    const earlier = this.sent.get(key) ?? [];
    const first = earlier[0];
    if (first && first.messageId !== messageId) this.renumbered.push(`${key}: ${first.messageId} → ${messageId}`);
    const held = this.#holding.get(messageId);
    if (held !== undefined && held !== key) this.conflicts.push(`${messageId}: ${held} → ${key}`);
    if (packet.qos === 2) this.#holding.set(messageId, key);
    earlier.push({ messageId, dup: packet.dup === true, qos: packet.qos, connection: this.connections });
    this.sent.set(key, earlier);
  }

  /** Payloads delivered more than once: `payload×n`. */
  duplicates(keys: Iterable<string> = this.delivered.keys()): string[] {
    const result: string[] = [];
    for (const key of keys) {
      const n = this.delivered.get(key) ?? 0;
      if (n > 1) result.push(`${key}×${n}`);
    }
    return result;
  }

  missing(keys: Iterable<string>): string[] {
    return [...keys].filter((key) => !this.delivered.has(key));
  }

  /**
   * Payloads delivered again that are not a resend of what was in flight:
   * the repeat came under a new identifier, or without DUP, or on the
   * connection it was first sent on.
   */
  unjustifiedRepeats(keys: Iterable<string> = this.delivered.keys()): string[] {
    const result: string[] = [];
    for (const key of keys) {
      if ((this.delivered.get(key) ?? 0) < 2) continue;
      const [first, ...rest] = this.sent.get(key) ?? [];
      const justified = first !== undefined && rest.every((s) => s.dup && s.messageId === first.messageId && s.connection > first.connection);
      if (!justified) result.push(`${key} sent ${JSON.stringify(this.sent.get(key))}`);
    }
    return result;
  }

  /** Resolves once every key was delivered; rejects after `timeoutMs` naming what is missing. */
  waitForAll(keys: readonly string[], timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (keys.some((key) => !this.delivered.has(key))) return false;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve();
        return true;
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        const missing = this.missing(keys);
        reject(new Error(`timed out after ${timeoutMs} ms: ${missing.length} of ${keys.length} not delivered, e.g. ${missing.slice(0, 5).join(' ')}`));
      }, timeoutMs);
      if (!check()) this.#waiters.add(check);
    });
  }
}
