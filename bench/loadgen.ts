/**
 * The load generator: a child process that runs one scenario against one
 * broker and reports a LoadResult over IPC, then exits (an idle run reports
 * once its connections are open and keeps them until the orchestrator
 * disconnects).
 *
 * Usage (by run.ts): fork('loadgen.js', [JSON.stringify(spec)]).
 *
 * Publishers and subscribers live in this one process on raw sockets: each
 * publisher writes slices of one pre-generated buffer of PUBLISH packets (at
 * QoS 1 a copy with fresh Packet Identifiers), and the subscribers read into
 * one large reused buffer per socket (`onread`: a read takes everything the
 * kernel holds, up to the buffer's size, never one packet per syscall) and
 * only walk fixed headers and the two topic bytes that name the publisher.
 * Clients speak MQTT 3.1.1 or 5.0 as the spec says; the per-message work is
 * the same for both (v5 only adds a property length to skip when the latency
 * run reads its timestamp), so v5 rows do not measure a slower load generator.
 * Keeping both ends in one process lets the throughput runs keep a bounded
 * window of messages in flight per publisher (closed loop, lossless, no
 * unbounded broker queues) and the latency run compare timestamps on one
 * clock; on a 2-core machine the broker takes one core and this process the
 * other. Its CPU time is reported next to the broker's so a saturated load
 * generator is visible.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  connectPacket,
  disconnectPacket,
  FILTER,
  PACKET_CONNACK,
  PACKET_PUBACK,
  PACKET_PUBLISH,
  PACKET_SUBACK,
  PacketReader,
  percentile,
  publishIdOffset,
  publisherOf,
  publisherTopic,
  publishPayloadStart,
  processCpuMs,
  processRssKb,
  publishPacket,
  PUBACK_BYTES,
  subackCode,
  subscribePacket,
  WebSocketReader,
  webSocketFrame,
  webSocketUpgradeRequest,
  type BrokerEndpoint,
  type ClientProtocol,
  type IdleResult,
  type IdleSpec,
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
  qos: 0 | 1 = 0,
): Promise<Client> {
  return new Promise((resolve, reject) => {
    const awaited = filter ? PACKET_SUBACK : PACKET_CONNACK;
    let ready = false;
    const handshakeTimer = setTimeout(() => {
      reject(new Error(`${clientId}: no ${filter ? 'SUBACK' : 'CONNACK'} within ${HANDSHAKE_TIMEOUT_MS / 1000} s (MQTT level ${level})`));
    }, HANDSHAKE_TIMEOUT_MS);
    const handler: PacketHandler = (type, buf, start, end, flags) => {
      if (ready) onPacket(type, buf, start, end, flags);
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
      ? Buffer.concat([connectPacket(clientId, level), subscribePacket(filter, level, qos)])
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
  const { endpoint, publishers: pubCount, subscribers: subCount, window, protocol, qos } = spec;
  // received[s * pubCount + p]: messages of publisher p that subscriber s has received.
  const received = new Float64Array(subCount * pubCount);
  const published = new Float64Array(pubCount);
  const unacked = new Int32Array(pubCount);
  const blocked = new Uint8Array(pubCount);
  let delivered = 0;
  let reads = 0;
  let publishing = false;

  const payload = Buffer.alloc(spec.payloadBytes, 0x5a);
  // Every topic has the same length, so every packet has the same size.
  const packets = Array.from({ length: pubCount }, (_, p) => publishPacket(publisherTopic(p), payload, protocol, qos));
  const packetLength = (packets[0] as Buffer).length;
  const batches = packets.map((packet) => Buffer.concat(new Array<Buffer>(window).fill(packet)));
  const idOffset = publishIdOffset(packets[0] as Buffer);
  const nextId = new Int32Array(pubCount);
  // Refill only once a quarter of the window (QoS 1: of the PUBACK window) is
  // free, so writes stay large: one write per publisher per refill, not per message.
  const lowWater = Math.max(1, Math.floor((qos === 0 ? window : Math.min(window, spec.inflight)) / 4));
  const pubClients: Client[] = [];

  const slowest = (p: number): number => {
    let min = received[p] as number;
    for (let s = 1; s < subCount; s++) {
      const value = received[s * pubCount + p] as number;
      if (value < min) min = value;
    }
    return min;
  };
  const pump = (p: number): void => {
    const client = pubClients[p];
    if (!publishing || !client || blocked[p]) return;
    const inFlight = (published[p] as number) - slowest(p);
    let free = window - inFlight;
    // QoS 1: the publisher's own flow control, PUBLISHes not yet PUBACKed.
    if (qos === 1) free = Math.min(free, spec.inflight - (unacked[p] as number));
    const waiting = qos === 0 ? inFlight : (unacked[p] as number);
    if (free <= 0 || (free < lowWater && waiting > 0)) return;
    let bytes: Buffer;
    if (qos === 0) {
      bytes = (batches[p] as Buffer).subarray(0, free * packetLength);
    } else {
      // A fresh buffer: the socket may still hold the previous one.
      bytes = Buffer.allocUnsafe(free * packetLength);
      (batches[p] as Buffer).copy(bytes, 0, 0, bytes.length);
      for (let i = 0; i < free; i++) {
        // PUBACKs come in PUBLISH order [MQTT-4.6.0-2], and at most `inflight`
        // are outstanding, so cycling through 1..65535 never reuses a live id.
        const id = ((nextId[p] as number) % 65535) + 1;
        nextId[p] = id;
        bytes.writeUInt16BE(id, i * packetLength + idOffset);
      }
      unacked[p] = (unacked[p] as number) + free;
    }
    published[p] = (published[p] as number) + free;
    if (!client.socket.write(bytes)) {
      blocked[p] = 1;
      client.socket.once('drain', () => {
        blocked[p] = 0;
        pump(p);
      });
    }
  };
  // Every read of the event-loop turn may free room; refill once, after them all.
  let pumpScheduled = false;
  const pumpAll = (): void => {
    pumpScheduled = false;
    for (let p = 0; p < pubCount; p++) pump(p);
  };
  const schedulePumps = (): void => {
    if (pumpScheduled) return;
    pumpScheduled = true;
    setImmediate(pumpAll);
  };

  const subscribers = await Promise.all(
    Array.from({ length: subCount }, (_, s) => {
      // QoS 1: PUBACKs of one read, written together after it.
      let acks = Buffer.allocUnsafe(qos === 1 ? 64 * 1024 : 0);
      let ackLength = 0;
      let client: Client | undefined;
      const onPacket: PacketHandler = (type, buf, bodyStart, _bodyEnd, flags) => {
        if (type !== PACKET_PUBLISH) return;
        const index = s * pubCount + publisherOf(buf, bodyStart);
        received[index] = (received[index] as number) + 1;
        delivered++;
        if ((flags & 0x06) !== 0) {
          if (ackLength + PUBACK_BYTES > acks.length) {
            const grown = Buffer.allocUnsafe(acks.length * 2);
            acks.copy(grown, 0, 0, ackLength);
            acks = grown;
          }
          const idAt = bodyStart + 2 + buf.readUInt16BE(bodyStart);
          acks[ackLength] = 0x40;
          acks[ackLength + 1] = 0x02;
          acks[ackLength + 2] = buf[idAt] as number;
          acks[ackLength + 3] = buf[idAt + 1] as number;
          ackLength += PUBACK_BYTES;
        }
      };
      const afterRead = (): void => {
        reads++;
        if (ackLength > 0 && client) {
          client.send(Buffer.from(acks.subarray(0, ackLength)));
          ackLength = 0;
        }
        schedulePumps();
      };
      return openClient(
        endpoint,
        spec.subTransport,
        `bench-sub-${process.pid}-${s}`,
        protocol.level,
        onPacket,
        afterRead,
        FILTER,
        spec.readBufferBytes,
        qos,
      ).then((opened) => (client = opened));
    }),
  );
  for (let p = 0; p < pubCount; p++) {
    pubClients.push(
      await openClient(
        endpoint,
        'tcp',
        `bench-pub-${process.pid}-${p}`,
        protocol.level,
        (type) => {
          if (type === PACKET_PUBACK) unacked[p] = (unacked[p] as number) - 1;
        },
        schedulePumps,
        undefined,
        16 * 1024,
      ),
    );
  }
  if (spec.readPacingMs > 0) startPacing(spec.readPacingMs);
  publishing = true;
  pumpAll();

  await sleep(spec.warmupMs);
  const begin = cpuSnapshot(endpoint.pid);
  const deliveredAtBegin = delivered;
  const publishedAtBegin = published.reduce((sum, n) => sum + n, 0);
  const readsAtBegin = reads;
  await sleep(spec.measureMs);
  const end = cpuSnapshot(endpoint.pid);
  const deliveredAtEnd = delivered;
  const publishedAtEnd = published.reduce((sum, n) => sum + n, 0);
  const readsAtEnd = reads;
  publishing = false;

  // Drain: every message published must reach every subscriber; what has not
  // arrived within a few seconds counts as lost.
  const expected = publishedAtEnd * subCount;
  const deadline = performance.now() + Math.min(spec.timeoutMs, 5000);
  while (delivered < expected && performance.now() < deadline) await sleep(10);
  const result: LoadResult = {
    kind: 'throughput',
    published: publishedAtEnd - publishedAtBegin,
    delivered: deliveredAtEnd - deliveredAtBegin,
    expectedDeliveries: (publishedAtEnd - publishedAtBegin) * subCount,
    elapsedMs: end.wall - begin.wall,
    brokerCpuMs: end.broker - begin.broker,
    loadgenCpuMs: end.loadgen - begin.loadgen,
    brokerRssKb: processRssKb(endpoint.pid),
    subscriberReads: readsAtEnd - readsAtBegin,
    lost: expected - delivered,
    // No delivery at all in the measured interval: the broker stalled.
    timedOut: deliveredAtEnd === deliveredAtBegin,
  };
  closeAll([...subscribers, ...pubClients]);
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
  const template = publishPacket(publisherTopic(0), Buffer.alloc(Math.max(12, spec.payloadBytes), 0x5a), protocol);
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

/**
 * Opens the idle connections, `concurrency` at a time (a burst of a thousand
 * SYNs would overflow a listen backlog and measure SYN retransmits), reports,
 * and keeps them open until the orchestrator disconnects.
 */
async function runIdle(spec: IdleSpec): Promise<void> {
  const started = performance.now();
  const clients: Client[] = [];
  const timer = setTimeout(() => fail(new Error(`idle: ${clients.length} of ${spec.connections} connected in ${spec.timeoutMs} ms`)), spec.timeoutMs);
  while (clients.length < spec.connections) {
    const count = Math.min(spec.concurrency, spec.connections - clients.length);
    const first = clients.length;
    const opened = await Promise.all(
      Array.from({ length: count }, (_, i) =>
        openClient(spec.endpoint, 'tcp', `bench-idle-${process.pid}-${first + i}`, spec.protocol.level, () => {}, () => {}, undefined, 256),
      ),
    );
    clients.push(...opened);
  }
  clearTimeout(timer);
  const idle: IdleResult = { connected: clients.length, elapsedMs: performance.now() - started };
  if (process.send) process.send({ idle });
  else console.log(JSON.stringify(idle));
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? 'null') as LoadSpec | IdleSpec | null;
  if (!spec) throw new Error('usage: loadgen.js <spec JSON>');
  if (spec.kind === 'idle') return runIdle(spec);
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
