/**
 * `npm run bench:scale`: many connections, edgemqtt against Mosquitto on
 * this machine in the same run, each broker fresh for each scenario:
 *
 *   storm   5,000 clients (half TCP, half WebSocket) connect at once, as
 *           after a broker restart, all from 127.0.0.1 like clients behind a
 *           local proxy: time until every CONNACK, failures, the broker's
 *           peak RSS and CPU. edgemqtt runs its default limits (connection
 *           rate 20/s per address after a burst of 100, loopback exempt); an
 *           extra edgemqtt row without the loopback exemption shows what the
 *           exemption saves.
 *   steady  10,000 clients (half TCP, half WebSocket), each publishing 64
 *           bytes at QoS 0 once a second to its own topic, and 4 subscribers
 *           on `scale/#` (2 TCP, 2 WebSocket), each receiving every message,
 *           for BENCH_SCALE_SECONDS: the broker's CPU % and RSS (sampled each
 *           second), p50/p99 latency from a send timestamp in the payload.
 *   idle    as many idle WebSocket connections as the file limit allows
 *           (BENCH_SCALE_IDLE, 19,000): RSS per connection, and 50,000
 *           extrapolated from it linearly.
 *
 * The clients live in BENCH_SCALE_LOADGENS load generator processes
 * (scale-loadgen.ts, 2 by default), so each process stays under its own limit
 * on open files. Brokers and load generators are started through
 * `sh -c 'ulimit -n 20000; exec …'`: the limit is raised for the benchmark's
 * children only (this machine's hard limit is 20,000). The two ends of every
 * loopback connection are both on this machine, and both brokers hold one
 * descriptor per connection: 19,000 leaves room for the broker's own files.
 *
 * Environment (all optional):
 *   BENCH_SCALE_SCENARIOS=storm,steady,idle   BENCH_SCALE_BROKERS=edgemqtt,mosquitto
 *   BENCH_SCALE_SECONDS=600 (steady, measured) BENCH_SCALE_WARMUP_SECONDS=15
 *   BENCH_SCALE_CLIENTS=10000 BENCH_SCALE_SUBSCRIBERS=4 BENCH_SCALE_STORM=5000 BENCH_SCALE_IDLE=19000
 *   BENCH_SCALE_LOADGENS=2 BENCH_SCALE_FILE_LIMIT=20000 BENCH_SCALE_PAYLOAD_BYTES=64
 *   BENCH_SCALE_VARIANTS=aedes,semi64   extra columns: edgemqtt variants from
 *                        variants.ts (default limits), e.g. bare aedes for what
 *                        edgemqtt adds to it
 *   BENCH_CPU_PROF=DIR   edgemqtt runs under `node --cpu-prof` (250 µs sampling),
 *                        its profile written to DIR when it stops and summarised
 *                        here by bench/profile.ts, the measured phase only (the
 *                        storm: from 'go' to the last CONNACK)
 *   BENCH_STORM_DUMP=PREFIX  each load generator writes PREFIX-<index>-<pid>.json:
 *                        the ms from 'go' to every CONNACK of the storm, by
 *                        transport ({"tcp": [...], "ws": [...]})
 */
import { mkdtempSync, readdirSync, statSync } from 'node:fs';
import { cpus } from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { envInt, processCpuMs, processRssKb, type BrokerEndpoint } from './common.js';
import { benchWorkspace, findMosquitto, forkScript, killChildren, startEdgemqtt, startMosquitto, type RunningBroker } from './brokers.js';
import { formatProfile, summarizeProfile } from './profile.js';
import { table } from './report.js';
import type { ScaleResult, ScaleSpec } from './scale-loadgen.js';


const settings = {
  scenarios: (process.env.BENCH_SCALE_SCENARIOS ?? 'storm,steady,idle').split(','),
  brokers: (process.env.BENCH_SCALE_BROKERS ?? 'edgemqtt,mosquitto').split(','),
  seconds: Math.max(1, envInt('BENCH_SCALE_SECONDS', 600)),
  warmupSeconds: envInt('BENCH_SCALE_WARMUP_SECONDS', 15),
  clients: envInt('BENCH_SCALE_CLIENTS', 10_000),
  subscribers: Math.max(2, envInt('BENCH_SCALE_SUBSCRIBERS', 4)),
  storm: envInt('BENCH_SCALE_STORM', 5000),
  idle: envInt('BENCH_SCALE_IDLE', 19_000),
  loadgens: Math.max(1, envInt('BENCH_SCALE_LOADGENS', 2)),
  fileLimit: envInt('BENCH_SCALE_FILE_LIMIT', 20_000),
  payloadBytes: Math.max(16, envInt('BENCH_SCALE_PAYLOAD_BYTES', 64)),
  cpuProfileDir: process.env.BENCH_CPU_PROF,
  variants: (process.env.BENCH_SCALE_VARIANTS ?? '').split(',').filter(Boolean),
};

