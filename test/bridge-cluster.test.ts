/**
 * The bridge rides through the loss of a JetStream cluster node: a real
 * 3-node `nats-server -js` cluster on loopback holds the stream with 3
 * replicas; while one MQTT publisher sends numbered QoS 1 messages, the node
 * that leads the stream is SIGKILLed, the others elect a new leader, the
 * bridge goes on exporting through them, and the killed node comes back and
 * catches up. The stream must then hold every message exactly once, in
 * publishing order; the outbox must end empty.
 */
import t from 'tap';
import type { MqttClient } from 'mqtt';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { startDaemon } from './helpers/daemon.js';
import { connectClient, eventually } from './helpers/mqtt.js';
import { natsUnavailable, readStream } from './helpers/nats.js';
import { NatsCluster } from './helpers/nats-cluster.js';

const unavailable = natsUnavailable();
const STREAM = 'EDGEMQTT';
const TOPIC = 'plant/line1/counter';
const SUBJECT = 'mqtt.plant.line1.counter';
/** Messages per second, and QoS 1 PUBLISHes at most awaiting their PUBACK. */
const RATE_PER_SEC = 250;
const WINDOW = 16;
/** PUBACKs, and messages in the stream, each phase waits for before the next. */
const PER_PHASE = 250;

/** Sends numbered QoS 1 messages (payload = the number) at RATE_PER_SEC, recording each PUBACK. */
class Publisher {
  readonly acked = new Set<number>();
  readonly failed: string[] = [];
  inflight = 0;
  #next = 1;
  #timer: NodeJS.Timeout | undefined;
  #startedAt = 0;

  constructor(readonly client: MqttClient) {}

  get sent(): number {
    return this.#next - 1;
  }

