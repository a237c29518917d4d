/**
 * How fast a persistent subscriber that comes back gets its backlog: BACKLOG
 * QoS 1 or QoS 2 messages queued while it was away, resent after its CONNECT.
 * The clock runs from the CONNECT to the last delivery (QoS 1: the PUBLISH;
 * QoS 2: the PUBREL, where a receiver that delivers on PUBREL hands the
 * message on). The subscriber acknowledges everything as fast as it reads, a
 * read's acknowledgements in one write (persistence-load.ts LoadClient): with
 * a write each, this process, not the broker, was the limit against
 * Mosquitto (a whole core at 7.6 µs a message). edgemqtt stores each resent
 * message's packet identifier before a QoS 2 PUBLISH leaves (so it survives
 * a crash, see outgoingResendStream);
 * Mosquitto runs without persistence (its default), so it stores nothing.
 * nats-server's MQTT listener, where installed, is a column for QoS 1 (2.9
 * has no QoS 2): its sessions and messages live in JetStream, and its
 * inflight window (max_ack_pending) is set to BENCH_INFLIGHT too.
 *
 * The inflight window towards the subscriber is BENCH_INFLIGHT for both
 * brokers (default 20, the default of both: edgemqtt limits.maxInflightMessages,
 * Mosquitto max_inflight_messages; 0 = none): the resend keeps to it, so with
 * a window each round trip of the subscriber's PUBACKs paces the backlog.
 *
 * Beside msg/s, per message: the broker's CPU (user + system from /proc,
 * every thread, LevelDB's included), this process's (the subscriber), and
 * the broker's read and write system calls (/proc/PID/io syscr/syscw: the
 * socket writes, and LevelDB's), all from the CONNECT to the last delivery.
 *
 *   npm run bench:build && node dist-bench/bench/persistence-resend.js
 * Before the measured backlog, each broker (the same process) resends a
 * warm-up backlog of BENCH_WARMUP messages to another subscriber, unmeasured,
 * as bench/persistence-qos1.ts warms up before it measures: a new Node
 * process compiles the resend's code with V8's optimizing compiler during
 * its first resend, on the other core. BENCH_WARMUP=0 measures that first,
 * cold resend (a gateway's first reconnect after a restart).
 *
 *   env: BENCH_BACKLOG=20000 BENCH_WARMUP=20000 BENCH_ROUNDS=3 BENCH_PAYLOAD_BYTES=64 BENCH_INFLIGHT=20
 *        BENCH_BROKERS=edgemqtt,mosquitto,nats-server BENCH_TIMEOUT_SEC=60 (a round not done by then is
 *        left out: Mosquitto 2.0.11 with a window stalls on a QoS 2 backlog)
 *        BENCH_THREADS=1 (the broker's CPU per message: main thread and other threads)
 *        BENCH_QUEUE_CACHE=BYTES (edgemqtt's persistence.queueCacheBytes; default the
 *        product's, which holds the default backlog; 0 reads it back from disk)
 *        BENCH_CPU_PROF=DIR (edgemqtt under node --cpu-prof; each round prints
 *        its window for `node dist-bench/bench/profile.js FILE 30 FROM TO`)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { PACKET_PUBLISH, processCpuMs, threadCpuMs } from './common.js';
import { findMosquitto, LoadClient, median, natsServerColumn, ratio, RawConnection, startEdgemqtt, startMosquitto, queueCacheFromEnv, type BenchBroker } from './persistence-load.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const BACKLOG = env('BENCH_BACKLOG', 20_000);
const WARMUP = env('BENCH_WARMUP', 20_000);
const ROUNDS = env('BENCH_ROUNDS', 3);
const PAYLOAD = Buffer.alloc(env('BENCH_PAYLOAD_BYTES', 64), 0x61);
const INFLIGHT = env('BENCH_INFLIGHT', 20);
const BROKERS = process.env.BENCH_BROKERS?.split(',');
const TIMEOUT_SEC = env('BENCH_TIMEOUT_SEC', 60);
const TOPIC = 'bench/resend';
const PUBLISHERS = 4;
const PACKET_PUBREL = 6;
/** First bytes of the acknowledgements (type and flags, 3.4.1, 3.5.1, 3.7.1). */
const PUBACK = 0x40;
const PUBREC = 0x50;
const PUBCOMP = 0x70;
// Each publisher's unacknowledged PUBLISHes; within the brokers' window, which Mosquitto also applies to what it receives (above it, its QoS 2 handshakes stalled).
const WINDOW = INFLIGHT > 0 ? Math.min(32, INFLIGHT) : 32;

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

