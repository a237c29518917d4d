/**
 * What security costs: MQTT over TLS against plain TCP, and a 1,000-rule ACL
 * against none, each as a ratio of the same load on the same machine.
 *
 *   node dist-bench/bench/security.js        (after `tsc -p tsconfig.bench.json`)
 *
 * End to end, the broker runs as a child process (this script, forked with
 * `--broker`; createDaemon as the CLI runs it) so that its CPU is its own;
 * this process is the load generator: one publisher → one subscriber, QoS 0,
 * 32-byte payloads, at most BENCH_SECURITY_WINDOW messages in flight, writes
 * batched per turn so TLS records carry many packets (as a busy client's do).
 * Scenarios:
 *   tcp        plain TCP, no ACL (the baseline)
 *   tls        both clients over TLS 1.3 (ECDSA P-256 certificate)
 *   tcp+acl    plain TCP, logged in with a password, 1,000 ACL rules for that
 *              user (plus patterns): every publish and every delivery checked
 *   *-1        the same with one message in flight (each sent once the last
 *              arrived): no batching anywhere, as with a sensor that
 *              publishes now and then; each TLS record carries one packet
 *   *-connect  connection set-up rate (8 at a time): TCP, TLS (handshake),
 *              and a password login (one scrypt hash per CONNECT)
 * Reported per scenario: messages/s and broker CPU µs per message (median of
 * the rounds), and each against the baseline.
 *
 * Reading the TLS rows: saturated, TLS comes out *cheaper* per message than
 * TCP. aedes writes each delivered packet to its socket on its own; on a
 * net.Socket each write is a syscall at once, while TLSWrap encrypts into a
 * buffer that is flushed once the previous write completes, so packets ride
 * many to a record and a syscall (strace -c on the broker: ~18,000 writev
 * for TCP against ~3,600 write for TLS over the same 3 s). The AES-GCM of
 * 32-byte messages costs little next to a syscall. With one message in
 * flight nothing batches and the two are level; the handshake is the real
 * price (the -connect rows). Corking TCP writes per event-loop turn would
 * give TCP the same batching.
 *
 * In process, the ACL check itself: ns per canWrite/canRead with 1,000 rules
 * (tries, src/auth/acl.ts), next to a linear scan of 1,000 compiled regular
 * expressions, the naive alternative.
 *
 * Environment: BENCH_SECURITY_MESSAGES=100000 BENCH_SECURITY_WARMUP=10000
 * BENCH_SECURITY_WINDOW=500 BENCH_SECURITY_ROUNDS=3
 * BENCH_SECURITY_CONNECTS=1000
 * BENCH_SECURITY_SCENARIOS=tcp,tls,tcp+acl,tcp-1,tls-1,tcp+acl-1,tcp-connect,tls-connect,pw-connect
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir, cpus } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { generate } from 'mqtt-packet';
import { Acl } from '../src/auth/acl.js';
import { hashPassword } from '../src/auth/password-file.js';
import { createDaemon, type ConfigInput } from '../src/index.js';
import { PACKET_CONNACK, PACKET_PUBLISH, PACKET_SUBACK, PacketReader, median, processCpuMs } from './common.js';

const here = fileURLToPath(import.meta.url);

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 1) throw new Error(`${name} must be a positive number, got ${raw}`);
  return Math.floor(value);
}

const settings = {
  messages: envInt('BENCH_SECURITY_MESSAGES', 100_000),
  warmup: envInt('BENCH_SECURITY_WARMUP', 10_000),
  window: envInt('BENCH_SECURITY_WINDOW', 500),
  rounds: envInt('BENCH_SECURITY_ROUNDS', 3),
  scenarios: (process.env.BENCH_SECURITY_SCENARIOS ?? 'tcp,tls,tcp+acl,tcp-1,tls-1,tcp+acl-1,tcp-connect,tls-connect,pw-connect').split(',').map((name) => name.trim()),
};

const TOPIC = 'bench/line1/temp';
const USER = 'bench';
const PASSWORD = 'bench-password';
const ACL_RULES = 1000;

// ------------------------------------------------------------------ broker child

interface BrokerReady {
  type: 'ready';
  tcpPort: number;
  tlsPort: number;
}

async function brokerMain(config: ConfigInput): Promise<void> {
  const daemon = await createDaemon(config);
  await daemon.start();
  const { mqtt, tls: secure } = daemon.addresses();
  const stop = async () => {
    await daemon.stop();
    process.exit(0);
  };
  process.on('message', (message: { type?: string }) => {
    if (message.type === 'stop') void stop();
  });
  process.on('disconnect', () => void stop());
  process.send?.({ type: 'ready', tcpPort: mqtt?.port ?? 0, tlsPort: secure?.port ?? 0 } satisfies BrokerReady);
}

interface Broker {
  child: ChildProcess;
  ready: BrokerReady;
  stop(): Promise<void>;
}

async function startBroker(config: ConfigInput): Promise<Broker> {
  const child = fork(here, ['--broker', JSON.stringify(config)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = await new Promise<BrokerReady>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('broker did not start within 30 s')), 30_000);
    child.once('message', (message: BrokerReady) => {
      clearTimeout(timer);
      resolve(message);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`broker exited with ${code}`));
    });
  });
  return {
    child,
    ready,
    async stop() {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.send({ type: 'stop' });
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// ------------------------------------------------------------------ load

interface Endpoint {
  port: number;
  secure: boolean;
  ca?: Buffer;
  username?: string;
  password?: string;
}

function open(endpoint: Endpoint, clientId: string, onPacket: (type: number) => void): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = endpoint.secure
      ? tls.connect({ host: '127.0.0.1', port: endpoint.port, ca: endpoint.ca, servername: 'localhost' })
      : net.connect({ host: '127.0.0.1', port: endpoint.port });
    socket.setNoDelay(true);
    const reader = new PacketReader((type) => onPacket(type));
    socket.on('data', (chunk: Buffer) => reader.push(chunk, 0, chunk.length));
    socket.once('error', reject);
    socket.once(endpoint.secure ? 'secureConnect' : 'connect', () => {
      socket.write(
        generate({
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clean: true,
          keepalive: 0,
          clientId,
          ...(endpoint.username ? { username: endpoint.username, password: Buffer.from(endpoint.password ?? '') } : {}),
        }),
      );
      resolve(socket);
    });
  });
}

interface RunResult {
  messagesPerSec: number;
  brokerCpuUsPerMessage: number;
  /** CPU of this process (the load generator) over wall time: near 1 means it, not the broker, was the limit. */
  loadgenCpuShare: number;
}

