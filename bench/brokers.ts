/**
 * Starts and stops the brokers under test as child processes, and remembers
 * every child so that nothing outlives the benchmark.
 */
import { fork, spawn, execFileSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import path from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { BrokerEndpoint } from './common.js';
import { variantOf } from './variants.js';
import { installedAedesVersion } from '../src/broker/aedes-seam/version.js';

const here = path.dirname(fileURLToPath(import.meta.url));

export interface RunningBroker {
  endpoint: BrokerEndpoint;
  /** Version string for the report. */
  version: string;
  /** Why this broker cannot serve clients at MQTT protocol `level`; undefined when it can. */
  unsupported?(level: 4 | 5): string | undefined;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
// A bench that ends without killChildren() (an uncaught error, process.exit) leaves no broker behind.
process.on('exit', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/** Kills (SIGKILL) every child still running and waits (up to 5 s) until they have exited. */
export async function killChildren(): Promise<void> {
  const running = [...children].filter((child) => child.exitCode === null && child.signalCode === null);
  for (const child of running) child.kill('SIGKILL');
  await Promise.all(running.map((child) => waitForExit(child, 5000)));
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** `spawn`, with the child remembered so that killChildren() stops it if the run ends before it is stopped. */
export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  return track(spawn(command, args, options));
}

/** SIGTERM, then SIGKILL if the child has not exited within `timeoutMs`; resolves once it has exited. */
export function stopChild(child: ChildProcess, timeoutMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  child.kill('SIGTERM');
  return waitForExit(child, timeoutMs);
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Runs a compiled bench script as a child with IPC. With `fileLimit`, through
 * `sh -c 'ulimit -n …; exec node …'`: the soft limit on open files is raised
 * (up to the hard limit) for that child alone, never for the product.
 */
export function forkScript(script: string, args: string[], execArgv: string[] = [], fileLimit?: number): ChildProcess {
  const file = path.join(here, script);
  if (fileLimit === undefined) return track(fork(file, args, { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  return track(spawn('sh', ['-c', raiseFileLimit(fileLimit), 'sh', process.execPath, ...execArgv, file, ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
}

/** A shell script that raises the soft limit on open files to `limit` (or the hard limit, if lower), then execs its arguments. */
function raiseFileLimit(limit: number): string {
  return `ulimit -n ${Math.floor(limit)} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
}

export interface EdgemqttOptions {
  dataDir: string;
  variant?: string;
  /** Extra node flags for the broker process, e.g. --cpu-prof. */
  execArgv?: string[];
  /** Raise the broker process's soft limit on open files to this (scale.ts). */
  fileLimit?: number;
  /** `limits` config section; by default only the connection rate is lifted (unlimited), everything else at its default. */
  limits?: Record<string, unknown>;
}

/**
 * The node flags edgemqtt ships with: those between `node` and the script in
 * the systemd unit's ExecStart (`npm start` has the same), so that the
 * benchmarks measure the broker as installed.
 */
export function shippedNodeFlags(): string[] {
  const unit = readFileSync(fileURLToPath(new URL('../../systemd/edgemqtt.service', import.meta.url)), 'utf8');
  const execStart = /^ExecStart=(.*)$/m.exec(unit)?.[1]?.split(/\s+/) ?? [];
  const script = execStart.findIndex((word) => word.endsWith('.js'));
  return execStart.slice(1, script).filter((word) => word.startsWith('--'));
}

export async function startEdgemqtt(options: EdgemqttOptions): Promise<RunningBroker> {
  const variantName = options.variant ?? 'daemon';
  // A variant's own flags come after the shipped ones, so they win where both set one.
  const execArgv = [...shippedNodeFlags(), ...(variantOf(variantName).nodeFlags ?? []), ...(options.execArgv ?? [])];
  const serverOptions = { dataDir: options.dataDir, variant: variantName, limits: options.limits };
  const child = forkScript('edgemqtt-server.js', [JSON.stringify(serverOptions)], execArgv, options.fileLimit);
  const ready = await new Promise<{ tcpPort: number; wsPort: number; wsPath: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('edgemqtt did not start within 30 s')), 30_000);
    child.once('message', (message: { type?: string; tcpPort: number; wsPort: number; wsPath: string }) => {
      clearTimeout(timer);
      if (message.type === 'ready') resolve(message);
      else reject(new Error(`unexpected message from edgemqtt: ${JSON.stringify(message)}`));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`edgemqtt exited with ${code} before it was ready`));
    });
  });
  const variant = variantName !== 'daemon' ? ` [variant ${variantName}: ${variantOf(variantName).description}]` : '';
  return {
    endpoint: { name: 'edgemqtt', host: '127.0.0.1', pid: child.pid ?? 0, ...ready },
    version: `edgemqtt (node ${process.version}, aedes ${installedAedesVersion()})${variant}`,
    async stop() {
      if (child.connected) child.send({ type: 'stop' });
      else child.kill('SIGTERM');
      await waitForExit(child, 15_000);
    },
  };
}

/** The mosquitto binary: $BENCH_MOSQUITTO, else on PATH or in /usr/sbin; null if absent. */
export function findMosquitto(): string | null {
  return findBinary('mosquitto', process.env.BENCH_MOSQUITTO);
}

/** The nats-server binary: $BENCH_NATS_SERVER, else on PATH or in /usr/sbin; null if absent. */
export function findNatsServer(): string | null {
  return findBinary('nats-server', process.env.BENCH_NATS_SERVER);
}

function findBinary(name: string, override: string | undefined): string | null {
  const candidates = [
    override,
    ...(process.env.PATH ?? '').split(':').map((dir) => path.join(dir, name)),
    `/usr/sbin/${name}`,
    `/usr/local/sbin/${name}`,
  ];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  return null;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:`port`; rejects if `child` exits first or after `timeoutMs`. */
export async function waitForPort(port: number, child: ChildProcess, timeoutMs: number, name: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`${name} did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Mosquitto with its defaults, except: loopback listeners for MQTT over TCP
 * and over WebSocket, anonymous access, no persistence file, errors and
 * warnings only on stderr, `set_tcp_nodelay true` (unless `noDelay` is
 * false): edgemqtt disables Nagle's algorithm on every MQTT socket, and with
 * Nagle on, mosquitto's small writes wait for the peer's delayed ACK, which
 * would measure the TCP stack rather than the broker; and `max_queued_messages 0`
 * (no limit): Mosquitto 2.0.11 logged "Outgoing messages are being dropped"
 * and dropped QoS 1 deliveries to the subscriber of the qos1 row once about
 * max_queued_messages of them had been delivered in total (after ~1,000 at its
 * default, ~100,000 with the limit at 100,000), though the closed loop never
 * has more than 10 × 100 outstanding: its per-client count evidently does
 * not come down as the subscriber PUBACKs, and the dropped messages stalled
 * their publishers.
 */
export async function startMosquitto(binary: string, tempDir: string, noDelay = true, fileLimit?: number): Promise<RunningBroker> {
  const [tcpPort, wsPort] = [await freePort(), await freePort()];
  const configFile = path.join(tempDir, 'mosquitto.conf');
  writeFileSync(
    configFile,
    [
      `listener ${tcpPort} 127.0.0.1`,
      `listener ${wsPort} 127.0.0.1`,
      'protocol websockets',
      'allow_anonymous true',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'connection_messages false',
      'max_queued_messages 0',
      ...(noDelay ? ['set_tcp_nodelay true'] : []),
      '',
    ].join('\n'),
  );
  let version = 'mosquitto';
  try {
    // `mosquitto -h` prints its version first and exits non-zero.
    execFileSync(binary, ['-h'], { stdio: 'pipe' });
  } catch (error) {
    const output = String((error as { stdout?: Buffer }).stdout ?? '');
    version = /mosquitto version [\d.]+/.exec(output)?.[0] ?? version;
  }
  const command: [string, string[]] =
    fileLimit === undefined ? [binary, ['-c', configFile]] : ['sh', ['-c', raiseFileLimit(fileLimit), 'sh', binary, '-c', configFile]];
  const child = track(spawn(...command, { stdio: ['ignore', 'ignore', 'inherit'] }));
  await waitForPort(tcpPort, child, 10_000, 'mosquitto');
  await waitForPort(wsPort, child, 10_000, 'mosquitto');
  return {
    endpoint: { name: 'mosquitto', host: '127.0.0.1', tcpPort, wsPort, wsPath: '/mqtt', pid: child.pid ?? 0 },
    version,
    stop: () => stopChild(child),
  };
}

/**
 * nats-server's MQTT listener with its defaults: MQTT needs a server name and
 * JetStream (sessions and QoS 1 messages live in JetStream streams; here in a
 * temp store dir), and MQTT over WebSocket is served on the websocket
 * listener at /mqtt (since nats-server 2.7). All on loopback, no TLS, no
 * auth; logs go to a file in the temp dir. nats-server 2.9 speaks MQTT 3.1.1
 * only (no MQTT 5) and treats QoS 2 as QoS 1. With `webSocket` false there is
 * no websocket listener (endpoint wsPort 0), as memory.ts measures it.
 */
/** `maxAckPending`: the MQTT listener's inflight window per subscription (nats-server's default 1024 when unset). */
export async function startNatsServer(binary: string, tempDir: string, webSocket = true, maxAckPending?: number): Promise<RunningBroker> {
  const dir = mkdtempSync(path.join(tempDir, 'nats-'));
  const [clientPort, tcpPort] = [await freePort(), await freePort()];
  const wsPort = webSocket ? await freePort() : 0;
  const configFile = path.join(dir, 'nats.conf');
  writeFileSync(
    configFile,
    [
      'server_name: bench',
      `listen: "127.0.0.1:${clientPort}"`,
      `jetstream { store_dir: ${JSON.stringify(path.join(dir, 'js'))} }`,
      `mqtt { host: "127.0.0.1", port: ${tcpPort}${maxAckPending ? `, max_ack_pending: ${maxAckPending}` : ''} }`,
      ...(webSocket ? [`websocket { host: "127.0.0.1", port: ${wsPort}, no_tls: true }`] : []),
      `log_file: ${JSON.stringify(path.join(dir, 'nats.log'))}`,
      '',
    ].join('\n'),
  );
  let version = 'nats-server';
  try {
    // Prints "nats-server: v2.9.10".
    const output = execFileSync(binary, ['--version'], { stdio: 'pipe' }).toString();
    const match = /v(\d[\d.]*)/.exec(output);
    if (match) version = `nats-server ${match[1]}`;
  } catch {
    // keep the bare name
  }
  const child = track(spawn(binary, ['-c', configFile], { stdio: ['ignore', 'ignore', 'inherit'] }));
  await waitForPort(tcpPort, child, 15_000, 'nats-server');
  if (webSocket) await waitForPort(wsPort, child, 15_000, 'nats-server');
  return {
    endpoint: { name: 'nats-server', host: '127.0.0.1', tcpPort, wsPort, wsPath: webSocket ? '/mqtt' : '', pid: child.pid ?? 0 },
    version,
    unsupported: (level) => (level === 5 ? `${version} speaks MQTT 3.1.1 only` : undefined),
    stop: () => stopChild(child),
  };
}

/**
 * A temporary directory for one benchmark run, and its cleanup (the brokers
 * and load generators stopped, the directory removed), also run on SIGINT or
 * SIGTERM so that an interrupted run leaves nothing behind.
 */
export function benchWorkspace(prefix: string): { tempDir: string; cleanup: () => Promise<void> } {
  const tempDir = mkdtempSync(path.join(tmpdir(), prefix));
  const cleanup = async () => {
    await killChildren();
    rmSync(tempDir, { recursive: true, force: true, maxRetries: 3 });
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`\n${signal}: stopping the brokers and load generators`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  return { tempDir, cleanup };
}