interface Round {
  rate: number;
  /** Broker CPU per message, µs. */
  brokerUs: number;
  /** This process's CPU per message, µs. */
  loadUs: number;
  /** The broker's read and write system calls per message. */
  reads: number;
  writes: number;
  /** Lines printed under the round's own: CPU by thread (BENCH_THREADS), the profile window. */
  details: string[];
}

/** The read and write system calls of a process so far (every thread). */
function syscalls(pid: number): { reads: number; writes: number } {
  const io = readFileSync(`/proc/${pid}/io`, 'latin1');
  return { reads: Number(/syscr: (\d+)/.exec(io)?.[1] ?? 0), writes: Number(/syscw: (\d+)/.exec(io)?.[1] ?? 0) };
}

/** µs on the monotonic clock a --cpu-prof profile uses. */
const monotonicUs = () => Number(process.hrtime.bigint() / 1000n);

/** Messages per second delivered to a reconnecting subscriber out of its backlog, and what they cost; undefined when it did not finish in time. */
async function measure(broker: BenchBroker, qos: 1 | 2, backlog: number): Promise<Round | undefined> {
  const clientId = `resend-sub-${qos}-${backlog}-${Date.now()}`;
  const first = await RawConnection.open(broker.port, clientId, false);
  await first.request({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos }] }, 'suback');
  first.close();
  await publishBacklog(broker.port, qos, backlog);

  const fromUs = monotonicUs();
  const cpuBefore = processCpuMs(broker.pid);
  const callsBefore = syscalls(broker.pid);
  const threadsBefore = process.env.BENCH_THREADS ? threadCpuMs(broker.pid) : undefined;
  const loadBefore = process.cpuUsage();
  const started = performance.now();
  let delivered = 0;
  let subscriber: Promise<LoadClient> | undefined;
  let timer: NodeJS.Timeout | undefined;
  const finished = await new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), TIMEOUT_SEC * 1000);
    subscriber = LoadClient.open(broker.port, clientId, false, (connection) => (type, buf, bodyStart) => {
      // Each read's acknowledgements leave in one write (LoadClient.acknowledge).
      if (type === PACKET_PUBLISH) {
        // The packet identifier follows the topic; QoS 1: PUBACK, QoS 2: PUBREC.
        const id = buf.readUInt16BE(bodyStart + 2 + buf.readUInt16BE(bodyStart));
        connection.acknowledge(qos === 1 ? PUBACK : PUBREC, id);
        if (qos === 1 && ++delivered === backlog) resolve(true);
      } else if (type === PACKET_PUBREL) {
        connection.acknowledge(PUBCOMP, buf.readUInt16BE(bodyStart));
        if (++delivered === backlog) resolve(true);
      }
    });
  });
  clearTimeout(timer);
  const seconds = (performance.now() - started) / 1000;
  const load = process.cpuUsage(loadBefore);
  const brokerMs = processCpuMs(broker.pid) - cpuBefore;
  const calls = syscalls(broker.pid);
  const toUs = monotonicUs();
  // Printed under the round's line (or its left-out line).
  const details: string[] = [];
  if (threadsBefore) {
    const after = threadCpuMs(broker.pid);
    const perMessage = (ms: number) => ((ms * 1000) / backlog).toFixed(1);
    details.push(`  broker µs CPU/msg: main thread ${perMessage(after.main - threadsBefore.main)}, other threads ${perMessage(after.others - threadsBefore.others)}`);
  }
  (await subscriber!).close();
  // The session is discarded (Clean Session [MQTT-3.1.2-6]): otherwise the warm-up's subscriber,
  // still subscribed while away, would have the measured backlog queued for it too, doubling
  // the store's work while it is published and halving what edgemqtt's queue cache holds of it.
  const discard = await RawConnection.open(broker.port, clientId, true);
  discard.close();
  if (!finished) {
    console.log([`  ${broker.name} QoS ${qos}: ${delivered} of ${backlog} delivered after ${TIMEOUT_SEC} s; the round is left out`, ...details].join('\n'));
    return undefined;
  }
  if (process.env.BENCH_CPU_PROF || process.env.BENCH_THREADS) details.push(`  profile window (pid ${broker.pid}): ${fromUs} ${toUs}`);
  return {
    details,
    rate: backlog / seconds,
    brokerUs: (brokerMs * 1000) / backlog,
    loadUs: (load.user + load.system) / backlog,
    reads: (calls.reads - callsBefore.reads) / backlog,
    writes: (calls.writes - callsBefore.writes) / backlog,
  };
}

