/**
 * Memory: a broker's resident set when idle, and what each idle connection
 * adds to it, for edgemqtt, Mosquitto and (when installed) nats-server's MQTT
 * listener, every broker in the same run.
 *
 * Each round starts a fresh broker, waits for it to settle, samples
 * /proc/PID/status (VmRSS, RssAnon, RssFile), then opens N idle MQTT 3.1.1
 * clients over TCP (CONNECT with keepalive 0, clean session, CONNACK
 * awaited), samples again, opens N more over WebSocket (kept alongside the TCP
 * ones) and samples a third time. Per-connection cost = the RSS difference
 * divided by N. A sample is the median of several reads a fraction of a
 * second apart, taken after a settle time, because a garbage-collected heap
 * grows and shrinks in steps. The figures printed are medians over the
 * rounds, with their spread (min–max).
 *
 * edgemqtt runs as the systemd unit and `npm start` run it (`node
 * --max-semi-space-size=4 dist/bin/edgemqtt.js start --config FILE`), with the example config's defaults (metrics on,
 * dashboard and admin API off, no bridge) on loopback ports, so that the
 * figure is the one a user would see.
 *
 * Usage: npm run bench:memory
 *   BENCH_MEMORY_CONNECTIONS=1000 (per transport)  BENCH_MEMORY_ROUNDS=3
 *   BENCH_MEMORY_NODE_FLAGS="--max-semi-space-size=4" (node flags for edgemqtt; "" for V8's defaults)
 *   BENCH_MEMORY_SETTLE_SEC=3 (how long each state is left before it is sampled)
 *   BENCH_MEMORY_BROKERS=edgemqtt,mosquitto,nats-server (default: each one found)
 *
 * The settle time decides what a Node broker's figure means: V8 commits
 * old-space room while its heap grows (a burst of connections) and gives the
 * unused part back only when its memory reducer runs, some 20 s after the
 * allocation stops. At 3 s the sample holds that room; at 30 s it shows what
 * an idle gateway keeps. A C broker's figures do not move with it.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import path from 'node:path';
import { median } from './common.js';
import { benchWorkspace, findMosquitto, findNatsServer, shippedNodeFlags, startMosquitto, startNatsServer, type RunningBroker } from './brokers.js';
import { openClients, startEdgemqttCli, type Target } from './idle-clients.js';

const CONNECTIONS = Number(process.env.BENCH_MEMORY_CONNECTIONS ?? 1000);
const ROUNDS = Number(process.env.BENCH_MEMORY_ROUNDS ?? 3);
const EXTRA_NODE_FLAGS = (process.env.BENCH_MEMORY_NODE_FLAGS ?? shippedNodeFlags().join(' ')).split(' ').filter(Boolean);
const SETTLE_MS = Number(process.env.BENCH_MEMORY_SETTLE_SEC ?? 3) * 1000;

interface Sample {
  rssKb: number;
  anonKb: number;
  fileKb: number;
}

interface Round {
  idle: Sample;
  tcp: Sample;
  ws?: Sample;
}

function readStatus(pid: number): Sample {
  const status = readFileSync(`/proc/${pid}/status`, 'latin1');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
  return { rssKb: field('VmRSS'), anonKb: field('RssAnon'), fileKb: field('RssFile') };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** After SETTLE_MS, the median of 5 reads 200 ms apart. */
async function settledSample(pid: number): Promise<Sample> {
  await sleep(SETTLE_MS);
  const reads: Sample[] = [];
  for (let i = 0; i < 5; i++) {
    reads.push(readStatus(pid));
    await sleep(200);
  }
  return {
    rssKb: median(reads.map((r) => r.rssKb)),
    anonKb: median(reads.map((r) => r.anonKb)),
    fileKb: median(reads.map((r) => r.fileKb)),
  };
}

// ---------------------------------------------------------------- brokers

/** A broker from brokers.ts as a Target. */
function asTarget(running: RunningBroker): Target {
  return { ...running.endpoint, stop: () => running.stop() };
}