  start(): void {
    this.#startedAt = performance.now();
    this.#timer = setInterval(() => this.#pump(), 5);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #pump(): void {
    const budget = ((performance.now() - this.#startedAt) * RATE_PER_SEC) / 1000;
    while (this.#timer !== undefined && this.inflight < WINDOW && this.sent < budget) {
      const n = this.#next++;
      this.inflight++;
      this.client.publish(TOPIC, String(n), { qos: 1 }, (error) => {
        this.inflight--;
        if (error) this.failed.push(`${n}: ${error.message}`);
        else this.acked.add(n);
      });
    }
  }
}

/** The stream's info, or undefined while the cluster cannot answer (a leader being elected). */
async function streamInfo(jsm: JetStreamManager): Promise<StreamInfo | undefined> {
  try {
    return await jsm.streams.info(STREAM);
  } catch {
    return undefined;
  }
}

t.test('the stream leader SIGKILLed mid-stream: every message in the R3 stream once, in order', { skip: unavailable }, async (t) => {
  const cluster = await NatsCluster.create(t);
  await cluster.start();
  const daemon = await startDaemon(t, {
    bridge: {
      enabled: true,
      siteId: 'site-a',
      nats: { servers: cluster.urls },
      stream: { name: STREAM, replicas: 3, duplicateWindowSec: 60 },
      export: [{ filter: 'plant/#' }],
      sender: { window: 64, publishTimeoutMs: 2000 },
    },
  });
  const stats = () => daemon.daemon.bridgeStats();
  await eventually(() => stats().state === 'connected', 30_000, `the bridge to connect (${JSON.stringify(stats())})`);

  const nc = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc, { timeout: 2000 });
  let info: StreamInfo | undefined;
  await eventually(
    async () => {
      info = await streamInfo(jsm);
      return info?.cluster?.leader !== undefined && (info.cluster.replicas ?? []).filter((peer) => peer.current).length === 2;
    },
    20_000,
    'the stream to have a leader and two current replicas',
  );
  t.equal(info!.config.num_replicas, 3, 'the bridge created the stream with 3 replicas');
  const leader = info!.cluster!.leader!;
  t.ok(
    cluster.nodes.some((node) => node.name === leader),
    `the stream is led by a cluster node (${leader}; replicas ${info!.cluster!.replicas!.map((peer) => peer.name).join(', ')})`,
  );

  const publisher = new Publisher(await connectClient(t, daemon.mqttUrl, { clientId: 'counter' }));
  t.teardown(() => publisher.stop());
  const streamHolds = (count: number) => async () => ((await streamInfo(jsm))?.state.messages ?? 0) >= count;

  // Phase 1: all three nodes up.
  publisher.start();
  await eventually(streamHolds(PER_PHASE), 20_000, `${PER_PHASE} messages in the stream`);

  // Phase 2: the leader dies mid-stream; the other two elect a new one and the bridge goes on through them.
  const exportedAtKill = stats().exported;
  const killedAt = performance.now();
  // How the bridge lived through it, for the report: its states, sampled.
  const states: string[] = [stats().state];
  const sampler = setInterval(() => {
    if (stats().state !== states.at(-1)) states.push(stats().state);
  }, 20);
  t.teardown(() => clearInterval(sampler));
  await cluster.node(leader).kill();
  let newLeader: string | undefined;
  await eventually(
    async () => {
      const now = await streamInfo(jsm);
      newLeader = now?.cluster?.leader;
      return newLeader !== undefined && newLeader !== leader;
    },
    30_000,
    `another node to lead the stream after ${leader} died`,
  ).catch(() => undefined);
  const tookOverMs = performance.now() - killedAt;
  t.ok(newLeader !== undefined && newLeader !== leader, `${newLeader ?? 'no node'} leads the stream while ${leader} is down`);
  await eventually(
    () => stats().exported >= exportedAtKill + PER_PHASE,
    30_000,
    `${PER_PHASE} more messages exported while ${leader} is down (${JSON.stringify(stats())})`,
  ).catch(() => undefined);
  const during = stats();
  t.ok(during.exported >= exportedAtKill + PER_PHASE, `the bridge exported ${during.exported - exportedAtKill} messages while ${leader} was down`);

  // Phase 3: the node comes back and catches up; publishing goes on meanwhile.
  await cluster.node(leader).start();
  await eventually(
    async () => {
      const now = await streamInfo(jsm);
      const back = now?.cluster?.leader === leader || (now?.cluster?.replicas ?? []).some((peer) => peer.name === leader && peer.current);
      return back && stats().exported >= during.exported + PER_PHASE;
    },
    30_000,
    `${leader} to be a current replica again, and ${PER_PHASE} more messages exported`,
  );
  publisher.stop();
  await eventually(() => publisher.inflight === 0, 10_000, 'the last PUBACKs');
  await eventually(() => stats().outbox.depth === 0 && stats().inflight === 0, 30_000, `the outbox to empty (${JSON.stringify(stats())})`);

  const end = stats();
  t.same(publisher.failed, [], 'every publish got its PUBACK');
  t.equal(end.outbox.depth, 0, 'the outbox is empty');
  t.equal(end.outbox.added, publisher.sent, 'every message entered the outbox');
  const entries = await readStream(jsm, STREAM);
  const numbers = entries.filter((entry) => entry.subject === SUBJECT).map((entry) => Number(entry.data));
  const expected = Array.from({ length: publisher.sent }, (_, i) => i + 1);
  const have = new Set(numbers);
  const missing = expected.filter((n) => !have.has(n));
  const outOfOrder = numbers.flatMap((n, i) => (i > 0 && n <= numbers[i - 1]! ? [`${numbers[i - 1]}→${n}`] : []));
  t.same(missing.slice(0, 20), [], `all ${publisher.sent} messages in the stream` + (missing.length > 0 ? ` (${missing.length} missing)` : ''));
  t.same(outOfOrder.slice(0, 20), [], 'each once, in publishing order' + (outOfOrder.length > 0 ? ` (${outOfOrder.length} breaks)` : ''));
  t.equal(entries.length, publisher.sent, 'nothing else in the stream');
  const ids = entries.map((entry) => entry.msgId);
  t.equal(new Set(ids).size, ids.length, 'no Nats-Msg-Id twice in the stream');
  clearInterval(sampler);
  t.comment(
    `leader ${leader} killed after ${exportedAtKill} exported; ${newLeader} took over (seen ${Math.round(tookOverMs)} ms later); ` +
      `bridge states meanwhile: ${states.join(' → ')}; sent ${publisher.sent}; publishFailures ${end.publishFailures}, resent ${end.resent}, duplicates ${end.duplicates}, ` +
      `exported ${end.exported}`,
  );
});
