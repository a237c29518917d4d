/**
 * The load generator of scale.ts: thousands of MQTT clients in one process,
 * on raw sockets, cheap enough that the broker, not this process, is what is
 * measured. scale.ts runs two or more of these at once, each under its own
 * raised limit on open files.
 *
 * Per client: one socket sharing the process's one read buffer (`onread`),
 * a fixed-header reader with a small aside buffer, and pre-encoded packets.
 * Publishers are ticked by one 10 ms timer for the whole process (each
 * publishes once a second, spread evenly over the second); a WebSocket
 * frame is masked with the all-zero key (RFC 6455 5.3 asks the client for an
 * unpredictable key, but the server unmasks every frame the same way
 * whatever the key, so its cost is unchanged).
 *
 * Protocol with the orchestrator (IPC): the spec in argv; the child sends
 * {type:'ready', …} once its clients are connected (a storm connects only
 * on {type:'go'}); on {type:'go'} it runs and sends {type:'result', …}; on
 * {type:'close'} it disconnects and exits.
 */
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { generate } from 'mqtt-packet';
import { PACKET_CONNACK, PACKET_PUBLISH, PACKET_SUBACK, PacketReader, percentile, publishPayloadStart, subackCode, WebSocketReader, webSocketHeader, webSocketUpgradeRequest, type BrokerEndpoint, type Transport } from './common.js';

export interface ScaleSpec {
  mode: 'steady' | 'idle' | 'storm';
  endpoint: BrokerEndpoint;
  /** This process's index among the load generators (in topics, client ids and payloads). */
  index: number;
  /** Clients that publish (steady) or just stay connected (idle, storm). */
  clients: number;
  /** Share of them on WebSocket, 0..1; the rest on TCP. */
  wsShare: number;
  /** steady: wildcard subscribers on `scale/#` in this process (alternately TCP and WebSocket). */
  subscribers: number;
  keepaliveSec: number;
  /** steady: seconds of publishing before and while measuring. */
  warmupSeconds: number;
  seconds: number;
  payloadBytes: number;
  /** Connections being opened at once (not for a storm, which opens them all). */
  connectConcurrency: number;
  handshakeTimeoutMs: number;
}

export interface ScaleResult {
  index: number;
  connected: number;
  failed: number;
  /** Why clients failed, counted. */
  failures: Record<string, number>;
  /** storm: ms from 'go' to each CONNACK, p50 / p99 / last. */
  connackMs?: { p50: number; p99: number; max: number };
  /** storm: the median of the same, per transport. */
  connackP50Ms?: Record<Transport, number>;
  /** steady: messages published while measuring. */
  published?: number;
  /** steady: deliveries of this process's measured messages to this process's subscribers, and how many were expected. */
  delivered?: number;
  expected?: number;
  /** steady: deliveries of any message to this process's subscribers over the measured interval (all generators' messages). */
  deliveriesAll?: number;
  latencyMs?: { p50: number; p99: number; max: number; count: number };
  loadgenCpuMs: number;
  elapsedMs: number;
}

const LATENCY_BUCKET_MS = 0.01;
/** 10 µs buckets up to 10 s; slower ones land in the last. */
const LATENCY_BUCKETS = 1_000_000;

interface LightClient {
  socket: net.Socket;
  transport: Transport;
  reader: PacketReader;
  ws: WebSocketReader | undefined;
}

/** One read buffer for every socket: onread callbacks run one at a time. */
const readBuffer = Buffer.allocUnsafe(256 * 1024);

let closing = false;

function packetBytes(packet: Parameters<typeof generate>[0]): Buffer {
  return generate(packet, { protocolVersion: 4 });
}

/** The masking key of every frame this process sends: zero, so the payload goes unmasked (XOR with 0) and uncopied. */
const ZERO_MASK = Buffer.alloc(4);

/** A client-to-server binary frame with the zero mask. */
function frame(payload: Buffer): Buffer {
  return Buffer.concat([webSocketHeader(payload.length, true), ZERO_MASK, payload]);
}

/**
 * Opens one client: CONNECT (and SUBSCRIBE when `filter` is given), resolved
 * once CONNACK (or SUBACK) arrives; rejected with a short reason otherwise.
 * `onPublish` sees each later PUBLISH.
 */