const spread = (values: number[], digits = 0) => `${Math.min(...values).toFixed(digits)}–${Math.max(...values).toFixed(digits)}`;

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-resend-'));
  const mosquitto = findMosquitto();
  const candidates: Array<[string, (dir: string) => Promise<BenchBroker>]> = [
    [
      'edgemqtt',
      (dir) =>
        startEdgemqtt(dir, {
          persistence: { sync: 'batch', maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0, ...queueCacheFromEnv() },
          limits: { maxInflightMessages: INFLIGHT },
        }),
    ],
  ];
  if (mosquitto) candidates.push(['mosquitto', (dir) => startMosquitto(mosquitto, dir, { maxInflight: INFLIGHT })]);
  else console.log('mosquitto not found (BENCH_MOSQUITTO=/path): column skipped');
  const nats = !BROKERS || BROKERS.includes('nats-server') ? natsServerColumn(INFLIGHT) : undefined;
  if (nats) candidates.push(['nats-server', nats]);
  if (BROKERS) candidates.splice(0, candidates.length, ...candidates.filter(([name]) => BROKERS.includes(name)));

  const results = new Map<string, Round[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const qos of [1, 2] as const) {
        for (const [name, start] of candidates) {
          // nats-server 2.9's MQTT listener has no QoS 2.
          if (name === 'nats-server' && qos === 2) continue;
          const broker = await start(path.join(root, `${name}-${qos}-${round}`));
          try {
            if (WARMUP > 0 && (await measure(broker, qos, WARMUP)) === undefined) {
              console.log(`  ${name} QoS ${qos}: the warm-up backlog did not finish; the round is left out`);
              continue;
            }
            const result = await measure(broker, qos, BACKLOG);
            if (result === undefined) continue;
            const key = `${name} QoS ${qos}`;
            results.set(key, [...(results.get(key) ?? []), result]);
            console.log(
              `round ${round} ${key}: ${Math.round(result.rate)} msg/s, broker ${result.brokerUs.toFixed(1)} µs CPU/msg, ` +
                `subscriber ${result.loadUs.toFixed(1)} µs, broker syscalls/msg ${result.reads.toFixed(2)} read ${result.writes.toFixed(2)} write`,
            );
            for (const line of result.details) console.log(line);
          } finally {
            await broker.stop();
          }
        }
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  console.log(
    `\nBacklog of ${BACKLOG} messages of ${PAYLOAD.length} B resent to a reconnecting persistent subscriber, inflight window ${INFLIGHT || 'none'}, ${WARMUP > 0 ? `after a warm-up backlog of ${WARMUP}` : 'cold (no warm-up)'} (median of ${ROUNDS})`,
  );
  const describe = (rounds: Round[]) => {
    const rates = rounds.map((r) => r.rate);
    const cpu = rounds.map((r) => r.brokerUs);
    const load = rounds.map((r) => r.loadUs);
    return (
      `${Math.round(median(rates))} msg/s (${spread(rates)}), ${median(cpu).toFixed(1)} µs CPU/msg (${spread(cpu, 1)}), ` +
      `subscriber ${median(load).toFixed(1)} µs, syscalls/msg ${median(rounds.map((r) => r.reads)).toFixed(2)} read ${median(rounds.map((r) => r.writes)).toFixed(2)} write`
    );
  };
  for (const qos of [1, 2]) {
    const ours = results.get(`edgemqtt QoS ${qos}`);
    if (ours) console.log(`  QoS ${qos}: edgemqtt    ${describe(ours)}`);
    for (const peer of ['mosquitto', 'nats-server']) {
      const theirs = results.get(`${peer} QoS ${qos}`);
      if (!theirs) continue;
      console.log(`  QoS ${qos}: ${peer.padEnd(11)} ${describe(theirs)}`);
      if (ours) console.log(`  QoS ${qos}: edgemqtt/${peer} = ${ratio(median(ours.map((r) => r.rate)), median(theirs.map((r) => r.rate)))}`);
    }
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
