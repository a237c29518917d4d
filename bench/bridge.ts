/**
 * The NATS JetStream bridge under load, against nats-server's own MQTT
 * listener, on this machine and in the same run (median of ROUNDS):
 *
 * 1. MQTT QoS 1 → JetStream: MESSAGES QoS 1 PUBLISHes from PUBLISHERS raw
 *    clients, each keeping WINDOW in flight (a new one per PUBACK), to
 *    bench/bridge; timed from the first PUBLISH until the JetStream stream
 *    holds them all (stream info polled every 20 ms by a nats.js client).
 *    (a) edgemqtt, bridge exporting bench/# to stream EDGEMQTT on a
 *        nats-server -js child; (b) nats-server's MQTT listener, the topic
 *        mapped to subject bench.bridge and captured by a stream on bench.>.
 * 2. Outbox drain after an outage: BACKLOG QoS 1 messages to edgemqtt while
 *    NATS is down (its RSS sampled every 100 ms), then nats-server starts;
 *    the drain rate is timed from when the bridge has (re)created the stream
 *    until the stream holds them all; the reconnect delay (the bridge's
 *    backoff) is printed apart.
 * 3. JetStream → MQTT: MESSAGES messages published into the stream as from
 *    another site, imported by edgemqtt and delivered to a WebSocket
 *    subscriber (roundImport).
 *
 * CPU of each process (edgemqtt, nats-server, this load generator) is printed
 * as % of one core over the measured interval.
 *
 *   npm run bench:build && node dist-bench/bench/bridge.js     (or npm run bench:bridge)
 *   env: BENCH_MESSAGES=20000 BENCH_PUBLISHERS=8 BENCH_WINDOW=32 BENCH_PAYLOAD_BYTES=64 BENCH_ROUNDS=3
 *        BENCH_BACKLOG=200000 (the goal is stated at 1000000) BENCH_STALL_MS=30000 (no progress → fail)
 *        BENCH_NATS_SERVER=/usr/sbin/nats-server BENCH_PHASES=edgemqtt,nats-mqtt,drain,import
 *        BENCH_CPU_PROF=DIR (edgemqtt under --cpu-prof; see profile.ts)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { generate } from 'mqtt-packet';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { headers, type MsgHdrs } from '@nats-io/transport-node';
import mqtt from 'mqtt';
import { freePort, median, ratio, RawConnection, rssMiB, startEdgemqtt } from './persistence-load.js';
import { processCpuMs } from './common.js';
import { HEADER } from '../src/bridge/metadata.js';
import { topicToSubject } from '../src/bridge/subjects.js';
import { JetStreamPublisher } from '../src/bridge/stream-publisher.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const MESSAGES = env('BENCH_MESSAGES', 20_000);
const PUBLISHERS = env('BENCH_PUBLISHERS', 8);
const WINDOW = env('BENCH_WINDOW', 32);
const PAYLOAD = Buffer.alloc(env('BENCH_PAYLOAD_BYTES', 64), 0x61);
const ROUNDS = env('BENCH_ROUNDS', 3);
const BACKLOG = env('BENCH_BACKLOG', 200_000);
const STALL_MS = env('BENCH_STALL_MS', 30_000);
const NATS_SERVER = process.env.BENCH_NATS_SERVER ?? '/usr/sbin/nats-server';
/** Which of the four measurements to run (BENCH_PHASES=edgemqtt,drain for a profile of one path). */
const PHASES = new Set((process.env.BENCH_PHASES ?? 'edgemqtt,nats-mqtt,drain,import').split(','));
const TOPIC = 'bench/bridge';
/** JetStream publishes in flight while the import is measured. */
const IMPORT_WINDOW = 1024;
const EDGE_STREAM = 'EDGEMQTT';
const NATS_STREAM = 'BENCH';

// ---------------------------------------------------------------- processes