function openClient(
  spec: ScaleSpec,
  transport: Transport,
  clientId: string,
  filter: string | undefined,
  onPublish: ((buf: Buffer, bodyStart: number) => void) | undefined,
): Promise<LightClient> {
  const { endpoint } = spec;
  return new Promise((resolve, reject) => {
    let ready = false;
    let settled = false;
    const settle = (error: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error === null) resolve(client);
      else {
        reject(new Error(error));
        socket.destroy();
      }
    };
    const timer = setTimeout(() => settle('timeout'), spec.handshakeTimeoutMs);
    const awaited = filter ? PACKET_SUBACK : PACKET_CONNACK;
    const reader = new PacketReader((type, buf, start, end) => {
      if (ready) {
        if (type === PACKET_PUBLISH && onPublish) onPublish(buf, start);
        return;
      }
      if (type === PACKET_CONNACK && buf[start + 1] !== 0) settle(`connack-refused-${buf[start + 1] as number}`);
      else if (type === PACKET_SUBACK && subackCode(buf, end) >= 0x80) settle('suback-refused');
      else if (type === awaited) {
        ready = true;
        settle(null);
      }
    }, 256);
    const hello = Buffer.concat([
      packetBytes({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: spec.keepaliveSec }),
      ...(filter ? [packetBytes({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 0 }] })] : []),
    ]);
    const ws =
      transport === 'ws'
        ? new WebSocketReader(
            (buf, start, end) => reader.push(buf, start, end),
            () => socket.write(frame(hello)),
          )
        : undefined;
    const socket = net.connect({
      host: endpoint.host,
      port: transport === 'tcp' ? endpoint.tcpPort : endpoint.wsPort,
      noDelay: true,
      onread: {
        buffer: readBuffer,
        callback(bytes) {
          try {
            if (ws) ws.push(readBuffer, 0, bytes);
            else reader.push(readBuffer, 0, bytes);
          } catch (error) {
            // A refused WebSocket upgrade (HTTP 429, 503).
            const status = /HTTP\/1\.1 (\d+)/.exec(String((error as Error).message))?.[1];
            settle(status ? `http-${status}` : 'bad-bytes');
            return false;
          }
          return true;
        },
      },
    });
    const client: LightClient = { socket, transport, reader, ws };
    socket.once('connect', () => {
      if (transport === 'tcp') socket.write(hello);
      else socket.write(webSocketUpgradeRequest(endpoint.host, endpoint.wsPort, endpoint.wsPath));
    });
    socket.on('error', (error: NodeJS.ErrnoException) => settle(error.code ?? 'error'));
    socket.on('close', () => {
      if (!ready) settle('closed');
      else if (!closing) lostAfterConnect++;
    });
  });
}

/** Connections the broker closed after their CONNACK (none expected). */
let lostAfterConnect = 0;

/** Opens `count` clients with at most `concurrency` handshakes at a time (Infinity: all at once). */
async function openMany(
  count: number,
  concurrency: number,
  open: (i: number) => Promise<LightClient>,
  onConnack?: (i: number) => void,
): Promise<{ clients: (LightClient | undefined)[]; failures: Record<string, number> }> {
  const clients = new Array<LightClient | undefined>(count);
  const failures: Record<string, number> = {};
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      try {
        clients[i] = await open(i);
        onConnack?.(i);
      } catch (error) {
        const reason = (error as Error).message;
        failures[reason] = (failures[reason] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(count, concurrency) }, worker));
  return { clients, failures };
}

const transportOf = (spec: ScaleSpec, i: number): Transport => (i < Math.round(spec.clients * spec.wsShare) ? 'ws' : 'tcp');

function cpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

function nextMessage(): Promise<{ type: string }> {
  return new Promise((resolve) => process.once('message', (message: { type: string }) => resolve(message)));
}

