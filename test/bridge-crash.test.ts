/**
 * The bridge's outbox is as durable as the PUBACK: the built daemon runs as a
 * child, exporting to a real `nats-server -js`, and both crash (SIGKILL) in
 * turn while two QoS 1 publishers send numbered messages. NATS dies first,
 * so messages pile up in the outbox; the daemon dies next, mid-publishing,
 * and starts again on the same data directory while NATS is still down;
 * more messages come; then NATS comes back on its port and store. The stream
 * must then hold every PUBACKed message exactly once, in each publisher's
 * order; a message whose PUBACK the kill cut off may be there at most once,
 * in its place.
 *
 * And a planned restart after everything was exported (the outbox empty
 * on disk) must not give new messages the ids of old ones, which JetStream
 * would drop as duplicates within its window.
 *
 * The publishers speak MQTT byte by byte (mqtt-packet over a socket, clean
 * session), so a PUBACK is recorded exactly when it arrives; after the
 * daemon's restart new connections go on with the numbering.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { generate, parser as packetParser, type Packet } from 'mqtt-packet';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { CliProcess, staleBuildNote, writeConfig, type LogLine } from './helpers/process.js';
import { tempDir } from './helpers/daemon.js';
import { eventually } from './helpers/mqtt.js';
import { NatsServer, natsClient, natsUnavailable, readStream, type StreamEntry } from './helpers/nats.js';
import { freePorts } from './helpers/nats-cluster.js';

const unavailable = natsUnavailable();
const STREAM = 'EDGEMQTT';
const SITE = 'site-a';
/** Messages per second per publisher, and unacknowledged PUBLISHes at most in flight. */
const RATE_PER_SEC = 300;
const WINDOW = 16;
/** PUBACKs each publisher must get in each phase before the test moves on. */
const PER_PHASE = 150;

/** A QoS 1 publisher of numbered messages (payload = its number), clean session, at most WINDOW unacknowledged. */
class Publisher {
  /** Numbers whose PUBACK arrived. */
  readonly acked = new Set<number>();
  /** Numbers sent on a connection that closed before their PUBACK: the broker may or may not have them. */
  readonly unacked = new Set<number>();
  #nextSeq = 1;
  #nextId = 1;
  readonly #inflight = new Map<number, number>();
  #socket: net.Socket | undefined;
  #timer: NodeJS.Timeout | undefined;
  #startedAt = 0;
  #sentAtStart = 0;

  constructor(
    readonly clientId: string,
    readonly topic: string,
  ) {}

  get sent(): number {
    return this.#nextSeq - 1;
  }

  get inflight(): number {
    return this.#inflight.size;
  }