const children = new Set<ChildProcess>();
let tempRoot: string | undefined;
process.on('exit', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if (tempRoot) rmSync(tempRoot, { recursive: true, force: true, maxRetries: 3 });
});
// Signals end the process through 'exit', so that handler (and persistence-load's, for edgemqtt) runs.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => process.exit(130));

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface NatsServer {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** nats-server with JetStream (and an MQTT listener when `mqttPort` is given), resolved once it logs "Server is ready". */
async function startNats(dir: string, port: number, mqttPort?: number): Promise<NatsServer> {
  await mkdir(dir, { recursive: true });
  const configFile = path.join(dir, 'nats.conf');
  const lines = ['server_name: bench', `listen: "127.0.0.1:${port}"`, `jetstream { store_dir: ${JSON.stringify(path.join(dir, 'js'))} }`];
  if (mqttPort !== undefined) lines.push(`mqtt { host: "127.0.0.1", port: ${mqttPort} }`);
  await writeFile(configFile, lines.join('\n') + '\n');
  const child = spawn(NATS_SERVER, ['-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const log: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nats-server not ready within 30 s:\n${log.join('\n')}`)), 30_000);
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`nats-server exited with ${code}:\n${log.join('\n')}`)));
    createInterface({ input: child.stderr! }).on('line', (line) => {
      log.push(line);
      if (log.length > 100) log.shift();
      if (line.includes('Server is ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const stop = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill('SIGTERM');
    });
  return { url: `nats://127.0.0.1:${port}`, pid: child.pid!, stop };
}

// ---------------------------------------------------------------- load

/** PUBLISHERS clean-session connections to an MQTT listener. */
function openPublishers(port: number, name: string): Promise<RawConnection[]> {
  return Promise.all(Array.from({ length: PUBLISHERS }, (_, i) => RawConnection.open(port, `${name}-pub-${i}-${Date.now()}`)));
}

/** Sends `count` QoS 1 PUBLISHes over `publishers`, WINDOW in flight on each; resolves when all are PUBACKed. */
function publishAll(publishers: RawConnection[], count: number): Promise<void> {
  // One PUBLISH built once; each send copies it and writes its Packet Identifier.
  const template = generate({ cmd: 'publish', topic: TOPIC, payload: PAYLOAD, qos: 1, messageId: 1, retain: false, dup: false });
  const idOffset = template.length - PAYLOAD.length - 2;
  let sent = 0;
  let acked = 0;
  return new Promise((resolve) => {
    if (count === 0) return resolve();
    for (const publisher of publishers) {
      let nextId = 1;
      const sendOne = () => {
        if (sent >= count) return;
        sent++;
        const packet = Buffer.from(template);
        packet.writeUInt16BE(nextId, idOffset);
        publisher.send(packet);
        nextId = (nextId % 65535) + 1;
      };
      publisher.onPacket((packet) => {
        if (packet.cmd !== 'puback') return;
        if (++acked === count) resolve();
        sendOne();
      });
      for (let i = 0; i < WINDOW; i++) sendOne();
    }
  });
}

/** Messages in a stream, or undefined while it does not exist (or JetStream does not answer yet). */
async function streamMessages(jsm: JetStreamManager, stream: string): Promise<{ messages?: number; error?: string }> {
  try {
    return { messages: (await jsm.streams.info(stream)).state.messages };
  } catch (error) {
    return { error: (error as Error).message };
  }
}

/**
 * Polls the stream every 20 ms until it holds `target` messages. Resolves with
 * when it was first seen to exist and when it was full; fails when nothing
 * moves for STALL_MS (the stream's absence may last up to 90 s: the bridge's
 * reconnect backoff).
 */
async function waitForStream(jsm: JetStreamManager, stream: string, target: number, label: string, onFirstSeen?: () => void) {
  let firstSeen: number | undefined;
  let last: number | undefined;
  let lastChange = performance.now();
  for (;;) {
    const { messages, error } = await streamMessages(jsm, stream);
    const now = performance.now();
    if (messages !== undefined && firstSeen === undefined) {
      firstSeen = now;
      onFirstSeen?.();
    }
    if (messages !== undefined && messages >= target) return { firstSeen: firstSeen!, done: now };
    if (messages !== last) {
      last = messages;
      lastChange = now;
    } else if (now - lastChange > (messages === undefined ? Math.max(STALL_MS, 90_000) : STALL_MS)) {
      const holds = messages === undefined ? `does not exist (${error})` : `holds ${messages} of ${target}`;
      throw new Error(`${label}: stalled: stream ${stream} ${holds}, no change for ${Math.round((now - lastChange) / 1000)} s`);
    }
    await sleep(20);
  }
}

/** CPU of named processes (and of this one, the load generator) over an interval, as % of one core. */
function cpuMeter(pids: Record<string, number>) {
  const before = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, processCpuMs(pid)]));
  const self = process.cpuUsage();
  return (seconds: number): string => {
    const parts = Object.entries(pids).map(([name, pid]) => `${name} ${Math.round((processCpuMs(pid) - before[name]!) / 10 / seconds)}%`);
    const own = process.cpuUsage(self);
    parts.push(`loadgen ${Math.round((own.user + own.system) / 1e4 / seconds)}%`);
    return `CPU (% of one core): ${parts.join(', ')}`;
  };
}

