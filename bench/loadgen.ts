/**
 * The load generator: a child process that runs one scenario against one
 * broker and reports a LoadResult over IPC, then exits.
 *
 * Usage (by run.ts): fork('loadgen.js', [JSON.stringify(spec)]).
 *
 * Publisher and subscribers live in this one process on raw sockets: the
 * publisher writes slices of one pre-generated buffer of PUBLISH packets, the
 * subscribers read into a reused buffer (`onread`) and only walk fixed headers.
 * Clients speak MQTT 3.1.1 or 5.0 as the spec says; the per-message work is
 * the same for both (v5 only adds a property length to skip when the latency
 * run reads its timestamp), so v5 rows do not measure a slower load generator.
 * Keeping both ends in one process lets the throughput runs keep a bounded
 * window of messages in flight (lossless, no unbounded broker queues) and the
 * latency run compare timestamps on one clock. Its CPU time is reported next
 * to the broker's so a saturated load generator is visible.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import {
  connectPacket,
  disconnectPacket,
  FILTER,
  PACKET_CONNACK,
  PACKET_PUBLISH,
  PACKET_SUBACK,
  PacketReader,
  percentile,
  publishPayloadStart,
  processCpuMs,
  processRssKb,
  publishPacket,
  subackCode,
  subscribePacket,
  TOPIC,
  WebSocketReader,
  webSocketFrame,
  webSocketUpgradeRequest,
  type BrokerEndpoint,
  type ClientProtocol,
  type LatencySpec,
  type LoadResult,
  type LoadSpec,
  type PacketHandler,
  type ThroughputSpec,
  type Transport,
} from './common.js';

interface Client {
  socket: net.Socket;
  level: ClientProtocol['level'];
  /** Sends MQTT bytes, framed for WebSocket when needed. */
  send(bytes: Buffer): void;
}

let finishing = false;

/**
 * How long a client may wait for its CONNACK (or SUBACK). A broker that takes
 * the CONNECT but never answers (say, one that does not follow a level-5
 * client past its CONNECT) fails the run instead of hanging it.
 */
const HANDSHAKE_TIMEOUT_MS = 15_000;

/** Reports the error to the orchestrator and exits. */
function fail(error: unknown): void {
  if (finishing) return;
  finishing = true;
  const message = error instanceof Error ? error.message : String(error);
  if (process.send) process.send({ error: message }, () => process.exit(1));
  else console.error(message);
  setTimeout(() => process.exit(1), 1000);
}

/** Sockets paused after a read, resumed together on the next pacing tick. */
const paused = new Set<net.Socket>();
let pacingTimer: NodeJS.Timeout | undefined;

function startPacing(intervalMs: number): void {
  pacingTimer = setInterval(() => {
    for (const socket of paused) socket.resume();
    paused.clear();
  }, intervalMs);
}

/**
 * Connects, sends CONNECT (and SUBSCRIBE when `filter` is given) at protocol
 * `level` and resolves once CONNACK (or a granting SUBACK) arrives.
 * `onPacket` sees every later packet; `afterRead` runs once per socket read,
 * after its packets.
 */
function openClient(
  endpoint: BrokerEndpoint,
  transport: Transport,
  clientId: string,
  level: ClientProtocol['level'],
  onPacket: PacketHandler,
  afterRead: () => void,
  filter?: string,
  readBufferBytes = 64 * 1024,
): Promise<Client> {
  return new Promise((resolve, reject) => {
    const awaited = filter ? PACKET_SUBACK : PACKET_CONNACK;
    let ready = false;
    const handshakeTimer = setTimeout(() => {
      reject(new Error(`${clientId}: no ${filter ? 'SUBACK' : 'CONNACK'} within ${HANDSHAKE_TIMEOUT_MS / 1000} s (MQTT level ${level})`));
    }, HANDSHAKE_TIMEOUT_MS);
    const handler: PacketHandler = (type, buf, start, end) => {
      if (ready) onPacket(type, buf, start, end);
      else if (type === PACKET_CONNACK && buf[start + 1] !== 0) {
        // The second byte is the return code (3.1.1) or the reason code (v5).
        reject(new Error(`${clientId}: CONNACK ${level === 5 ? 'reason' : 'return'} code 0x${(buf[start + 1] as number).toString(16)}`));
      } else if (type === PACKET_SUBACK && subackCode(buf, end) >= 0x80) {
        reject(new Error(`${clientId}: SUBACK refused ${filter} with code 0x${subackCode(buf, end).toString(16)}`));
      } else if (type === awaited) {
        ready = true;
        clearTimeout(handshakeTimer);
        resolve(client);
      } else if (type !== PACKET_CONNACK) {
        reject(new Error(`${clientId}: unexpected packet type ${type} before ${filter ? 'SUBACK' : 'CONNACK'}`));
      }
    };
    const mqttReader = new PacketReader(handler);
    const hello = filter
      ? Buffer.concat([connectPacket(clientId, level), subscribePacket(filter, level)])
      : connectPacket(clientId, level);
    const wsReader =
      transport === 'ws'
        ? new WebSocketReader(
            (buf, start, end) => mqttReader.push(buf, start, end),
            () => client.send(hello),
          )
        : undefined;
    const readBuffer = Buffer.allocUnsafe(readBufferBytes);
    const socket = net.connect({
      host: endpoint.host,
      port: transport === 'tcp' ? endpoint.tcpPort : endpoint.wsPort,
      noDelay: true,
      onread: {
        buffer: readBuffer,
        callback(bytes) {
          try {
            if (wsReader) wsReader.push(readBuffer, 0, bytes);
            else mqttReader.push(readBuffer, 0, bytes);
          } catch (error) {
            fail(error);
            return false;
          }
          if (ready) {
            afterRead();
            if (pacingTimer !== undefined) {
              paused.add(socket);
              return false;
            }
          }
          return true;
        },
      },
    });
    const client: Client = {
      socket,
      level,
      send: transport === 'tcp' ? (bytes) => socket.write(bytes) : (bytes) => socket.write(webSocketFrame(bytes)),
    };
    socket.once('connect', () => {
      if (transport === 'tcp') client.send(hello);
      else socket.write(webSocketUpgradeRequest(endpoint.host, endpoint.wsPort, endpoint.wsPath));
    });
    socket.on('error', (error) => (ready ? fail(new Error(`${clientId}: ${error.message}`)) : reject(error)));
    socket.on('close', () => {
      if (!finishing) fail(new Error(`${clientId}: the broker closed the connection`));
    });
  });
}