async function measure(start: (dir: string) => Promise<Target>, round: number, tempDir: string): Promise<Round> {
  const dir = mkdtempSync(path.join(tempDir, `round-${round}-`));
  const target = await start(dir);
  const open: Socket[] = [];
  try {
    const idle = await settledSample(target.pid);
    open.push(...(await openClients(target, 'tcp', CONNECTIONS, round)));
    const tcp = await settledSample(target.pid);
    if (target.wsPort === 0) return { idle, tcp };
    open.push(...(await openClients(target, 'ws', CONNECTIONS, round)));
    const ws = await settledSample(target.pid);
    return { idle, tcp, ws };
  } finally {
    for (const socket of open) socket.destroy();
    await target.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- report

function spread(values: number[], digits: number): string {
  const fmt = (v: number) => v.toFixed(digits);
  return `${fmt(median(values))} (${fmt(Math.min(...values))}–${fmt(Math.max(...values))})`;
}

function report(name: string, rounds: Round[]): void {
  const mb = (kb: number) => kb / 1024;
  const perTcp = rounds.map((r) => (r.tcp.rssKb - r.idle.rssKb) / CONNECTIONS);
  const perTcpAnon = rounds.map((r) => (r.tcp.anonKb - r.idle.anonKb) / CONNECTIONS);
  const withWs = rounds.filter((r): r is Round & { ws: Sample } => r.ws !== undefined);
  console.log(`${name}`);
  console.log(`  idle RSS, MB                 ${spread(rounds.map((r) => mb(r.idle.rssKb)), 1)}`);
  console.log(`  idle RssAnon / RssFile, MB   ${spread(rounds.map((r) => mb(r.idle.anonKb)), 1)} / ${spread(rounds.map((r) => mb(r.idle.fileKb)), 1)}`);
  console.log(`  RSS with ${CONNECTIONS} TCP, MB        ${spread(rounds.map((r) => mb(r.tcp.rssKb)), 1)}`);
  console.log(`  KB per idle TCP client       ${spread(perTcp, 1)}  (RssAnon ${spread(perTcpAnon, 1)})`);
  if (withWs.length > 0) {
    console.log(`  RSS with +${CONNECTIONS} WebSocket, MB ${spread(withWs.map((r) => mb(r.ws.rssKb)), 1)}`);
    console.log(`  KB per idle WebSocket client ${spread(withWs.map((r) => (r.ws.rssKb - r.tcp.rssKb) / CONNECTIONS), 1)}  (RssAnon ${spread(withWs.map((r) => (r.ws.anonKb - r.tcp.anonKb) / CONNECTIONS), 1)})`);
  } else {
    console.log('  KB per idle WebSocket client n/a (no MQTT over WebSocket here)');
  }
}

async function main(tempDir: string): Promise<void> {
  const [mosquitto, natsServer] = [findMosquitto(), findNatsServer()];
  const targets: Array<[string, (dir: string) => Promise<Target>]> = [['edgemqtt', (dir) => startEdgemqttCli(dir, EXTRA_NODE_FLAGS)]];
  if (mosquitto) targets.push(['mosquitto', async (dir) => asTarget(await startMosquitto(mosquitto, dir))]);
  // TCP only, as measured so far: no websocket listener.
  if (natsServer) targets.push(['nats-server (MQTT)', async (dir) => asTarget(await startNatsServer(natsServer, dir, false))]);
  const only = process.env.BENCH_MEMORY_BROKERS?.split(',');
  if (only) targets.splice(0, targets.length, ...targets.filter(([name]) => only.some((wanted) => name.startsWith(wanted))));
  console.log(`memory: ${ROUNDS} rounds, ${CONNECTIONS} idle clients per transport, sampled ${SETTLE_MS / 1000} s after each step, node ${process.version}${EXTRA_NODE_FLAGS.length ? `, edgemqtt node flags ${EXTRA_NODE_FLAGS.join(' ')}` : ''}`);
  const results = new Map<string, Round[]>(targets.map(([name]) => [name, []]));
  // Brokers take turns within a round, so that load from elsewhere on the machine falls on each alike.
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, start] of targets) results.get(name)!.push(await measure(start, round, tempDir));
  }
  for (const [name, rounds] of results) report(name, rounds);
  const edge = results.get('edgemqtt');
  const mosq = results.get('mosquitto');
  if (edge && mosq) {
    const ratio = (a: number[], b: number[]) => (median(a) / median(b)).toFixed(1);
    console.log(`edgemqtt / mosquitto: idle RSS ${ratio(edge.map((r) => r.idle.rssKb), mosq.map((r) => r.idle.rssKb))}×`);
  }
}

// Every broker is stopped and the temp dir removed on the way out, also after an error or on SIGINT/SIGTERM.
const { tempDir, cleanup } = benchWorkspace('edgemqtt-bench-memory-');
main(tempDir)
  .catch((error: unknown) => {
    console.error('memory benchmark failed:', error);
    process.exitCode = 1;
  })
  .finally(cleanup);
