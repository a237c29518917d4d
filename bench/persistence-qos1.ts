/**
 * QoS 1 throughput, edgemqtt against Mosquitto in the same run, two modes:
 *
 *   memory   PUBLISHERS clean-session publishers, each keeping WINDOW QoS 1
 *            PUBLISHes in flight (a new one per PUBACK), to one clean-session
 *            QoS 1 subscriber that acknowledges every delivery. edgemqtt as
 *            configured by default (nothing to store: no persistent session
 *            matches) against Mosquitto with persistence off.
 *   durable  the same load to a PERSISTENT session (clean session 0,
 *            connected): every message is queued in that session before its
 *            PUBACK. edgemqtt with `persistence.sync: batch` (each PUBACK
 *            waits for the fsync'd batch holding the message) against
 *            Mosquitto with `persistence true` (it writes its state file at
 *            its autosave interval and on shutdown, never per message) and,
 *            when the package is installed, bare aedes 1.2 with
 *            aedes-persistence-level (PUBACK before publishing, no fsync).
 *            nats-server's MQTT listener, when installed, runs in both modes:
 *            it keeps every QoS 1 message in JetStream, which syncs to disk
 *            on its own interval; its inflight window (mqtt
 *            max_ack_pending) is set to BENCH_INFLIGHT too.
 *            BENCH_OFFLINE=1 adds a second persistent subscriber that is
 *            offline, so each message is also queued for it.
 *
 * A round ends when every PUBLISH has its PUBACK and the subscriber has
 * received every message. Figures per broker (median of ROUNDS, with the
 * spread): messages/s, the broker's CPU per message (µs, user + system from
 * /proc, the figure to compare across runs on a shared machine; of it the
 * main thread's, the rest being LevelDB's and libuv's threads) and this
 * process's CPU per message (the load generator: raw sockets, packets
 * framed by their fixed headers, writes batched per read). Besides, the rate
 * the publishers were acknowledged at (up to their last PUBACK) and how far
 * the subscriber fell behind them: the subscriber takes at most its inflight
 * window per round trip, so a broker that acknowledges faster than that
 * ends the round draining a backlog to it, window by window.
 *
 * The inflight window towards the subscriber is BENCH_INFLIGHT for both
 * brokers (default 20, the default of both: edgemqtt limits.maxInflightMessages,
 * Mosquitto max_inflight_messages); queue limits are off for both.
 *
 *   npm run bench:build && node dist-bench/bench/persistence-qos1.js
 *   env: BENCH_MODES=memory,durable BENCH_MESSAGES=100000 BENCH_WARMUP=20000
 *        BENCH_PUBLISHERS=10 BENCH_WINDOW=64 BENCH_PAYLOAD_BYTES=64 BENCH_ROUNDS=3
 *        BENCH_INFLIGHT=20 BENCH_OFFLINE=0 BENCH_BROKERS=edgemqtt,mosquitto,nats-server,aedes+level BENCH_TIMEOUT_SEC=120
 *        BENCH_SYNC=batch (edgemqtt's persistence.sync; `os`: no fsync, to see what the fsyncs cost)
 *        BENCH_QUEUE_CACHE=BYTES (edgemqtt's persistence.queueCacheBytes; 0: no copies in memory)
 *        BENCH_CPU_PROF=DIR (edgemqtt under node --cpu-prof, profile in DIR; each round prints
 *        its measured window for `node dist-bench/bench/profile.js FILE 30 FROM TO`)
 *        BENCH_ALLOC=1 (edgemqtt's bytes allocated per message, and its main thread's time in
 *        collections, from V8's reports of them: figures
 *        that, unlike msg/s on a shared VM, repeat within a few % from run to run; with one
 *        publisher and a window within the subscriber's, BENCH_PUBLISHERS=1 BENCH_WINDOW=16,
 *        the subscriber keeps up and each message takes the same steps)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { generate } from 'mqtt-packet';
import {
  findMosquitto,
  hasAedesPersistenceLevel,
  median,
  ratio,
  LoadClient,
  RawConnection,
  startAedesLevel,
  startEdgemqtt,
  startMosquitto,
  natsServerColumn,
  queueCacheFromEnv,
  type BenchBroker,
} from './persistence-load.js';
import { processCpuMs as cpuMs, threadCpuMs } from './common.js';

type Mode = 'memory' | 'durable';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const MESSAGES = env('BENCH_MESSAGES', 100_000);
const WARMUP = env('BENCH_WARMUP', 20_000);
const PUBLISHERS = env('BENCH_PUBLISHERS', 10);
const WINDOW = env('BENCH_WINDOW', 64);
const PAYLOAD = Buffer.alloc(env('BENCH_PAYLOAD_BYTES', 64), 0x61);
const ROUNDS = env('BENCH_ROUNDS', 3);
const INFLIGHT = env('BENCH_INFLIGHT', 20);
const OFFLINE = process.env.BENCH_OFFLINE === '1';
const MODES = (process.env.BENCH_MODES ?? 'memory,durable').split(',').filter(Boolean) as Mode[];
const BROKERS = process.env.BENCH_BROKERS?.split(',');
const TIMEOUT_SEC = env('BENCH_TIMEOUT_SEC', 120);
/** edgemqtt's persistence.sync: `batch` (the measured row: fsync before each PUBACK); `os` to see what the fsyncs cost. */
const SYNC = process.env.BENCH_SYNC ?? 'batch';
const TOPIC = 'bench/qos1';
/** The clock a V8 profile's timestamps are on (see profile.ts summarizeProfile). */
const monotonicUs = () => Number(process.hrtime.bigint() / 1000n);

