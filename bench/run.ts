/**
 * `npm run bench`: edgemqtt against mosquitto on this machine, same load,
 * same run.
 *
 * Both brokers run as child processes (edgemqtt through createDaemon, as the
 * CLI runs it; mosquitto with a temp config): each has its own process and
 * event loop, as in production, and the load generator (loadgen.ts, another
 * child) neither shares an event loop with edgemqtt nor hides its own CPU
 * time in the broker's. Every figure comes with the broker's and the load
 * generator's CPU over the same interval.
 *
 * Scenarios:
 *   tcp-tcp  QoS 0 throughput, 1 TCP publisher → 1 TCP subscriber
 *   tcp-ws   QoS 0 throughput, 1 TCP publisher → 1 WebSocket subscriber
 *   fanout   QoS 0, 1 TCP publisher → N TCP subscribers, deliveries/s
 *   latency  TCP publisher → WebSocket subscriber at a fixed rate, p50/p99
 *   tcp-tcp-props  tcp-tcp with MQTT 5 clients whose every PUBLISH carries a
 *            content type and a user property (MQTT 5 rows only)
 *
 * Each scenario runs once per client protocol: MQTT 3.1.1 and MQTT 5.0 rows
 * side by side, each with its own edgemqtt/mosquitto ratio.
 *
 * Options (arguments after `npm run bench --`):
 *   --profile[=SCENARIO]  run one scenario (default tcp-tcp) against edgemqtt
 *                         under `node --cpu-prof` and print where the time went
 *   --brokers=a,b,…       columns: edgemqtt, mosquitto, or a variant from
 *                         variants.ts (default edgemqtt,mosquitto)
 *   --protocols=3.1.1,5   client protocols, one set of rows each (default both;
 *                         also BENCH_PROTOCOLS); --profile uses the first
 *
 * Environment (all optional):
 *   BENCH_SCENARIOS=tcp-tcp,tcp-ws,fanout,latency,tcp-tcp-props   BENCH_ROUNDS=3 (the table shows medians)
 *   BENCH_MESSAGES=150000 BENCH_WARMUP=15000 BENCH_WINDOW=1000 (tcp-tcp, tcp-ws)
 *   BENCH_FANOUT_SUBSCRIBERS=100 BENCH_FANOUT_MESSAGES=4000 BENCH_FANOUT_WARMUP=400 BENCH_FANOUT_WINDOW=100
 *   BENCH_READ_PACING_MS=1 BENCH_FANOUT_READ_PACING_MS=5 (0: subscribers read every segment at once)
 *   BENCH_LATENCY_RATE=1000 BENCH_LATENCY_SECONDS=10 BENCH_LATENCY_WARMUP_SECONDS=1
 *   BENCH_PAYLOAD_BYTES=32 BENCH_TIMEOUT_SEC=60
 *   BENCH_MOSQUITTO=/path/to/mosquitto BENCH_MOSQUITTO_NODELAY=1 (0: keep mosquitto's Nagle default)
 */
