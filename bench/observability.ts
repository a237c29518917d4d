/**
 * `npm run bench:observability`: what watching the broker costs.
 *
 * 1. Throughput, one TCP publisher → one TCP subscriber, QoS 0 and QoS 1,
 *    for BENCH_SECONDS per run, under each condition:
 *      baseline  nobody watches
 *      scraped   GET /metrics every second, as Prometheus would
 *      dashboard the dashboard open in headless Chromium, logged in
 *      both      scraped and the dashboard open
 *      watching #  the dashboard's topic tree watching `#` (one more
 *                subscriber to every message, rendered on the same machine)
 *    Conditions alternate in order round after round (BENCH_ROUNDS), so
 *    none always runs first on a warming or busy machine; the table shows
 *    medians and each condition's cost against the baseline in %.
 * 2. Scrape time, idle and with BENCH_CLIENTS (10,000) clients connected: the
 *    median and p90 of BENCH_SCRAPES scrapes, the broker's CPU time per
 *    scrape (steadier than throughput on a shared machine), the text's size.
 *
 * edgemqtt runs through its CLI in its own process (`npm run build` first),
 * with limits.connectRatePerAddressPerSec off (every client comes from
 * 127.0.0.1) and its file limit raised to the hard limit. The load and the
 * scrapes come from this process over raw sockets (mqtt-packet); the
 * scraping condition scrapes from a process of its own, as Prometheus would.
 *
 *   npm run bench:observability
 *   env: BENCH_SECONDS=6 BENCH_ROUNDS=5 BENCH_WINDOW=500 BENCH_PAYLOAD_BYTES=32
 *        BENCH_CLIENTS=10000 BENCH_SCRAPES=20
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { generate, parser as packetParser, type Packet } from 'mqtt-packet';
import { chromium } from 'playwright-core';
import { median, RawConnection } from './persistence-load.js';
import { processCpuMs } from './common.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const SECONDS = env('BENCH_SECONDS', 6);
const ROUNDS = env('BENCH_ROUNDS', 5);
const WINDOW = env('BENCH_WINDOW', 500);
const PAYLOAD = Buffer.alloc(env('BENCH_PAYLOAD_BYTES', 32), 0x61);
const CLIENTS = env('BENCH_CLIENTS', 10_000);
const SCRAPES = env('BENCH_SCRAPES', 20);
const TOPIC = 'bench/observability';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The built CLI, relative to dist-bench/bench/. */
const cli = path.resolve(here, '..', '..', 'dist', 'bin', 'edgemqtt.js');

interface Broker {
  mqttPort: number;
  httpPort: number;
  pid: number;
  stop(): Promise<void>;
}

/** edgemqtt through its CLI, its open-file limit raised to the hard limit (10,000 clients need 10,000 sockets). */
async function startBroker(dataDir: string): Promise<Broker> {
  const configPath = path.join(dataDir, 'edgemqtt.yaml');
  await writeFile(
    configPath,
    JSON.stringify({
      dataDir,
      log: { level: 'info' },
      mqtt: { host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: 0 },
      limits: { connectRatePerAddressPerSec: 0 },
    }),
  );
  const child: ChildProcess = spawn('sh', ['-c', 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"', process.execPath, cli, 'start', '--config', configPath], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const ports = await new Promise<{ mqttPort: number; httpPort: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('edgemqtt did not start within 60 s')), 60_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let entry: { msg?: string; addresses?: { mqtt?: { port: number }; http?: { port: number } } };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        return;
      }
      if (entry.msg === 'edgemqtt ready') {
        clearTimeout(timer);
        resolve({ mqttPort: entry.addresses!.mqtt!.port, httpPort: entry.addresses!.http!.port });
      }
    });
    child.once('exit', (code) => reject(new Error(`edgemqtt exited with ${code}`)));
  });
  return {
    ...ports,
    pid: child.pid!,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** GET /metrics; resolves with the time it took (ms) and the text's size. */
async function scrape(broker: Broker): Promise<{ ms: number; bytes: number }> {
  const started = performance.now();
  const response = await fetch(`http://127.0.0.1:${broker.httpPort}/metrics`);
  const text = await response.text();
  if (response.status !== 200) throw new Error(`GET /metrics answered ${response.status}`);
  return { ms: performance.now() - started, bytes: Buffer.byteLength(text) };
}

// ---------------------------------------------------------------- conditions

/** Something watching the broker during a throughput run; start() resolves, once it watches, with its stop. */
interface Condition {
  name: string;
  start(broker: Broker): Promise<() => Promise<void>>;
}

const CONDITIONS: Condition[] = [
  { name: 'baseline', start: async () => async () => undefined },
  {
    name: 'scraped',
    // In a process of its own, as Prometheus is: the load generator's event
    // loop and CPU stay as in the baseline. The run starts after its first
    // scrape, so that the process' start-up is not measured.
    async start(broker) {
      const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--scraper', String(broker.httpPort)], {
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      await new Promise<void>((resolve, reject) => {
        child.once('message', () => resolve());
        child.once('exit', (code) => reject(new Error(`the scraper exited with ${code}`)));
      });
      return () =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        });
    },
  },
];

