/**
 * A hostile network: many connections over TCP and WebSocket sending mutated
 * and truncated MQTT packets as fast as they can, next to healthy clients
 * exchanging QoS 1 messages. The healthy clients must see every message, in
 * order, without long gaps and without a disconnect; the daemon must stay up
 * and its memory must come back down afterwards (bare aedes 1.2 grew by about
 * 200 MB over 200k such packets). The same runs again with MQTT 5.0 on
 * both sides: hostile packets with properties, reason
 * codes, AUTH, and healthy MQTT 5 clients.
 *
 * Memory is the daemon's heap as seen from inside this process (the daemon
 * runs in-process), measured after a full garbage collection before the
 * hostile phase (after a warm-up, so code and caches are in place) and again
 * once every hostile connection has closed. V8's `gc()` is reached through
 * `--expose-gc` set at run time.
 */
import t from 'tap';
import net from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import WebSocket from 'ws';
import type { MqttClient } from 'mqtt';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { openClient, eventually } from './helpers/mqtt.js';
import type { Test } from 'tap';
import { connect, publish, subscribe, unsubscribe, puback, pubrec, pubrel, pubcomp, pingreq } from './helpers/packets.js';
import { connect5, publish5, ack5, subscribe5, unsubscribe5, disconnect5, auth5, property, P } from './helpers/packets.js';
import { random } from './helpers/random.js';

const HOSTILE_MS = 20_000;
/** Hostile packets the measured phase sends at least, and the longest it may take to. */
const HOSTILE_PACKETS = 30_000;
const HOSTILE_MAX_MS = 60_000;
const WORKERS_PER_TRANSPORT = 6;
/** Retained heap growth allowed after the hostile phase. */
const HEAP_GROWTH_BOUND_MB = 8;
/**
 * Catches a stall (aedes' was up to 60 s). Looser than slow-consumers.test.ts:
 * the fuzzing clients saturate the event loop this process shares with the
 * daemon and the healthy clients.
 */
const GAP_BOUND_MS = 2000;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Heap in use after a full collection, in bytes (the minimum of a few, for stray allocations in flight). */
async function settledHeap(): Promise<number> {
  let lowest = Infinity;
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    gc();
    lowest = Math.min(lowest, process.memoryUsage().heapUsed);
  }
  return lowest;
}

const MB = (bytes: number) => (bytes / 1_048_576).toFixed(1);

/** Valid packets to start from; mutation breaks them in every way a byte stream can break. */
function templates(next: () => number): Buffer[] {
  const id = () => 1 + Math.floor(next() * 65535);
  const payload = () => Buffer.alloc(Math.floor(next() * 200), Math.floor(next() * 256));
  return [
    publish('hostile/a/b', { qos: 0, payload: payload() }),
    publish('hostile/ü', { qos: 1, id: id(), payload: payload() }),
    publish('hostile/c', { qos: 2, id: id(), payload: payload() }),
    subscribe(id(), ['hostile/#', '+/x/+'], Math.floor(next() * 3)),
    unsubscribe(id(), ['hostile/#']),
    puback(id()),
    pubrec(id()),
    pubrel(id()),
    pubcomp(id()),
    pingreq(),
    connect({ clientId: 'second-connect' }),
  ];
}

/** MQTT 5 packets to start from: properties, reason codes, shared subscriptions, AUTH. */
function templates5(next: () => number): Buffer[] {
  const id = () => 1 + Math.floor(next() * 65535);
  const payload = () => Buffer.alloc(Math.floor(next() * 200), Math.floor(next() * 256));
  return [
    publish5('hostile/a/b', { qos: 0, payload: payload(), properties: [property.byte(P.payloadFormatIndicator, 0), property.pair('k', 'v')] }),
    publish5('hostile/ü', { qos: 1, id: id(), payload: payload(), properties: [property.u16(P.topicAlias, 1 + Math.floor(next() * 3))] }),
    publish5('', { qos: 2, id: id(), payload: payload(), properties: [property.u16(P.topicAlias, 1)] }),
    publish5('hostile/c', { qos: 1, id: id(), properties: [property.string(P.responseTopic, 'hostile/reply'), property.string(P.correlationData, Buffer.from([1, 2]))] }),
    subscribe5(id(), [{ filter: 'hostile/#', options: Math.floor(next() * 3) | 0x08 }, { filter: '$share/g/+/x/+', options: 0x21 }], [property.varint(P.subscriptionIdentifier, 1 + Math.floor(next() * 1000))]),
    unsubscribe5(id(), ['hostile/#', '$share/g/+/x/+'], [property.pair('u', 'v')]),
    ack5(0x40, id(), 0x10, [property.string(P.reasonString, 'none')]),
    ack5(0x50, id()),
    ack5(0x62, id(), 0x92),
    ack5(0x70, id(), 0x00, []),
    auth5(0x19, [property.string(P.authenticationMethod, 'none')]),
    pingreq(),
    connect5({ clientId: 'second-connect' }),
    disconnect5(0x04, [property.u32(P.sessionExpiryInterval, 0)]),
  ];
}