/** One publisher → one subscriber; `count` messages after `warmup`, at most `window` in flight. */
async function throughput(endpoint: Endpoint, brokerPid: number, window: number, messages: number, warmup: number): Promise<RunResult> {
  let received = 0;
  let connacks = 0;
  let subacked = false;
  let wake: (() => void) | undefined;
  const poke = () => wake?.();
  const subscriber = await open(endpoint, 'bench-sub', (type) => {
    if (type === PACKET_PUBLISH) {
      received += 1;
      poke();
    } else if (type === PACKET_CONNACK) {
      connacks += 1;
      poke();
    } else if (type === PACKET_SUBACK) {
      subacked = true;
      poke();
    }
  });
  const publisher = await open(endpoint, 'bench-pub', (type) => {
    if (type === PACKET_CONNACK) {
      connacks += 1;
      poke();
    }
  });
  const until = (condition: () => boolean, what: string) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what} (received ${received})`)), 60_000);
      const check = () => {
        if (!condition()) return;
        clearTimeout(timer);
        wake = undefined;
        resolve();
      };
      wake = check;
      check();
    });
  await until(() => connacks === 2, 'both CONNACKs');
  subscriber.write(generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'bench/#', qos: 0 }] }));
  await until(() => subacked, 'the SUBACK');

  const packet = generate({ cmd: 'publish', topic: TOPIC, payload: Buffer.alloc(32, 0x61), qos: 0, retain: false, dup: false });
  const total = warmup + messages;
  let sent = 0;
  const pump = () => {
    const room = Math.min(window - (sent - received), total - sent);
    if (room <= 0) return;
    // One write per turn: a busy client's TLS records carry many packets.
    publisher.write(Buffer.concat(Array<Buffer>(room).fill(packet)));
    sent += room;
  };
  let measuredFrom = 0;
  let cpuFrom = 0;
  let loadgenFrom = process.cpuUsage();
  const finished = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`stalled at ${received}/${total}`)), 120_000);
    wake = () => {
      if (received >= warmup && measuredFrom === 0) {
        measuredFrom = performance.now();
        cpuFrom = processCpuMs(brokerPid);
        loadgenFrom = process.cpuUsage();
      }
      if (received >= total) {
        clearTimeout(timer);
        resolve();
        return;
      }
      pump();
    };
  });
  pump();
  await finished;
  const elapsedMs = performance.now() - measuredFrom;
  const cpuMs = processCpuMs(brokerPid) - cpuFrom;
  const loadgen = process.cpuUsage(loadgenFrom);
  const measured = total - warmup;
  publisher.destroy();
  subscriber.destroy();
  return {
    messagesPerSec: (measured * 1000) / elapsedMs,
    brokerCpuUsPerMessage: (cpuMs * 1000) / measured,
    loadgenCpuShare: (loadgen.user + loadgen.system) / 1000 / elapsedMs,
  };
}

const CONNECTS = envInt('BENCH_SECURITY_CONNECTS', 1000);
const CONNECT_CONCURRENCY = 8;

interface ConnectResult {
  connectsPerSec: number;
  brokerCpuMsPerConnect: number;
}

/** Opens CONNECTS connections, CONNECT_CONCURRENCY at a time, each closed on its CONNACK. */
async function connectRate(endpoint: Endpoint, brokerPid: number): Promise<ConnectResult> {
  const connectOnce = async (index: number): Promise<void> => {
    let acked: () => void = () => undefined;
    const connack = new Promise<void>((resolve) => (acked = resolve));
    const socket = await open(endpoint, `conn-${index}`, (type) => {
      if (type === PACKET_CONNACK) acked();
    });
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        connack,
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no CONNACK for connection ${index} within 30 s`)), 30_000))),
      ]);
    } finally {
      clearTimeout(timer);
      socket.destroy();
    }
  };
  let next = 0;
  const cpuFrom = processCpuMs(brokerPid);
  const started = performance.now();
  const worker = async () => {
    while (next < CONNECTS) await connectOnce(next++);
  };
  await Promise.all(Array.from({ length: CONNECT_CONCURRENCY }, worker));
  const elapsedMs = performance.now() - started;
  const cpuMs = processCpuMs(brokerPid) - cpuFrom;
  return { connectsPerSec: (CONNECTS * 1000) / elapsedMs, brokerCpuMsPerConnect: cpuMs / CONNECTS };
}

