/**
 * QoS 1 throughput with acknowledgement after durable write: edgemqtt
 * (persistence.sync batch, the default) against Mosquitto's QoS 1 (its
 * default: persistence off, so its PUBACK promises nothing across a crash)
 * and, when the package is installed, bare aedes 1.2 with
 * aedes-persistence-level (PUBACK before publishing, no fsync).
 *
 * Load: PUBLISHERS clients, each keeping WINDOW QoS 1 PUBLISHes in flight
 * (a new one per PUBACK), MESSAGES in all, to one topic with two persistent
 * (clean session 0) QoS 1 subscribers: one connected that acknowledges every
 * delivery, one offline whose queue takes a copy of every message. So each
 * message is stored twice (the offline queue and the connected session's
 * queue) before its PUBACK. Figures: PUBACKs per second (median of ROUNDS)
 * and the ratios.
 *
 *   npm run build && npx tsc -p tsconfig.bench.json && node dist-bench/bench/persistence-qos1.js
 *   env: BENCH_MESSAGES=20000 BENCH_PUBLISHERS=8 BENCH_WINDOW=32 BENCH_PAYLOAD_BYTES=64 BENCH_ROUNDS=3
 *        BENCH_ONLINE=0 (no connected subscriber: only the offline queue is written)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  findMosquitto,
  hasAedesPersistenceLevel,
  median,
  ratio,
  RawConnection,
  startAedesLevel,
  startEdgemqtt,
  startMosquitto,
  type BenchBroker,
} from './persistence-load.js';
import { processCpuMs as cpuMs } from './common.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const MESSAGES = env('BENCH_MESSAGES', 20_000);
const PUBLISHERS = env('BENCH_PUBLISHERS', 8);
const WINDOW = env('BENCH_WINDOW', 32);
const PAYLOAD = Buffer.alloc(env('BENCH_PAYLOAD_BYTES', 64), 0x61);
const ROUNDS = env('BENCH_ROUNDS', 3);
const TOPIC = 'bench/qos1';

/** PUBACKs per second for MESSAGES QoS 1 messages. */
async function measure(broker: BenchBroker): Promise<number> {
  // The offline persistent subscriber: subscribe, then leave.
  const offline = await RawConnection.open(broker.port, `offline-${Date.now()}`, false);
  await offline.request({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos: 1 }] }, 'suback');
  offline.close();
  const online = await RawConnection.open(broker.port, `online-${Date.now()}`, false);
  online.onPacket((packet) => {
    if (packet.cmd === 'publish' && packet.messageId !== undefined) online.send({ cmd: 'puback', messageId: packet.messageId });
  });
  if (process.env.BENCH_ONLINE !== '0') await online.request({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos: 1 }] }, 'suback');

  const publishers = await Promise.all(Array.from({ length: PUBLISHERS }, (_, i) => RawConnection.open(broker.port, `pub-${i}-${Date.now()}`)));
  let sent = 0;
  let acked = 0;
  const cpuBefore = cpuMs(broker.pid);
  const started = performance.now();
  await new Promise<void>((resolve) => {
    for (const publisher of publishers) {
      let nextId = 1;
      const sendOne = () => {
        if (sent >= MESSAGES) return;
        sent++;
        publisher.send({ cmd: 'publish', topic: TOPIC, payload: PAYLOAD, qos: 1, messageId: nextId, retain: false, dup: false });
        nextId = (nextId % 65535) + 1;
      };
      publisher.onPacket((packet) => {
        if (packet.cmd !== 'puback') return;
        acked++;
        if (acked === MESSAGES) resolve();
        sendOne();
      });
      for (let i = 0; i < WINDOW; i++) sendOne();
    }
  });
  const seconds = (performance.now() - started) / 1000;
  const cpu = (cpuMs(broker.pid) - cpuBefore) / 1000;
  for (const connection of [...publishers, online]) connection.close();
  console.log(`  ${broker.name}: broker CPU ${Math.round((cpu / seconds) * 100)}% of one core`);
  return MESSAGES / seconds;
}

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-qos1-'));
  const mosquitto = findMosquitto();
  const candidates: Array<[string, (dir: string) => Promise<BenchBroker>]> = [
    // Queue limits off: every message is kept, as by the others here.
    ['edgemqtt', (dir) => startEdgemqtt(dir, { persistence: { sync: 'batch', maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 } })],
  ];
  if (mosquitto) candidates.push(['mosquitto', (dir) => startMosquitto(mosquitto, dir)]);
  else console.log('mosquitto not found (BENCH_MOSQUITTO=/path): column skipped');
  if (hasAedesPersistenceLevel()) candidates.push(['aedes+level', (dir) => startAedesLevel(dir)]);
  else console.log('aedes-persistence-level is not installed: column skipped (npm install --save-dev aedes-persistence-level)');

  const results = new Map<string, number[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [name, start] of candidates) {
        const broker = await start(path.join(root, `${name}-${round}`));
        try {
          const rate = await measure(broker);
          results.set(name, [...(results.get(name) ?? []), rate]);
          console.log(`round ${round} ${name}: ${Math.round(rate)} msg/s`);
        } finally {
          await broker.stop();
        }
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  const edgemqtt = median(results.get('edgemqtt') ?? []);
  console.log(`\nQoS 1, ${MESSAGES} messages of ${PAYLOAD.length} B, ${PUBLISHERS} publishers × window ${WINDOW}, 1 online + 1 offline persistent subscriber (median of ${ROUNDS})`);
  for (const [name, rates] of results) {
    const rate = median(rates);
    const versus = name === 'edgemqtt' ? '' : `   edgemqtt/${name} = ${ratio(edgemqtt, rate)}`;
    console.log(`  ${name.padEnd(12)} ${String(Math.round(rate)).padStart(7)} msg/s${versus}`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