/** One packet, valid or broken: flipped bytes, truncated, garbage, or an absurd length. */
function hostilePacket(next: () => number, version: 4 | 5): Buffer {
  const all = version === 5 ? templates5(next) : templates(next);
  const bytes = Buffer.from(all[Math.floor(next() * all.length)] as Buffer);
  const kind = next();
  if (kind < 0.4) return bytes;
  if (kind < 0.7) {
    for (let flips = 1 + Math.floor(next() * 3); flips > 0; flips--) bytes[Math.floor(next() * bytes.length)] = Math.floor(next() * 256);
    return bytes;
  }
  if (kind < 0.85) return bytes.subarray(0, Math.floor(next() * bytes.length));
  if (kind < 0.95) return Buffer.from(Array.from({ length: 1 + Math.floor(next() * 40) }, () => Math.floor(next() * 256)));
  return Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]);
}

interface Tally {
  connections: number;
  packets: number;
}

/**
 * One hostile connection after another until `done()`: a CONNECT (mutated one
 * time in five, from a small pool of client ids so sessions cannot pile up),
 * then bursts of hostile packets until the daemon closes it or 30 are sent.
 */
async function hostileWorker(daemon: RunningDaemon, transport: 'tcp' | 'ws', version: 4 | 5, seed: number, done: () => boolean, tally: Tally): Promise<void> {
  const next = random(seed);
  while (!done()) {
    tally.connections++;
    await new Promise<void>((resolve) => {
      let send: (bytes: Buffer) => void;
      let end: () => void;
      let closed = false;
      const done = () => {
        if (closed) return;
        closed = true;
        resolve();
      };
      if (transport === 'tcp') {
        const socket = net.connect({ host: '127.0.0.1', port: daemon.mqttPort });
        socket.on('error', () => undefined);
        socket.on('close', done);
        socket.on('data', () => undefined);
        send = (bytes) => void socket.write(bytes);
        end = () => socket.destroy();
        socket.once('connect', () => burst());
      } else {
        const ws = new WebSocket(daemon.wsUrl, ['mqtt']);
        ws.on('error', () => undefined);
        ws.on('close', done);
        send = (bytes) => ws.send(bytes, { binary: true });
        end = () => ws.terminate();
        ws.once('open', () => burst());
      }
      const burst = () => {
        const clientId = `hostile-${Math.floor(next() * 32)}`;
        const hello = version === 5
          ? connect5({ clientId, keepalive: 5, properties: [property.u16(P.topicAliasMaximum, 3), property.u16(P.receiveMaximum, 100)] })
          : connect({ clientId, keepalive: 5 });
        if (next() < 0.2) hello[Math.floor(next() * hello.length)] = Math.floor(next() * 256);
        send(hello);
        tally.packets++;
        let left = 30;
        const tick = () => {
          if (closed) return;
          if (left <= 0) return end();
          const count = Math.min(left, 1 + Math.floor(next() * 10));
          const packets = Array.from({ length: count }, () => hostilePacket(next, version));
          left -= count;
          tally.packets += count;
          send(Buffer.concat(packets));
          setImmediate(tick);
        };
        tick();
      };
    });
  }
}

interface Healthy {
  name: string;
  received: number;
  outOfOrder: number;
  largestGapMs: number;
  closes: number;
}

function watch(name: string, client: MqttClient): Healthy {
  const state: Healthy = { name, received: 0, outOfOrder: 0, largestGapMs: 0, closes: 0 };
  let last: number | undefined;
  // Each publisher counts 0, 1, 2… on its own topic.
  const lastSeq = new Map<string, number>();
  client.on('message', (topic, payload) => {
    const now = performance.now();
    if (last !== undefined) state.largestGapMs = Math.max(state.largestGapMs, now - last);
    last = now;
    const seq = Number(payload.toString());
    if (seq !== (lastSeq.get(topic) ?? -1) + 1) state.outOfOrder++;
    lastSeq.set(topic, seq);
    state.received++;
  });
  client.on('close', () => state.closes++);
  return state;
}

t.test('mutated and truncated packets over TCP and WebSocket do not disturb healthy clients or grow memory', (t) => hostile(t, 4));

t.test('MQTT 5: mutated and truncated packets do not disturb healthy MQTT 5 clients or grow memory', (t) => hostile(t, 5));

