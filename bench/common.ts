/**
 * What the benchmark's processes share: the scenario and result shapes sent
 * between the orchestrator (run.ts) and the load generator (loadgen.ts), CPU
 * accounting from /proc, and the small amount of MQTT and WebSocket framing
 * the load generator needs to talk to a broker over raw sockets.
 *
 * The load generator does not use mqtt.js on the hot path: packets are
 * generated once with mqtt-packet and written as pre-built buffers, and the
 * receive side only walks fixed headers (and reads a timestamp for latency).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { generate } from 'mqtt-packet';

export type Transport = 'tcp' | 'ws';

/**
 * How the load generator's clients speak: MQTT 3.1.1 (protocol level 4) or
 * MQTT 5.0 (level 5); with `properties`, every v5 PUBLISH also carries a
 * small property set like the ones home-automation clients send.
 */
export interface ClientProtocol {
  level: 4 | 5;
  properties: boolean;
}

/** Where a broker under test listens, and its process id for CPU accounting. */
export interface BrokerEndpoint {
  name: string;
  host: string;
  tcpPort: number;
  wsPort: number;
  wsPath: string;
  pid: number;
}

export interface ThroughputSpec {
  kind: 'throughput';
  endpoint: BrokerEndpoint;
  protocol: ClientProtocol;
  /** TCP publisher connections, each on its own topic (publisherTopic). */
  publishers: number;
  /** Subscriber connections; every one receives every message. */
  subscribers: number;
  subTransport: Transport;
  /** QoS of the PUBLISHes and of the subscription; at 1 the subscribers PUBACK every delivery. */
  qos: 0 | 1;
  /**
   * Per publisher: messages published but not yet received by the slowest
   * subscriber. Each publisher keeps the broker saturated but never further
   * ahead than this (closed loop), so no broker has to queue (or may drop) an
   * unbounded backlog.
   */
  window: number;
  /** QoS 1: PUBLISHes a publisher may have without a PUBACK; the publisher's own flow control. */
  inflight: number;
  /** Load before the measurement starts (JIT warm-up, buffers grown). */
  warmupMs: number;
  /** The measured interval. */
  measureMs: number;
  /**
   * 0: subscribers read as soon as data arrives. N > 0: after a read a
   * subscriber socket pauses until the next N ms tick, so each read takes a
   * batch. Reading every tiny segment costs the load generator a syscall and
   * a wake-up each, mostly kernel time that a 2-core machine takes from the
   * broker under test.
   */
  readPacingMs: number;
  /** Size of each subscriber's read buffer: the most one read takes. */
  readBufferBytes: number;
  payloadBytes: number;
  timeoutMs: number;
}

/** Opens `connections` idle MQTT connections (CONNECT, CONNACK) and keeps them until told to stop. */
export interface IdleSpec {
  kind: 'idle';
  endpoint: BrokerEndpoint;
  protocol: ClientProtocol;
  connections: number;
  /** Connections opened at once. */
  concurrency: number;
  timeoutMs: number;
}

export interface LatencySpec {
  kind: 'latency';
  endpoint: BrokerEndpoint;
  protocol: ClientProtocol;
  subTransport: Transport;
  /** Messages per second, open loop. */
  rate: number;
  seconds: number;
  /** Sent at the same rate before recording starts. */
  warmupSeconds: number;
  payloadBytes: number;
  timeoutMs: number;
}

export type LoadSpec = ThroughputSpec | LatencySpec;

/** What the load generator reports once an IdleSpec's connections are all open. */
export interface IdleResult {
  connected: number;
  elapsedMs: number;
}