import { cpus, loadavg, tmpdir } from 'node:os';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, type BrokerEndpoint, type ClientProtocol, type LoadResult, type LoadSpec, type Transport } from './common.js';
import { findMosquitto, forkScript, killChildren, startEdgemqtt, startMosquitto, type RunningBroker } from './brokers.js';
import { clientProtocol, parseProtocols, type Protocol } from './protocols.js';
import { formatProfile, summarizeProfile } from './profile.js';

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, got ${raw}`);
  return Math.floor(value);
}

const settings = {
  rounds: Math.max(1, envInt('BENCH_ROUNDS', 3)),
  messages: envInt('BENCH_MESSAGES', 150_000),
  warmup: envInt('BENCH_WARMUP', 15_000),
  window: Math.max(1, envInt('BENCH_WINDOW', 1000)),
  readPacingMs: envInt('BENCH_READ_PACING_MS', 1),
  fanoutReadPacingMs: envInt('BENCH_FANOUT_READ_PACING_MS', 5),
  fanoutSubscribers: Math.max(1, envInt('BENCH_FANOUT_SUBSCRIBERS', 100)),
  fanoutMessages: envInt('BENCH_FANOUT_MESSAGES', 4000),
  fanoutWarmup: envInt('BENCH_FANOUT_WARMUP', 400),
  fanoutWindow: Math.max(1, envInt('BENCH_FANOUT_WINDOW', 100)),
  latencyRate: Math.max(1, envInt('BENCH_LATENCY_RATE', 1000)),
  latencySeconds: Math.max(1, envInt('BENCH_LATENCY_SECONDS', 10)),
  latencyWarmupSeconds: envInt('BENCH_LATENCY_WARMUP_SECONDS', 1),
  payloadBytes: Math.max(12, envInt('BENCH_PAYLOAD_BYTES', 32)),
  timeoutMs: envInt('BENCH_TIMEOUT_SEC', 60) * 1000,
};

interface Scenario {
  id: string;
  title: string;
  unit: string;
  /** Only MQTT 5 clients can send it (PUBLISH properties): no 3.1.1 row. */
  v5Only?: boolean;
  spec(endpoint: BrokerEndpoint, protocol: ClientProtocol): LoadSpec;
}

/** QoS 0 throughput, one TCP publisher to one subscriber on `subTransport` (tcp-tcp, tcp-ws, tcp-tcp-props). */
const oneToOne = (endpoint: BrokerEndpoint, protocol: ClientProtocol, subTransport: Transport): LoadSpec => ({
  kind: 'throughput',
  endpoint,
  protocol,
  subscribers: 1,
  subTransport,
  warmupMessages: settings.warmup,
  messages: settings.messages,
  window: settings.window,
  readPacingMs: settings.readPacingMs,
  payloadBytes: settings.payloadBytes,
  timeoutMs: settings.timeoutMs,
});

const SCENARIOS: Scenario[] = [
  {
    id: 'tcp-tcp',
    title: '(a) QoS 0 throughput TCP → TCP',
    unit: 'msg/s',
    spec: (endpoint, protocol) => oneToOne(endpoint, protocol, 'tcp'),
  },
  {
    id: 'tcp-ws',
    title: '(a) QoS 0 throughput TCP → WebSocket',
    unit: 'msg/s',
    spec: (endpoint, protocol) => oneToOne(endpoint, protocol, 'ws'),
  },
  {
    id: 'fanout',
    title: `(b) QoS 0 fan-out 1 → ${settings.fanoutSubscribers} (TCP)`,
    unit: 'deliveries/s',
    spec: (endpoint, protocol) => ({
      kind: 'throughput',
      endpoint,
      protocol,
      subscribers: settings.fanoutSubscribers,
      subTransport: 'tcp',
      warmupMessages: settings.fanoutWarmup,
      messages: settings.fanoutMessages,
      window: settings.fanoutWindow,
      readPacingMs: settings.fanoutReadPacingMs,
      payloadBytes: settings.payloadBytes,
      timeoutMs: settings.timeoutMs,
    }),
  },
  {
    id: 'latency',
    title: `(c) latency TCP → WebSocket @ ${settings.latencyRate} msg/s`,
    unit: 'ms',
    spec: (endpoint, protocol) => ({
      kind: 'latency',
      endpoint,
      protocol,
      subTransport: 'ws',
      rate: settings.latencyRate,
      seconds: settings.latencySeconds,
      warmupSeconds: settings.latencyWarmupSeconds,
      payloadBytes: settings.payloadBytes,
      timeoutMs: settings.timeoutMs + settings.latencySeconds * 1000,
    }),
  },
  {
    id: 'tcp-tcp-props',
    title: '(a) QoS 0 throughput TCP → TCP, PUBLISH with content type + user property',
    unit: 'msg/s',
    v5Only: true,
    spec: (endpoint, protocol) => oneToOne(endpoint, { ...protocol, properties: true }, 'tcp'),
  },
];

function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const child = forkScript('loadgen.js', [JSON.stringify(spec)]);
  return new Promise((resolve, reject) => {
    let settled = false;
    child.on('message', (message: { result?: LoadResult; error?: string }) => {
      settled = true;
      if (message.result) resolve(message.result);
      else reject(new Error(`load generator against ${spec.endpoint.name}: ${message.error ?? 'unknown error'}`));
    });
    child.once('exit', (code) => {
      if (!settled) reject(new Error(`load generator against ${spec.endpoint.name} exited with ${code}`));
    });
  });
}

// ---------------------------------------------------------------- formatting

const number = (value: number, digits = 0) =>
  Number.isFinite(value) ? value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : 'n/a';

function throughputOf(result: LoadResult): number {
  return result.elapsedMs > 0 ? (result.delivered * 1000) / result.elapsedMs : Number.NaN;
}
function cpuPercent(ms: number, result: LoadResult): number {
  return result.elapsedMs > 0 ? (ms / result.elapsedMs) * 100 : Number.NaN;
}

/** Left-aligned first column, right-aligned others, three spaces apart. */
function table(headers: string[], rows: string[][]): string {
  const cells = [headers, ...rows];
  const widths = headers.map((_, column) => Math.max(...cells.map((line) => (line[column] ?? '').length)));
  const render = (line: string[]) =>
    line.map((cell, column) => (column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0))).join('   ');
  return [render(headers), widths.map((width) => '-'.repeat(width)).join('   '), ...rows.map(render)].join('\n');
}

function describe(result: LoadResult, scenario: Scenario): string {
  const cpu = `broker CPU ${number(cpuPercent(result.brokerCpuMs, result))}%, load gen CPU ${number(cpuPercent(result.loadgenCpuMs, result))}%`;
  if (result.latency) {
    const l = result.latency;
    return `p50 ${number(l.p50Ms, 3)} ms, p99 ${number(l.p99Ms, 3)} ms, max ${number(l.maxMs, 3)} ms, lost ${l.lost}; ${cpu}`;
  }
  const lost = result.lost > 0 ? `, ${result.lost} deliveries missing` : '';
  const batching = `${number(result.delivered / Math.max(1, result.subscriberReads), 1)} deliveries/read`;
  const loadgenPerDelivery = `load gen ${number((result.loadgenCpuMs * 1000) / Math.max(1, result.delivered), 2)} µs/delivery`;
  return `${number(throughputOf(result))} ${scenario.unit}${lost}${result.timedOut ? ' (TIMED OUT)' : ''}; ${cpu}; ${loadgenPerDelivery}; ${batching}`;
}

// ---------------------------------------------------------------- main

interface Args {
  profile?: string;
  brokers: string[];
  protocols: Protocol[];
}

function parseArgs(argv: string[]): Args {
  let profile: string | undefined;
  let brokers = (process.env.BENCH_BROKERS ?? 'edgemqtt,mosquitto').split(',');
  let protocols = process.env.BENCH_PROTOCOLS || '3.1.1,5';
  for (const arg of argv) {
    if (arg === '--profile') profile = 'tcp-tcp';
    else if (arg.startsWith('--profile=')) profile = arg.slice('--profile='.length);
    else if (arg.startsWith('--brokers=')) brokers = arg.slice('--brokers='.length).split(',');
    else if (arg.startsWith('--protocols=')) protocols = arg.slice('--protocols='.length);
    else throw new Error(`unknown argument ${arg}; see the header of bench/run.ts`);
  }
  return { profile, brokers: brokers.map((name) => name.trim()).filter(Boolean), protocols: parseProtocols(protocols) };
}

function scenarioById(id: string): Scenario {
  const scenario = SCENARIOS.find((candidate) => candidate.id === id);
  if (!scenario) throw new Error(`unknown scenario ${id}; known: ${SCENARIOS.map((s) => s.id).join(', ')}`);
  return scenario;
}

/** The protocols a scenario runs with, in the order asked for. */
function protocolsOf(scenario: Scenario, protocols: Protocol[]): Protocol[] {
  return scenario.v5Only ? protocols.filter((protocol) => protocol.level === 5) : protocols;
}

async function startBroker(name: string, tempDir: string, execArgv: string[] = []): Promise<RunningBroker | null> {
  if (name === 'mosquitto') {
    const binary = findMosquitto();
    if (!binary) {
      console.log('mosquitto is not installed: its column stays empty (install the Debian package "mosquitto")');
      return null;
    }
    return startMosquitto(binary, tempDir, process.env.BENCH_MOSQUITTO_NODELAY !== '0');
  }
  const variant = name === 'edgemqtt' ? 'daemon' : name;
  const dataDir = mkdtempSync(path.join(tempDir, `${name}-`));
  const broker = await startEdgemqtt({ dataDir, variant, execArgv });
  if (variant !== 'daemon') broker.endpoint.name = name;
  return broker;
}

async function profileRun(scenarioId: string, brokerName: string, protocol: Protocol, tempDir: string): Promise<void> {
  const scenario = scenarioById(scenarioId);
  if (!protocolsOf(scenario, [protocol]).length) throw new Error(`${scenario.id} needs MQTT 5: add --protocols=5`);
  const profileDir = path.join(tempDir, 'profile');
  const broker = await startBroker(brokerName, tempDir, ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval=250']);
  if (!broker) throw new Error('cannot profile mosquitto');
  console.log(`profiling ${broker.version}: ${scenario.title}, MQTT ${protocol.name} clients, under node --cpu-prof (250 µs sampling)`);
  const result = await runLoad(scenario.spec(broker.endpoint, clientProtocol(protocol)));
  console.log(`  ${describe(result, scenario)}`);
  await broker.stop();
  const file = readdirSync(profileDir).find((name) => name.endsWith('.cpuprofile'));
  if (!file) throw new Error('the broker wrote no .cpuprofile');
  const keepDir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'profiles');
  mkdirSync(keepDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const kept = path.join(keepDir, `${brokerName}-${scenario.id}-mqtt${protocol.name}-${stamp}.cpuprofile`);
  copyFileSync(path.join(profileDir, file), kept);
  console.log(`profile saved to ${kept} (open in Chrome DevTools → Performance, or: node dist-bench/bench/profile.js FILE)\n`);
  console.log(formatProfile(summarizeProfile(kept), Number(process.env.BENCH_PROFILE_TOP ?? 30)));
}

/** One set of table rows: a scenario run with one client protocol. */
interface Case {
  key: string;
  scenario: Scenario;
  protocol: Protocol;
}

async function benchmark(brokerNames: string[], protocols: Protocol[], tempDir: string): Promise<void> {
  const selected = (process.env.BENCH_SCENARIOS ?? SCENARIOS.map((s) => s.id).join(',')).split(',').map((id) => id.trim());
  const scenarios = selected.map(scenarioById);
  for (const scenario of scenarios) {
    if (!protocolsOf(scenario, protocols).length) console.log(`${scenario.id}: skipped, it needs MQTT 5 clients (--protocols=…,5)`);
  }
  const casesOf = (scenario: Scenario): Case[] =>
    protocolsOf(scenario, protocols).map((protocol) => ({ key: `${scenario.id}@${protocol.name}`, scenario, protocol }));

  const brokers: Array<RunningBroker | null> = [];
  for (const name of brokerNames) brokers.push(await startBroker(name, tempDir));

  console.log(
    `edgemqtt bench: ${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}, load average ${loadavg().map((n) => n.toFixed(2)).join(' ')}, node ${process.version}`,
  );
  console.log(`brokers: ${brokers.map((b, i) => b?.version ?? `${brokerNames[i]} (absent)`).join(' | ')}`);
  console.log(`client protocols: ${protocols.map((p) => `MQTT ${p.name}`).join(', ')}`);
  console.log(`settings: ${JSON.stringify(settings)}\n`);

  const results = new Map<string, LoadResult[][]>(); // case key → broker index → rounds
  const failures: string[] = [];
  for (const scenario of scenarios) for (const c of casesOf(scenario)) results.set(c.key, brokerNames.map(() => []));
  for (let round = 1; round <= settings.rounds; round++) {
    for (const scenario of scenarios) {
      // Alternate the order between rounds so neither broker, and neither
      // protocol, always runs second.
      const cases = casesOf(scenario);
      const order = brokers.map((_, index) => index);
      if (round % 2 === 0) {
        order.reverse();
        cases.reverse();
      }
      for (const c of cases) {
        const label = `[round ${round}] ${scenario.id.padEnd(13)} MQTT ${c.protocol.name.padEnd(5)}`;
        for (const index of order) {
          const broker = brokers[index];
          if (!broker) continue;
          // A failed run (say, a broker that refuses level-5 CONNECTs) costs
          // its own cells, not the rest of the table.
          let result: LoadResult;
          try {
            result = await runLoad(scenario.spec(broker.endpoint, clientProtocol(c.protocol)));
          } catch (error) {
            const message = error instanceof Error ? error.message : String(error);
            failures.push(`${c.key} ${broker.endpoint.name}: ${message}`);
            console.log(`${label} ${broker.endpoint.name.padEnd(9)} FAILED: ${message}`);
            continue;
          }
          results.get(c.key)?.[index]?.push(result);
          console.log(`${label} ${broker.endpoint.name.padEnd(9)} ${describe(result, scenario)}`);
        }
      }
    }
  }
  for (const broker of brokers) await broker?.stop();

  // The table: medians over rounds; ratio = each edgemqtt column / mosquitto.
  // Each metric has one line per protocol, the MQTT 5 line right under the
  // 3.1.1 one, each with its own ratio.
  const mosquittoIndex = brokerNames.indexOf('mosquitto');
  const rows: string[][] = [];
  let saturated = false;
  let currentCases: Case[] = [];
  const push = (
    metric: string,
    pick: (result: LoadResult) => number,
    format: (value: number) => string,
    ratioKind: 'ratio' | 'none' = 'ratio',
  ) => {
    currentCases.forEach((c, line) => {
      const values = brokerNames.map((_, index) => {
        const runs = results.get(c.key)?.[index] ?? [];
        return runs.length ? median(runs.map(pick)) : Number.NaN;
      });
      const base = values[mosquittoIndex];
      const ratios = brokerNames.flatMap((name, index) => {
        if (name === 'mosquitto' || ratioKind === 'none' || base === undefined) return [];
        return [number((values[index] as number) / base, 2)];
      });
      rows.push([
        line === 0 ? metric : '',
        c.protocol.name,
        ...values.map((value) => (Number.isFinite(value) ? format(value) : '—')),
        ratios.join(' | '),
      ]);
    });
  };
  for (const scenario of scenarios) {
    currentCases = casesOf(scenario);
    if (currentCases.length === 0) continue;
    if (scenario.id === 'latency') {
      push(`${scenario.title}: p50 ms`, (r) => r.latency?.p50Ms ?? Number.NaN, (v) => number(v, 3));
      push('    p99 ms', (r) => r.latency?.p99Ms ?? Number.NaN, (v) => number(v, 3));
      push('    max ms', (r) => r.latency?.maxMs ?? Number.NaN, (v) => number(v, 3));
      push('    lost messages', (r) => r.latency?.lost ?? Number.NaN, (v) => number(v), 'none');
    } else {
      push(`${scenario.title}: ${scenario.unit}`, throughputOf, (v) => number(v));
      push('    broker CPU µs per delivery', (r) => (r.brokerCpuMs * 1000) / Math.max(1, r.delivered), (v) => number(v, 2));
      push('    load generator CPU µs per delivery', (r) => (r.loadgenCpuMs * 1000) / Math.max(1, r.delivered), (v) => number(v, 2), 'none');
    }
    push('    CPU % of a core: broker', (r) => cpuPercent(r.brokerCpuMs, r), (v) => number(v), 'none');
    push('    CPU % of a core: load generator', (r) => cpuPercent(r.loadgenCpuMs, r), (v) => number(v), 'none');
    push('    broker RSS at the end, MB', (r) => r.brokerRssKb / 1024, (v) => number(v), 'none');
    for (const c of currentCases) {
      for (const runs of results.get(c.key) ?? []) {
        if (scenario.id !== 'latency' && runs.some((r) => cpuPercent(r.loadgenCpuMs, r) > 85)) saturated = true;
      }
    }
  }
  const ratioHeader = brokerNames
    .filter((name) => name !== 'mosquitto')
    .map((name) => `${name}/mosquitto`)
    .join(' | ');
  console.log('');
  console.log(table(['metric', 'MQTT', ...brokerNames, mosquittoIndex === -1 ? '' : `ratio ${ratioHeader}`], rows));
  console.log(
    `\n${settings.rounds > 1 ? `medians of ${settings.rounds} rounds; ` : ''}` +
      'throughput is measured at the subscriber(s) after warm-up, with a bounded window of messages in flight (lossless); ' +
      'CPU is user+system time of the whole process over the measured interval (100% = one core).',
  );
  if (protocols.some((protocol) => protocol.level === 5)) {
    console.log(
      'MQTT 5 rows: every client connects at protocol level 5 and subscribes with subscription options; ' +
        'PUBLISH carries an empty property set (tcp-tcp-props: a content type and one user property).',
    );
  }
  if (saturated) console.log('WARNING: the load generator used >85% of a core in a run: that figure may be limited by the load generator.');
  if (failures.length) {
    // Cells without a run show —; the whole benchmark still fails.
    throw new Error(`${failures.length} run(s) failed:\n  ${failures.join('\n  ')}`);
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const tempDir = mkdtempSync(path.join(tmpdir(), 'edgemqtt-bench-'));
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
  try {
    if (args.profile) await profileRun(args.profile, args.brokers[0] ?? 'edgemqtt', args.protocols[0] as Protocol, tempDir);
    else await benchmark(args.brokers, args.protocols, tempDir);
  } finally {
    await cleanup();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  },
);