// ------------------------------------------------------------------ scenarios

interface Scenario {
  name: string;
  /** The scenario this one is compared with. */
  baseline: string;
  config: ConfigInput;
  endpoint(ready: BrokerReady): Endpoint;
  /** Messages in flight: settings.window, or 1 (each sent once the previous arrived); 0 = a connect-rate run. */
  window: number;
}

function makeFiles(dir: string): { certFile: string; keyFile: string; cert: Buffer; passwordFile: string; aclFile: string } {
  const certFile = path.join(dir, 'server.crt');
  const keyFile = path.join(dir, 'server.key');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile,
    '-days', '30', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'ignore' });
  return { certFile, keyFile, cert: readFileSync(certFile), passwordFile: path.join(dir, 'passwd'), aclFile: path.join(dir, 'acl') };
}

/** 1,000 rules for the bench user (the matching one last), a few patterns, other users. */
export function aclText(): string {
  const lines = ['topic read $SYS/#', `user ${USER}`];
  for (let i = 0; i < ACL_RULES - 4; i++) lines.push(`topic ${['read', 'write', 'readwrite'][i % 3]} site/area${i}/+/value`);
  lines.push('topic readwrite bench/#');
  lines.push('user other', 'topic readwrite other/#');
  lines.push('pattern readwrite devices/%u/#');
  return `${lines.join('\n')}\n`;
}