export interface LatencyStats {
  count: number;
  lost: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface LoadResult {
  kind: LoadSpec['kind'];
  /** Messages published in the measured interval. */
  published: number;
  /** Deliveries (message × subscriber) in the measured interval. */
  delivered: number;
  expectedDeliveries: number;
  elapsedMs: number;
  /** CPU time of the broker process (all threads) in the measured interval. */
  brokerCpuMs: number;
  /** CPU time of the load generator process (all threads) in the measured interval. */
  loadgenCpuMs: number;
  brokerRssKb: number;
  /** Socket reads by the subscribers in the measured interval (deliveries per read shows batching). */
  subscriberReads: number;
  /** Deliveries that never arrived, over the whole run (throughput: within 5 s of the last publish). */
  lost: number;
  /** Latency: the run hit its timeout. Throughput: nothing was delivered in the measured interval (stalled). */
  timedOut: boolean;
  latency?: LatencyStats;
}

export const TOPIC = 'bench/line1/temp';
export const FILTER = 'bench/#';

/** Publisher `index`'s topic: TOPIC and a two-digit index, so a subscriber tells publishers apart by two bytes. */
export function publisherTopic(index: number): string {
  if (index < 0 || index > 99) throw new Error(`publisher index ${index} out of 0..99`);
  return `${TOPIC}/${String(index).padStart(2, '0')}`;
}

/** The publisher index of a received PUBLISH whose body starts at `bodyStart` (see publisherTopic). */
export function publisherOf(buf: Buffer, bodyStart: number): number {
  const topicEnd = bodyStart + 2 + buf.readUInt16BE(bodyStart);
  return ((buf[topicEnd - 2] as number) - 48) * 10 + ((buf[topicEnd - 1] as number) - 48);
}

// ---------------------------------------------------------------- /proc CPU

const CLOCK_TICKS_PER_SEC = 100; // USER_HZ; `getconf CLK_TCK` is 100 on Linux x86-64 and arm64.

/** A thread's CPU time so far in ms from /proc/<pid>/task/<tid>/stat (user + system), 10 ms resolution. */
function tickCpuMs(path: string): number {
  const stat = readFileSync(path, 'latin1');
  // Field 2 (comm) may contain spaces: count fields after its closing paren.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SEC;
}

/**
 * A thread's CPU time so far in ms: the scheduler's own count, in ns
 * (/proc/<pid>/task/<tid>/schedstat, first field), where the kernel has it;
 * else user + system from its stat, in 10 ms ticks. A benchmark of 20,000
 * messages at ~7 µs each is ~14 ticks, so a tick alone was ±0.5 µs a
 * message: more than the differences being looked for.
 */
function threadCpuMsAt(pid: number, task: string): number {
  try {
    const schedstat = readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'latin1');
    return Number(schedstat.slice(0, schedstat.indexOf(' '))) / 1e6;
  } catch {
    return tickCpuMs(`/proc/${pid}/task/${task}/stat`);
  }
}

/**
 * CPU time of a whole process (all its threads) so far, in ms: the sum over
 * its threads (threadCpuMsAt). A thread that has ended no longer counts, so
 * only differences over an interval where the process keeps its threads
 * (Node's pool and V8's workers live as long as it) are meaningful.
 */
export function processCpuMs(pid: number): number {
  const { main, others } = threadCpuMs(pid);
  return main + others;
}

/** CPU ms so far of a process's main thread and of its other threads (LevelDB, libuv's pool, GC), as threadCpuMsAt reads them. */
export function threadCpuMs(pid: number): { main: number; others: number } {
  const spent = { main: 0, others: 0 };
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      const ms = threadCpuMsAt(pid, task);
      if (Number(task) === pid) spent.main += ms;
      else spent.others += ms;
    } catch {
      // The thread ended meanwhile.
    }
  }
  return spent;
}

/** Resident set size of a process in KiB, or 0 if it cannot be read. */
export function processRssKb(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'latin1');
    const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------- MQTT packets

// Every packet is generated once per client (CONNECT, SUBSCRIBE) or once per
// run (the PUBLISH template), so MQTT 5 costs the load generator nothing per
// message on the send side.

export function connectPacket(clientId: string, level: ClientProtocol['level'] = 4, keepalive = 0): Buffer {
  // Level 5 adds a Property Length (0 here) after the keep-alive (3.1.2.11).
  return generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: level, clean: true, clientId, keepalive });
}

export function subscribePacket(filter: string, level: ClientProtocol['level'] = 4, qos: 0 | 1 = 0): Buffer {
  // In v5 the byte after the filter is Subscription Options (3.8.3.1): the QoS and
  // No Local, Retain As Published and Retain Handling at 0, as mqtt.js sends by default.
  const subscription = level === 5 ? { topic: filter, qos, nl: false, rap: false, rh: 0 } : { topic: filter, qos };
  return generate({ cmd: 'subscribe', messageId: 1, subscriptions: [subscription] }, { protocolVersion: level });
}

/**
 * The PUBLISH properties of the `properties` protocol: a content type and one
 * user property, what a zigbee2mqtt or Home Assistant publish typically
 * carries. A v5 broker must forward both unchanged [MQTT-3.3.2-17] [MQTT-3.3.2-20],
 * so every delivery carries them too.
 */
export const TYPICAL_PUBLISH_PROPERTIES = {
  contentType: 'application/json',
  userProperties: { source: 'bench-sensor' },
};

/**
 * A PUBLISH; at QoS 1 with Packet Identifier 1, to be overwritten per send at
 * publishIdOffset.
 */
export function publishPacket(
  topic: string,
  payload: Buffer,
  protocol: ClientProtocol = { level: 4, properties: false },
  qos: 0 | 1 = 0,
): Buffer {
  const properties = protocol.level === 5 && protocol.properties ? TYPICAL_PUBLISH_PROPERTIES : undefined;
  // v5 without properties: one Property Length byte of 0 (3.3.2.3.1).
  const messageId = qos > 0 ? 1 : undefined;
  return generate({ cmd: 'publish', topic, payload, qos, messageId, retain: false, dup: false, properties }, { protocolVersion: protocol.level });
}