function edgemqttConfig(natsUrl: string): Record<string, unknown> {
  return {
    // Queue limits as in persistence-qos1.ts (no subscriber here, so no queue is written).
    persistence: { sync: 'batch', maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 },
    bridge: {
      enabled: true,
      siteId: 'bench',
      nats: { servers: [natsUrl] },
      export: [{ filter: 'bench/#' }],
      stream: { name: EDGE_STREAM },
      // The default outbox limit is 1,000,000 messages; a larger backlog must not be dropped.
      ...(BACKLOG > 1_000_000 ? { outbox: { maxMessages: 0 } } : {}),
    },
  };
}

// ---------------------------------------------------------------- measurements

/** Msgs/s from the first PUBLISH until `stream` holds MESSAGES. */
async function measureQos1(label: string, mqttPort: number, jsm: JetStreamManager, stream: string, pids: Record<string, number>) {
  const publishers = await openPublishers(mqttPort, label);
  const cpu = cpuMeter(pids);
  const started = performance.now();
  const [, { done }] = await Promise.all([publishAll(publishers, MESSAGES), waitForStream(jsm, stream, MESSAGES, label)]);
  const seconds = (done - started) / 1000;
  for (const publisher of publishers) publisher.close();
  console.log(`  ${label}: ${Math.round(MESSAGES / seconds)} msg/s; ${cpu(seconds)}`);
  return MESSAGES / seconds;
}

async function roundEdgemqtt(dir: string): Promise<number> {
  const nats = await startNats(path.join(dir, 'nats'), await freePort());
  const nc = await connect({ servers: nats.url });
  try {
    const broker = await startEdgemqtt(path.join(dir, 'edgemqtt'), edgemqttConfig(nats.url));
    try {
      const jsm = await jetstreamManager(nc);
      await waitForStream(jsm, EDGE_STREAM, 0, 'edgemqtt: bridge creating its stream');
      return await measureQos1('edgemqtt → JetStream', broker.port, jsm, EDGE_STREAM, { edgemqtt: broker.pid, 'nats-server': nats.pid });
    } finally {
      await broker.stop();
    }
  } finally {
    await nc.close();
    await nats.stop();
  }
}

async function roundNatsMqtt(dir: string): Promise<number> {
  const mqttPort = await freePort();
  const nats = await startNats(dir, await freePort(), mqttPort);
  const nc = await connect({ servers: nats.url });
  try {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: NATS_STREAM, subjects: ['bench.>'] });
    return await measureQos1('nats-server MQTT → JetStream', mqttPort, jsm, NATS_STREAM, { 'nats-server': nats.pid });
  } finally {
    await nc.close();
    await nats.stop();
  }
}

/**
 * Import: MESSAGES QoS 1 messages published into the stream by another
 * "site" (nats.js, 256 publishes in flight), imported by edgemqtt and
 * delivered to a local MQTT-over-WebSocket subscriber (mqtt.js); msgs/s
 * from the first publish to the last delivery.
 */
/**
 * `count` messages into JetStream, IMPORT_WINDOW in flight, a new one per
 * PubAck: with the bridge's own publisher, as nats.js' js.publish costs the
 * generator more CPU than the daemon it measures spends on the message.
 */
async function publishWindowed(publisher: JetStreamPublisher, subject: string, h: MsgHdrs, count: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let sent = 0;
    let acknowledged = 0;
    const more = () => {
      while (sent - acknowledged < IMPORT_WINDOW && sent < count) {
        sent++;
        publisher.publish(subject, PAYLOAD, h, (error) => {
          if (error) return reject(error);
          if (++acknowledged === count) resolve();
          else more();
        });
      }
    };
    more();
  });
  publisher.close();
}