/** Node flags for an edgemqtt under BENCH_CPU_PROF, else none. */
function profileFlags(): string[] {
  const dir = settings.cpuProfileDir;
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(dir)}`, '--cpu-prof-interval=250'] : [];
}

/** Summarises the newest profile in BENCH_CPU_PROF, written when the broker stopped. */
function printNewestProfile(label: string, window: { fromUs: number; toUs: number } | undefined): void {
  const dir = settings.cpuProfileDir;
  if (!dir) return;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => path.join(dir, f))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (!files[0]) return console.log(`no CPU profile in ${dir}`);
  const span = window ? ` ${window.fromUs} ${window.toUs}` : '';
  console.log(`\nCPU profile of ${label} (node dist-bench/bench/profile.js ${files[0]} 40${span}):\n${formatProfile(summarizeProfile(files[0], window), 40)}\n`);
}

/** A broker under test, as started for one scenario. */
interface Contender {
  /** Column name. */
  name: string;
  start(tempDir: string): Promise<RunningBroker>;
}

function contenders(mosquitto: string | null): Contender[] {
  const list: Contender[] = [];
  for (const name of settings.brokers) {
    if (name === 'edgemqtt') {
      // The product's default limits ({}): the storm must pass through them.
      list.push({ name, start: (dir) => startEdgemqtt({ dataDir: mkdtempSync(path.join(dir, 'edgemqtt-')), limits: {}, fileLimit: settings.fileLimit, execArgv: profileFlags() }) });
    } else if (name === 'mosquitto') {
      if (mosquitto) list.push({ name, start: (dir) => startMosquitto(mosquitto, dir, true, settings.fileLimit) });
      else console.log('mosquitto is not installed: its column stays empty (install the Debian package "mosquitto")');
    } else throw new Error(`unknown broker ${name} (edgemqtt, mosquitto)`);
  }
  for (const variant of settings.variants) {
    list.push({
      name: `edgemqtt [${variant}]`,
      start: (dir) => startEdgemqtt({ dataDir: mkdtempSync(path.join(dir, 'edgemqtt-')), variant, limits: {}, fileLimit: settings.fileLimit, execArgv: profileFlags() }),
    });
  }
  return list;
}

/** The last sampleBroker window, on the monotonic clock in µs (for BENCH_CPU_PROF). */
let lastWindow: { fromUs: number; toUs: number } | undefined;
const monotonicUs = () => Number(process.hrtime.bigint() / 1000n);

/** Broker CPU and RSS sampled every `intervalMs` until stopped. */
function sampleBroker(pid: number, intervalMs: number): { stop(): { cpuPercent: number; rssMeanMb: number; rssMaxMb: number; cpuMs: number; wallMs: number } } {
  const cpu0 = processCpuMs(pid);
  const wall0 = performance.now();
  const from = monotonicUs();
  const rss: number[] = [processRssKb(pid)];
  const timer = setInterval(() => rss.push(processRssKb(pid)), intervalMs);
  return {
    stop() {
      clearInterval(timer);
      lastWindow = { fromUs: from, toUs: monotonicUs() };
      rss.push(processRssKb(pid));
      const cpuMs = processCpuMs(pid) - cpu0;
      const wallMs = performance.now() - wall0;
      return {
        cpuPercent: (cpuMs / wallMs) * 100,
        rssMeanMb: rss.reduce((a, b) => a + b, 0) / rss.length / 1024,
        rssMaxMb: Math.max(...rss) / 1024,
        cpuMs,
        wallMs,
      };
    },
  };
}

/** One load generator child and its next IPC message. */
class Generator {
  readonly #child: ChildProcess;
  readonly #inbox: { type: string; [key: string]: unknown }[] = [];
  #waiter: (() => void) | undefined;
  #exited: string | undefined;

  constructor(spec: ScaleSpec) {
    this.#child = forkScript('scale-loadgen.js', [JSON.stringify(spec)], [], settings.fileLimit);
    this.#child.on('message', (message: { type: string }) => {
      this.#inbox.push(message);
      this.#waiter?.();
    });
    this.#child.once('exit', (code, signal) => {
      this.#exited = `load generator exited (${code ?? signal})`;
      this.#waiter?.();
    });
  }

  async next<T>(type: string, timeoutMs: number): Promise<T> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const message = this.#inbox.shift();
      if (message?.type === 'error') throw new Error(`load generator: ${String(message.error)}`);
      if (message) {
        if (message.type !== type) throw new Error(`load generator sent ${message.type}, expected ${type}`);
        return message as T;
      }
      if (this.#exited) throw new Error(this.#exited);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no ${type} from the load generator within ${timeoutMs / 1000} s`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#waiter = undefined;
    }
  }

  send(type: string): void {
    if (this.#child.connected) this.#child.send({ type });
  }
}