  /** Connects with a clean session and sends at RATE_PER_SEC until stop() or close(). */
  async start(port: number): Promise<void> {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    const parser = packetParser({ protocolVersion: 4 });
    socket.on('error', () => undefined);
    socket.on('data', (data) => parser.parse(data));
    socket.on('close', () => this.#dropped(socket));
    await new Promise<void>((resolve, reject) => {
      socket.once('close', () => reject(new Error(`${this.clientId}: connection closed before CONNACK`)));
      socket.on('connect', () =>
        socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: this.clientId, clean: true, keepalive: 0 })),
      );
      parser.on('packet', (packet: Packet) => {
        if (packet.cmd === 'connack') {
          if (packet.returnCode !== 0) reject(new Error(`${this.clientId}: CONNACK ${packet.returnCode}`));
          else resolve();
        } else if (packet.cmd === 'puback' && socket === this.#socket) {
          const seq = this.#inflight.get(packet.messageId!);
          if (seq === undefined) return;
          this.#inflight.delete(packet.messageId!);
          this.acked.add(seq);
          this.#pump();
        }
      });
    });
    this.#socket = socket;
    this.#startedAt = performance.now();
    this.#sentAtStart = this.sent;
    this.#timer = setInterval(() => this.#pump(), 5);
  }

  /** Sends nothing new; what is in flight still gets its PUBACK. */
  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Stops and drops the connection: what is in flight is abandoned (clean session). */
  close(): void {
    this.stop();
    const socket = this.#socket;
    if (socket) this.#dropped(socket);
    socket?.destroy();
  }

  #dropped(socket: net.Socket): void {
    if (socket !== this.#socket) return;
    this.#socket = undefined;
    this.stop();
    for (const seq of this.#inflight.values()) this.unacked.add(seq);
    this.#inflight.clear();
  }

  #pump(): void {
    const socket = this.#socket;
    if (!socket || this.#timer === undefined) return;
    const budget = this.#sentAtStart + ((performance.now() - this.#startedAt) * RATE_PER_SEC) / 1000;
    while (this.#inflight.size < WINDOW && this.sent < budget) {
      const seq = this.#nextSeq++;
      let messageId = this.#nextId;
      while (this.#inflight.has(messageId)) messageId = (messageId % 65535) + 1;
      this.#nextId = (messageId % 65535) + 1;
      this.#inflight.set(messageId, seq);
      socket.write(generate({ cmd: 'publish', topic: this.topic, payload: Buffer.from(String(seq)), qos: 1, messageId, dup: false, retain: false }));
    }
  }
}

interface Child {
  cli: CliProcess;
}

/** A daemon child on a fixed MQTT port (the same after a restart), exporting plant/# to `nats`. */
async function daemonChild(t: Test, nats: NatsServer, prefix: string) {
  const dir = tempDir(t, prefix);
  const [mqttPort] = await freePorts(1);
  const configPath = await writeConfig(dir, {
    dataDir: `${dir}/data`,
    log: { level: 'info' },
    mqtt: { host: '127.0.0.1', port: mqttPort },
    http: { enabled: false },
    bridge: {
      enabled: true,
      siteId: SITE,
      nats: { servers: [nats.url] },
      stream: { name: STREAM, duplicateWindowSec: 60 },
      export: [{ filter: 'plant/#' }],
      sender: { window: 32, publishTimeoutMs: 1000 },
    },
  });
  const start = async (): Promise<Child> => {
    const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir });
    const ready = await cli.waitForLog('edgemqtt ready', { timeoutMs: 30_000 });
    const port = (ready.addresses as { mqtt?: { port: number } }).mqtt?.port;
    if (port !== mqttPort) throw new Error(`expected the MQTT port ${mqttPort}, got ${JSON.stringify(ready.addresses)}`);
    return { cli };
  };
  return { mqttPort: mqttPort!, start };
}

/** Stops the child as a service manager would (SIGTERM: the bridge drains), bounded; returns its 'bridge stopped' line. */
async function stopChild(t: Test, child: Child): Promise<LogLine | undefined> {
  child.cli.signal('SIGTERM');
  const exit = await child.cli.waitForExit(30_000);
  t.equal(exit.code, 0, 'the daemon stopped cleanly');
  const stopped = child.cli.logs.items.find((line) => line.msg === 'bridge stopped');
  t.ok(stopped, 'the bridge logged its stop');
  return stopped;
}

async function streamCount(jsm: JetStreamManager): Promise<number> {
  return (await jsm.streams.info(STREAM)).state.messages;
}

/** Per publisher: what the stream holds of it, as numbers in stream order. */
function numbersOf(entries: StreamEntry[], topic: string): number[] {
  const subject = `mqtt.${topic.replaceAll('/', '.')}`;
  return entries.filter((entry) => entry.subject === subject).map((entry) => Number(entry.data));
}

/** Places where the order breaks or a number repeats: `a→b` with b <= a. */
function outOfOrder(numbers: number[]): string[] {
  const problems: string[] = [];
  for (let i = 1; i < numbers.length; i++) if (numbers[i]! <= numbers[i - 1]!) problems.push(`${numbers[i - 1]}→${numbers[i]}`);
  return problems;
}