async function roundImport(dir: string): Promise<number> {
  const nats = await startNats(path.join(dir, 'nats'), await freePort());
  const nc = await connect({ servers: nats.url });
  const httpPort = await freePort();
  try {
    const broker = await startEdgemqtt(path.join(dir, 'edgemqtt'), {
      http: { host: '127.0.0.1', port: httpPort },
      // One subscriber takes everything: no inflight window or queue limit drops what it has not taken yet.
      limits: { maxInflightMessages: 0 },
      persistence: { maxQueuedMessagesPerClient: 0, maxQueuedBytesPerClient: 0 },
      bridge: { enabled: true, siteId: 'bench-b', nats: { servers: [nats.url] }, import: [{ filter: 'bench/#', qos: 1 }], stream: { name: EDGE_STREAM } },
    });
    const subscriber = mqtt.connect(`ws://127.0.0.1:${httpPort}/mqtt`, { clientId: 'bench-ws', reconnectPeriod: 0 });
    try {
      await new Promise<void>((resolve, reject) => {
        subscriber.once('connect', () => resolve());
        subscriber.once('error', reject);
      });
      await subscriber.subscribeAsync('bench/#', { qos: 1 });
      const jsm = await jetstreamManager(nc);
      await waitForStream(jsm, EDGE_STREAM, 0, 'edgemqtt: bridge creating its stream');
      // Messages stored before a new site's consumer exists are history it does not replay: wait for it.
      for (const deadline = Date.now() + 30_000; ; await sleep(20)) {
        if (await jsm.consumers.info(EDGE_STREAM, 'edgemqtt-bench-b').then(() => true, () => false)) break;
        if (Date.now() > deadline) throw new Error('edgemqtt made no import consumer within 30 s');
      }
      const js = jetstream(nc);
      const h = headers();
      h.set(HEADER.origin, 'bench-a');
      h.set(HEADER.qos, '1');
      h.set(HEADER.retain, '0');
      const mapped = topicToSubject('mqtt', TOPIC);
      if (!mapped.ok) throw new Error(`cannot map ${TOPIC} to a subject`);
      const subject = mapped.subject;
      let received = 0;
      let all!: () => void;
      const done = new Promise<void>((resolve) => (all = resolve));
      subscriber.on('message', () => {
        if (++received === MESSAGES + 1) all();
      });
      await js.publish(subject, PAYLOAD, { headers: h });
      for (const deadline = Date.now() + 30_000; received === 0; await sleep(20)) {
        if (Date.now() > deadline) throw new Error('the first imported message did not arrive within 30 s');
      }
      const cpu = cpuMeter({ edgemqtt: broker.pid, 'nats-server': nats.pid });
      const started = performance.now();
      await publishWindowed(new JetStreamPublisher(nc, { timeoutMs: 30_000 }), subject, h, MESSAGES);
      await done;
      const seconds = (performance.now() - started) / 1000;
      console.log(`  JetStream → edgemqtt → WebSocket: ${Math.round(MESSAGES / seconds)} msg/s; ${cpu(seconds)}`);
      return MESSAGES / seconds;
    } finally {
      subscriber.end(true);
      await broker.stop();
    }
  } finally {
    await nc.close();
    await nats.stop();
  }
}

interface DrainResult {
  ingest: number;
  drain: number;
  reconnectMs: number;
  rssBefore: number;
  rssOutagePeak: number;
  rssDrainPeak: number;
}