function specs(mode: ScaleSpec['mode'], endpoint: BrokerEndpoint, total: number, wsShare: number, extra: Partial<ScaleSpec> = {}): ScaleSpec[] {
  return Array.from({ length: settings.loadgens }, (_, index) => ({
    mode,
    endpoint,
    index,
    // Split as evenly as possible.
    clients: Math.floor(total / settings.loadgens) + (index < total % settings.loadgens ? 1 : 0),
    wsShare,
    subscribers: 0,
    keepaliveSec: 0,
    warmupSeconds: 0,
    seconds: 0,
    payloadBytes: settings.payloadBytes,
    connectConcurrency: 200,
    handshakeTimeoutMs: 60_000,
    ...extra,
  }));
}

/** Runs the generators through ready → go → result → close; `atReady` runs when all are ready, `atGo` after go. */
async function drive(
  generators: Generator[],
  readyTimeoutMs: number,
  resultTimeoutMs: number,
  atReady?: (ready: { connected?: number }[]) => Promise<void> | void,
): Promise<ScaleResult[]> {
  const ready = await Promise.all(generators.map((g) => g.next<{ connected?: number }>('ready', readyTimeoutMs)));
  await atReady?.(ready);
  for (const g of generators) g.send('go');
  const results = await Promise.all(generators.map((g) => g.next<{ result: ScaleResult }>('result', resultTimeoutMs)));
  for (const g of generators) g.send('close');
  return results.map((r) => r.result);
}

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
const mergeFailures = (results: ScaleResult[]) => {
  const merged: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.failures)) merged[k] = (merged[k] ?? 0) + v;
  return Object.entries(merged)
    .map(([k, v]) => `${k} ×${v}`)
    .join(', ');
};


async function storm(broker: RunningBroker): Promise<Map<string, number | string>> {
  const generators = specs('storm', broker.endpoint, settings.storm, 0.5).map((spec) => new Generator(spec));
  let sampler: ReturnType<typeof sampleBroker> | undefined;
  const results = await drive(generators, 30_000, 120_000, () => {
    sampler = sampleBroker(broker.endpoint.pid, 100);
  });
  const usage = sampler!.stop();
  const last = Math.max(...results.map((r) => r.connackMs?.max ?? Number.NaN));
  return new Map<string, number | string>([
    ['connected', sum(results.map((r) => r.connected))],
    ['failed', sum(results.map((r) => r.failed))],
    ['failures', mergeFailures(results)],
    ['last CONNACK, s', last / 1000],
    ['p50 CONNACK, s', Math.max(...results.map((r) => r.connackMs?.p50 ?? Number.NaN)) / 1000],
    ['p50 CONNACK TCP / WebSocket, s', ['tcp', 'ws'].map((transport) => (Math.max(...results.map((r) => r.connackP50Ms?.[transport as 'tcp' | 'ws'] ?? Number.NaN)) / 1000).toFixed(2)).join(' / ')],
    ['broker CPU, s', usage.cpuMs / 1000],
    ['broker peak RSS, MB', usage.rssMaxMb],
    ['load generator CPU, s', sum(results.map((r) => r.loadgenCpuMs)) / 1000],
  ]);
}

