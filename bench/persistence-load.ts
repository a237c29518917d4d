/**
 * What the persistence benchmarks share: MQTT clients over raw sockets
 * (mqtt-packet, no mqtt.js on the hot path), the brokers they compare
 * (edgemqtt as the CLI runs it, mosquitto, aedes with aedes-persistence-level
 * when that package is installed), and process memory from /proc.
 */
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { generate, parser as packetParser, type Packet } from 'mqtt-packet';
import { findNatsServer, freePort, shippedNodeFlags, spawnTracked, startNatsServer, stopChild, waitForPort } from './brokers.js';
import { PACKET_CONNACK, PacketReader, type PacketHandler } from './common.js';

export { findMosquitto, freePort } from './brokers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The built CLI, relative to dist-bench/bench/. */
const cli = path.resolve(here, '..', '..', 'dist', 'bin', 'edgemqtt.js');

export interface BenchBroker {
  name: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
  /**
   * edgemqtt with BENCH_ALLOC=1: the bytes V8 allocated so far, as its
   * collections reported them (`--trace-gc-nvp`, `allocated=` since the
   * collection before): what was allocated since the last collection is
   * counted at the next, so over a measured run the figure is short by at
   * most one young generation (~4 MB with the shipped flags).
   */
  allocatedBytes?(): number;
  /** With BENCH_ALLOC=1: the main thread's time in V8's collections so far (their `pause=`), in ms. */
  collectionMs?(): number;
}

/**
 * nats-server's MQTT listener (its sessions and QoS 1 messages in JetStream,
 * which syncs to disk on its own interval, not per message) as a column of
 * the persistence benchmarks, or undefined (and a message) when it is not
 * installed. `inflight`: its inflight window per subscription (mqtt
 * max_ack_pending; 0 or none: its default, 1024).
 */
export function natsServerColumn(inflight?: number): ((dir: string) => Promise<BenchBroker>) | undefined {
  const nats = findNatsServer();
  if (!nats) {
    console.log('nats-server not found (BENCH_NATS_SERVER=/path): column skipped');
    return undefined;
  }
  return async (dir) => {
    await mkdir(dir, { recursive: true });
    const running = await startNatsServer(nats, dir, false, inflight || undefined);
    return { name: 'nats-server', port: running.endpoint.tcpPort, pid: running.endpoint.pid, stop: running.stop };
  };
}

/** edgemqtt through its CLI (`npm run build` first) with the shipped node flags, on loopback, with `config` merged into a bench config. */
/** A line of `--trace-gc-nvp`: one collection, its pause of the main thread (ms) and the bytes allocated since the one before. */
const ALLOCATED = /\bpause=([\d.]+) .*\bgc=\S+ .*\ballocated=(\d+)\b/;

export async function startEdgemqtt(dataDir: string, config: Record<string, unknown> = {}): Promise<BenchBroker & { startMs: number; recovery?: Record<string, unknown> }> {
  await mkdir(dataDir, { recursive: true });
  const configPath = path.join(dataDir, 'edgemqtt.json.yaml');
  // YAML is a superset of JSON.
  await writeFile(
    configPath,
    JSON.stringify({ dataDir, log: { level: 'info' }, mqtt: { host: '127.0.0.1', port: 0 }, http: { enabled: false }, ...config }),
  );
  const started = performance.now();
  // BENCH_CPU_PROF=DIR: the broker runs under `node --cpu-prof`, its profile
  // written to DIR when it stops (summarise with dist-bench/bench/profile.js).
  const profile = process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROF] : [];
  // BENCH_ALLOC=1: V8 reports each collection with what was allocated since the one before (allocatedBytes).
  if (process.env.BENCH_ALLOC) profile.push('--trace-gc-nvp');
  let allocated = 0;
  let collectionMs = 0;
  // The node flags the systemd unit and `npm start` run it with; BENCH_NODE_FLAGS replaces them ("" for V8's defaults).
  const nodeFlags = process.env.BENCH_NODE_FLAGS?.split(/\s+/).filter(Boolean) ?? shippedNodeFlags();
  const child = spawnTracked(process.execPath, [...nodeFlags, ...profile, cli, 'start', '--config', configPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  let recovery: Record<string, unknown> | undefined;
  const ready = await new Promise<{ port: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('edgemqtt did not start within 600 s')), 600_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let entry: { msg?: string; addresses?: { mqtt?: { port: number } } } & Record<string, unknown>;
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        const collection = ALLOCATED.exec(line);
        if (collection !== null) {
          collectionMs += Number(collection[1]);
          allocated += Number(collection[2]);
        }
        // Not the log's JSON: node's or V8's own output (BENCH_NODE_FLAGS="... --trace-deopt"), passed on.
        else process.stderr.write(`${line}\n`);
        return;
      }
      if (entry.msg === 'store recovered') recovery = entry;
      if (entry.msg === 'edgemqtt ready') {
        clearTimeout(timer);
        resolve({ port: entry.addresses!.mqtt!.port });
      }
    });
    child.once('exit', (code) => reject(new Error(`edgemqtt exited with ${code}`)));
  });
  const startMs = performance.now() - started;
  const allocatedBytes = process.env.BENCH_ALLOC ? () => allocated : undefined;
  const collectionTime = process.env.BENCH_ALLOC ? () => collectionMs : undefined;
  return { name: 'edgemqtt', port: ready.port, pid: child.pid!, startMs, recovery, stop: () => stopChild(child, 20_000), allocatedBytes, collectionMs: collectionTime };
}