/**
 * The dashboard open in headless Chromium (BENCH_CHROMIUM, /usr/bin/chromium),
 * logged in anonymously: it subscribes to `#` and `$SYS/#` and polls the
 * admin API (off here, so it is told 404 once). Chromium shares the machine's
 * cores with the broker and the load generator, as a browser on the gateway
 * itself would; a browser elsewhere costs the gateway only its deliveries.
 */
async function openDashboard(broker: Broker, watch = false): Promise<() => Promise<void>> {
  const browser = await chromium.launch({ executablePath: process.env.BENCH_CHROMIUM ?? '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu'] });
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${broker.httpPort}/`);
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 30_000 });
  if (watch) {
    await page.getByRole('button', { name: 'Watch', exact: true }).click();
    await page.locator('#watch[data-watching="on"]').waitFor({ timeout: 30_000 });
  }
  // Chromium's own start-up work (compiling, its helper processes) goes on
  // for a moment after the page is connected; the run measures the page
  // open, not the browser starting.
  await new Promise((resolve) => setTimeout(resolve, 2000));
  return () => browser.close();
}

/** Starts each in turn; the stop stops them all. */
function together(...conditions: Condition[]): Condition['start'] {
  return async (broker) => {
    const stops: Array<() => Promise<void>> = [];
    for (const condition of conditions) stops.push(await condition.start(broker));
    return async () => {
      for (const stop of stops) await stop();
    };
  };
}

CONDITIONS.push({ name: 'dashboard', start: (broker) => openDashboard(broker) });
CONDITIONS.push({ name: 'both', start: together(CONDITIONS[1]!, CONDITIONS[2]!) });
// The topic tree watching `#`: the page is then one more subscriber to the
// benchmark's every message, and Chromium renders them on the same 2 cores.
CONDITIONS.push({ name: 'watching #', start: (broker) => openDashboard(broker, true) });

/** The scraper process: GET /metrics on `port` now and every second after, until killed; tells its parent after the first. */
function runScraper(port: number): void {
  const once = () =>
    fetch(`http://127.0.0.1:${port}/metrics`)
      .then((response) => response.text())
      .catch((error: Error) => console.error(`scrape failed: ${error.message}`));
  void once().then(() => process.send?.('scraping'));
  setInterval(() => void once(), 1000);
}

// ---------------------------------------------------------------- throughput

/**
 * Messages per second from one TCP publisher to one TCP subscriber at `qos`
 * for SECONDS: the publisher keeps at most WINDOW messages ahead of what the
 * subscriber received (and, at QoS 1, of its PUBACKs).
 */
