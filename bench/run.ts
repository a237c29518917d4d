/**
 * `npm run bench:throughput`: edgemqtt against Mosquitto and nats-server on
 * this machine, same load, same run.
 *
 * Every broker runs as a child process (edgemqtt through createDaemon, as the
 * CLI runs it; mosquitto and nats-server with temp configs): each has its own
 * process and event loop, as in production, and the load generator
 * (loadgen.ts, another child) neither shares an event loop with edgemqtt nor
 * hides its own CPU time in the broker's. Every figure comes with the
 * broker's and the load generator's CPU over the same interval.
 *
 * Scenarios (the rows of issue 10's table), 64-byte payloads:
 *   tcp-tcp  QoS 0 fan-in, 10 TCP publishers → 1 TCP subscriber, closed loop, msgs/s
 *   tcp-ws   QoS 0 fan-in, 10 TCP publishers → 1 WebSocket subscriber (/mqtt)
 *   fanout   QoS 0, 1 TCP publisher → 100 TCP subscribers, deliveries/s
 *   qos1     QoS 1, 10 TCP publishers → 1 TCP subscriber that PUBACKs every
 *            delivery; each publisher keeps 64 PUBLISHes awaiting PUBACK
 *   latency  1 TCP publisher → 1 WebSocket subscriber at 2,000 msg/s, p50/p99
 *   rss      RSS of a freshly started broker, idle and with 1,000 idle TCP
 *            connections, and the KB per idle connection
 *   tcp-tcp-props  tcp-tcp with MQTT 5 clients whose every PUBLISH carries a
 *            content type and a user property (MQTT 5 rows only)
 *
 * Each figure is the median of BENCH_ROUNDS rounds, with the spread; the
 * brokers' order alternates round by round. Ratios are of medians.
 *
 * Options (arguments after `npm run bench:throughput --`):
 *   --profile[=SCENARIO]  run one scenario (default tcp-tcp) against edgemqtt
 *                         under `node --cpu-prof` and print where the time went
 *   --brokers=a,b,…       columns: edgemqtt, mosquitto, nats-server, or a variant
 *                         from variants.ts (default edgemqtt,mosquitto,nats-server)
 *   --protocols=3.1.1,5   client protocols, one set of rows each (default 3.1.1;
 *                         also BENCH_PROTOCOLS); --profile uses the first
 *
 * Environment (all optional):
 *   BENCH_SCENARIOS=tcp-tcp,tcp-ws,fanout,qos1,latency,rss,tcp-tcp-props   BENCH_ROUNDS=3
 *   BENCH_WARMUP_MS=1000 BENCH_MEASURE_MS=3000 (each throughput run)
 *   BENCH_PUBLISHERS=10 BENCH_WINDOW=200 (messages in flight per publisher, QoS 0)
 *   BENCH_READ_PACING_MS=1 BENCH_READ_BUFFER_KB=1024 (0: subscribers read every segment at once)
 *   BENCH_FANOUT_SUBSCRIBERS=100 BENCH_FANOUT_WINDOW=200 BENCH_FANOUT_READ_PACING_MS=5
 *   BENCH_QOS1_INFLIGHT=64 BENCH_QOS1_WINDOW=100
 *   BENCH_LATENCY_RATE=2000 BENCH_LATENCY_SECONDS=5 BENCH_LATENCY_WARMUP_SECONDS=10 (every
 *     broker alike: a fresh Node broker runs its data path's code unoptimized, and V8
 *     compiles it on the other core, during its first seconds; with 1 s, those seconds
 *     made edgemqtt's p99 0.34–1.27 ms over single rounds where it is ~0.26 after them)
 *   BENCH_IDLE_CONNECTIONS=1000 BENCH_PAYLOAD_BYTES=64 BENCH_TIMEOUT_SEC=60
 *   BENCH_MOSQUITTO=/path/to/mosquitto BENCH_MOSQUITTO_NODELAY=1 (0: keep mosquitto's Nagle default)
 *   BENCH_NATS_SERVER=/path/to/nats-server
 */
import { cpus, loadavg } from 'node:os';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { envInt, type BrokerEndpoint, type ClientProtocol, type LoadResult, type LoadSpec, type Transport } from './common.js';
import { benchWorkspace, findMosquitto, findNatsServer, forkScript, startEdgemqtt, startMosquitto, startNatsServer, type RunningBroker } from './brokers.js';
import { clientProtocol, parseProtocols, PROTOCOLS, type Protocol } from './protocols.js';
import { formatProfile, summarizeProfile } from './profile.js';
import { measureRss, type RssResult } from './idle-rss.js';
import { cpuPercent, generatorBound, number, printReport, rate, throughputOf, type CaseResults, type Scenario } from './report.js';