t.test('NATS and then the daemon SIGKILLed mid-publishing: every PUBACKed message reaches the stream once, in order', { skip: unavailable }, async (t) => {
  const stale = staleBuildNote();
  if (stale) t.comment(`warning: ${stale}`);
  const nats = new NatsServer(t);
  await nats.start();
  const jsm = await jetstreamManager(await natsClient(t, nats));
  const daemon = await daemonChild(t, nats, 'edgemqtt-bridge-crash-');
  let child = await daemon.start();
  await child.cli.waitForLog('bridge connected to NATS JetStream', { timeoutMs: 20_000 });

  const publishers = [0, 1].map((i) => new Publisher(`bridge-crash-pub-${i}`, `plant/p${i}`));
  t.teardown(() => publishers.forEach((publisher) => publisher.close()));
  const ackedEach = (count: number[] | number) => () =>
    publishers.every((p, i) => p.acked.size >= (typeof count === 'number' ? count : count[i]!));
  const acked = () => publishers.map((p) => p.acked.size);

  // Phase 1, NATS up: messages flow through to the stream.
  for (const publisher of publishers) await publisher.start(daemon.mqttPort);
  await eventually(ackedEach(PER_PHASE), 20_000, `${PER_PHASE} PUBACKs per publisher with NATS up`);
  await eventually(async () => (await streamCount(jsm)) >= PER_PHASE, 20_000, 'messages in the stream while NATS is up');
  const exportedBeforeOutage = await streamCount(jsm);

  // Phase 2, NATS SIGKILLed: PUBACKs go on; messages wait in the outbox.
  await nats.kill();
  const ackedAtOutage = acked();
  // Messages sent from here on cannot have reached the stream. One sent before may have its PUBACK
  // read here only after this point although the bridge exported it just before NATS died (once its
  // outbox batch is on disk, the daemon may publish it to NATS before its PUBACK leaves): not
  // counted as the outage's.
  const sentAtOutage = publishers.map((p) => p.sent);
  await eventually(ackedEach(ackedAtOutage.map((n) => n + PER_PHASE)), 20_000, `${PER_PHASE} more PUBACKs per publisher during the outage`);

  // The daemon SIGKILLed mid-publishing; what was in flight loses its PUBACK.
  child.cli.signal('SIGKILL');
  const exit = await child.cli.waitForExit();
  t.equal(exit.signal, 'SIGKILL', 'the daemon was killed');
  for (const publisher of publishers) publisher.close();
  const ackedAtKill = acked();
  const ackedDuringOutage = publishers.reduce((sum, p, i) => sum + [...p.acked].filter((seq) => seq > sentAtOutage[i]!).length, 0);

  // Phase 3, the daemon again on the same data dir, NATS still down.
  child = await daemon.start();
  const backlog = child.cli.logs.items.find((line) => line.msg === 'outbox holds messages from an earlier run; they are sent once NATS answers');
  const depth = Number(backlog?.depth ?? 0);
  t.ok(
    depth >= ackedDuringOutage,
    `after the restart the outbox holds at least the ${ackedDuringOutage} messages PUBACKed during the outage (depth ${depth})`,
  );
  for (const publisher of publishers) await publisher.start(daemon.mqttPort);
  await eventually(ackedEach(ackedAtKill.map((n) => n + PER_PHASE)), 20_000, `${PER_PHASE} more PUBACKs per publisher after the restart`);
  for (const publisher of publishers) publisher.stop();
  await eventually(() => publishers.every((p) => p.inflight === 0), 10_000, 'the last PUBACKs');

  // NATS back on its port and store: the outbox drains into the stream.
  await nats.start();
  const jsmAfter = await jetstreamManager(await natsClient(t, nats));
  const everyAcked = async () => {
    const entries = await readStream(jsmAfter, STREAM);
    return publishers.every((p) => {
      const have = new Set(numbersOf(entries, p.topic));
      return [...p.acked].every((n) => have.has(n));
    });
  };
  const totalAcked = publishers.reduce((sum, p) => sum + p.acked.size, 0);
  await eventually(async () => (await streamCount(jsmAfter)) >= totalAcked && (await everyAcked()), 45_000, 'every PUBACKed message in the stream').catch(
    (error: Error) => t.comment(error.message),
  );
  // A planned stop drains what is left, so nothing more can arrive after the look below.
  const stopped = await stopChild(t, child);
  t.equal(stopped?.outboxDepth, undefined, 'the outbox was empty when the daemon stopped');

  const entries = await readStream(jsmAfter, STREAM);
  for (const publisher of publishers) {
    const numbers = numbersOf(entries, publisher.topic);
    const have = new Set(numbers);
    const missing = [...publisher.acked].filter((n) => !have.has(n)).sort((a, b) => a - b);
    t.same(
      missing.slice(0, 20),
      [],
      `${publisher.clientId}: all ${publisher.acked.size} PUBACKed messages in the stream` + (missing.length > 0 ? ` (${missing.length} missing)` : ''),
    );
    t.same(outOfOrder(numbers).slice(0, 20), [], `${publisher.clientId}: each at most once, in publishing order`);
    const unsent = numbers.filter((n) => !publisher.acked.has(n) && !publisher.unacked.has(n));
    t.same(unsent.slice(0, 20), [], `${publisher.clientId}: nothing in the stream that was not published`);
    t.comment(
      `${publisher.clientId}: ${publisher.sent} sent, ${publisher.acked.size} PUBACKed, ${publisher.unacked.size} cut off without PUBACK ` +
        `of which ${numbers.filter((n) => publisher.unacked.has(n)).length} in the stream`,
    );
  }
  const ids = entries.map((entry) => entry.msgId);
  t.equal(new Set(ids).size, ids.length, 'no Nats-Msg-Id twice in the stream');
  t.ok(entries.every((entry) => entry.origin === SITE), 'each names its origin site');
  t.comment(
    `exported before the outage: ${exportedBeforeOutage}; PUBACKed during it: ${ackedDuringOutage}; ` +
      `outbox after the restart: ${depth}; stream: ${entries.length}`,
  );
});

