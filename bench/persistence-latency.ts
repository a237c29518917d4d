/**
 * QoS 1 delivery latency at a steady rate, with a persistent session among
 * the subscribers, edgemqtt against Mosquitto in the same run: one publisher
 * sends RATE QoS 1 PUBLISHes a second (open loop: what is due is written
 * every millisecond, whatever the broker answers) to two connected QoS 1
 * subscribers, a persistent session and a clean one, which acknowledge every
 * delivery. Figures per broker (median of ROUNDS): each subscriber's latency
 * from a PUBLISH's write to its arrival, p50 and p99; the publisher's PUBACK
 * latency; the broker's CPU per message.
 *
 * edgemqtt runs with `persistence.sync: batch`: every message is queued in
 * the persistent session, and its PUBACK waits for that fsync'd write.
 * Mosquitto runs with `persistence true` (it writes its state file at its
 * autosave interval, never per message). nats-server, when installed, runs
 * its MQTT listener, whose sessions and QoS 1 messages live in JetStream
 * (bench/brokers.ts startNatsServer; JetStream syncs to disk on its own
 * interval, not per message). So the PUBACK rows compare an fsync'd
 * acknowledgement with ones that are not; the delivery rows compare what a
 * subscriber waits.
 *
 *   npm run bench:build && node dist-bench/bench/persistence-latency.js
 *   env: BENCH_RATE=2000 BENCH_MESSAGES=20000 BENCH_WARMUP=4000 BENCH_ROUNDS=3
 *        BENCH_PAYLOAD_BYTES=64 BENCH_BROKERS=edgemqtt,mosquitto,nats-server
 *        BENCH_SYNC=batch (edgemqtt's persistence.sync; `os`: no fsync, to see what the fsyncs cost)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { generate } from 'mqtt-packet';
import { findMosquitto, median, natsServerColumn, ratio, LoadClient, startEdgemqtt, startMosquitto, type BenchBroker } from './persistence-load.js';
import { percentile, processCpuMs } from './common.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const RATE = env('BENCH_RATE', 2000);
const MESSAGES = env('BENCH_MESSAGES', 20_000);
const WARMUP = env('BENCH_WARMUP', 4000);
const ROUNDS = env('BENCH_ROUNDS', 3);
const PAYLOAD_BYTES = Math.max(4, env('BENCH_PAYLOAD_BYTES', 64));
const BROKERS = process.env.BENCH_BROKERS?.split(',');
const SYNC = process.env.BENCH_SYNC ?? 'batch';
const TOPIC = 'bench/latency';

const PUBLISH = 3;
const PUBACK = 4;
const PUBACK_HEADER = 0x40;
const SUBACK = 9;

/** Milliseconds; the figures of one round. */
interface Round {
  persistent: [p50: number, p99: number];
  clean: [p50: number, p99: number];
  puback: [p50: number, p99: number];
  brokerUs: number;
}

/** The same QoS 1 PUBLISH for every message: its packet identifier at `idAt`, its number (the payload's first 4 bytes) at `seqAt`. */
function publishTemplate(): { bytes: Buffer; idAt: number; seqAt: number } {
  const bytes = generate({ cmd: 'publish', topic: TOPIC, payload: Buffer.alloc(PAYLOAD_BYTES, 0x61), qos: 1, messageId: 1, retain: false, dup: false });
  let lengthBytes = 1;
  while ((bytes[lengthBytes] as number) & 0x80) lengthBytes++;
  const idAt = 1 + lengthBytes + 2 + Buffer.byteLength(TOPIC);
  return { bytes, idAt, seqAt: idAt + 2 };
}

const quantiles = (values: number[]): [number, number] => {
  const sorted = Float64Array.from(values).sort();
  return [percentile(sorted, 0.5), percentile(sorted, 0.99)];
};

