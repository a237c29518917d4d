/**
 * Soak: persistent subscribers that lose their connection at random moments
 * while QoS 1 and QoS 2 messages flow, beside a CPU-busy sibling process.
 * Each subscriber is one mqtt.js client object that reconnects by itself,
 * keeping its QoS 2 state, as a device's client does. In the end every
 * acknowledged message has reached every subscriber: QoS 2 exactly once,
 * QoS 1 at least once and, per publisher, in the order published
 * [MQTT-4.6.0-2]; no message went out under two packet identifiers.
 *
 * SOAK_SEED=<n> replays the disconnect moments of a run (printed as a comment).
 */
import t from 'tap';
import mqtt, { type MqttClient } from 'mqtt';
import { startDaemon } from './helpers/daemon.js';
import { connectClient, eventually } from './helpers/mqtt.js';
import { DeliveryAudit } from './helpers/delivery-audit.js';
import { random } from './helpers/random.js';
import { startBusySibling } from './helpers/busy-sibling.js';

const LOAD_MS = 40_000;
/** Each subscriber's connection lasts a random time in this range (ms) before it is cut. */
const CONNECTION_MS = [150, 1200] as const;
const WINDOW = 16;
const RATE_PER_SEC = { 1: 250, 2: 150 } as const;
const PUBLISHERS_PER_QOS = 2;

/** A clean-session publisher sending `name:seq` at a bounded rate, at most WINDOW unacknowledged. */
class Publisher {
  readonly acked: number[] = [];
  #sent = 0;
  #inflight = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    readonly client: MqttClient,
    readonly name: string,
    readonly qos: 1 | 2,
  ) {}

  start(): void {
    const startedAt = performance.now();
    this.#timer = setInterval(() => {
      const due = Math.floor(((performance.now() - startedAt) / 1000) * RATE_PER_SEC[this.qos]);
      while (this.#sent < due && this.#inflight < WINDOW) {
        const seq = this.#sent++;
        this.#inflight++;
        this.client.publish(`soak/q${this.qos}/${this.name}`, `${this.name}:${seq}`, { qos: this.qos }, (error) => {
          this.#inflight--;
          if (!error) this.acked.push(seq);
        });
      }
    }, 10);
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await eventually(() => this.#inflight === 0, 20_000, `${this.name} to finish its handshakes`);
  }

  keys(): string[] {
    return this.acked.map((seq) => `${this.name}:${seq}`);
  }
}

interface Subscriber {
  name: string;
  client: MqttClient;
  audit: DeliveryAudit;
  /** The QoS of its subscription: what it may expect of QoS 2 messages. */
  qos: 1 | 2;
  filter: string;
  cuts: number;
}