/**
 * edgemqtt's persistence.queueCacheBytes as BENCH_QUEUE_CACHE sets it, for
 * the benchmarks' `persistence` config: `{}` (the product's default) when
 * unset; 0 reads every backlog back from disk.
 */
export function queueCacheFromEnv(): { queueCacheBytes?: number } {
  const bytes = process.env.BENCH_QUEUE_CACHE;
  return bytes === undefined ? {} : { queueCacheBytes: Number(bytes) };
}

export interface MosquittoOptions {
  /**
   * `persistence true`: Mosquitto keeps its state in a file in `dir`, written
   * at its autosave interval (1800 s by default) and on shutdown, never per
   * message: what it acknowledged in between lives in memory only.
   */
  persistence?: boolean;
  /** max_inflight_messages per client (0 = unlimited, the default here). */
  maxInflight?: number;
}

/**
 * Mosquitto with its defaults (persistence off unless asked: what it
 * acknowledges lives in memory until its next autosave, none by default), on
 * loopback, TCP_NODELAY on like edgemqtt, and no queue limits so it keeps
 * what edgemqtt keeps.
 */
export async function startMosquitto(binary: string, dir: string, options: MosquittoOptions = {}): Promise<BenchBroker> {
  const port = await freePort();
  await mkdir(dir, { recursive: true });
  const configFile = path.join(dir, 'mosquitto.conf');
  await writeFile(
    configFile,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      ...(options.persistence === true
        ? // Started as root, Mosquitto would drop to its own user, which cannot write the state file in our temp directory.
          ['persistence true', `persistence_location ${dir}/`, ...(process.getuid?.() === 0 ? ['user root'] : [])]
        : ['persistence false']),
      'set_tcp_nodelay true',
      'max_queued_messages 0',
      `max_inflight_messages ${options.maxInflight ?? 0}`,
      'log_dest stderr',
      'log_type error',
      '',
    ].join('\n'),
  );
  const child = spawnTracked(binary, ['-c', configFile], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port, child, 15_000, 'mosquitto');
  return { name: 'mosquitto', port, pid: child.pid!, stop: () => stopChild(child, 20_000) };
}

/** Whether aedes-persistence-level is installed (it is not a dependency of edgemqtt). */
export function hasAedesPersistenceLevel(): boolean {
  try {
    createRequire(import.meta.url).resolve('aedes-persistence-level');
    return true;
  } catch {
    return false;
  }
}

/** Bare aedes 1.2 with aedes-persistence-level (as the reporter ran it), in a child process. */
export async function startAedesLevel(dir: string): Promise<BenchBroker> {
  const child = spawnTracked(process.execPath, [path.join(here, 'persistence-aedes-level-server.js'), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', (line) => resolve(Number(line)));
    child.once('exit', (code) => reject(new Error(`aedes exited with ${code}`)));
  });
  return { name: 'aedes+level', port, pid: child.pid!, stop: () => stopChild(child, 20_000) };
}

/** Resident set size of a process in MiB. */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'latin1');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

