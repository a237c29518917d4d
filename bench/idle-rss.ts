/**
 * The memory row of `npm run bench:throughput`: a broker's resident set when
 * idle and with N idle MQTT connections, read from /proc/<pid>/status
 * (VmRSS) once it has stopped moving.
 *
 * The broker is started fresh for this (no earlier load has grown its heap or
 * buffers), nothing connects until its RSS is stable, then a load generator
 * child opens N TCP connections (CONNECT, CONNACK) and keeps them, and the
 * RSS is read again once stable. The per-connection cost is the difference
 * divided by N.
 */
import type { ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { processRssKb, type BrokerEndpoint, type ClientProtocol, type IdleResult, type IdleSpec } from './common.js';

export interface RssResult {
  idleKb: number;
  connectedKb: number;
  connections: number;
  /** False when RSS was still moving at the deadline (the last reading is reported). */
  stable: boolean;
}

const SAMPLE_MS = 250;
/** Stable: the last STABLE_SAMPLES readings (1.5 s) lie within 1% of each other. */
const STABLE_SAMPLES = 6;
const STABLE_DEADLINE_MS = 15_000;

/** Polls VmRSS until it holds still; resolves with the last reading. */
export async function stableRssKb(pid: number): Promise<{ kb: number; stable: boolean }> {
  const readings: number[] = [];
  const deadline = Date.now() + STABLE_DEADLINE_MS;
  for (;;) {
    readings.push(processRssKb(pid));
    const last = readings.slice(-STABLE_SAMPLES);
    const max = Math.max(...last);
    const min = Math.min(...last);
    if (last.length === STABLE_SAMPLES && max - min <= max * 0.01) return { kb: last[last.length - 1] as number, stable: true };
    if (Date.now() > deadline) return { kb: readings[readings.length - 1] as number, stable: false };
    await sleep(SAMPLE_MS);
  }
}

/** Starts the load generator's idle run and resolves once all its connections are open. */
function openIdle(fork: (args: string[]) => ChildProcess, spec: IdleSpec): Promise<{ child: ChildProcess; idle: IdleResult }> {
  const child = fork([JSON.stringify(spec)]);
  return new Promise((resolve, reject) => {
    child.once('message', (message: { idle?: IdleResult; error?: string }) => {
      if (message.idle) resolve({ child, idle: message.idle });
      else reject(new Error(`idle connections to ${spec.endpoint.name}: ${message.error ?? 'unknown error'}`));
    });
    child.once('exit', (code) => reject(new Error(`idle connections to ${spec.endpoint.name}: load generator exited with ${code}`)));
  });
}

export async function measureRss(
  endpoint: BrokerEndpoint,
  protocol: ClientProtocol,
  connections: number,
  fork: (args: string[]) => ChildProcess,
): Promise<RssResult> {
  const idle = await stableRssKb(endpoint.pid);
  const { child } = await openIdle(fork, { kind: 'idle', endpoint, protocol, connections, concurrency: 50, timeoutMs: 60_000 });
  try {
    const connected = await stableRssKb(endpoint.pid);
    return { idleKb: idle.kb, connectedKb: connected.kb, connections, stable: idle.stable && connected.stable };
  } finally {
    // The load generator exits when its IPC channel closes; its sockets close with it.
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.disconnect();
      await exited;
    }
  }
}