async function hostile(t: Test, version: 4 | 5): Promise<void> {
  // Every hostile connection comes from 127.0.0.1: the per-address rate limit
  // would refuse them (limits.test.ts covers it), so it is off here.
  const daemon = await startDaemon(t, { limits: { connectRatePerAddressPerSec: 0 } });

  // Healthy traffic: a publisher and a subscriber on each transport, QoS 1, every 10 ms, throughout.
  const healthy: Healthy[] = [];
  const publishers: { client: MqttClient; topic: string; sent: number }[] = [];
  for (const transport of ['tcp', 'ws'] as const) {
    const url = transport === 'tcp' ? daemon.mqttUrl : daemon.wsUrl;
    const subscriber = await openClient(t, url, { clientId: `healthy-sub-${transport}`, protocolVersion: version });
    await subscriber.client.subscribeAsync('healthy/#', { qos: 1 });
    healthy.push(watch(`${transport} subscriber`, subscriber.client));
    const publisher = await openClient(t, url, { clientId: `healthy-pub-${transport}`, protocolVersion: version });
    healthy.push(watch(`${transport} publisher`, publisher.client));
    publishers.push({ client: publisher.client, topic: `healthy/${transport}`, sent: 0 });
  }
  let publishing = true;
  const healthyLoops = publishers.map(async (publisher) => {
    while (publishing) {
      await publisher.client.publishAsync(publisher.topic, String(publisher.sent), { qos: 1 });
      publisher.sent++;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  });
  // At least `ms` and until `packets` hostile packets were sent, whichever
  // is later (bounded by HOSTILE_MAX_MS): a loaded machine sends fewer per second.
  const runHostile = async (ms: number, seedBase: number, packets = 0) => {
    const tally: Tally = { connections: 0, packets: 0 };
    const start = performance.now();
    const until = () => {
      const elapsed = performance.now() - start;
      return elapsed >= HOSTILE_MAX_MS || (elapsed >= ms && tally.packets >= packets);
    };
    const workers: Promise<void>[] = [];
    for (let i = 0; i < WORKERS_PER_TRANSPORT; i++) {
      workers.push(hostileWorker(daemon, 'tcp', version, seedBase + i, until, tally));
      workers.push(hostileWorker(daemon, 'ws', version, seedBase + 100 + i, until, tally));
    }
    await Promise.all(workers);
    return tally;
  };
  const baselineConnections = daemon.daemon.limitsStats().openConnections;

  // Warm-up, so that code, caches and the store's first allocations are not counted as growth.
  await runHostile(2000, 1);
  await eventually(() => daemon.daemon.limitsStats().openConnections === baselineConnections, 10_000, 'warm-up connections to close');
  const heapBefore = await settledHeap();
  const rssBefore = process.memoryUsage().rss;

  const started = performance.now();
  // The daemon, the hostile clients and the healthy ones share this process's event loop.
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const tally = await runHostile(HOSTILE_MS, 1000, HOSTILE_PACKETS);
  loopDelay.disable();
  const hostileSeconds = (performance.now() - started) / 1000;
  await eventually(() => daemon.daemon.limitsStats().openConnections === baselineConnections, 10_000, 'hostile connections to close');
  const heapAfter = await settledHeap();
  const rssAfter = process.memoryUsage().rss;

  publishing = false;
  await Promise.all(healthyLoops);
  const totalSent = publishers.reduce((sum, p) => sum + p.sent, 0);
  const subscribers = healthy.filter((h) => h.name.endsWith('subscriber'));
  await eventually(() => subscribers.every((s) => s.received === totalSent), 5000, 'the healthy subscribers to catch up');

  const stats = daemon.daemon.limitsStats();
  t.comment(
    `hostile: ${tally.packets} packets on ${tally.connections} connections in ${hostileSeconds.toFixed(1)} s ` +
      `(${WORKERS_PER_TRANSPORT} TCP + ${WORKERS_PER_TRANSPORT} WebSocket workers); ` +
      `${stats.protocolViolations} protocol violations, limit hits ${JSON.stringify(Object.fromEntries(Object.entries(stats.limitHits).filter(([, n]) => n > 0)))}`,
  );
  t.comment(`event loop delay during the hostile phase: p99 ${(loopDelay.percentile(99) / 1e6).toFixed(0)} ms, max ${(loopDelay.max / 1e6).toFixed(0)} ms`);
  t.comment(`healthy largest gaps: ${subscribers.map((s) => `${s.name} ${s.largestGapMs.toFixed(0)} ms`).join(', ')}`);
  t.comment(`heap after GC: ${MB(heapBefore)} MB before, ${MB(heapAfter)} MB after (growth ${MB(heapAfter - heapBefore)} MB); RSS ${MB(rssBefore)} → ${MB(rssAfter)} MB`);
  t.ok(tally.packets >= HOSTILE_PACKETS, `a long stream of hostile input (${tally.packets} packets)`);
  t.ok(stats.protocolViolations > 1000, 'most of it refused as protocol violations');
  t.ok(heapAfter - heapBefore < HEAP_GROWTH_BOUND_MB * 1_048_576, `retained heap growth ${MB(heapAfter - heapBefore)} MB < ${HEAP_GROWTH_BOUND_MB} MB`);

  for (const h of healthy) {
    t.equal(h.closes, 0, `healthy ${h.name} was never disconnected`);
  }
  for (const s of subscribers) {
    t.equal(s.received, totalSent, `healthy ${s.name} received all ${totalSent} messages`);
    t.equal(s.outOfOrder, 0, `healthy ${s.name} received each publisher's messages in order`);
    t.ok(s.largestGapMs < GAP_BOUND_MS, `healthy ${s.name}'s largest gap ${s.largestGapMs.toFixed(0)} ms < ${GAP_BOUND_MS} ms`);
  }
  t.equal((await fetch(`${daemon.httpUrl}/healthz`)).status, 200, 'the daemon still answers /healthz');
  t.equal(daemon.daemon.readiness().ready, true, 'and is ready');
}
