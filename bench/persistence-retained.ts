/**
 * 100k retained messages: the broker's memory for them and the time a `#`
 * subscription takes to receive them all, edgemqtt (retained messages held in
 * memory, LevelDB as the truth) against Mosquitto (in memory) in the same run.
 *
 * Load: RETAINED retained QoS 1 messages of PAYLOAD bytes on distinct topics
 * (`site/<a>/<b>/value`), from 4 publishers with 64 in flight each. Then one
 * client subscribes to `#` at QoS 0 and the clock runs from its SUBSCRIBE to
 * the last retained message received. Memory is the broker's resident set
 * after loading minus before (includes allocator slack).
 *
 *   npm run build && npx tsc -p tsconfig.bench.json && node dist-bench/bench/persistence-retained.js
 *   env: BENCH_RETAINED=100000 BENCH_PAYLOAD_BYTES=32
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createLogger } from '../src/observability/logger.js';
import { createLevelPersistence } from '../src/persistence/index.js';
import { findMosquitto, ratio, RawConnection, rssMiB, startEdgemqtt, startMosquitto, type BenchBroker } from './persistence-load.js';

const RETAINED = Number(process.env.BENCH_RETAINED ?? 100_000);
const PAYLOAD = Buffer.alloc(Number(process.env.BENCH_PAYLOAD_BYTES ?? 32), 0x62);
const topicOf = (i: number) => `site/${i >> 8}/${i & 255}/value`;

interface Result {
  loadSec: number;
  rssDeltaMiB: number;
  subscribeSec: number;
}

async function load(broker: BenchBroker): Promise<number> {
  const publishers = await Promise.all(Array.from({ length: 4 }, (_, i) => RawConnection.open(broker.port, `retain-${i}`)));
  let next = 0;
  let acked = 0;
  const started = performance.now();
  await new Promise<void>((resolve) => {
    for (const publisher of publishers) {
      let id = 1;
      const sendOne = () => {
        if (next >= RETAINED) return;
        const i = next++;
        publisher.send({ cmd: 'publish', topic: topicOf(i), payload: PAYLOAD, qos: 1, messageId: id, retain: true, dup: false });
        id = (id % 65535) + 1;
      };
      publisher.onPacket((packet) => {
        if (packet.cmd !== 'puback') return;
        if (++acked === RETAINED) resolve();
        sendOne();
      });
      for (let i = 0; i < 64; i++) sendOne();
    }
  });
  for (const publisher of publishers) publisher.close();
  return (performance.now() - started) / 1000;
}

async function subscribeAll(broker: BenchBroker): Promise<number> {
  const subscriber = await RawConnection.open(broker.port, 'retain-reader');
  let received = 0;
  const started = performance.now();
  await new Promise<void>((resolve) => {
    subscriber.onPacket((packet) => {
      if (packet.cmd === 'publish' && packet.retain && ++received === RETAINED) resolve();
    });
    subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '#', qos: 0 }] });
  });
  subscriber.close();
  return (performance.now() - started) / 1000;
}

async function measure(broker: BenchBroker): Promise<Result> {
  const before = rssMiB(broker.pid);
  const loadSec = await load(broker);
  const rssDeltaMiB = rssMiB(broker.pid) - before;
  const subscribeSec = await subscribeAll(broker);
  return { loadSec, rssDeltaMiB, subscribeSec };
}

/**
 * The in-memory retained store alone, in this process: heap and Buffer memory
 * after a full GC, before and after storing RETAINED retained messages.
 */
async function inProcessBytesPerMessage(dir: string): Promise<{ perMessage: number; recordBytes: number }> {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const persistence = createLevelPersistence({ path: path.join(dir, 'store'), sync: 'os' }, { logger: createLogger({ level: 'silent' }) });
  await persistence.start();
  const used = () => {
    gc();
    const memory = process.memoryUsage();
    return memory.heapUsed + memory.external + memory.arrayBuffers;
  };
  const before = used();
  for (let i = 0; i < RETAINED; i++) {
    await persistence.storeRetained({ cmd: 'publish', topic: topicOf(i), payload: PAYLOAD, qos: 1, retain: true, dup: false });
  }
  await persistence.commit.flush();
  const after = used();
  const recordBytes = persistence.stats().retainedBytes / RETAINED;
  await persistence.stop();
  return { perMessage: (after - before) / RETAINED, recordBytes };
}

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-retained-'));
  const results = new Map<string, Result>();
  const own = await inProcessBytesPerMessage(path.join(root, 'in-process'));
  console.log(
    `in-memory retained store: ${Math.round(own.perMessage)} B per message after GC ` +
      `(of which ${Math.round(own.recordBytes)} B is the encoded record; ${((own.perMessage * RETAINED) / 1048576).toFixed(1)} MiB for ${RETAINED})`,
  );
  try {
    const brokers: Array<[string, () => Promise<BenchBroker>]> = [['edgemqtt', () => startEdgemqtt(path.join(root, 'edgemqtt'))]];
    const mosquitto = findMosquitto();
    if (mosquitto) brokers.push(['mosquitto', () => startMosquitto(mosquitto, path.join(root, 'mosquitto'))]);
    for (const [name, start] of brokers) {
      const broker = await start();
      try {
        results.set(name, await measure(broker));
      } finally {
        await broker.stop();
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  const ours = results.get('edgemqtt')!;
  console.log(`${RETAINED} retained messages of ${PAYLOAD.length} B`);
  for (const [name, r] of results) {
    console.log(
      `  ${name.padEnd(10)} load ${r.loadSec.toFixed(1)} s (${Math.round(RETAINED / r.loadSec)} msg/s)` +
        `  memory +${r.rssDeltaMiB.toFixed(1)} MiB (${Math.round((r.rssDeltaMiB * 1048576) / RETAINED)} B/message)` +
        `  '#' subscribe → last message ${r.subscribeSec.toFixed(2)} s`,
    );
  }
  const mosquitto = results.get('mosquitto');
  if (mosquitto) {
    console.log(
      `  edgemqtt/mosquitto: memory ${ratio(ours.rssDeltaMiB, mosquitto.rssDeltaMiB)}, '#' subscribe time ${ratio(ours.subscribeSec, mosquitto.subscribeSec)}`,
    );
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