async function measure(broker: BenchBroker): Promise<Round> {
  const total = WARMUP + MESSAGES;
  const sentAt = new Float64Array(total);
  const stamp = Date.now();
  const latencies = { persistent: [] as number[], clean: [] as number[], puback: [] as number[] };
  let received = 0;
  const subscribe = generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos: 1 }] });
  const subscribers = await Promise.all(
    (['persistent', 'clean'] as const).map(async (kind) => {
      const client = await LoadClient.open(broker.port, `${kind}-${stamp}`, kind === 'clean');
      await client.request(subscribe, SUBACK);
      // PUBACKs at the end of the turn: a write between the two subscribers' reads would add its system call to the latency of the one read second.
      client.acksAtEndOfTurn = true;
      client.onPacket((type, buf, bodyStart) => {
        if (type !== PUBLISH) return;
        const now = performance.now();
        const at = bodyStart + 2 + buf.readUInt16BE(bodyStart);
        const seq = buf.readUInt32BE(at + 2);
        if (seq >= WARMUP) latencies[kind].push(now - sentAt[seq]!);
        received++;
        client.acknowledge(PUBACK_HEADER, buf.readUInt16BE(at));
      });
      return client;
    }),
  );
  const publisher = await LoadClient.open(broker.port, `publisher-${stamp}`, true);
  let acked = 0;
  // Packet identifier → message number; identifiers wrap at 65,535, far beyond what is in flight at once.
  const seqOfId = new Int32Array(65536);
  publisher.onPacket((type, buf, bodyStart) => {
    if (type !== PUBACK) return;
    const seq = seqOfId[buf.readUInt16BE(bodyStart)]!;
    if (seq >= WARMUP) latencies.puback.push(performance.now() - sentAt[seq]!);
    acked++;
  });
  const { bytes: template, idAt, seqAt } = publishTemplate();
  let sent = 0;
  let cpuBefore = 0;
  const started = performance.now();
  try {
    await new Promise<void>((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`timed out: ${acked} PUBACKs, ${received} deliveries of ${total}`)), 60_000 + (total / RATE) * 2000);
      const tick = (): void => {
        const due = Math.min(total, Math.floor(((performance.now() - started) * RATE) / 1000) + 1);
        if (due > sent) {
          if (sent < WARMUP && due >= WARMUP) cpuBefore = processCpuMs(broker.pid);
          const out = Buffer.allocUnsafe((due - sent) * template.length);
          const now = performance.now();
          for (let seq = sent, at = 0; seq < due; seq++, at += template.length) {
            template.copy(out, at);
            const id = (seq % 65535) + 1;
            out.writeUInt16BE(id, at + idAt);
            out.writeUInt32BE(seq, at + seqAt);
            seqOfId[id] = seq;
            sentAt[seq] = now;
          }
          sent = due;
          publisher.socket.write(out);
        }
        if (acked >= total && received >= 2 * total) {
          clearTimeout(deadline);
          resolve();
        } else setTimeout(tick, sent < total ? 1 : 5);
      };
      tick();
    });
  } finally {
    for (const client of [publisher, ...subscribers]) client.close();
  }
  return {
    persistent: quantiles(latencies.persistent),
    clean: quantiles(latencies.clean),
    puback: quantiles(latencies.puback),
    brokerUs: ((processCpuMs(broker.pid) - cpuBefore) * 1000) / MESSAGES,
  };
}

const ms = ([p50, p99]: [number, number]) => `${p50.toFixed(3)} / ${p99.toFixed(3)}`;

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-latency-'));
  const mosquitto = findMosquitto();
  if (!mosquitto) console.log('mosquitto not found (BENCH_MOSQUITTO=/path): column skipped');
  const brokers: Array<[string, (dir: string) => Promise<BenchBroker>]> = [
    ['edgemqtt', (dir) => startEdgemqtt(dir, { persistence: { sync: SYNC } })],
  ];
  if (mosquitto) brokers.push(['mosquitto', (dir) => startMosquitto(mosquitto, dir, { persistence: true })]);
  const nats = natsServerColumn();
  if (nats) brokers.push(['nats-server', nats]);
  const results = new Map<string, Round[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [name, start] of brokers.filter(([name]) => !BROKERS || BROKERS.includes(name))) {
        const broker = await start(path.join(root, `${name}-${round}`));
        try {
          const result = await measure(broker).catch((error: unknown) => {
            console.log(`round ${round} ${name}: ${(error as Error).message}`);
            return undefined;
          });
          if (!result) continue;
          results.set(name, [...(results.get(name) ?? []), result]);
          console.log(
            `round ${round} ${name}: delivery p50 / p99 ms persistent ${ms(result.persistent)}, clean ${ms(result.clean)}; PUBACK ${ms(result.puback)}; broker ${result.brokerUs.toFixed(1)} µs/msg`,
          );
        } finally {
          await broker.stop();
        }
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  console.log(
    `\nQoS 1 at ${RATE} msg/s, ${MESSAGES} messages of ${PAYLOAD_BYTES} B after ${WARMUP} warm-up, 1 publisher → a persistent and a clean subscriber; p50 / p99 ms, medians of ${ROUNDS}`,
  );
  const med = (rounds: Round[], pick: (r: Round) => [number, number]): [number, number] => [median(rounds.map((r) => pick(r)[0])), median(rounds.map((r) => pick(r)[1]))];
  const edgemqtt = results.get('edgemqtt');
  for (const [name, rounds] of results) {
    const rows = { persistent: med(rounds, (r) => r.persistent), clean: med(rounds, (r) => r.clean), puback: med(rounds, (r) => r.puback) };
    let versus = '';
    if (edgemqtt && name !== 'edgemqtt') {
      const ours = med(edgemqtt, (r) => r.persistent);
      versus = `   edgemqtt/this, persistent delivery: ${ratio(ours[0], rows.persistent[0])} / ${ratio(ours[1], rows.persistent[1])}`;
    }
    console.log(
      `  ${name.padEnd(11)} delivery persistent ${ms(rows.persistent)}   clean ${ms(rows.clean)}   PUBACK ${ms(rows.puback)}   broker ${median(rounds.map((r) => r.brokerUs)).toFixed(1)} µs/msg${versus}`,
    );
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
