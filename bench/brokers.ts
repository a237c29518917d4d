/**
 * Starts and stops the brokers under test as child processes, and remembers
 * every child so that nothing outlives the benchmark.
 */
import { fork, spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BrokerEndpoint } from './common.js';
import { variantOf } from './variants.js';
import { installedAedesVersion } from '../src/broker/aedes-seam/version.js';

const here = path.dirname(fileURLToPath(import.meta.url));

export interface RunningBroker {
  endpoint: BrokerEndpoint;
  /** Version string for the report. */
  version: string;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();

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

export async function startEdgemqtt(options: EdgemqttOptions): Promise<RunningBroker> {
  const variantName = options.variant ?? 'daemon';
  const execArgv = [...(variantOf(variantName).nodeFlags ?? []), ...(options.execArgv ?? [])];
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
  const candidates = [
    process.env.BENCH_MOSQUITTO,
    ...(process.env.PATH ?? '').split(':').map((dir) => path.join(dir, 'mosquitto')),
    '/usr/sbin/mosquitto',
    '/usr/local/sbin/mosquitto',
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

async function waitForPort(port: number, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited with ${child.exitCode}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Mosquitto with its defaults, except: loopback listeners for MQTT over TCP
 * and over WebSocket, anonymous access, no persistence file, errors and
 * warnings only on stderr, and `set_tcp_nodelay true` (unless `noDelay` is
 * false): edgemqtt disables Nagle's algorithm on every MQTT socket, and with
 * Nagle on, mosquitto's small writes wait for the peer's delayed ACK, which
 * would measure the TCP stack rather than the broker.
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
  await waitForPort(tcpPort, child, 10_000);
  await waitForPort(wsPort, child, 10_000);
  return {
    endpoint: { name: 'mosquitto', host: '127.0.0.1', tcpPort, wsPort, wsPath: '/mqtt', pid: child.pid ?? 0 },
    version,
    async stop() {
      child.kill('SIGTERM');
      await waitForExit(child, 10_000);
    },
  };
}