async function roundDrain(dir: string): Promise<DrainResult> {
  const natsPort = await freePort();
  const broker = await startEdgemqtt(path.join(dir, 'edgemqtt'), edgemqttConfig(`nats://127.0.0.1:${natsPort}`));
  let nats: NatsServer | undefined;
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(broker.pid))), 100);
  try {
    const rssBefore = rssMiB(broker.pid);
    peak = rssBefore;
    const publishers = await openPublishers(broker.port, 'outage');
    const outageCpu = cpuMeter({ edgemqtt: broker.pid });
    const started = performance.now();
    await publishAll(publishers, BACKLOG);
    const publishSeconds = (performance.now() - started) / 1000;
    for (const publisher of publishers) publisher.close();
    const rssOutagePeak = Math.max(peak, rssMiB(broker.pid));
    console.log(`  outage: ${BACKLOG} PUBACKed at ${Math.round(BACKLOG / publishSeconds)} msg/s; ${outageCpu(publishSeconds)}`);
    peak = rssMiB(broker.pid);

    nats = await startNats(path.join(dir, 'nats'), natsPort);
    const natsReady = performance.now();
    const nc = await connect({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      let drainCpu: ((seconds: number) => string) | undefined;
      const pids = { edgemqtt: broker.pid, 'nats-server': nats.pid };
      const { firstSeen, done } = await waitForStream(jsm, EDGE_STREAM, BACKLOG, 'drain', () => (drainCpu = cpuMeter(pids)));
      const seconds = (done - firstSeen) / 1000;
      const reconnectMs = firstSeen - natsReady;
      const rssDrainPeak = Math.max(peak, rssMiB(broker.pid));
      console.log(
        `  drain: ${Math.round(BACKLOG / seconds)} msg/s (${seconds.toFixed(1)} s, after a reconnect delay of ${(reconnectMs / 1000).toFixed(1)} s); ` +
          `${drainCpu!(seconds)}; RSS before ${rssBefore.toFixed(0)} MiB, outage peak ${rssOutagePeak.toFixed(0)} MiB, drain peak ${rssDrainPeak.toFixed(0)} MiB`,
      );
      return { ingest: BACKLOG / publishSeconds, drain: BACKLOG / seconds, reconnectMs, rssBefore, rssOutagePeak, rssDrainPeak };
    } finally {
      await nc.close();
    }
  } finally {
    clearInterval(sampler);
    await broker.stop();
    await nats?.stop();
  }
}

async function main(): Promise<void> {
  const root = (tempRoot = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-bridge-')));
  const edge: number[] = [];
  const natsMqtt: number[] = [];
  const drains: DrainResult[] = [];
  const imports: number[] = [];
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      console.log(`round ${round}`);
      for (const [name, run] of [
        ['edgemqtt', async (dir: string) => edge.push(await roundEdgemqtt(dir))],
        ['nats-mqtt', async (dir: string) => natsMqtt.push(await roundNatsMqtt(dir))],
        ['drain', async (dir: string) => drains.push(await roundDrain(dir))],
        ['import', async (dir: string) => imports.push(await roundImport(dir))],
      ] as const) {
        if (!PHASES.has(name)) continue;
        const dir = path.join(root, `${name}-${round}`);
        await run(dir);
        await rm(dir, { recursive: true, force: true });
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  const m = (pick: (d: DrainResult) => number) => median(drains.map(pick));
  if (edge.length > 0 || natsMqtt.length > 0) {
    console.log(`\n1. QoS 1 → JetStream, ${MESSAGES} messages of ${PAYLOAD.length} B, ${PUBLISHERS} publishers × window ${WINDOW} (median of ${ROUNDS})`);
    if (edge.length > 0) console.log(`  edgemqtt bridge      ${String(Math.round(median(edge))).padStart(7)} msg/s`);
    if (natsMqtt.length > 0) console.log(`  nats-server MQTT     ${String(Math.round(median(natsMqtt))).padStart(7)} msg/s   edgemqtt/nats-mqtt = ${ratio(median(edge), median(natsMqtt))}`);
  }
  if (drains.length > 0) {
    console.log(`\n2. Outbox drain after an outage, backlog ${BACKLOG} (median of ${ROUNDS})`);
    console.log(`  ingest during outage ${String(Math.round(m((d) => d.ingest))).padStart(7)} msg/s`);
    console.log(`  drain                ${String(Math.round(m((d) => d.drain))).padStart(7)} msg/s   (goal ≥ 50000: ${m((d) => d.drain) >= 50_000 ? 'met' : 'NOT met'})`);
    console.log(`  reconnect delay      ${(m((d) => d.reconnectMs) / 1000).toFixed(1).padStart(7)} s (bridge backoff, not in the drain rate)`);
    console.log(`  edgemqtt RSS         before ${m((d) => d.rssBefore).toFixed(0)} MiB, outage peak ${m((d) => d.rssOutagePeak).toFixed(0)} MiB, drain peak ${m((d) => d.rssDrainPeak).toFixed(0)} MiB`);
  }
  if (imports.length > 0) {
    console.log(`\n3. Import, JetStream → edgemqtt → a WebSocket subscriber, ${MESSAGES} messages (median of ${ROUNDS})`);
    console.log(`  import               ${String(Math.round(median(imports))).padStart(7)} msg/s`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