t.test('a restart after the outbox drained: new messages get new ids and are not dropped as duplicates', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const jsm = await jetstreamManager(await natsClient(t, nats));
  const daemon = await daemonChild(t, nats, 'edgemqtt-bridge-restart-');
  const COUNT = 20;

  let child = await daemon.start();
  await child.cli.waitForLog('bridge connected to NATS JetStream', { timeoutMs: 20_000 });
  const first = new Publisher('bridge-restart-pub-1', 'plant/r');
  t.teardown(() => first.close());
  await first.start(daemon.mqttPort);
  await eventually(() => first.acked.size >= COUNT, 10_000, `${COUNT} PUBACKs`);
  first.stop();
  await eventually(() => first.inflight === 0, 10_000, 'the last PUBACKs');
  first.close();
  const before = first.sent;
  await eventually(async () => (await streamCount(jsm)) === before, 20_000, `${before} messages in the stream`);
  // A planned restart (systemctl restart) with everything exported: the outbox is empty on disk.
  const stopped = await stopChild(t, child);
  t.equal(stopped?.outboxDepth, undefined, 'the outbox was empty when the daemon stopped');

  child = await daemon.start();
  await child.cli.waitForLog('bridge connected to NATS JetStream', { timeoutMs: 20_000 });
  const second = new Publisher('bridge-restart-pub-2', 'plant/s');
  t.teardown(() => second.close());
  await second.start(daemon.mqttPort);
  await eventually(() => second.acked.size >= COUNT, 10_000, `${COUNT} PUBACKs after the restart`);
  second.stop();
  await eventually(() => second.inflight === 0, 10_000, 'the last PUBACKs');
  const after = second.sent;
  // The bridge is connected: a planned stop sends what waits before it ends, so the stream is final after it.
  const stoppedAgain = await stopChild(t, child);
  t.equal(stoppedAgain?.outboxDepth, undefined, 'the outbox was empty when the daemon stopped again');

  const entries = await readStream(jsm, STREAM);
  t.same(numbersOf(entries, 'plant/r'), Array.from({ length: before }, (_, i) => i + 1), 'the first run: every message once, in order');
  t.same(
    numbersOf(entries, 'plant/s'),
    Array.from({ length: after }, (_, i) => i + 1),
    'the second run: every message once, in order (none taken by JetStream for a duplicate of the first run)',
  );
  const ids = entries.map((entry) => entry.msgId);
  t.equal(new Set(ids).size, ids.length, 'no Nats-Msg-Id twice in the stream');
  t.comment(`message ids: first run ${ids[0]}…${ids[before - 1]}, second run ${ids[before] ?? '(none)'}…${ids.at(-1)}`);
});