/** Where publishPacket's Packet Identifier lies: right after the topic name (3.3.2.2). */
export function publishIdOffset(packet: Buffer): number {
  // Fixed header: one type byte, then a Remaining Length of 1–4 bytes.
  let index = 1;
  while (((packet[index] as number) & 0x80) !== 0) index++;
  const bodyStart = index + 1;
  return bodyStart + 2 + packet.readUInt16BE(bodyStart);
}

/** PUBACK for `id`: the four-byte form, valid in 3.1.1 and in v5 (Reason Code 0 may be omitted, 3.4.2.1). */
export const PUBACK_BYTES = 4;

export function disconnectPacket(level: ClientProtocol['level'] = 4): Buffer {
  // v5: mqtt-packet writes Reason Code 0 (normal disconnection) and an empty property set;
  // the two-byte short form would do as well (3.14.2.1).
  return generate({ cmd: 'disconnect' }, { protocolVersion: level });
}

/**
 * Where the payload of a QoS 0 PUBLISH starts, given where its body starts:
 * after the topic name and, in v5, after the properties, skipped by their
 * length without decoding them (3.3.2.3.1). A few byte reads per message,
 * as cheap as the 3.1.1 case.
 */
export function publishPayloadStart(buf: Buffer, bodyStart: number, level: ClientProtocol['level'], qos = 0): number {
  // QoS > 0: a two-byte Packet Identifier follows the topic name (3.3.2.2).
  let index = bodyStart + 2 + buf.readUInt16BE(bodyStart) + (qos > 0 ? 2 : 0);
  if (level === 5) {
    // Property Length is a Variable Byte Integer of at most four bytes.
    let length = 0;
    let multiplier = 1;
    for (let i = 0; i < 4; i++) {
      const byte = buf[index++] as number;
      length += (byte & 0x7f) * multiplier;
      if ((byte & 0x80) === 0) break;
      multiplier *= 128;
    }
    index += length;
  }
  return index;
}

/**
 * A SUBACK's first return code (3.1.1) or reason code (v5) for a one-filter
 * SUBSCRIBE: the last byte of the body either way; 0x80 and above is a refusal
 * (3.9.3 in both versions).
 */
export function subackCode(buf: Buffer, bodyEnd: number): number {
  return buf[bodyEnd - 1] as number;
}

export const PACKET_CONNACK = 2;
export const PACKET_PUBLISH = 3;
export const PACKET_PUBACK = 4;
export const PACKET_SUBACK = 9;

/**
 * Called per MQTT packet with its type, where its body lies in `buf` (valid
 * only during the call) and the fixed header's flag bits (for PUBLISH: DUP,
 * QoS, RETAIN, 3.3.1).
 */
export type PacketHandler = (type: number, buf: Buffer, bodyStart: number, bodyEnd: number, flags: number) => void;

/**
 * Splits an MQTT byte stream into packets by their fixed headers. Bytes of a
 * packet cut by a read boundary are copied aside until the rest arrives, so
 * it works with reused read buffers (`onread`).
 */
export class PacketReader {
  #pending: Buffer;
  #pendingLength = 0;
  readonly #onPacket: PacketHandler;

  /** `initialBytes`: the first size of the aside buffer (it grows); small when there are thousands of clients (scale.ts). */
  constructor(onPacket: PacketHandler, initialBytes = 64 * 1024) {
    this.#onPacket = onPacket;
    this.#pending = Buffer.allocUnsafe(initialBytes);
  }