async function runStorm(spec: ScaleSpec): Promise<{ result: ScaleResult; clients: (LightClient | undefined)[] }> {
  process.send?.({ type: 'ready' });
  await nextMessage();
  const cpu0 = cpuMs();
  const go = performance.now();
  // ms from 'go' to each CONNACK, by transport.
  const byTransport: Record<Transport, number[]> = { tcp: [], ws: [] };
  const { clients, failures } = await openMany(
    spec.clients,
    Infinity,
    (i) => openClient(spec, transportOf(spec, i), `storm-${spec.index}-${i}`, undefined, undefined),
    (i) => byTransport[transportOf(spec, i)].push(performance.now() - go),
  );
  const elapsedMs = performance.now() - go;
  // BENCH_STORM_DUMP (see scale.ts): every CONNACK's time, for the shape of the storm beyond its percentiles.
  if (process.env.BENCH_STORM_DUMP) writeFileSync(`${process.env.BENCH_STORM_DUMP}-${spec.index}-${process.pid}.json`, JSON.stringify(byTransport));
  const sortedOf = (values: number[]) => Float64Array.from(values).sort();
  const sorted = sortedOf([...byTransport.tcp, ...byTransport.ws]);
  const done = sorted.length;
  return {
    clients,
    result: {
      index: spec.index,
      connected: done,
      failed: spec.clients - done,
      failures,
      connackMs: { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: sorted.length ? (sorted[sorted.length - 1] as number) : Number.NaN },
      connackP50Ms: { tcp: percentile(sortedOf(byTransport.tcp), 0.5), ws: percentile(sortedOf(byTransport.ws), 0.5) },
      loadgenCpuMs: cpuMs() - cpu0,
      elapsedMs,
    },
  };
}

async function runIdle(spec: ScaleSpec): Promise<{ result: ScaleResult; clients: (LightClient | undefined)[] }> {
  const cpu0 = cpuMs();
  const start = performance.now();
  const { clients, failures } = await openMany(spec.clients, spec.connectConcurrency, (i) =>
    openClient(spec, transportOf(spec, i), `idle-${spec.index}-${i}`, undefined, undefined),
  );
  const connected = clients.filter(Boolean).length;
  const result: ScaleResult = {
    index: spec.index,
    connected,
    failed: spec.clients - connected,
    failures,
    loadgenCpuMs: cpuMs() - cpu0,
    elapsedMs: performance.now() - start,
  };
  process.send?.({ type: 'ready', connected });
  await nextMessage();
  return { clients, result };
}

/**
 * Payload: send time (float64 LE, ms on this process's performance clock),
 * the generator's index (uint16), measured flag (uint8), padding. Latency is
 * recorded only for this process's own messages, so both ends use one clock.
 */