/** A raw MQTT 3.1.1 client for the measured load: bytes in, fixed headers walked, no packet objects. */
export class LoadClient {
  readonly socket: net.Socket;
  #onPacket: PacketHandler = () => undefined;
  readonly #reader = new PacketReader((type, buf, bodyStart, bodyEnd, flags) => this.#onPacket(type, buf, bodyStart, bodyEnd, flags));
  /** Called after each read's packets (and the write of the acknowledgements they queued, unless acksAtEndOfTurn). */
  afterRead: () => void = () => undefined;
  /** acknowledge()'s packets not written yet: first byte and packet identifier, in pairs. */
  readonly #acks: number[] = [];
  /**
   * Write acknowledge()'s packets at the end of the turn instead of after
   * each read: with several clients in this process, a read then does not
   * wait for the acknowledgement write of another client read before it
   * (the latency benchmark's two subscribers).
   */
  acksAtEndOfTurn = false;
  #acksDue = false;
  readonly #writeAcksNow = (): void => {
    this.#acksDue = false;
    this.#writeAcks();
  };

  private constructor(port: number) {
    // Reads land in one buffer per connection (`onread`), no Buffer per read.
    this.socket = net.connect({
      host: '127.0.0.1',
      port,
      noDelay: true,
      onread: {
        buffer: Buffer.allocUnsafe(256 * 1024),
        callback: (bytes: number, buffer: Uint8Array) => {
          this.#reader.push(buffer as Buffer, 0, bytes);
          if (!this.acksAtEndOfTurn) this.#writeAcks();
          else if (!this.#acksDue && this.#acks.length > 0) {
            this.#acksDue = true;
            setImmediate(this.#writeAcksNow);
          }
          this.afterRead();
          return true;
        },
      },
    });
    this.socket.on('error', () => undefined);
  }

  /**
   * `handlerFor`, when given, makes the packet handler for the new client
   * before its CONNECT: a resumed session's messages follow the CONNACK at once.
   */
  static async open(port: number, clientId: string, clean: boolean, handlerFor?: (client: LoadClient) => PacketHandler): Promise<LoadClient> {
    const client = new LoadClient(port);
    await new Promise<void>((resolve, reject) => {
      client.socket.once('connect', resolve);
      client.socket.once('error', reject);
    });
    if (handlerFor) client.onPacket(handlerFor(client));
    await client.request(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean, keepalive: 0 }), PACKET_CONNACK);
    return client;
  }

  onPacket(handler: PacketHandler): void {
    this.#onPacket = handler;
  }

  /**
   * Queues a 2-byte acknowledgement (`first`: its type and flags, e.g. 0x40
   * PUBACK, 3.4.1) of packet `messageId`, written with the others of the
   * same read in one write once the read's packets are handled. A client
   * writing each on its own costs a system call per packet here, and the
   * broker a read per packet: against a broker that keeps up, such a load
   * generator runs out of CPU first.
   */
  acknowledge(first: number, messageId: number): void {
    this.#acks.push(first, messageId);
  }

  #writeAcks(): void {
    const acks = this.#acks;
    if (acks.length === 0) return;
    const out = Buffer.allocUnsafe(acks.length * 2);
    for (let i = 0; i < acks.length; i += 2) {
      out[i * 2] = acks[i]!;
      out[i * 2 + 1] = 2;
      out.writeUInt16BE(acks[i + 1]!, i * 2 + 2);
    }
    acks.length = 0;
    this.socket.write(out);
  }

  /** Writes `bytes` and resolves at the first packet of `type` that comes back; other packets go to the handler in place. */
  request(bytes: Buffer, type: number): Promise<void> {
    return new Promise((resolve) => {
      const previous = this.#onPacket;
      this.#onPacket = (got, buf, bodyStart, bodyEnd, flags) => {
        if (got !== type) return previous(got, buf, bodyStart, bodyEnd, flags);
        this.#onPacket = previous;
        resolve();
      };
      this.socket.write(bytes);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A raw MQTT 3.1.1 connection: packets out as buffers, packets in as parsed objects. */
export class RawConnection {
  readonly #socket: net.Socket;
  #onPacket: (packet: Packet) => void = () => undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    const parser = packetParser({ protocolVersion: 4 });
    parser.on('packet', (packet: Packet) => this.#onPacket(packet));
    socket.on('data', (data) => parser.parse(data));
    socket.on('error', () => undefined);
  }

  /** `onPacket`, when given, is in place before the CONNECT: a resumed session's messages follow the CONNACK at once. */
  static async open(
    port: number,
    clientId: string,
    clean = true,
    onPacket?: (packet: Packet, connection: RawConnection) => void,
  ): Promise<RawConnection> {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const connection = new RawConnection(socket);
    if (onPacket) connection.onPacket((packet) => onPacket(packet, connection));
    await connection.request({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean, keepalive: 0 }, 'connack');
    return connection;
  }

  onPacket(handler: (packet: Packet) => void): void {
    this.#onPacket = handler;
  }

  send(packet: Packet | Buffer): boolean {
    return this.#socket.write(Buffer.isBuffer(packet) ? packet : generate(packet));
  }

  /** Sends `packet` and resolves with the first packet of type `cmd` that comes back. */
  request(packet: Packet, cmd: Packet['cmd']): Promise<Packet> {
    return new Promise((resolve) => {
      const previous = this.#onPacket;
      this.#onPacket = (reply) => {
        if (reply.cmd !== cmd) return previous(reply);
        this.#onPacket = previous;
        resolve(reply);
      };
      this.send(packet);
    });
  }

  close(): void {
    this.#socket.destroy();
  }
}

/** Median of numbers. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export function ratio(a: number, b: number): string {
  return b > 0 ? `${(a / b).toFixed(2)}×` : 'n/a';
}