async function throughput(broker: Broker, qos: 0 | 1): Promise<{ perSecond: number; cpuPercent: number; loadCpuPercent: number }> {
  const stamp = `${process.pid}-${Date.now()}`;
  let received = 0;
  let wake: () => void = () => undefined;
  const subscriber = await RawConnection.open(broker.mqttPort, `sub-${stamp}`, true, (packet, connection) => {
    if (packet.cmd !== 'publish') return;
    received++;
    if (packet.qos === 1 && packet.messageId !== undefined) connection.send({ cmd: 'puback', messageId: packet.messageId });
    wake();
  });
  await subscriber.request({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: TOPIC, qos }] }, 'suback');
  let acked = 0;
  const publisher = await RawConnection.open(broker.mqttPort, `pub-${stamp}`, true, (packet) => {
    if (packet.cmd === 'puback') {
      acked++;
      wake();
    }
  });

  let sent = 0;
  let messageId = 0;
  // One PUBLISH encoded once; at QoS 1 its packet identifier (the two bytes
  // before the payload) is patched per message: the load generator's CPU goes
  // to the sockets, not to encoding.
  const template = generate({ cmd: 'publish', topic: TOPIC, payload: PAYLOAD, qos, dup: false, retain: false, messageId: qos ? 1 : undefined });
  const idOffset = template.length - PAYLOAD.length - 2;
  const publish = (): boolean => {
    sent++;
    if (qos === 0) return publisher.send(template);
    messageId = (messageId % 65535) + 1;
    const packet = Buffer.from(template);
    packet.writeUInt16BE(messageId, idOffset);
    return publisher.send(packet);
  };
  const outstanding = () => sent - Math.min(received, qos === 1 ? acked : received);
  const cpuBefore = processCpuMs(broker.pid);
  const ownCpuBefore = process.cpuUsage();
  const started = performance.now();
  const deadline = started + SECONDS * 1000;
  const receivedBefore = received;
  while (performance.now() < deadline) {
    while (outstanding() < WINDOW) publish();
    await new Promise<void>((resolve) => {
      wake = resolve;
      // Bounded: a lost message must not hang the run.
      setTimeout(resolve, 100);
    });
  }
  const elapsed = performance.now() - started;
  const delivered = received - receivedBefore;
  const cpuMs = processCpuMs(broker.pid) - cpuBefore;
  const ownCpu = process.cpuUsage(ownCpuBefore);
  publisher.close();
  subscriber.close();
  return {
    perSecond: (delivered * 1000) / elapsed,
    cpuPercent: (cpuMs / elapsed) * 100,
    loadCpuPercent: ((ownCpu.user + ownCpu.system) / 1000 / elapsed) * 100,
  };
}

// ---------------------------------------------------------------- many clients

/** Opens `count` idle MQTT 3.1.1 clients, 200 at a time; resolves with their sockets. */
async function connectMany(port: number, count: number): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  const one = (index: number) =>
    new Promise<net.Socket>((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      const parser = packetParser({ protocolVersion: 4 });
      parser.on('packet', (packet: Packet) => {
        if (packet.cmd !== 'connack') return;
        if (packet.returnCode !== 0) reject(new Error(`CONNACK ${packet.returnCode}`));
        else resolve(socket);
      });
      socket.on('data', (data) => parser.parse(data));
      socket.once('error', reject);
      socket.on('connect', () =>
        socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: `idle-${index}`, clean: true, keepalive: 0 })),
      );
    });
  for (let start = 0; start < count; start += 200) {
    const batch = await Promise.all(Array.from({ length: Math.min(200, count - start) }, (_, i) => one(start + i)));
    sockets.push(...batch);
  }
  return sockets;
}

/** SCRAPES scrapes one after another: wall time (median, p90, max) and the broker's CPU time per scrape. */
async function scrapeSeries(broker: Broker, what: string): Promise<void> {
  const times: number[] = [];
  let bytes = 0;
  const cpuBefore = processCpuMs(broker.pid);
  for (let i = 0; i < SCRAPES; i++) {
    const result = await scrape(broker);
    times.push(result.ms);
    bytes = result.bytes;
  }
  const cpuPerScrape = (processCpuMs(broker.pid) - cpuBefore) / SCRAPES;
  times.sort((a, b) => a - b);
  console.log(
    `scrape, ${what}: median ${format(median(times), 1)} ms, p90 ${format(times[Math.floor(times.length * 0.9)] ?? Number.NaN, 1)} ms, ` +
      `max ${format(times.at(-1) ?? Number.NaN, 1)} ms over ${SCRAPES} scrapes; broker CPU ${format(cpuPerScrape, 1)} ms per scrape ` +
      `(${format(cpuPerScrape / 10, 2)}% of one core at one scrape a second); ${format(bytes / 1024, 1)} KiB of text`,
  );
}