const settings = {
  rounds: Math.max(1, envInt('BENCH_ROUNDS', 3)),
  warmupMs: envInt('BENCH_WARMUP_MS', 1000),
  measureMs: Math.max(100, envInt('BENCH_MEASURE_MS', 3000)),
  publishers: Math.min(100, Math.max(1, envInt('BENCH_PUBLISHERS', 10))),
  window: Math.max(1, envInt('BENCH_WINDOW', 200)),
  readPacingMs: envInt('BENCH_READ_PACING_MS', 1),
  readBufferBytes: Math.max(4, envInt('BENCH_READ_BUFFER_KB', 1024)) * 1024,
  fanoutSubscribers: Math.max(1, envInt('BENCH_FANOUT_SUBSCRIBERS', 100)),
  fanoutWindow: Math.max(1, envInt('BENCH_FANOUT_WINDOW', 200)),
  fanoutReadPacingMs: envInt('BENCH_FANOUT_READ_PACING_MS', 5),
  qos1Inflight: Math.max(1, envInt('BENCH_QOS1_INFLIGHT', 64)),
  qos1Window: Math.max(1, envInt('BENCH_QOS1_WINDOW', 100)),
  latencyRate: Math.max(1, envInt('BENCH_LATENCY_RATE', 2000)),
  latencySeconds: Math.max(1, envInt('BENCH_LATENCY_SECONDS', 5)),
  latencyWarmupSeconds: envInt('BENCH_LATENCY_WARMUP_SECONDS', 10),
  idleConnections: Math.max(1, envInt('BENCH_IDLE_CONNECTIONS', 1000)),
  payloadBytes: Math.max(12, envInt('BENCH_PAYLOAD_BYTES', 64)),
  timeoutMs: envInt('BENCH_TIMEOUT_SEC', 60) * 1000,
};

/** QoS 0 or 1 fan-in, `publishers` TCP publishers to one subscriber on `subTransport`. */
const fanIn = (endpoint: BrokerEndpoint, protocol: ClientProtocol, subTransport: Transport, qos: 0 | 1): LoadSpec => ({
  kind: 'throughput',
  endpoint,
  protocol,
  publishers: settings.publishers,
  subscribers: 1,
  subTransport,
  qos,
  window: qos === 1 ? settings.qos1Window : settings.window,
  inflight: settings.qos1Inflight,
  warmupMs: settings.warmupMs,
  measureMs: settings.measureMs,
  // QoS 1: the subscriber must PUBACK as soon as it reads, or a broker with a
  // small outgoing window (Mosquitto: 20) would wait on the pacing tick.
  readPacingMs: qos === 1 ? 0 : settings.readPacingMs,
  readBufferBytes: settings.readBufferBytes,
  payloadBytes: settings.payloadBytes,
  timeoutMs: settings.timeoutMs,
});

