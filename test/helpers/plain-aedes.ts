/**
 * Plain aedes, as installed, without any of edgemqtt's corrections: for the
 * canaries in test/aedes-canaries.test.ts, which show that each aedes
 * behaviour edgemqtt corrects is still there.
 *
 * Each broker is served on a port-0 TCP server by `aedes.handle`, nothing in
 * between. The only things these helpers may put around aedes are a wrapper
 * around its own persistence that holds a call back (to widen a race
 * deterministically) or counts calls, and a tap that counts the PUBLISH
 * packets it writes; neither changes what aedes does.
 */
import type { Test } from 'tap';
import net from 'node:net';
import { Aedes } from 'aedes';
import * as mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import { onPublishWritten } from '../../src/broker/aedes-seam/index.js';

/** The installed aedes version, as the broker checks it at start. */
export { installedAedesVersion } from '../../src/broker/aedes-seam/version.js';

export interface PlainBroker {
  aedes: Aedes;
  port: number;
  url: string;
}

type AnyOptions = Record<string, unknown>;

/**
 * `Aedes.createBroker(options)` on a port-0 TCP server. `prepare` runs after
 * listen() and before any client can connect (where a test wraps the
 * persistence). Teardown closes aedes, every socket and the server.
 */
export async function startPlainAedes(t: Test, options: AnyOptions = {}, prepare?: (aedes: Aedes) => void): Promise<PlainBroker> {
  const aedes = await Aedes.createBroker(options as never);
  prepare?.(aedes);
  return serveAedes(t, aedes);
}

/** Serves a listening aedes on a port-0 TCP server (`aedes.handle`, nothing in between); teardown closes aedes, every socket and the server. */
export async function serveAedes(t: Test, aedes: Aedes): Promise<PlainBroker> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        aedes.close(() => {
          for (const socket of sockets) socket.destroy();
          server.close(() => resolve());
        });
      }),
  );
  const port = (server.address() as net.AddressInfo).port;
  return { aedes, port, url: `mqtt://127.0.0.1:${port}` };
}

type Method = (...args: unknown[]) => unknown;

/**
 * Replaces `aedes.persistence` with a view of it where the named methods go
 * through `overrides[name](original, ...args)`; everything else is the
 * persistence itself (bound: persistences keep state in #private fields).
 */
export function interceptPersistence(aedes: Aedes, overrides: Record<string, (original: Method, ...args: unknown[]) => unknown>): void {
  const holder = aedes as unknown as { persistence: object };
  const target = holder.persistence;
  holder.persistence = new Proxy(target, {
    get(object, property) {
      const value: unknown = Reflect.get(object, property);
      const bound = typeof value === 'function' ? (value as Method).bind(object) : value;
      const override = typeof property === 'string' ? overrides[property] : undefined;
      if (override && typeof bound === 'function') return (...args: unknown[]) => override(bound as Method, ...args);
      return bound;
    },
  });
}

/** `aedes.publish` as a promise: resolves once aedes has stored, queued and delivered the message. */
export function publishVia(aedes: Aedes, packet: { topic: string; payload: string | Buffer; qos?: 0 | 1 | 2; retain?: boolean } & AnyOptions): Promise<void> {
  return new Promise((resolve, reject) =>
    aedes.publish(
      { cmd: 'publish', dup: false, retain: false, qos: 0, ...packet, payload: Buffer.from(packet.payload) } as never,
      (error?: Error) => (error ? reject(error) : resolve()),
    ),
  );
}

/**
 * How many PUBLISH packets `aedes` had written by the end of the event-loop
 * turn in which it wrote its first (-1 until that turn is over): 1 where it
 * writes one per turn, all of a backlog where it writes them back to back.
 */
export function publishesInFirstTurn(aedes: Aedes): { readonly count: number } {
  const result = { count: -1 };
  let written = 0;
  onPublishWritten(aedes, () => {
    if (++written === 1) setImmediate(() => (result.count = written));
  });
  return result;
}

/** A promise with its resolve function, for holding a persistence call until the test lets it go. */
export function gate(): { promise: Promise<void>; open: () => void; opened: boolean } {
  let open!: () => void;
  const state = { promise: new Promise<void>((resolve) => (open = resolve)), open: () => undefined as void, opened: false };
  state.open = () => {
    state.opened = true;
    open();
  };
  return state;
}