// ---------------------------------------------------------------- main

const format = (value: number, digits = 0) => value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'edgemqtt-bench-observability-'));
  const broker = await startBroker(dir);
  try {
    console.log(
      `edgemqtt observability bench: ${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}, load average ${loadavg().map((n) => n.toFixed(2)).join(' ')}, node ${process.version}`,
    );
    console.log(`settings: ${JSON.stringify({ SECONDS, ROUNDS, WINDOW, payloadBytes: PAYLOAD.length, CLIENTS, SCRAPES })}\n`);

    const results = new Map<string, number[]>();
    /** The broker's CPU time per message delivered (µs): steadier than throughput when Chromium shares the cores. */
    const cpuPerMessage = new Map<string, number[]>();
    // QoS 0 rounds first, then QoS 1: LevelDB compacts in the background
    // after QoS 1 runs, and that CPU must not fall on whichever QoS 0 run
    // comes next.
    for (const qos of [0, 1] as const) {
      // Warm-up: JIT (and at QoS 1 the store's first batches), not measured.
      await throughput(broker, qos);
      for (let round = 1; round <= ROUNDS; round++) {
        const order = round % 2 === 1 ? CONDITIONS : [...CONDITIONS].reverse();
        for (const condition of order) {
          const stop = await condition.start(broker);
          const result = await throughput(broker, qos);
          await stop();
          const key = `${qos} ${condition.name}`;
          results.set(key, [...(results.get(key) ?? []), result.perSecond]);
          cpuPerMessage.set(key, [...(cpuPerMessage.get(key) ?? []), (result.cpuPercent * 10_000) / result.perSecond]);
          console.log(`[QoS ${qos} round ${round}] ${condition.name.padEnd(10)} ${format(result.perSecond)} msg/s, broker CPU ${format(result.cpuPercent)}%, load generator CPU ${format(result.loadCpuPercent)}%`);
        }
      }
    }
    console.log('\nthroughput, TCP → TCP (medians; cost against the baseline: throughput lost, and broker CPU time added per message)');
    for (const qos of [0, 1]) {
      const baseline = median(results.get(`${qos} baseline`) ?? []);
      const baselineCpu = median(cpuPerMessage.get(`${qos} baseline`) ?? []);
      for (const condition of CONDITIONS) {
        const value = median(results.get(`${qos} ${condition.name}`) ?? []);
        const cpu = median(cpuPerMessage.get(`${qos} ${condition.name}`) ?? []);
        const cost =
          condition.name === 'baseline'
            ? ''
            : `   cost ${format(((baseline - value) / baseline) * 100, 1)}% throughput, ${format(((cpu - baselineCpu) / baselineCpu) * 100, 1)}% CPU per message`;
        console.log(`  QoS ${qos}  ${condition.name.padEnd(10)} ${format(value).padStart(9)} msg/s, broker ${format(cpu, 2)} µs CPU per message${cost}`);
      }
    }

    // The broker's CPU time per scrape is steadier than throughput on a
    // shared machine: at one scrape a second, X ms of it is X/10 % of one core.
    await scrapeSeries(broker, 'idle broker');
    console.log(`\nconnecting ${format(CLIENTS)} idle clients...`);
    const sockets = await connectMany(broker.mqttPort, CLIENTS);
    await scrapeSeries(broker, `${format(sockets.length)} clients connected`);
    for (const socket of sockets) socket.destroy();
  } finally {
    await broker.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--scraper') runScraper(Number(process.argv[3]));
else main().catch((error: unknown) => {
  console.error('observability bench failed:', error);
  process.exit(1);
});