async function steady(broker: RunningBroker): Promise<Map<string, number | string>> {
  const perGenerator = Math.max(1, Math.round(settings.subscribers / settings.loadgens));
  const generators = specs('steady', broker.endpoint, settings.clients, 0.5, {
    subscribers: perGenerator,
    warmupSeconds: settings.warmupSeconds,
    seconds: settings.seconds,
  }).map((spec) => new Generator(spec));
  const rssIdle = processRssKb(broker.endpoint.pid) / 1024;
  let sampler: ReturnType<typeof sampleBroker> | undefined;
  let connectSeconds = 0;
  const connectStart = performance.now();
  const measured = drive(generators, 300_000, (settings.warmupSeconds + settings.seconds + 120) * 1000, () => {
    connectSeconds = (performance.now() - connectStart) / 1000;
    // Sampling starts with the warm-up's end, like the generators' own figures.
    setTimeout(() => (sampler = sampleBroker(broker.endpoint.pid, 1000)), settings.warmupSeconds * 1000);
  });
  const results = await measured;
  const usage = sampler?.stop();
  const published = sum(results.map((r) => r.published ?? 0));
  const elapsed = Math.max(...results.map((r) => r.elapsedMs)) / 1000;
  const delivered = sum(results.map((r) => r.delivered ?? 0));
  const expected = sum(results.map((r) => r.expected ?? 0));
  const deliveriesAll = sum(results.map((r) => r.deliveriesAll ?? 0));
  // No measured message arrived at all (a broker far behind): no latency to show, only the loss.
  const latency = (key: 'p50' | 'p99' | 'max') =>
    Math.max(...results.map((r) => (r.latencyMs && r.latencyMs.count > 0 ? r.latencyMs[key] : Number.NaN)));
  return new Map<string, number | string>([
    ['clients connected', sum(results.map((r) => r.connected))],
    ['failures', mergeFailures(results) || 'none'],
    ['connect time, s', connectSeconds],
    ['published, msg/s', published / elapsed],
    ['deliveries, msg/s', deliveriesAll / elapsed],
    ['lost deliveries', expected - delivered],
    ['latency p50, ms', latency('p50')],
    ['latency p99, ms', latency('p99')],
    ['latency max, ms', latency('max')],
    ['broker CPU, % of a core', usage?.cpuPercent ?? Number.NaN],
    ['broker CPU per delivery, µs', usage ? (usage.cpuMs * 1000) / (deliveriesAll + published) : Number.NaN],
    ['broker RSS idle, MB', rssIdle],
    ['broker RSS mean / max, MB', usage ? `${usage.rssMeanMb.toFixed(0)} / ${usage.rssMaxMb.toFixed(0)}` : '—'],
    ['load generators CPU, % of a core', (sum(results.map((r) => r.loadgenCpuMs)) / (elapsed * 1000)) * 100],
  ]);
}

async function idle(broker: RunningBroker): Promise<Map<string, number | string>> {
  // Settle the fresh broker before its idle figure.
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const rssIdle = processRssKb(broker.endpoint.pid) / 1024;
  const generators = specs('idle', broker.endpoint, settings.idle, 1, { keepaliveSec: 600 }).map((spec) => new Generator(spec));
  let rssConnected = 0;
  let connected = 0;
  let cpuIdle = 0;
  const results = await drive(generators, 600_000, 30_000, async (ready) => {
    connected = sum(ready.map((r) => r.connected ?? 0));
    // Let the broker finish what the connects left (timers, GC), then take the mean of the samples over 5 s.
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const sampler = sampleBroker(broker.endpoint.pid, 1000);
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const usage = sampler.stop();
    rssConnected = usage.rssMeanMb;
    cpuIdle = usage.cpuPercent;
  });
  const perConnectionKb = ((rssConnected - rssIdle) * 1024) / Math.max(1, connected);
  return new Map<string, number | string>([
    ['idle WebSocket connections', connected],
    ['failures', mergeFailures(results) || 'none'],
    ['broker RSS idle, MB', rssIdle],
    ['broker RSS with them, MB', rssConnected],
    ['RSS per idle WS connection, KB', perConnectionKb],
    ['broker CPU while idle, % of a core', cpuIdle],
    ['extrapolated RSS at 50,000, MB', rssIdle + (perConnectionKb * 50_000) / 1024],
  ]);
}