/** Polls `condition` until it holds or `timeoutMs` passes. */
export async function until(condition: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A byte-level MQTT client of either protocol level (4 = 3.1.1, 5), parsing what the broker sends. */
export interface Raw {
  readonly packets: Packet[];
  readonly closed: boolean;
  /** Encodes a packet at the client's protocol level, or sends bytes as they are, in one write. */
  send(...data: (Packet | Uint8Array)[]): void;
  pause(): void;
  resume(): void;
  /** The first packet of that type after the first `skip` ones; rejects after `timeoutMs`. */
  next<C extends Packet['cmd']>(cmd: C, skip?: number, timeoutMs?: number): Promise<Extract<Packet, { cmd: C }>>;
  waitFor(predicate: (packets: Packet[]) => boolean, what: string, timeoutMs?: number): Promise<void>;
  waitForClose(timeoutMs?: number): Promise<void>;
  /** PINGREQ → PINGRESP: everything the broker wrote before its answer has arrived. Returns the packets before it. */
  ping(timeoutMs?: number): Promise<Packet[]>;
  /**
   * CONNECT and PINGREQ in one write: aedes holds packets that arrive with a
   * CONNECT until the CONNECT sequence (a resumed session's queued messages
   * included) is done, so the PINGRESP follows everything that sequence sent.
   * Returns the packets before the PINGRESP.
   */
  connectAndPing(connect: Packet, timeoutMs?: number): Promise<Packet[]>;
  /** Ends the TCP connection without a DISCONNECT packet. */
  drop(): void;
}

export async function rawClient(t: Test, port: number, protocolVersion: 4 | 5 = 4): Promise<Raw> {
  const parser = mqttPacket.parser({ protocolVersion });
  const packets: Packet[] = [];
  const wakers = new Set<() => void>();
  let closed = false;
  const wake = () => {
    for (const waker of [...wakers]) waker();
  };
  parser.on('packet', (packet: Packet) => {
    packets.push(packet);
    wake();
  });
  parser.on('error', (error: Error) => t.fail(`the broker sent bytes that do not parse: ${error.message}`));
  const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
  t.teardown(() => void socket.destroy());
  socket.on('data', (data) => parser.parse(data));
  socket.on('error', () => undefined);
  socket.on('close', () => {
    closed = true;
    wake();
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });

  function waitUntil<T>(probe: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = probe();
        if (value === undefined) return;
        clearTimeout(timer);
        wakers.delete(check);
        resolve(value);
      };
      const timer = setTimeout(() => {
        wakers.delete(check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(packets.map((p) => p.cmd))}${closed ? ', closed' : ''}`));
      }, timeoutMs);
      wakers.add(check);
      check();
    });
  }

  const raw: Raw = {
    packets,
    get closed() {
      return closed;
    },
    send(...data) {
      const bytes = data.map((item) => (item instanceof Uint8Array ? Buffer.from(item) : mqttPacket.generate(item, { protocolVersion })));
      socket.write(Buffer.concat(bytes));
    },
    pause() {
      socket.pause();
    },
    resume() {
      socket.resume();
    },
    next(cmd, skip = 0, timeoutMs = 5000) {
      return waitUntil(
        () => packets.filter((packet) => packet.cmd === cmd)[skip] as Extract<Packet, { cmd: typeof cmd }> | undefined,
        timeoutMs,
        `${cmd} #${skip + 1}`,
      );
    },
    async waitFor(predicate, what, timeoutMs = 5000) {
      await waitUntil(() => (predicate(packets) ? true : undefined), timeoutMs, what);
    },
    async waitForClose(timeoutMs = 5000) {
      await waitUntil(() => (closed ? true : undefined), timeoutMs, 'the broker to close the connection');
    },
    connectAndPing(connect, timeoutMs = 5000) {
      return pingAfter(timeoutMs, connect);
    },
    drop() {
      socket.destroy();
    },
    ping(timeoutMs = 5000) {
      return pingAfter(timeoutMs);
    },
  };

  async function pingAfter(timeoutMs: number, connect?: Packet): Promise<Packet[]> {
    const before = packets.filter((packet) => packet.cmd === 'pingresp').length;
    if (connect) raw.send(connect, { cmd: 'pingreq' });
    else raw.send({ cmd: 'pingreq' });
    await raw.next('pingresp', before, timeoutMs);
    let seen = 0;
    const index = packets.findIndex((packet) => packet.cmd === 'pingresp' && ++seen === before + 1);
    return packets.slice(0, index);
  }
  return raw;
}

export type Publish = Extract<Packet, { cmd: 'publish' }>;

/** The PUBLISH packets among those a raw client received, in order. */
export const published = (packets: Packet[]): Publish[] => packets.filter((p): p is Publish => p.cmd === 'publish');

/** Their payloads as strings, in order. */
export const payloads = (packets: Packet[]): string[] => published(packets).map((p) => p.payload.toString());

/** A CONNECT at the given level; clean session unless `clean: false`. */
export function connectPacket(clientId: string, protocolVersion: 4 | 5 = 4, extra: AnyOptions = {}): Packet {
  return { cmd: 'connect', protocolId: 'MQTT', protocolVersion, clientId, clean: true, keepalive: 60, ...extra } as Packet;
}

/** Connects a raw client and checks the CONNACK accepted it. */
export async function rawConnected(t: Test, port: number, clientId: string, protocolVersion: 4 | 5 = 4, extra: AnyOptions = {}): Promise<Raw> {
  const raw = await rawClient(t, port, protocolVersion);
  raw.send(connectPacket(clientId, protocolVersion, extra));
  const connack = await raw.next('connack');
  const code = protocolVersion === 5 ? connack.reasonCode : connack.returnCode;
  if (code !== 0) throw new Error(`CONNACK ${String(code)} for ${clientId}`);
  return raw;
}

/**
 * `clientId` subscribes to `topic` at QoS 1 in a session that outlives the
 * connection (`session`: the CONNECT's clean flag and properties), then sends
 * DISCONNECT; resolves once aedes has let the client go, so that what is
 * published next is queued for the session.
 */
export async function subscribedAndGone(t: Test, broker: PlainBroker, clientId: string, topic: string, protocolVersion: 4 | 5 = 4, session: AnyOptions = { clean: false }): Promise<void> {
  const raw = await rawConnected(t, broker.port, clientId, protocolVersion, session);
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic, qos: 1 }] });
  await raw.next('suback');
  const gone = new Promise<void>((resolve) => broker.aedes.once('clientDisconnect', () => resolve()));
  raw.send({ cmd: 'disconnect' });
  await gone;
}