t.test('persistent subscribers reconnecting at random under QoS 1/2 load: nothing lost, QoS 2 once, QoS 1 in order', async (t) => {
  const seed = Number(process.env.SOAK_SEED ?? Date.now() % 2 ** 31);
  const rand = random(seed);
  t.comment(`SOAK_SEED=${seed}`);
  const { daemon, mqttUrl, wsUrl } = await startDaemon(t, {
    // Every acknowledged message must be kept: no queue limit drops any.
    persistence: { maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 },
  });
  startBusySibling(t);

  const subscribers: Subscriber[] = [];
  for (const [name, url, qos, filter] of [
    ['tcp-q2', mqttUrl, 2, 'soak/q2/#'],
    ['ws-q2', wsUrl, 2, 'soak/q2/#'],
    ['tcp-q1', mqttUrl, 1, 'soak/#'],
    ['ws-q1', wsUrl, 1, 'soak/#'],
  ] as const) {
    // reconnectPeriod: mqtt.js reconnects by itself, keeping its stores.
    const client = mqtt.connect(url, { clientId: `soak-${name}`, clean: false, reconnectPeriod: 50, keepalive: 0 });
    t.teardown(() => client.endAsync(true));
    client.on('error', () => undefined);
    const audit = new DeliveryAudit(client);
    await new Promise<void>((resolve) => client.once('connect', () => resolve()));
    await client.subscribeAsync(filter, { qos });
    subscribers.push({ name, client, audit, qos, filter, cuts: 0 });
  }

  const publishers: Publisher[] = [];
  for (const qos of [1, 2] as const) {
    for (let i = 0; i < PUBLISHERS_PER_QOS; i++) {
      const name = `p${qos}${i}`;
      publishers.push(new Publisher(await connectClient(t, mqttUrl, { clientId: `soak-${name}` }), name, qos));
    }
  }

  // Cut each subscriber's connection at random moments while the load runs.
  const loadEnds = performance.now() + LOAD_MS;
  const cutters = subscribers.map(async (subscriber) => {
    while (performance.now() < loadEnds) {
      const lifetime = CONNECTION_MS[0] + rand() * (CONNECTION_MS[1] - CONNECTION_MS[0]);
      await new Promise((resolve) => setTimeout(resolve, lifetime));
      if (subscriber.client.connected) {
        subscriber.client.stream.destroy();
        subscriber.cuts++;
      }
      await eventually(() => subscriber.client.connected, 10_000, `${subscriber.name} to reconnect`);
    }
  });
  for (const publisher of publishers) publisher.start();
  await Promise.all(cutters);
  for (const publisher of publishers) await publisher.stop();

  const expected = (subscriber: Subscriber) =>
    publishers.filter((p) => `soak/q${p.qos}/${p.name}`.startsWith(subscriber.filter.slice(0, -1))).flatMap((p) => p.keys());
  // What has not arrived after the bound is reported below, message by message.
  await Promise.all(subscribers.map((s) => s.audit.waitForAll(expected(s), 60_000).catch(() => undefined)));
  // Anything still on its way arrives before a later marker.
  const [marker] = publishers;
  await marker!.client.publishAsync('soak/q2/marker', 'marker', { qos: 2 });
  await Promise.all(subscribers.map((s) => s.audit.waitForAll(['marker'], 10_000).catch(() => undefined)));

  t.comment(`acknowledged: ${publishers.map((p) => `${p.name} ${p.acked.length}`).join(', ')}`);
  for (const subscriber of subscribers) {
    const { audit, name } = subscriber;
    t.comment(`${name}: ${subscriber.cuts} connections cut, ${audit.connections} made, ${audit.order.length} deliveries`);
    t.ok(subscriber.cuts >= 10, `${name}: its connection was cut again and again (${subscriber.cuts})`);
    const missing = audit.missing([...expected(subscriber), 'marker']);
    t.same(missing.slice(0, 10), [], `${name}: every acknowledged message delivered (${missing.length} missing)`);
    t.same(audit.renumbered.slice(0, 5), [], `${name}: every message kept one packet identifier`);
    t.same(audit.conflicts.slice(0, 5), [], `${name}: no identifier held by one message was given to another`);
    const q2 = expected(subscriber).filter((key) => key.startsWith('p2'));
    if (subscriber.qos === 2) {
      t.same(audit.duplicates(q2).slice(0, 10), [], `${name}: ${q2.length} QoS 2 messages, each delivered exactly once`);
    } else {
      t.same(audit.unjustifiedRepeats().slice(0, 5), [], `${name}: a repeat is only a resend of what was in flight, DUP set, same identifier`);
      // First deliveries per publisher come in publishing order.
      const last = new Map<string, number>();
      const disorder: string[] = [];
      const seen = new Set<string>();
      for (const key of audit.order) {
        if (seen.has(key) || key === 'marker') continue;
        seen.add(key);
        const [publisher, seq] = key.split(':') as [string, string];
        if ((last.get(publisher) ?? -1) > Number(seq)) disorder.push(`${key} after ${publisher}:${last.get(publisher)}`);
        last.set(publisher, Number(seq));
      }
      t.same(disorder.slice(0, 5), [], `${name}: each publisher's messages first arrived in order`);
    }
  }
  const stats = daemon.storeStats();
  t.equal(stats.packetIdConflicts, 0, 'the store never saw a message offered under a second identifier');
  t.equal(stats.queueDroppedMessages, 0, 'no queue limit dropped anything');
  await eventually(() => daemon.storeStats().queuedEntries === 0, 10_000, 'every session queue to empty');
});