function closeAll(clients: Client[]): void {
  finishing = true;
  clearInterval(pacingTimer);
  const bye = { 4: disconnectPacket(4), 5: disconnectPacket(5) };
  for (const client of clients) {
    client.send(bye[client.level]);
    client.socket.end();
  }
}

function cpuSnapshot(brokerPid: number): { wall: number; broker: number; loadgen: number } {
  const usage = process.cpuUsage();
  return { wall: performance.now(), broker: processCpuMs(brokerPid), loadgen: (usage.user + usage.system) / 1000 };
}

async function runThroughput(spec: ThroughputSpec): Promise<LoadResult> {
  const { endpoint, subscribers: count, window, protocol } = spec;
  const total = spec.warmupMessages + spec.messages;
  const startMark = spec.warmupMessages * count;
  const endMark = total * count;
  const received = new Float64Array(count);
  let delivered = 0;
  let published = 0;
  let reads = 0;
  let readsAtStart = 0;
  let blocked = false;
  let start: ReturnType<typeof cpuSnapshot> | undefined;
  let deliveredAtStart = 0;
  let publishedAtStart = 0;
  let done: (timedOut: boolean) => void = () => {};
  const finished = new Promise<boolean>((resolve) => (done = resolve));

  const payload = Buffer.alloc(spec.payloadBytes, 0x5a);
  const packet = publishPacket(TOPIC, payload, protocol);
  const batch = Buffer.concat(new Array<Buffer>(window).fill(packet));
  // Refill only once a quarter of the window is free, so writes stay large.
  const lowWater = Math.max(1, Math.floor(window / 4));
  let publisher: Client | undefined;

  const slowest = (): number => {
    let min = received[0] as number;
    for (let i = 1; i < count; i++) if ((received[i] as number) < min) min = received[i] as number;
    return min;
  };
  const pump = (): void => {
    if (!publisher || blocked || published >= total) return;
    const inFlight = published - slowest();
    const free = Math.min(window - inFlight, total - published);
    if (free <= 0 || (free < lowWater && inFlight > 0 && published + free < total)) return;
    const ok = publisher.socket.write(batch.subarray(0, free * packet.length));
    published += free;
    if (!ok) {
      blocked = true;
      publisher.socket.once('drain', () => {
        blocked = false;
        pump();
      });
    }
  };
  const afterRead = (): void => {
    reads++;
    if (start === undefined && delivered >= startMark) {
      start = cpuSnapshot(endpoint.pid);
      deliveredAtStart = delivered;
      publishedAtStart = published;
      readsAtStart = reads;
    }
    if (delivered >= endMark) done(false);
    else pump();
  };

  const subscribers = await Promise.all(
    Array.from({ length: count }, (_, index) =>
      openClient(
        endpoint,
        spec.subTransport,
        `bench-sub-${process.pid}-${index}`,
        protocol.level,
        (type) => {
          if (type === PACKET_PUBLISH) {
            received[index] = (received[index] as number) + 1;
            delivered++;
          }
        },
        afterRead,
        FILTER,
      ),
    ),
  );
  publisher = await openClient(endpoint, 'tcp', `bench-pub-${process.pid}`, protocol.level, () => {}, () => {}, undefined, 4096);
  const timer = setTimeout(() => done(true), spec.timeoutMs);
  if (spec.readPacingMs > 0) startPacing(spec.readPacingMs);
  if (startMark === 0) afterRead();
  pump();
  const timedOut = await finished;
  clearTimeout(timer);
  const end = cpuSnapshot(endpoint.pid);
  const begin = start ?? end;
  const result: LoadResult = {
    kind: 'throughput',
    published: published - publishedAtStart,
    delivered: delivered - deliveredAtStart,
    expectedDeliveries: spec.messages * count,
    elapsedMs: end.wall - begin.wall,
    brokerCpuMs: end.broker - begin.broker,
    loadgenCpuMs: end.loadgen - begin.loadgen,
    brokerRssKb: processRssKb(endpoint.pid),
    subscriberReads: reads - readsAtStart,
    lost: endMark - delivered,
    timedOut,
  };
  closeAll([...subscribers, publisher]);
  return result;
}

