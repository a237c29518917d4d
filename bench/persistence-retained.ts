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
 * The load prints each broker's CPU over it (edgemqtt's main thread apart)
 * and the load generator's.
 *
 *   npm run build && npx tsc -p tsconfig.bench.json && node dist-bench/bench/persistence-retained.js
 *   env: BENCH_RETAINED=100000 BENCH_PAYLOAD_BYTES=32 BENCH_WINDOW=64 (in flight per publisher)
 *        BENCH_SYNC=batch (edgemqtt's persistence.sync; `os` leaves out the fsync, to see what it costs)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createLogger } from '../src/observability/logger.js';
import { createLevelPersistence } from '../src/persistence/index.js';
import { PACKET_PUBACK, threadCpuMs } from './common.js';
import { findMosquitto, LoadClient, ratio, RawConnection, rssMiB, startEdgemqtt, startMosquitto, type BenchBroker } from './persistence-load.js';

const RETAINED = Number(process.env.BENCH_RETAINED ?? 100_000);
const PAYLOAD = Buffer.alloc(Number(process.env.BENCH_PAYLOAD_BYTES ?? 32), 0x62);
const WINDOW = Number(process.env.BENCH_WINDOW ?? 64);
const SYNC = process.env.BENCH_SYNC ?? 'batch';
const topicOf = (i: number) => `site/${i >> 8}/${i & 255}/value`;

interface Result {
  loadSec: number;
  /** CPU over the load, % of one core. */
  cpu: string;
  rssDeltaMiB: number;
  subscribeSec: number;
}

/**
 * A retained QoS 1 PUBLISH, encoded here: mqtt-packet's generate() and a
 * socket write per message cost the generator more than Mosquitto spends on
 * the message, and left Mosquitto's figure bound by the generator (96–99% of a
 * core).
 */
function retainedPublish(topic: string, messageId: number): Buffer {
  const topicBytes = Buffer.byteLength(topic);
  const remaining = 2 + topicBytes + 2 + PAYLOAD.length;
  if (remaining > 127) throw new Error('the benchmark encodes one-byte remaining lengths only');
  const packet = Buffer.allocUnsafe(2 + remaining);
  packet[0] = 0x33; // PUBLISH, QoS 1, RETAIN
  packet[1] = remaining;
  packet.writeUInt16BE(topicBytes, 2);
  packet.write(topic, 4);
  packet.writeUInt16BE(messageId, 4 + topicBytes);
  PAYLOAD.copy(packet, 6 + topicBytes);
  return packet;
}

async function load(broker: BenchBroker): Promise<number> {
  // LoadClient: reads walked in place, no packet objects (mqtt-packet's parser per PUBACK was the
  // generator's largest cost against Mosquitto, which writes each PUBACK on its own).
  const publishers = await Promise.all(Array.from({ length: 4 }, (_, i) => LoadClient.open(broker.port, `retain-${i}`, true)));
  let next = 0;
  let acked = 0;
  const started = performance.now();
  await new Promise<void>((resolve) => {
    for (const publisher of publishers) {
      let id = 1;
      // What the PUBACKs of one read make room for leaves in one write.
      let pending: Buffer[] = [];
      const sendOne = () => {
        if (next >= RETAINED) return;
        const i = next++;
        pending.push(retainedPublish(topicOf(i), id));
        id = (id % 65535) + 1;
      };
      const flush = () => {
        if (pending.length === 0) return;
        publisher.socket.write(pending.length === 1 ? pending[0]! : Buffer.concat(pending));
        pending = [];
      };
      publisher.onPacket((type) => {
        if (type !== PACKET_PUBACK) return;
        if (++acked === RETAINED) resolve();
        sendOne();
      });
      publisher.afterRead = flush;
      for (let i = 0; i < WINDOW; i++) sendOne();
      flush();
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
  const cpuBefore = threadCpuMs(broker.pid);
  const ownBefore = process.cpuUsage();
  const loadSec = await load(broker);
  const cpuAfter = threadCpuMs(broker.pid);
  const own = process.cpuUsage(ownBefore);
  const pct = (ms: number) => `${Math.round(ms / 10 / loadSec)}%`;
  const cpu =
    `broker ${pct(cpuAfter.main + cpuAfter.others - cpuBefore.main - cpuBefore.others)} (main thread ${pct(cpuAfter.main - cpuBefore.main)}), ` +
    `loadgen ${pct((own.user + own.system) / 1000)}`;
  const rssDeltaMiB = rssMiB(broker.pid) - before;
  const subscribeSec = await subscribeAll(broker);
  return { loadSec, cpu, rssDeltaMiB, subscribeSec };
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
    // external includes arrayBuffers (Node's docs), so it is not added again.
    return memory.heapUsed + memory.external;
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
    const brokers: Array<[string, () => Promise<BenchBroker>]> = [
      ['edgemqtt', () => startEdgemqtt(path.join(root, 'edgemqtt'), { persistence: { sync: SYNC } })],
    ];
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
  console.log(`${RETAINED} retained messages of ${PAYLOAD.length} B, QoS 1, 4 publishers × ${WINDOW} in flight; edgemqtt persistence.sync: ${SYNC}`);
  for (const [name, r] of results) {
    console.log(
      `  ${name.padEnd(10)} load ${r.loadSec.toFixed(1)} s (${Math.round(RETAINED / r.loadSec)} msg/s)` +
        `  memory +${r.rssDeltaMiB.toFixed(1)} MiB (${Math.round((r.rssDeltaMiB * 1048576) / RETAINED)} B/message)` +
        `  '#' subscribe → last message ${r.subscribeSec.toFixed(2)} s\n             load CPU (% of one core): ${r.cpu}`,
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