const PUBLISH = 3;
const PUBACK = 4;
/** A PUBACK's first byte (3.4.1). */
const PUBACK_HEADER = 0x40;
const SUBACK = 9;

interface Round {
  rate: number;
  /** Broker CPU per message, µs. */
  brokerUs: number;
  /** Of which its main thread's (the rest: LevelDB's threads, libuv's pool, GC helpers). */
  mainUs: number;
  /** This process's CPU per message, µs. */
  loadUs: number;
  /**
   * Messages a second the publishers were acknowledged at (up to their last
   * PUBACK): above `rate` when the subscriber fell behind them, whose
   * deliveries end the round.
   */
  ackRate: number;
  /** The most messages acknowledged to the publishers and not yet delivered to the subscriber, at any read. */
  peakLag: number;
  /** With BENCH_ALLOC=1, the bytes edgemqtt allocated per message (BenchBroker.allocatedBytes). */
  allocatedBytes: number | undefined;
  /** With BENCH_ALLOC=1, edgemqtt's main thread in V8's collections per message, µs (BenchBroker.collectionMs). */
  collectionUs: number | undefined;
}

/** The broker's allocation count once its reports have stopped coming in (they trail its collections on a pipe), within a second. */
async function settledAllocation(broker: BenchBroker): Promise<number> {
  let last = broker.allocatedBytes!();
  for (let waited = 0; waited < 1000; waited += 50) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    const now = broker.allocatedBytes!();
    if (now === last) return now;
    last = now;
  }
  return last;
}

/** The same QoS 1 PUBLISH for every message; the packet identifier is patched in at `idAt`. */
function publishTemplate(): { bytes: Buffer; idAt: number } {
  const bytes = generate({ cmd: 'publish', topic: TOPIC, payload: PAYLOAD, qos: 1, messageId: 1, retain: false, dup: false });
  // Fixed header (1 byte + Remaining Length), topic length (2) and topic, then the identifier.
  let lengthBytes = 1;
  while ((bytes[lengthBytes] as number) & 0x80) lengthBytes++;
  return { bytes, idAt: 1 + lengthBytes + 2 + Buffer.byteLength(TOPIC) };
}