const SCENARIOS: Record<string, (broker: RunningBroker) => Promise<Map<string, number | string>>> = { storm, steady, idle };
const TITLES: Record<string, string> = {
  storm: `connect storm: ${settings.storm} clients (half WebSocket) at once from 127.0.0.1`,
  steady: `${settings.clients} clients (half WebSocket) at 1 msg/s each, ${settings.subscribers} subscribers on scale/#, ${settings.seconds} s measured`,
  idle: `idle WebSocket connections (${settings.idle} asked for)`,
};

function format(value: number | string | undefined): string {
  if (value === undefined) return '—';
  if (typeof value === 'string') return value;
  if (!Number.isFinite(value)) return '—';
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  return Math.abs(value) >= 100 ? Math.round(value).toLocaleString('en-US') : value.toFixed(Math.abs(value) >= 10 ? 1 : 2);
}

async function main(): Promise<void> {
  const { tempDir, cleanup } = benchWorkspace('edgemqtt-bench-scale-');
  const list = contenders(findMosquitto());
  console.log(`bench:scale on ${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}, node ${process.version}, ${settings.loadgens} load generator processes`);
  let failed = 0;
  try {
    for (const scenario of settings.scenarios) {
      const run = SCENARIOS[scenario];
      if (!run) throw new Error(`unknown scenario ${scenario} (storm, steady, idle)`);
      const columns = new Map<string, Map<string, number | string>>();
      const runs: Contender[] = [...list];
      // What the loopback exemption saves: the same storm with loopback held to the rate.
      if (scenario === 'storm' && list.some((c) => c.name === 'edgemqtt')) {
        runs.push({
          name: 'edgemqtt, loopback not exempt',
          start: (dir) => startEdgemqtt({ dataDir: mkdtempSync(path.join(dir, 'edgemqtt-')), limits: { connectRateExemptLoopback: false }, fileLimit: settings.fileLimit, execArgv: profileFlags() }),
        });
      }
      for (const contender of runs) {
        let measured: { fromUs: number; toUs: number } | undefined;
        const broker = await contender.start(tempDir);
        console.log(`${scenario}: ${broker.version} (${contender.name})…`);
        try {
          const figures = await run(broker);
          measured = lastWindow;
          // A broker that died during the run leaves figures that only look like results.
          if (processRssKb(broker.endpoint.pid) === 0) throw new Error('the broker process exited during the run (see its stderr above)');
          columns.set(contender.name, figures);
        } catch (error) {
          failed++;
          console.error(`${scenario} against ${contender.name} failed: ${error instanceof Error ? error.message : String(error)}`);
          await killChildren();
          continue;
        }
        await broker.stop();
        if (contender.name.startsWith('edgemqtt')) printNewestProfile(`${contender.name}, ${scenario}`, measured);
        // Let the sockets of the last run leave TIME_WAIT's way and the machine settle.
        await new Promise((resolve) => setTimeout(resolve, 3000));
      }
      const names = [...columns.keys()];
      const metrics = [...new Set(names.flatMap((n) => [...columns.get(n)!.keys()]))];
      const hasRatio = columns.has('edgemqtt') && columns.has('mosquitto');
      const rows = metrics.map((metric) => {
        const values = names.map((n) => columns.get(n)!.get(metric));
        const e = columns.get('edgemqtt')?.get(metric);
        const m = columns.get('mosquitto')?.get(metric);
        const ratio = hasRatio && typeof e === 'number' && typeof m === 'number' && m !== 0 ? (e / m).toFixed(2) : '';
        return [metric, ...values.map(format), ...(hasRatio ? [ratio] : [])];
      });
      console.log(`\n${TITLES[scenario]}`);
      console.log(table(['', ...names, ...(hasRatio ? ['edgemqtt/mosquitto'] : [])], rows, '  '));
      console.log('');
    }
    console.log(
      'CPU: user+system time of the whole process (100% = one core); RSS from /proc; latency from a send timestamp in each payload to its arrival, ' +
        'on the publishing process\'s clock; idle: RSS per connection = (RSS with them − RSS idle) / connections, 50,000 extrapolated linearly from it ' +
        `(the file limit, ${settings.fileLimit}, caps what one broker can hold on this machine).`,
    );
  } finally {
    await cleanup();
  }
  if (failed) throw new Error(`${failed} run(s) failed`);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  },
);
