/**
 * A persistent subscriber that reconnects while messages flow gets each
 * message once (QoS 2 exactly once), over TCP and WebSocket.
 *
 * The window: when a persistent session reconnects, aedes restores its
 * subscriptions (live deliveries start), sends CONNACK, and only then resends
 * the session's stored messages (handlers/connect.js restoreSubs … emptyQueue).
 * A message published in between is both stored for the session and
 * delivered live; one sent on the previous connection and not acknowledged
 * must go again under the identifier the client holds. Here the resend is held
 * at exactly that step (the store's outgoingResendChunks waits for the test)
 * while messages are published into the window, with messages of the previous
 * connection still in flight.
 *
 * The subscriber is one mqtt.js client object for all its connections, as a
 * device's is: its QoS 2 state (identifiers awaiting PUBREL) survives them.
 */
import t, { type Test } from 'tap';
import mqtt, { type MqttClient } from 'mqtt';
import { LevelPersistence, type ClientLike } from '../src/persistence/index.js';
import { startDaemon } from './helpers/daemon.js';
import { connectClient, eventually } from './helpers/mqtt.js';
import { DeliveryAudit } from './helpers/delivery-audit.js';

type Chunks = NonNullable<ReturnType<LevelPersistence['outgoingResendChunks']>>;

const SERIES = 20;
/** The connection drops as this many PUBLISHes have arrived on it: the rest of the first series is in flight or queued. */
const CUT_AFTER = 10;

/** Holds the resend after CONNECT of one client id until released. */
class ResendGate {
  readonly reached: Promise<void>;
  #reach!: () => void;
  #release!: () => void;
  readonly #released: Promise<void>;

  constructor(t: Test, clientId: string) {
    this.reached = new Promise((resolve) => (this.#reach = resolve));
    this.#released = new Promise((resolve) => (this.#release = resolve));
    // The broker's resend reads the store's queue a chunk at a time (outgoingResendChunks).
    const original = Object.getOwnPropertyDescriptor(LevelPersistence.prototype, 'outgoingResendChunks')!.value as (
      this: LevelPersistence,
      client: ClientLike,
    ) => Chunks | undefined;
    const gate = this;
    let armed = true;
    LevelPersistence.prototype.outgoingResendChunks = function (this: LevelPersistence, client: ClientLike): Chunks | undefined {
      if (!armed || client.id !== clientId) return original.call(this, client);
      armed = false;
      gate.#reach();
      // The store is asked once released: its snapshot then holds what was published meanwhile.
      const store = this;
      let chunks: Chunks | undefined;
      return {
        async next() {
          await gate.#released;
          chunks ??= original.call(store, client);
          return chunks?.next();
        },
      };
    };
    t.teardown(() => {
      LevelPersistence.prototype.outgoingResendChunks = original;
      this.#release();
    });
  }

  release(): void {
    this.#release();
  }
}

function waitFor(client: MqttClient, event: 'connect' | 'close'): Promise<void> {
  return new Promise((resolve) => client.once(event, () => resolve()));
}

for (const transport of ['tcp', 'ws'] as const) {
  for (const qos of [1, 2] as const) {
    t.test(`${transport}, QoS ${qos}: messages published while a persistent session resumes arrive once`, async (t) => {
      const { daemon, mqttUrl, wsUrl } = await startDaemon(t, {
        persistence: { maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 },
      });
      const clientId = `race-${transport}-${qos}`;
      // mqtt.js reconnects by itself after a drop, keeping its QoS 2 state
      // (its reconnect() method would start with empty stores).
      const sub = mqtt.connect(transport === 'tcp' ? mqttUrl : wsUrl, { clientId, clean: false, reconnectPeriod: 200, keepalive: 0 });
      t.teardown(() => sub.endAsync(true));
      sub.on('error', () => undefined);
      const audit = new DeliveryAudit(sub);
      await waitFor(sub, 'connect');
      await sub.subscribeAsync('race/#', { qos });
      const publisher = await connectClient(t, mqttUrl, { clientId: `${clientId}-pub` });
      const publishSeries = (name: string) =>
        Promise.all(Array.from({ length: SERIES }, (_, i) => publisher.publishAsync(`race/${name}`, `${name}${i}`, { qos })));

      const gate = new ResendGate(t, clientId);
      // a: the connection drops with part of this series sent and not acknowledged.
      let arrived = 0;
      sub.on('packetreceive', (packet) => {
        if (packet.cmd === 'publish' && ++arrived === CUT_AFTER) sub.stream.destroy();
      });
      const closed = waitFor(sub, 'close');
      const reconnected = waitFor(sub, 'connect');
      await publishSeries('a');
      await closed;
      // b: queued after the drop.
      await publishSeries('b');

      // c: published after the session's subscriptions are restored and CONNACK
      // sent, while its stored messages wait to be resent.
      await gate.reached;
      await publishSeries('c');
      gate.release();
      await reconnected;

      const all = ['a', 'b', 'c'].flatMap((name) => Array.from({ length: SERIES }, (_, i) => `${name}${i}`));
      await audit.waitForAll(all, 15_000);
      // Nothing more is on its way: a later marker arrives after anything that was.
      await publisher.publishAsync('race/marker', 'marker', { qos });
      await audit.waitForAll(['marker'], 5000);

      t.same(audit.renumbered, [], 'every message kept one packet identifier across connections');
      t.same(audit.conflicts, [], 'no identifier was given to a message while the client held it for another');
      if (qos === 2) {
        t.same(audit.duplicates(), [], `each of the ${all.length} messages delivered exactly once`);
      } else {
        const fresh = all.filter((key) => !key.startsWith('a'));
        t.same(audit.duplicates(fresh), [], 'messages never sent before the reconnect delivered once');
        t.same(audit.unjustifiedRepeats(), [], 'a repeat is only the resend of one in flight at the drop, DUP set, same identifier');
      }
      const stats = daemon.storeStats();
      t.equal(stats.packetIdConflicts, 0, 'no queued message was offered under a second identifier');
      t.equal(daemon.limitsStats().flow.resumeWaits, SERIES, 'the messages published into the window waited for the resend');
      t.ok(stats.resentMessages > 0, `what was in flight at the drop was resent (${stats.resentMessages})`);
      await eventually(() => daemon.storeStats().queuedEntries === 0, 5000, 'the session queue to empty once all is acknowledged');
    });
  }
}