async function measure(broker: BenchBroker, mode: Mode): Promise<Round> {
  const durable = mode === 'durable';
  const stamp = Date.now();
  const subscribe = generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos: 1 }] });
  if (durable && OFFLINE) {
    // The offline persistent subscriber: subscribe, then leave.
    const offline = await RawConnection.open(broker.port, `offline-${stamp}`, false);
    await offline.request({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos: 1 }] }, 'suback');
    offline.close();
  }
  const subscriber = await LoadClient.open(broker.port, `sub-${stamp}`, !durable);
  await subscriber.request(subscribe, SUBACK);
  let received = 0;
  subscriber.onPacket((type, buf, bodyStart) => {
    if (type !== PUBLISH) return;
    received++;
    // QoS 1: the identifier follows the topic; the read's PUBACKs leave in one write (LoadClient.acknowledge).
    const at = bodyStart + 2 + buf.readUInt16BE(bodyStart);
    subscriber.acknowledge(PUBACK_HEADER, buf.readUInt16BE(at));
  });

  const publishers = await Promise.all(Array.from({ length: PUBLISHERS }, (_, i) => LoadClient.open(broker.port, `pub-${i}-${stamp}`, true)));
  const { bytes: template, idAt } = publishTemplate();
  let target = 0;
  let sent = 0;
  let acked = 0;
  let done: (() => void) | undefined;
  // When the publishers had their last PUBACK, and how far the subscriber fell behind them.
  let ackedAt = 0;
  let peakLag = 0;
  const check = () => {
    if (acked - received > peakLag) peakLag = acked - received;
    if (acked >= target && ackedAt === 0) ackedAt = performance.now();
    if (acked >= target && received >= target) done?.();
  };
  const senders = publishers.map((publisher) => {
    let nextId = 1;
    let due = 0;
    const flush = () => {
      const count = Math.min(due, target - sent);
      due = 0;
      if (count <= 0) return;
      sent += count;
      const out = Buffer.allocUnsafe(count * template.length);
      for (let i = 0; i < count; i++) {
        template.copy(out, i * template.length);
        out.writeUInt16BE(nextId, i * template.length + idAt);
        nextId = (nextId % 65535) + 1;
      }
      publisher.socket.write(out);
    };
    publisher.onPacket((type) => {
      if (type !== PUBACK) return;
      acked++;
      due++;
    });
    publisher.afterRead = () => {
      flush();
      check();
    };
    return (window: number) => {
      due = window;
      flush();
    };
  });
  subscriber.afterRead = check;

  const run = (count: number) =>
    new Promise<void>((resolve, reject) => {
      target += count;
      // A broker that stops acknowledging or delivering ends the round, not the benchmark.
      const timer = setTimeout(() => reject(new Error(`timed out after ${TIMEOUT_SEC} s: ${acked} PUBACKs, ${received} deliveries of ${target}`)), TIMEOUT_SEC * 1000);
      done = () => {
        clearTimeout(timer);
        resolve();
      };
      for (const start of senders) start(WINDOW);
    });

  let brokerBefore = 0;
  let threadsBefore = { main: 0, others: 0 };
  let allocatedBefore: number | undefined;
  let collectionBefore: number | undefined;
  let loadBefore = process.cpuUsage();
  let started = 0;
  let fromUs = 0;
  try {
    await run(WARMUP);
    brokerBefore = cpuMs(broker.pid);
    threadsBefore = threadCpuMs(broker.pid);
    allocatedBefore = broker.allocatedBytes?.();
    collectionBefore = broker.collectionMs?.();
    loadBefore = process.cpuUsage();
    started = performance.now();
    fromUs = monotonicUs();
    ackedAt = 0;
    peakLag = 0;
    await run(MESSAGES);
    if (process.env.BENCH_CPU_PROF) console.log(`  profile window (pid ${broker.pid}): ${fromUs} ${monotonicUs()}`);
  } finally {
    for (const connection of [...publishers, subscriber]) connection.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const brokerMs = cpuMs(broker.pid) - brokerBefore;
  const mainMs = threadCpuMs(broker.pid).main - threadsBefore.main;
  const load = process.cpuUsage(loadBefore);
  // Read once the broker's collections since the run have been reported (they come on its stdout).
  const allocatedAfter = allocatedBefore === undefined ? undefined : await settledAllocation(broker);
  return {
    rate: MESSAGES / seconds,
    ackRate: MESSAGES / ((ackedAt - started) / 1000),
    peakLag,
    brokerUs: (brokerMs * 1000) / MESSAGES,
    mainUs: (mainMs * 1000) / MESSAGES,
    loadUs: (load.user + load.system) / MESSAGES,
    allocatedBytes: allocatedAfter === undefined ? undefined : (allocatedAfter - allocatedBefore!) / MESSAGES,
    collectionUs: allocatedAfter === undefined ? undefined : ((broker.collectionMs!() - collectionBefore!) * 1000) / MESSAGES,
  };
}

type Start = (dir: string) => Promise<BenchBroker>;

