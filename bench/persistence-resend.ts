/**
 * How fast a persistent subscriber that comes back gets its backlog: BACKLOG
 * QoS 1 or QoS 2 messages queued while it was away, resent after its CONNECT.
 * The clock runs from the CONNECT to the last delivery (QoS 1: the PUBLISH;
 * QoS 2: the PUBREL, where a receiver that delivers on PUBREL hands the
 * message on). The subscriber acknowledges everything at once, as fast as it
 * reads. edgemqtt stores each resent message's packet identifier before a
 * QoS 2 PUBLISH leaves (so it survives a crash, see outgoingResendStream);
 * Mosquitto runs without persistence (its default), so it stores nothing.
 *
 *   npm run bench:build && node dist-bench/bench/persistence-resend.js
 *   env: BENCH_BACKLOG=20000 BENCH_ROUNDS=3 BENCH_PAYLOAD_BYTES=64
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { findMosquitto, median, ratio, RawConnection, startEdgemqtt, startMosquitto, type BenchBroker } from './persistence-load.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const BACKLOG = env('BENCH_BACKLOG', 20_000);
const ROUNDS = env('BENCH_ROUNDS', 3);
const PAYLOAD = Buffer.alloc(env('BENCH_PAYLOAD_BYTES', 64), 0x61);
const TOPIC = 'bench/resend';
const PUBLISHERS = 4;
const WINDOW = 32;

/** Publishes `count` messages at `qos` and resolves once each handshake is complete. */
async function publishBacklog(port: number, qos: 1 | 2, count: number): Promise<void> {
  const publishers = await Promise.all(Array.from({ length: PUBLISHERS }, (_, i) => RawConnection.open(port, `resend-pub-${i}-${Date.now()}`)));
  let sent = 0;
  let done = 0;
  await new Promise<void>((resolve) => {
    for (const publisher of publishers) {
      let nextId = 1;
      const sendOne = () => {
        if (sent >= count) return;
        sent++;
        publisher.send({ cmd: 'publish', topic: TOPIC, payload: PAYLOAD, qos, messageId: nextId, retain: false, dup: false });
        nextId = (nextId % 65535) + 1;
      };
      publisher.onPacket((packet) => {
        if (packet.cmd === 'pubrec') publisher.send({ cmd: 'pubrel', messageId: packet.messageId! });
        if (packet.cmd !== (qos === 1 ? 'puback' : 'pubcomp')) return;
        if (++done === count) resolve();
        sendOne();
      });
      for (let i = 0; i < WINDOW; i++) sendOne();
    }
  });
  for (const publisher of publishers) publisher.close();
}

/** Messages per second delivered to a reconnecting subscriber out of its backlog. */
async function measure(broker: BenchBroker, qos: 1 | 2): Promise<number> {
  const clientId = `resend-sub-${qos}-${Date.now()}`;
  const first = await RawConnection.open(broker.port, clientId, false);
  await first.request({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos }] }, 'suback');
  first.close();
  await publishBacklog(broker.port, qos, BACKLOG);

  const started = performance.now();
  let delivered = 0;
  let subscriber: Promise<RawConnection> | undefined;
  await new Promise<void>((resolve) => {
    subscriber = RawConnection.open(broker.port, clientId, false, (packet, connection) => {
      if (packet.cmd === 'publish' && qos === 1) {
        connection.send({ cmd: 'puback', messageId: packet.messageId! });
        if (++delivered === BACKLOG) resolve();
      } else if (packet.cmd === 'publish') {
        connection.send({ cmd: 'pubrec', messageId: packet.messageId! });
      } else if (packet.cmd === 'pubrel') {
        connection.send({ cmd: 'pubcomp', messageId: packet.messageId! });
        if (++delivered === BACKLOG) resolve();
      }
    });
  });
  const seconds = (performance.now() - started) / 1000;
  (await subscriber!).close();
  return BACKLOG / seconds;
}

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-resend-'));
  const mosquitto = findMosquitto();
  const candidates: Array<[string, (dir: string) => Promise<BenchBroker>]> = [
    ['edgemqtt', (dir) => startEdgemqtt(dir, { persistence: { sync: 'batch', maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 } })],
  ];
  if (mosquitto) candidates.push(['mosquitto', (dir) => startMosquitto(mosquitto, dir)]);
  else console.log('mosquitto not found (BENCH_MOSQUITTO=/path): column skipped');

  const results = new Map<string, number[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const qos of [1, 2] as const) {
        for (const [name, start] of candidates) {
          const broker = await start(path.join(root, `${name}-${qos}-${round}`));
          try {
            const rate = await measure(broker, qos);
            const key = `${name} QoS ${qos}`;
            results.set(key, [...(results.get(key) ?? []), rate]);
            console.log(`round ${round} ${key}: ${Math.round(rate)} msg/s`);
          } finally {
            await broker.stop();
          }
        }
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  console.log(`\nBacklog of ${BACKLOG} messages of ${PAYLOAD.length} B resent to a reconnecting persistent subscriber (median of ${ROUNDS})`);
  for (const qos of [1, 2]) {
    const ours = median(results.get(`edgemqtt QoS ${qos}`) ?? []);
    const theirs = results.get(`mosquitto QoS ${qos}`);
    const versus = theirs ? `   mosquitto ${Math.round(median(theirs))} msg/s, edgemqtt/mosquitto = ${ratio(ours, median(theirs))}` : '';
    console.log(`  QoS ${qos}: edgemqtt ${Math.round(ours)} msg/s${versus}`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