  push(chunk: Buffer, start: number, end: number): void {
    let buf = chunk;
    let index = start;
    let length = end;
    if (this.#pendingLength > 0) {
      this.#reserve(this.#pendingLength + (end - start));
      chunk.copy(this.#pending, this.#pendingLength, start, end);
      buf = this.#pending;
      index = 0;
      length = this.#pendingLength + (end - start);
    }
    while (index < length) {
      // Fixed header: type/flags byte, then a 1–4 byte Remaining Length.
      let remaining = 0;
      let multiplier = 1;
      let cursor = index + 1;
      let complete = false;
      while (cursor < length) {
        const byte = buf[cursor++] as number;
        remaining += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        if ((byte & 0x80) === 0) {
          complete = true;
          break;
        }
      }
      if (!complete || cursor + remaining > length) break;
      const first = buf[index] as number;
      this.#onPacket(first >> 4, buf, cursor, cursor + remaining, first & 0x0f);
      index = cursor + remaining;
    }
    const rest = length - index;
    if (rest > 0) {
      if (buf === this.#pending) {
        this.#pending.copyWithin(0, index, length);
      } else {
        this.#reserve(rest);
        buf.copy(this.#pending, 0, index, length);
      }
    }
    this.#pendingLength = rest;
  }

  #reserve(size: number): void {
    if (size <= this.#pending.length) return;
    const grown = Buffer.allocUnsafe(Math.max(size, this.#pending.length * 2));
    this.#pending.copy(grown, 0, 0, this.#pendingLength);
    this.#pending = grown;
  }
}

// ---------------------------------------------------------------- WebSocket

/** The HTTP upgrade request for MQTT over WebSocket (no Origin: a device, not a page). */
export function webSocketUpgradeRequest(host: string, port: number, path: string): string {
  const key = randomBytes(16).toString('base64');
  return (
    `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n`
  );
}

/** One masked binary frame, as a client must send [RFC 6455 5.3]. */
export function webSocketFrame(payload: Buffer): Buffer {
  const mask = randomBytes(4);
  const masked = Buffer.allocUnsafe(payload.length);
  for (let i = 0; i < payload.length; i++) masked[i] = (payload[i] as number) ^ (mask[i & 3] as number);
  return Buffer.concat([webSocketHeader(payload.length, true), mask, masked]);
}

/**
 * A binary data frame's header, FIN set (RFC 6455 5.2): the payload length in
 * 7, 7 + 16 or 7 + 64 bits, with the MASK bit when `masked` (a client's
 * frames; the masking key, which follows, is the caller's).
 */
export function webSocketHeader(length: number, masked: boolean): Buffer {
  const maskBit = masked ? 0x80 : 0;
  if (length < 126) return Buffer.from([0x82, maskBit | length]);
  if (length < 65536) {
    const header = Buffer.alloc(4);
    header[0] = 0x82;
    header[1] = maskBit | 126;
    header.writeUInt16BE(length, 2);
    return header;
  }
  const header = Buffer.alloc(10);
  header[0] = 0x82;
  header[1] = maskBit | 127;
  header.writeBigUInt64BE(BigInt(length), 2);
  return header;
}

/**
 * Reads a server's WebSocket byte stream: skips the HTTP 101 response, then
 * passes the payload bytes of data frames on (a server's frames are not
 * masked), ignoring control frames.
 */
export class WebSocketReader {
  readonly #sink: (buf: Buffer, start: number, end: number) => void;
  readonly #onUpgrade: () => void;
  #handshake = '';
  #upgraded = false;
  readonly #header = Buffer.alloc(14);
  #headerLength = 0;
  #payloadLeft = 0;
  #isData = false;

  constructor(sink: (buf: Buffer, start: number, end: number) => void, onUpgrade: () => void) {
    this.#sink = sink;
    this.#onUpgrade = onUpgrade;
  }

  push(buf: Buffer, start: number, end: number): void {
    let index = start;
    if (!this.#upgraded) {
      const text = this.#handshake + buf.toString('latin1', start, end);
      const headerEnd = text.indexOf('\r\n\r\n');
      if (headerEnd === -1) {
        this.#handshake = text;
        return;
      }
      if (!/^HTTP\/1\.1 101 /.test(text)) throw new Error(`WebSocket upgrade refused: ${text.split('\r\n')[0]}`);
      this.#upgraded = true;
      index = start + (headerEnd + 4 - this.#handshake.length);
      this.#handshake = '';
      this.#onUpgrade();
    }
    while (index < end) {
      if (this.#payloadLeft > 0) {
        const take = Math.min(this.#payloadLeft, end - index);
        if (this.#isData) this.#sink(buf, index, index + take);
        index += take;
        this.#payloadLeft -= take;
        continue;
      }
      this.#header[this.#headerLength++] = buf[index++] as number;
      if (this.#headerLength < 2) continue;
      const b1 = this.#header[1] as number;
      const shortLength = b1 & 0x7f;
      const needed = 2 + (shortLength === 126 ? 2 : shortLength === 127 ? 8 : 0) + (b1 & 0x80 ? 4 : 0);
      if (this.#headerLength < needed) continue;
      const opcode = (this.#header[0] as number) & 0x0f;
      let payloadLength = shortLength;
      if (shortLength === 126) payloadLength = this.#header.readUInt16BE(2);
      else if (shortLength === 127) payloadLength = Number(this.#header.readBigUInt64BE(2));
      // Continuation (0), text (1) and binary (2) frames carry MQTT bytes.
      this.#isData = opcode <= 2;
      this.#payloadLeft = payloadLength;
      this.#headerLength = 0;
    }
  }
}

// ---------------------------------------------------------------- statistics

export function percentile(sorted: Float64Array, fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1));
  return sorted[index] as number;
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[middle] as number) : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/** A non-negative whole number from the environment variable `name`, else `fallback`; anything else is refused. */
export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, got ${raw}`);
  return Math.floor(value);
}
