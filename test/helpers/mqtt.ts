/**
 * Real mqtt.js clients for tests, with bounded waits instead of sleeps.
 */
import type { Test } from 'tap';
import mqtt, { type IClientOptions, type MqttClient, type IPublishPacket } from 'mqtt';

export interface ReceivedMessage {
  topic: string;
  payload: string;
  packet: IPublishPacket;
}

/** Connects and waits for CONNACK; the test's teardown ends the client. */
export async function connectClient(t: Test, url: string, options: IClientOptions = {}): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
  t.teardown(() => client.endAsync(true));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
    client.once('close', () => reject(new Error(`connection to ${url} closed before CONNACK`)));
  });
  return client;
}

/** Records every message a client receives, for assertions that wait with a bound. */
export class MessageLog {
  readonly messages: ReceivedMessage[] = [];
  readonly #waiters = new Set<() => void>();

  constructor(client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload: payload.toString(), packet });
      for (const wake of this.#waiters) wake();
    });
  }

  /** Resolves once `predicate` holds for the messages so far; rejects after `timeoutMs`. */
  waitFor(predicate: (messages: ReceivedMessage[]) => boolean, timeoutMs = 5000, what = 'messages'): Promise<ReceivedMessage[]> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate(this.messages)) return false;
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve(this.messages);
        return true;
      };
      const wake = () => void check();
      const timer = setTimeout(() => {
        this.#waiters.delete(wake);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(this.messages.map((m) => [m.topic, m.payload]))}`));
      }, timeoutMs);
      if (!check()) this.#waiters.add(wake);
    });
  }

  waitForCount(count: number, timeoutMs = 5000): Promise<ReceivedMessage[]> {
    return this.waitFor((messages) => messages.length >= count, timeoutMs, `${count} message(s)`);
  }
}

/** Polls `condition` until it holds or `timeoutMs` passes. */
export async function eventually(condition: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