async function runSteady(spec: ScaleSpec): Promise<{ result: ScaleResult; clients: (LightClient | undefined)[] }> {
  const histogram = new Uint32Array(LATENCY_BUCKETS);
  let maxLatency = 0;
  let latencyCount = 0;
  let delivered = 0;
  let deliveriesAll = 0;
  let measuring = false;
  const onPublish = (buf: Buffer, bodyStart: number): void => {
    const now = performance.now();
    const at = publishPayloadStart(buf, bodyStart, 4);
    if (measuring) deliveriesAll++;
    if (buf.readUInt16LE(at + 8) !== spec.index || buf[at + 10] !== 1) return;
    delivered++;
    const latency = now - buf.readDoubleLE(at);
    if (latency > maxLatency) maxLatency = latency;
    histogram[Math.min(LATENCY_BUCKETS - 1, Math.floor(latency / LATENCY_BUCKET_MS))]!++;
    latencyCount++;
  };
  const subs = await openMany(spec.subscribers, spec.subscribers, (i) =>
    openClient(spec, i % 2 === 0 ? 'tcp' : 'ws', `scale-sub-${spec.index}-${i}`, 'scale/#', onPublish),
  );
  const subscribers = subs.clients.filter((c): c is LightClient => c !== undefined);
  if (subscribers.length < spec.subscribers) throw new Error(`subscribers failed: ${JSON.stringify(subs.failures)}`);
  const pubs = await openMany(spec.clients, spec.connectConcurrency, (i) =>
    openClient(spec, transportOf(spec, i), `scale-pub-${spec.index}-${i}`, undefined, undefined),
  );
  const publishers = pubs.clients;
  const connected = publishers.filter(Boolean).length;

  // Pre-encoded per publisher: its PUBLISH (framed for WebSocket), and where the payload starts.
  const templates = publishers.map((client, i) => {
    if (!client) return undefined;
    const payload = Buffer.alloc(Math.max(16, spec.payloadBytes), 0x5a);
    payload.writeUInt16LE(spec.index, 8);
    const packet = packetBytes({ cmd: 'publish', topic: `scale/${spec.index}/${i}`, payload, qos: 0, retain: false, dup: false });
    const bytes = client.transport === 'ws' ? frame(packet) : packet;
    return { bytes, payloadAt: bytes.length - payload.length };
  });
  // Publisher i sends in 10 ms slot i % 100 of every second.
  const slots = Array.from({ length: 100 }, () => [] as number[]);
  publishers.forEach((client, i) => client && slots[i % 100]!.push(i));

  process.send?.({ type: 'ready', connected });
  await nextMessage();

  let published = 0;
  let cpu0 = 0;
  let measureStart = 0;
  const start = performance.now();
  const warmupEnd = start + spec.warmupSeconds * 1000;
  const end = warmupEnd + spec.seconds * 1000;
  let slot = 0;
  await new Promise<void>((resolve) => {
    const ticker = setInterval(() => {
      const now = performance.now();
      if (!measuring && now >= warmupEnd) {
        measuring = true;
        measureStart = now;
        cpu0 = cpuMs();
      }
      if (now >= end) {
        clearInterval(ticker);
        measuring = false;
        resolve();
        return;
      }
      const flag = measuring ? 1 : 0;
      // Every slot due by now, including ones a late tick skipped.
      while (start + slot * 10 <= now) {
        for (const i of slots[slot % 100]!) {
          const template = templates[i]!;
          const message = Buffer.allocUnsafe(template.bytes.length);
          template.bytes.copy(message);
          message.writeDoubleLE(performance.now(), template.payloadAt);
          message[template.payloadAt + 10] = flag;
          publishers[i]!.socket.write(message);
          if (flag) published++;
        }
        slot++;
      }
    }, 10);
  });
  const elapsedMs = performance.now() - measureStart;
  const loadgenCpuMs = cpuMs() - cpu0;
  // Late deliveries of the last measured messages.
  await new Promise((resolve) => setTimeout(resolve, 2000));
  let seen = 0;
  let p50 = Number.NaN;
  let p99 = Number.NaN;
  for (let b = 0; b < LATENCY_BUCKETS && Number.isNaN(p99); b++) {
    seen += histogram[b]!;
    if (Number.isNaN(p50) && seen >= latencyCount * 0.5) p50 = (b + 1) * LATENCY_BUCKET_MS;
    if (seen >= latencyCount * 0.99) p99 = (b + 1) * LATENCY_BUCKET_MS;
  }
  const failures = { ...pubs.failures, ...(lostAfterConnect ? { 'closed-after-connack': lostAfterConnect } : {}) };
  return {
    clients: [...subscribers, ...publishers],
    result: {
      index: spec.index,
      connected,
      failed: spec.clients - connected,
      failures,
      published,
      delivered,
      expected: published * subscribers.length,
      deliveriesAll,
      latencyMs: { p50, p99, max: maxLatency, count: latencyCount },
      loadgenCpuMs,
      elapsedMs,
    },
  };
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? 'null') as ScaleSpec | null;
  if (!spec) throw new Error('usage: scale-loadgen.js <spec JSON>');
  const run = spec.mode === 'storm' ? runStorm : spec.mode === 'idle' ? runIdle : runSteady;
  const { result, clients } = await run(spec);
  process.send?.({ type: 'result', result });
  await nextMessage();
  closing = true;
  const bye = packetBytes({ cmd: 'disconnect' });
  for (const client of clients) {
    if (!client || client.socket.destroyed) continue;
    client.socket.end(client.transport === 'ws' ? frame(bye) : bye);
  }
  setTimeout(() => process.exit(0), 1000).unref();
}

// Orphaned (the orchestrator died): stop at once.
process.on('disconnect', () => process.exit(1));
main().catch((error: unknown) => {
  const message = error instanceof Error ? error.message : String(error);
  if (process.send) process.send({ type: 'error', error: message }, () => process.exit(1));
  else console.error(message);
});
