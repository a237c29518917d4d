/**
 * A 3-node `nats-server -js` cluster on loopback for the bridge tests: each
 * node a child with its own store directory, client port and route port,
 * picked free before the first start and kept across restarts (so that
 * clients and the other nodes find a restarted node again), named n1..n3
 * (`-n`, the names JetStream reports as stream leader and replicas), killed
 * with SIGKILL to make a node crash.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import type { Test } from 'tap';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { tempDir } from './daemon.js';
import { killNow, natsServerBinary } from './nats.js';

/** Generous for a loaded 2-core machine; every wait ends as soon as its condition holds. */
const LISTEN_TIMEOUT_MS = 15_000;

export class NatsNode {
  /** stderr of the current (or last) run. */
  log = '';
  #child: ChildProcess | undefined;

  constructor(
    readonly name: string,
    readonly port: number,
    readonly clusterPort: number,
    readonly storeDir: string,
    readonly routes: string[],
  ) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  /** Starts the node and resolves once it listens for clients and for routes. */
  async start(): Promise<void> {
    if (this.#child) throw new Error(`${this.name} is already running`);
    const args = [
      '-a', '127.0.0.1', '-p', String(this.port), '-n', this.name,
      '-js', '-sd', this.storeDir,
      '--cluster_name', 'T', '--cluster', `nats://127.0.0.1:${this.clusterPort}`, '--routes', this.routes.join(','),
    ];
    const child = spawn(natsServerBinary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.#child = child;
    this.log = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`nats-server ${this.name} did not listen within ${LISTEN_TIMEOUT_MS} ms:\n${this.log}`)),
        LISTEN_TIMEOUT_MS,
      );
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (chunk: string) => {
        this.log += chunk;
        if (
          this.log.includes(`Listening for client connections on 127.0.0.1:${this.port}`) &&
          this.log.includes(`Listening for route connections on 127.0.0.1:${this.clusterPort}`)
        ) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        if (this.#child === child) this.#child = undefined;
        reject(new Error(`nats-server ${this.name} exited (code ${code}, signal ${signal}):\n${this.log}`));
      });
    });
  }

  /** SIGKILL: the node crashes. */
  async kill(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    await killNow(child);
  }
}

export class NatsCluster {
  readonly nodes: NatsNode[];

  private constructor(nodes: NatsNode[]) {
    this.nodes = nodes;
  }

  /** Picks the ports and directories of three nodes; start() runs them. */
  static async create(t: Test, size = 3): Promise<NatsCluster> {
    const ports = await freePorts(2 * size);
    const routes = Array.from({ length: size }, (_, i) => `nats://127.0.0.1:${ports[size + i]}`);
    const nodes = Array.from(
      { length: size },
      (_, i) => new NatsNode(`n${i + 1}`, ports[i]!, ports[size + i]!, tempDir(t, `edgemqtt-nats-n${i + 1}-`), routes),
    );
    const cluster = new NatsCluster(nodes);
    t.teardown(() => Promise.all(nodes.map((node) => node.kill())));
    return cluster;
  }

  get urls(): string[] {
    return this.nodes.map((node) => node.url);
  }

  node(name: string): NatsNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node) throw new Error(`no node named ${name} (nodes: ${this.nodes.map((n) => n.name).join(', ')})`);
    return node;
  }

  /** Starts every node, then waits (bounded) until the cluster's JetStream API answers. */
  async start(timeoutMs = 30_000): Promise<void> {
    await Promise.all(this.nodes.map((node) => node.start()));
    const nc = await connect({ servers: this.urls });
    try {
      await waitForJetStream(nc, timeoutMs);
    } finally {
      await nc.close();
    }
  }

  logs(): string {
    return this.nodes.map((node) => `--- ${node.name} ---\n${node.log}`).join('\n');
  }
}

/**
 * A fresh cluster's JetStream API answers only once its meta group has a
 * leader, seconds after the servers listen: ask until it does, with a bound.
 */
export async function waitForJetStream(nc: NatsConnection, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const jsm = await jetstreamManager(nc, { checkAPI: false, timeout: 2000 });
      await jsm.getAccountInfo();
      return;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`JetStream did not answer within ${timeoutMs} ms: ${(last as Error)?.message}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** `count` distinct loopback ports nothing listens on now (held together while picked, so distinct). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, async () => {
      const server = net.createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
      });
      return server;
    }),
  );
  const ports = servers.map((server) => (server.address() as net.AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
  return ports;
}