function scenarios(files: ReturnType<typeof makeFiles>, dataRoot: string): Scenario[] {
  const base = (name: string): ConfigInput => ({
    dataDir: path.join(dataRoot, `data-${name}`),
    log: { level: 'warn' },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { enabled: false },
    persistence: { sync: 'os' },
  }) as ConfigInput;
  const tlsConfig = { tls: { enabled: true, host: '127.0.0.1', port: 0, certFile: files.certFile, keyFile: files.keyFile } };
  const aclConfig = { auth: { allowAnonymous: false, passwordFile: files.passwordFile, aclFile: files.aclFile } };
  const tcp = (ready: BrokerReady): Endpoint => ({ port: ready.tcpPort, secure: false });
  const secure = (ready: BrokerReady): Endpoint => ({ port: ready.tlsPort, secure: true, ca: files.cert });
  const user = (ready: BrokerReady): Endpoint => ({ port: ready.tcpPort, secure: false, username: USER, password: PASSWORD });
  const window = settings.window;
  // The connect runs open connections as fast as they are accepted: the
  // per-address connect rate limit (limits.ts) would measure itself.
  const unlimited = { limits: { connectRatePerAddressPerSec: 0 } };
  return [
    { name: 'tcp-connect', baseline: 'tcp-connect', config: { ...base('tcp-c'), ...unlimited }, endpoint: tcp, window: 0 },
    { name: 'tls-connect', baseline: 'tcp-connect', config: { ...base('tls-c'), ...unlimited, ...tlsConfig }, endpoint: secure, window: 0 },
    { name: 'pw-connect', baseline: 'tcp-connect', config: { ...base('pw-c'), ...unlimited, ...aclConfig }, endpoint: user, window: 0 },
    { name: 'tcp', baseline: 'tcp', config: base('tcp'), endpoint: tcp, window },
    { name: 'tls', baseline: 'tcp', config: { ...base('tls'), ...tlsConfig }, endpoint: secure, window },
    { name: 'tcp+acl', baseline: 'tcp', config: { ...base('acl'), ...aclConfig }, endpoint: user, window },
    { name: 'tcp-1', baseline: 'tcp-1', config: base('tcp-1'), endpoint: tcp, window: 1 },
    { name: 'tls-1', baseline: 'tcp-1', config: { ...base('tls-1'), ...tlsConfig }, endpoint: secure, window: 1 },
    { name: 'tcp+acl-1', baseline: 'tcp-1', config: { ...base('acl-1'), ...aclConfig }, endpoint: user, window: 1 },
  ];
}

// ------------------------------------------------------------------ ACL micro-benchmark