const SCENARIOS: Scenario[] = [
  {
    id: 'tcp-tcp',
    title: `QoS 0 fan-in TCP → TCP (${settings.publishers} → 1)`,
    unit: 'msgs/s',
    spec: (endpoint, protocol) => fanIn(endpoint, protocol, 'tcp', 0),
  },
  {
    id: 'tcp-ws',
    title: `QoS 0 fan-in TCP → WebSocket (${settings.publishers} → 1)`,
    unit: 'msgs/s',
    spec: (endpoint, protocol) => fanIn(endpoint, protocol, 'ws', 0),
  },
  {
    id: 'fanout',
    title: `QoS 0 fan-out 1 → ${settings.fanoutSubscribers}`,
    unit: 'deliveries/s',
    spec: (endpoint, protocol) => ({
      kind: 'throughput',
      endpoint,
      protocol,
      publishers: 1,
      subscribers: settings.fanoutSubscribers,
      subTransport: 'tcp',
      qos: 0,
      window: settings.fanoutWindow,
      inflight: settings.qos1Inflight,
      warmupMs: settings.warmupMs,
      measureMs: settings.measureMs,
      readPacingMs: settings.fanoutReadPacingMs,
      readBufferBytes: 64 * 1024,
      payloadBytes: settings.payloadBytes,
      timeoutMs: settings.timeoutMs,
    }),
  },
  {
    id: 'qos1',
    title: `QoS 1 ${settings.publishers} → 1, ${settings.qos1Inflight} in flight per publisher`,
    unit: 'msgs/s',
    spec: (endpoint, protocol) => fanIn(endpoint, protocol, 'tcp', 1),
  },
  {
    id: 'latency',
    title: `latency TCP → WebSocket at ${number(settings.latencyRate)} msg/s`,
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
    id: 'rss',
    title: `RSS idle / with ${number(settings.idleConnections)} idle connections`,
    unit: 'MB',
  },
  {
    id: 'tcp-tcp-props',
    title: 'QoS 0 fan-in TCP → TCP, PUBLISH with content type + user property',
    unit: 'msgs/s',
    v5Only: true,
    spec: (endpoint, protocol) => fanIn(endpoint, { ...protocol, properties: true }, 'tcp', 0),
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

function describe(result: LoadResult, scenario: Scenario): string {
  const bound = generatorBound(result) ? ' GENERATOR-BOUND' : '';
  const cpu = `broker CPU ${number(cpuPercent(result.brokerCpuMs, result))}%, load gen CPU ${number(cpuPercent(result.loadgenCpuMs, result))}%${bound}`;
  if (result.latency) {
    const l = result.latency;
    return `p50 ${number(l.p50Ms, 3)} ms, p99 ${number(l.p99Ms, 3)} ms, max ${number(l.maxMs, 3)} ms, lost ${l.lost}; ${cpu}`;
  }
  const lost = result.lost > 0 ? `, ${result.lost} deliveries missing` : '';
  const batching = `${number(result.delivered / Math.max(1, result.subscriberReads), 1)} deliveries/read`;
  const perDelivery = `broker ${number((result.brokerCpuMs * 1000) / Math.max(1, result.delivered), 2)} µs/delivery`;
  return `${rate(throughputOf(result))} ${scenario.unit}${lost}${result.timedOut ? ' (STALLED)' : ''}; ${cpu}; ${perDelivery}; ${batching}`;
}

function describeRss(result: RssResult): string {
  const perConnection = (result.connectedKb - result.idleKb) / result.connections;
  return (
    `idle ${number(result.idleKb / 1024, 1)} MB, with ${result.connections} idle connections ${number(result.connectedKb / 1024, 1)} MB, ` +
    `${number(perConnection, 1)} KB per connection${result.stable ? '' : ' (RSS still moving at the deadline)'}`
  );
}

// ---------------------------------------------------------------- main

interface Args {
  profile?: string;
  brokers: string[];
  protocols: Protocol[];
}

function parseArgs(argv: string[]): Args {
  let profile: string | undefined;
  let brokers = (process.env.BENCH_BROKERS ?? 'edgemqtt,mosquitto,nats-server').split(',');
  let protocols = process.env.BENCH_PROTOCOLS || '3.1.1';
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

/** The protocols a scenario runs with, in the order asked for; rss connects 3.1.1 clients only. */
function protocolsOf(scenario: Scenario, protocols: Protocol[]): Protocol[] {
  if (scenario.id === 'rss') return [PROTOCOLS[0] as Protocol];
  return scenario.v5Only ? protocols.filter((protocol) => protocol.level === 5) : protocols;
}

async function startBroker(name: string, tempDir: string, execArgv: string[] = [], quiet = false): Promise<RunningBroker | null> {
  if (name === 'mosquitto') {
    const binary = findMosquitto();
    if (!binary) {
      if (!quiet) console.log('mosquitto is not installed: its column stays empty (install the Debian package "mosquitto")');
      return null;
    }
    return startMosquitto(binary, tempDir, process.env.BENCH_MOSQUITTO_NODELAY !== '0');
  }
  if (name === 'nats-server') {
    const binary = findNatsServer();
    if (!binary) {
      if (!quiet) console.log('nats-server is not installed: its column stays empty (install the Debian package "nats-server")');
      return null;
    }
    return startNatsServer(binary, tempDir);
  }
  const variant = name === 'edgemqtt' ? 'daemon' : name;
  const dataDir = mkdtempSync(path.join(tempDir, `${name}-`));
  const broker = await startEdgemqtt({ dataDir, variant, execArgv });
  if (variant !== 'daemon') broker.endpoint.name = name;
  return broker;
}

async function profileRun(scenarioId: string, brokerName: string, protocol: Protocol, tempDir: string): Promise<void> {
  const scenario = scenarioById(scenarioId);
  if (!scenario.spec) throw new Error(`${scenario.id} cannot be profiled: it runs no load`);
  if (!protocolsOf(scenario, [protocol]).length) throw new Error(`${scenario.id} needs MQTT 5: add --protocols=5`);
  if (brokerName === 'mosquitto' || brokerName === 'nats-server') throw new Error(`cannot profile ${brokerName}: --profile is for node brokers`);
  const profileDir = path.join(tempDir, 'profile');
  const broker = await startBroker(brokerName, tempDir, ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval=250']);
  if (!broker) throw new Error(`cannot start ${brokerName}`);
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

/** The rss rows of one round: each broker started fresh, measured, stopped. */
async function rssRound(brokerNames: string[], order: number[], tempDir: string, label: string, sink: (index: number, result: RssResult) => void): Promise<void> {
  for (const index of order) {
    const name = brokerNames[index] as string;
    const broker = await startBroker(name, tempDir, [], true);
    if (!broker) continue;
    try {
      const result = await measureRss(broker.endpoint, { level: 4, properties: false }, settings.idleConnections, (args) => forkScript('loadgen.js', args));
      sink(index, result);
      console.log(`${label} ${broker.endpoint.name.padEnd(11)} ${describeRss(result)}`);
    } finally {
      await broker.stop();
    }
  }
}

async function benchmark(brokerNames: string[], protocols: Protocol[], tempDir: string): Promise<void> {
  const began = performance.now();
  const selected = (process.env.BENCH_SCENARIOS ?? SCENARIOS.map((s) => s.id).join(',')).split(',').map((id) => id.trim());
  const scenarios = selected.map(scenarioById);
  for (const scenario of scenarios) {
    if (!protocolsOf(scenario, protocols).length) console.log(`${scenario.id}: skipped, it needs MQTT 5 clients (--protocols=3.1.1,5)`);
  }
  const casesOf = (scenario: Scenario): CaseResults[] =>
    protocolsOf(scenario, protocols).map((protocol) => ({
      key: `${scenario.id}@${protocol.name}`,
      scenario,
      protocol,
      runs: brokerNames.map(() => []),
      rss: brokerNames.map(() => []),
      na: brokerNames.map(() => undefined),
    }));

  const brokers: Array<RunningBroker | null> = [];
  for (const name of brokerNames) brokers.push(await startBroker(name, tempDir));

  console.log(
    `edgemqtt bench: ${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}, load average ${loadavg().map((n) => n.toFixed(2)).join(' ')}, node ${process.version}`,
  );
  console.log(`brokers: ${brokers.map((b, i) => b?.version ?? `${brokerNames[i]} (absent)`).join(' | ')}`);
  console.log(`client protocols: ${protocols.map((p) => `MQTT ${p.name}`).join(', ')}`);
  console.log(`settings: ${JSON.stringify(settings)}\n`);

  const cases = scenarios.flatMap(casesOf);
  // A broker that cannot run a row at all (nats-server and MQTT 5) gets n/a, not a failure.
  for (const c of cases) {
    brokers.forEach((broker, index) => {
      c.na[index] = broker?.unsupported?.(c.protocol.level);
    });
  }
  const failures: string[] = [];
  for (let round = 1; round <= settings.rounds; round++) {
    // Alternate the order between rounds so no broker, and no protocol,
    // always runs first.
    const order = brokers.map((_, index) => index);
    if (round % 2 === 0) order.reverse();
    for (const scenario of scenarios) {
      const roundCases = cases.filter((c) => c.scenario === scenario);
      if (round % 2 === 0) roundCases.reverse();
      for (const c of roundCases) {
        const label = `[round ${round}] ${scenario.id.padEnd(13)} MQTT ${c.protocol.name.padEnd(5)}`;
        if (!scenario.spec) {
          await rssRound(brokerNames, order, tempDir, label, (index, result) => c.rss[index]?.push(result));
          continue;
        }
        for (const index of order) {
          const broker = brokers[index];
          if (!broker || c.na[index]) continue;
          // A failed run costs its own cells, not the rest of the table.
          let result: LoadResult;
          try {
            result = await runLoad(scenario.spec(broker.endpoint, clientProtocol(c.protocol)));
          } catch (error) {
            const message = error instanceof Error ? error.message : String(error);
            failures.push(`${c.key} ${broker.endpoint.name}: ${message}`);
            console.log(`${label} ${broker.endpoint.name.padEnd(11)} FAILED: ${message}`);
            continue;
          }
          c.runs[index]?.push(result);
          console.log(`${label} ${broker.endpoint.name.padEnd(11)} ${describe(result, scenario)}`);
        }
      }
    }
  }
  for (const broker of brokers) await broker?.stop();

  printReport({ brokerNames, cases, rounds: settings.rounds, idleConnections: settings.idleConnections });
  if (protocols.some((protocol) => protocol.level === 5)) {
    console.log(
      '\nMQTT 5 rows: every client connects at protocol level 5 and subscribes with subscription options; ' +
        'PUBLISH carries an empty property set (tcp-tcp-props: a content type and one user property).',
    );
  }
  console.log(`\nthe whole benchmark took ${number((performance.now() - began) / 1000)} s`);
  if (failures.length) {
    // Cells without a run show —; the whole benchmark still fails.
    throw new Error(`${failures.length} run(s) failed:\n  ${failures.join('\n  ')}`);
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const { tempDir, cleanup } = benchWorkspace('edgemqtt-bench-');
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
