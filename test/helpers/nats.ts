/**
 * Real `nats-server -js` children for the bridge tests: loopback only, a
 * temporary store directory, a port the server picks (kept across a restart,
 * so that clients find it again), killed with SIGKILL to make outages.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import type { Test } from 'tap';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { JetStreamManager } from '@nats-io/jetstream';
import { tempDir } from './daemon.js';

export const natsServerBinary = process.env.NATS_SERVER ?? 'nats-server';

/** Why nats-server cannot run here, or undefined when it can. */
export function natsUnavailable(): string | undefined {
  const probe = spawnSync(natsServerBinary, ['--version'], { encoding: 'utf8' });
  return probe.status === 0 ? undefined : `${natsServerBinary} not found (apt-get install nats-server)`;
}

export class NatsServer {
  port = -1;
  readonly #storeDir: string;
  #child: ChildProcess | undefined;

  /** `args`: more nats-server flags, e.g. `['--user', 'u', '--pass', 'p']`. */
  constructor(
    t: Test,
    readonly args: string[] = [],
  ) {
    this.#storeDir = tempDir(t, 'edgemqtt-nats-');
    t.teardown(() => this.kill());
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** Starts the server (on the port it had before, after a restart) and resolves once it accepts clients. */
  async start(): Promise<void> {
    // A first start lets nats-server pick a port, and it can lose that port
    // to another process starting at the same moment (the test files run in
    // parallel): then it tries again, a bounded number of times.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#startOnce();
        return;
      } catch (error) {
        if (this.port !== -1 || attempt === 3 || !/address already in use/.test((error as Error).message)) throw error;
      }
    }
  }

  async #startOnce(): Promise<void> {
    const child = spawn(natsServerBinary, ['-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', this.#storeDir, ...this.args], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.#child = child;
    let log = '';
    this.port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server did not listen within 10 s:\n${log}`)), 10_000);
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (chunk: string) => {
        log += chunk;
        const match = /Listening for client connections on [\d.]+:(\d+)/.exec(log);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`nats-server exited with ${code}:\n${log}`));
      });
    });
  }

  /** SIGKILL: an outage, or a crash, as abrupt as they come. */
  async kill(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    await killNow(child);
  }
}

/** SIGKILLs a child (if it still runs) and resolves once it has exited. */
export async function killNow(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/** A plain nats.js client for the test's own look at the JetStream side. */
export async function natsClient(t: Test, server: NatsServer): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url });
  t.teardown(() => nc.close());
  return nc;
}

/** One message of a stream as the tests look at it. */
export interface StreamEntry {
  seq: number;
  subject: string;
  /** The payload as UTF-8 text. */
  data: string;
  msgId: string | undefined;
  origin: string | undefined;
}

/** Every message a stream holds now, in stream order (fetched by sequence, a few requests at a time). */
export async function readStream(jsm: JetStreamManager, stream: string): Promise<StreamEntry[]> {
  const { state } = await jsm.streams.info(stream);
  if (state.messages === 0) return [];
  const decoder = new TextDecoder();
  const entries: StreamEntry[] = [];
  const CONCURRENCY = 32;
  for (let from = state.first_seq; from <= state.last_seq; from += CONCURRENCY) {
    const seqs = Array.from({ length: Math.min(CONCURRENCY, state.last_seq - from + 1) }, (_, i) => from + i);
    const batch = await Promise.all(seqs.map((seq) => jsm.streams.getMessage(stream, { seq })));
    for (const message of batch) {
      if (!message) continue;
      entries.push({
        seq: message.seq,
        subject: message.subject,
        data: decoder.decode(message.data),
        msgId: message.header?.get('Nats-Msg-Id') || undefined,
        origin: message.header?.get('Edgemqtt-Origin') || undefined,
      });
    }
  }
  return entries;
}