function aclMicro(): { trieNs: number; regexNs: number; subscribeNs: number } {
  const acl = Acl.parse(aclText()).forClient(USER, 'bench-pub');
  const topics = ['bench/line1/temp', 'site/area500/pump/value', 'site/area995/pump/value', 'nowhere/at/all'];
  const regexes: RegExp[] = [];
  for (let i = 0; i < ACL_RULES - 4; i++) regexes.push(new RegExp(`^site/area${i}/[^/]*/value$`));
  regexes.push(/^bench(\/.*)?$/);
  const iterations = 200_000;
  const time = (check: (topic: string) => boolean) => {
    let hits = 0;
    for (let i = 0; i < 20_000; i++) if (check(topics[i & 3]!)) hits++;
    const started = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) if (check(topics[i & 3]!)) hits++;
    const ns = Number(process.hrtime.bigint() - started) / iterations;
    if (hits === 0) throw new Error('nothing matched');
    return ns;
  };
  const trieNs = time((topic) => acl.canWrite(topic));
  const regexNs = time((topic) => regexes.some((regex) => regex.test(topic)));
  const started = process.hrtime.bigint();
  for (let i = 0; i < 2000; i++) acl.canSubscribe('site/+/pump/value');
  const subscribeNs = Number(process.hrtime.bigint() - started) / 2000;
  return { trieNs, regexNs, subscribeNs };
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'edgemqtt-bench-security-'));
  try {
    const files = makeFiles(dir);
    writeFileSync(files.passwordFile, `${USER}:${await hashPassword(PASSWORD)}\nother:${await hashPassword('x')}\n`);
    writeFileSync(files.aclFile, aclText());
    console.log(`edgemqtt security benchmark — node ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}`);
    console.log(
      `QoS 0, 1 publisher → 1 subscriber, 32 B payloads, ${settings.messages} messages (+${settings.warmup} warm-up), ` +
        `window ${settings.window}, median of ${settings.rounds} round(s)\n`,
    );
    const results = new Map<string, RunResult[]>();
    const connects = new Map<string, ConnectResult[]>();
    const chosen = scenarios(files, dir).filter((scenario) => settings.scenarios.includes(scenario.name));
    for (let round = 0; round < settings.rounds; round++) {
      for (const scenario of chosen) {
        const broker = await startBroker(scenario.config);
        try {
          if (scenario.window === 0) {
            const result = await connectRate(scenario.endpoint(broker.ready), broker.child.pid ?? 0);
            connects.set(scenario.name, [...(connects.get(scenario.name) ?? []), result]);
            continue;
          }
          // One at a time is slow: a tenth of the messages.
          const scale = scenario.window === 1 ? 10 : 1;
          const result = await throughput(
            scenario.endpoint(broker.ready),
            broker.child.pid ?? 0,
            scenario.window,
            Math.ceil(settings.messages / scale),
            Math.ceil(settings.warmup / scale),
          );
          results.set(scenario.name, [...(results.get(scenario.name) ?? []), result]);
        } finally {
          await broker.stop();
        }
      }
    }
    const summary = chosen.filter((scenario) => scenario.window > 0).map((scenario) => {
      const runs = results.get(scenario.name) ?? [];
      return {
        name: scenario.name,
        baseline: scenario.baseline,
        window: scenario.window,
        rate: median(runs.map((run) => run.messagesPerSec)),
        cpu: median(runs.map((run) => run.brokerCpuUsPerMessage)),
        loadgen: median(runs.map((run) => run.loadgenCpuShare)),
      };
    });
    console.log('scenario    in flight      msg/s  ratio   broker CPU µs/msg  ratio   load-gen CPU');
    for (const row of summary) {
      const baseline = summary.find((other) => other.name === row.baseline);
      const rateRatio = baseline ? (row.rate / baseline.rate).toFixed(2) : '-';
      const cpuRatio = baseline ? (row.cpu / baseline.cpu).toFixed(2) : '-';
      console.log(
        `${row.name.padEnd(10)} ${String(row.window).padStart(10)} ${row.rate.toFixed(0).padStart(10)}  ${rateRatio.padStart(5)}  ` +
          `${row.cpu.toFixed(2).padStart(17)}  ${cpuRatio.padStart(5)}   ${(row.loadgen * 100).toFixed(0).padStart(9)}%`,
      );
    }
    console.log('(ratios against tcp, and the -1 rows against tcp-1; µs/msg = broker process CPU, 10 ms /proc resolution)');
    const connectRows = chosen
      .filter((scenario) => scenario.window === 0)
      .map((scenario) => {
        const runs = connects.get(scenario.name) ?? [];
        return {
          name: scenario.name,
          rate: median(runs.map((run) => run.connectsPerSec)),
          cpu: median(runs.map((run) => run.brokerCpuMsPerConnect)),
        };
      });
    if (connectRows.length > 0) {
      console.log(`\nconnect    ${CONNECTS} connections, ${CONNECT_CONCURRENCY} at a time: connect, CONNECT, CONNACK, close`);
      console.log('scenario       connects/s  ratio   broker CPU ms/connect  ratio');
      const base = connectRows.find((row) => row.name === 'tcp-connect');
      for (const row of connectRows) {
        console.log(
          `${row.name.padEnd(13)} ${row.rate.toFixed(0).padStart(11)}  ${(base ? row.rate / base.rate : NaN).toFixed(2).padStart(5)}  ` +
            `${row.cpu.toFixed(3).padStart(21)}  ${(base ? row.cpu / base.cpu : NaN).toFixed(2).padStart(5)}`,
        );
      }
      console.log('(pw-connect: a password login, one scrypt N=16384 hash each, in libuv\'s thread pool)');
    }
    const micro = aclMicro();
    console.log(
      `\nACL check, ${ACL_RULES} rules (in process): trie ${micro.trieNs.toFixed(0)} ns/check, ` +
        `linear regex scan ${micro.regexNs.toFixed(0)} ns/check (${(micro.regexNs / micro.trieNs).toFixed(1)}× slower); ` +
        `SUBSCRIBE coverage check of a wildcard filter ${(micro.subscribeNs / 1000).toFixed(1)} µs`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--broker') {
  brokerMain(JSON.parse(process.argv[3] ?? '{}') as ConfigInput).catch((error: unknown) => {
    console.error('bench broker failed:', error);
    process.exit(1);
  });
} else {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