async function runLatency(spec: LatencySpec): Promise<LoadResult> {
  const { endpoint, rate, protocol } = spec;
  const { level } = protocol;
  const warmup = Math.round(rate * spec.warmupSeconds);
  const measured = Math.round(rate * spec.seconds);
  const total = warmup + measured;
  const latencies = new Float64Array(measured);
  let recorded = 0;
  let received = 0;
  let reads = 0;
  let start: ReturnType<typeof cpuSnapshot> | undefined;
  let done: (timedOut: boolean) => void = () => {};
  const finished = new Promise<boolean>((resolve) => (done = resolve));

  // Payload: send time (float64, ms on this process's performance clock), sequence number, padding.
  const template = publishPacket(TOPIC, Buffer.alloc(Math.max(12, spec.payloadBytes), 0x5a), protocol);
  const payloadOffset = template.length - Math.max(12, spec.payloadBytes);

  const subscriber = await openClient(
    endpoint,
    spec.subTransport,
    `bench-lat-sub-${process.pid}`,
    level,
    (type, buf, bodyStart) => {
      if (type !== PACKET_PUBLISH) return;
      const now = performance.now();
      const payloadStart = publishPayloadStart(buf, bodyStart, level);
      const sentAt = buf.readDoubleLE(payloadStart);
      const sequence = buf.readUInt32LE(payloadStart + 8);
      received++;
      if (sequence >= warmup && recorded < measured) latencies[recorded++] = now - sentAt;
      if (received >= total) done(false);
    },
    () => reads++,
    FILTER,
  );
  const publisher = await openClient(endpoint, 'tcp', `bench-lat-pub-${process.pid}`, level, () => {}, () => {}, undefined, 4096);

  let sent = 0;
  const sendStart = performance.now();
  const ticker = setInterval(() => {
    const due = Math.min(total, Math.floor(((performance.now() - sendStart) * rate) / 1000));
    if (sent >= due) return;
    publisher.socket.cork();
    while (sent < due) {
      if (sent === warmup) start = cpuSnapshot(endpoint.pid);
      const message = Buffer.allocUnsafe(template.length);
      template.copy(message);
      message.writeDoubleLE(performance.now(), payloadOffset);
      message.writeUInt32LE(sent, payloadOffset + 8);
      publisher.socket.write(message);
      sent++;
    }
    publisher.socket.uncork();
    if (sent >= total) {
      clearInterval(ticker);
      // Whatever has not arrived a second after the last send counts as lost.
      setTimeout(() => done(false), 1000).unref();
    }
  }, 1);
  const timer = setTimeout(() => done(true), spec.timeoutMs);
  const timedOut = await finished;
  clearInterval(ticker);
  clearTimeout(timer);
  const end = cpuSnapshot(endpoint.pid);
  const begin = start ?? end;
  const sorted = latencies.slice(0, recorded).sort();
  const result: LoadResult = {
    kind: 'latency',
    published: Math.max(0, sent - warmup),
    delivered: recorded,
    expectedDeliveries: measured,
    elapsedMs: end.wall - begin.wall,
    brokerCpuMs: end.broker - begin.broker,
    loadgenCpuMs: end.loadgen - begin.loadgen,
    brokerRssKb: processRssKb(endpoint.pid),
    subscriberReads: reads,
    lost: total - received,
    timedOut,
    latency: {
      count: recorded,
      lost: measured - recorded,
      p50Ms: percentile(sorted, 0.5),
      p90Ms: percentile(sorted, 0.9),
      p99Ms: percentile(sorted, 0.99),
      maxMs: sorted.length ? (sorted[sorted.length - 1] as number) : Number.NaN,
    },
  };
  closeAll([subscriber, publisher]);
  return result;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? 'null') as LoadSpec | null;
  if (!spec) throw new Error('usage: loadgen.js <spec JSON>');
  const result = spec.kind === 'throughput' ? await runThroughput(spec) : await runLatency(spec);
  process.send?.({ result }, () => process.exit(0));
  if (!process.send) {
    console.log(JSON.stringify(result));
    process.exit(0);
  }
}

// Orphaned (the orchestrator died): stop at once.
process.on('disconnect', () => process.exit(1));
main().catch(fail);