function candidates(mode: Mode, mosquitto: string | null, nats: Start | undefined): Array<[string, Start]> {
  const durable = mode === 'durable';
  const list: Array<[string, Start]> = [
    [
      'edgemqtt',
      (dir) =>
        startEdgemqtt(dir, {
          // Queue limits off: every message is kept, as by the others here.
          persistence: { sync: SYNC, maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0, ...queueCacheFromEnv() },
          limits: { maxInflightMessages: INFLIGHT },
        }),
    ],
  ];
  if (mosquitto) list.push(['mosquitto', (dir) => startMosquitto(mosquitto, dir, { persistence: durable, maxInflight: INFLIGHT })]);
  if (nats) list.push(['nats-server', nats]);
  if (durable && hasAedesPersistenceLevel()) list.push(['aedes+level', (dir) => startAedesLevel(dir)]);
  return list.filter(([name]) => !BROKERS || BROKERS.includes(name));
}

/** The main thread's share; none for nats-server, whose Go runtime spreads its work over threads of its own. */
const mainThread = (name: string, us: number) => (name.endsWith('nats-server') ? '' : ` (main thread ${us.toFixed(1)})`);

/** BENCH_ALLOC=1: edgemqtt's bytes allocated, and its main thread's time in collections, per message. */
const allocation = (bytes: number | undefined, us: number | undefined) =>
  bytes === undefined ? '' : `, allocated ${Math.round(bytes)} B/msg, collections ${us!.toFixed(2)} µs/msg`;

const spread = (values: number[], digits = 0) =>
  values.length > 1 ? ` (${Math.min(...values).toFixed(digits)}–${Math.max(...values).toFixed(digits)})` : '';

async function main(): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-qos1-'));
  const mosquitto = findMosquitto();
  if (!mosquitto) console.log('mosquitto not found (BENCH_MOSQUITTO=/path): column skipped');
  const nats = !BROKERS || BROKERS.includes('nats-server') ? natsServerColumn(INFLIGHT) : undefined;
  const results = new Map<string, Round[]>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const mode of MODES) {
        for (const [name, start] of candidates(mode, mosquitto, nats)) {
          const broker = await start(path.join(root, `${mode}-${name}-${round}`));
          try {
            const result = await measure(broker, mode).catch((error: unknown) => {
              console.log(`round ${round} ${mode} ${name}: ${(error as Error).message}`);
              return undefined;
            });
            if (!result) continue;
            const key = `${mode} ${name}`;
            results.set(key, [...(results.get(key) ?? []), result]);
            console.log(
              `round ${round} ${key}: ${Math.round(result.rate)} msg/s, broker ${result.brokerUs.toFixed(1)} µs/msg${mainThread(name, result.mainUs)}, load generator ${result.loadUs.toFixed(1)} µs/msg${allocation(result.allocatedBytes, result.collectionUs)}; ` +
                `PUBACKs at ${Math.round(result.ackRate)} msg/s, subscriber at most ${result.peakLag} behind`,
            );
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
    `\nQoS 1, ${MESSAGES} messages of ${PAYLOAD.length} B after ${WARMUP} warm-up, ${PUBLISHERS} publishers × ${WINDOW} in flight → 1 subscriber` +
      ` (inflight window ${INFLIGHT || 'unlimited'}${OFFLINE ? ', plus 1 offline persistent subscriber in durable mode' : ''}); median of ${ROUNDS} (min–max)`,
  );
  for (const mode of MODES) {
    const edgemqtt = results.get(`${mode} edgemqtt`);
    for (const [key, rounds] of results) {
      if (!key.startsWith(`${mode} `)) continue;
      const rates = rounds.map((r) => r.rate);
      const broker = rounds.map((r) => r.brokerUs);
      const main = rounds.map((r) => r.mainUs);
      const load = rounds.map((r) => r.loadUs);
      const ackRates = rounds.map((r) => r.ackRate);
      const measured = rounds.every((r) => r.allocatedBytes !== undefined);
      const allocated = measured ? median(rounds.map((r) => r.allocatedBytes!)) : undefined;
      const collections = measured ? median(rounds.map((r) => r.collectionUs!)) : undefined;
      const versus = edgemqtt && key !== `${mode} edgemqtt` ? `   edgemqtt/this = ${ratio(median(edgemqtt.map((r) => r.rate)), median(rates))}` : '';
      console.log(
        `  ${key.padEnd(20)} ${String(Math.round(median(rates))).padStart(7)} msg/s${spread(rates)}` +
          `   broker ${median(broker).toFixed(1)} µs/msg${spread(broker, 1)}${mainThread(key, median(main))}   load gen ${median(load).toFixed(1)} µs/msg${allocation(allocated, collections)}   PUBACKs ${Math.round(median(ackRates))} msg/s${spread(ackRates)}${versus}`,
      );
    }
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
