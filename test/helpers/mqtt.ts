/**
 * Real mqtt.js clients for tests, with bounded waits instead of sleeps.
 */
import type { Test } from 'tap';
import net from 'node:net';
import mqtt, { type IClientOptions, type MqttClient, type IPublishPacket, type IConnackPacket } from 'mqtt';
import * as mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import WebSocket from 'ws';
import { connect } from './packets.js';

export interface ReceivedMessage {
  topic: string;
  payload: string;
  packet: IPublishPacket;
}

/** Connects and waits for CONNACK; the test's teardown ends the client. */
export async function connectClient(t: Test, url: string, options: IClientOptions = {}): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
  t.teardown(() => client.endAsync(true));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
    client.once('close', () => reject(new Error(`connection to ${url} closed before CONNACK`)));
  });
  return client;
}

/** Records every message a client receives, for assertions that wait with a bound. */
export class MessageLog {
  readonly messages: ReceivedMessage[] = [];
  readonly #waiters = new Set<() => void>();

  constructor(client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload: payload.toString(), packet });
      for (const wake of this.#waiters) wake();
    });
  }

  /** Resolves once `predicate` holds for the messages so far; rejects after `timeoutMs`. */
  waitFor(predicate: (messages: ReceivedMessage[]) => boolean, timeoutMs = 5000, what = 'messages'): Promise<ReceivedMessage[]> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate(this.messages)) return false;
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve(this.messages);
        return true;
      };
      const wake = () => void check();
      const timer = setTimeout(() => {
        this.#waiters.delete(wake);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(this.messages.map((m) => [m.topic, m.payload]))}`));
      }, timeoutMs);
      if (!check()) this.#waiters.add(wake);
    });
  }

  waitForCount(count: number, timeoutMs = 5000): Promise<ReceivedMessage[]> {
    return this.waitFor((messages) => messages.length >= count, timeoutMs, `${count} message(s)`);
  }
}

/** Polls `condition` until it holds or `timeoutMs` passes. */
export async function eventually(condition: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A client with its MessageLog attached before CONNECT, and the CONNACK it got. */
export interface OpenedClient {
  client: MqttClient;
  log: MessageLog;
  connack: IConnackPacket;
}

/**
 * Like connectClient, but attaches a MessageLog before CONNECT and returns the
 * CONNACK: a resumed session's queued messages follow the CONNACK at once
 * [MQTT-3.2.2-2] and would be missed by a log attached afterwards.
 */
export async function openClient(t: Test, url: string, options: IClientOptions = {}): Promise<OpenedClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
  t.teardown(() => client.endAsync(true));
  const log = new MessageLog(client);
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
    client.once('close', () => reject(new Error(`connection to ${url} closed before CONNACK`)));
  });
  return { client, log, connack };
}

/**
 * A byte-level MQTT client over TCP (`mqtt://`) or WebSocket (`ws://`, binary
 * frames, `mqtt` subprotocol), for what mqtt.js will not send: malformed
 * packets, a CONNECT and then silence, an empty client id with clean=0.
 */
export interface RawClient {
  /** Every packet parsed from the broker's bytes, in order. */
  readonly packets: Packet[];
  /** Parse errors in the broker's bytes (none expected). */
  readonly parseErrors: Error[];
  readonly isClosed: boolean;
  /** performance.now() at close, when closed. */
  readonly closedAt: number | undefined;
  /** The WebSocket close code received (1006 when the socket just dropped); undefined for TCP. */
  readonly closeCode: number | undefined;
  /** Sends a packet (encoded with mqtt-packet) or raw bytes, in one write / one binary frame. */
  send(data: Packet | Uint8Array): void;
  /** Stops reading the socket (a frozen tab, a phone in a tunnel): the broker's bytes pile up in the kernel, then in the broker. */
  pauseReading(): void;
  resumeReading(): void;
  /** Resolves with the first received packet of that type; rejects after `timeoutMs`. */
  waitForPacket<C extends Packet['cmd']>(cmd: C, timeoutMs?: number): Promise<Extract<Packet, { cmd: C }>>;
  /** Resolves once `predicate` holds for the packets so far; rejects after `timeoutMs`. */
  waitFor(predicate: (packets: Packet[]) => boolean, timeoutMs?: number, what?: string): Promise<void>;
  /** Resolves once the broker has closed the connection; rejects after `timeoutMs`. */
  waitForClose(timeoutMs?: number): Promise<void>;
}

export interface RawClientOptions {
  /** WebSocket only: the Origin header to send. */
  origin?: string;
  /** The protocol version to parse what the broker sends as, and to encode packets given to send() at (4 by default; 5 for a level-5 CONNECT). */
  protocolVersion?: 4 | 5;
}

export async function connectRaw(t: Test, url: string, options: RawClientOptions = {}): Promise<RawClient> {
  const target = new URL(url);
  const parser = mqttPacket.parser({ protocolVersion: options.protocolVersion ?? 4 });
  const packets: Packet[] = [];
  const parseErrors: Error[] = [];
  const wakers = new Set<() => void>();
  let isClosed = false;
  let closedAt: number | undefined;
  let closeCode: number | undefined;
  const wakeAll = () => {
    for (const wake of [...wakers]) wake();
  };
  parser.on('packet', (packet: Packet) => {
    packets.push(packet);
    wakeAll();
  });
  parser.on('error', (error: Error) => parseErrors.push(error));
  const onClose = (code?: number) => {
    if (isClosed) return;
    isClosed = true;
    closedAt = performance.now();
    closeCode = code;
    wakeAll();
  };

  let write: (bytes: Buffer) => void;
  let socketOf: () => net.Socket;
  if (target.protocol === 'ws:' || target.protocol === 'wss:') {
    const ws = new WebSocket(url, ['mqtt'], options.origin === undefined ? {} : { origin: options.origin });
    t.teardown(() => ws.terminate());
    ws.on('message', (data: Buffer) => parser.parse(data));
    ws.on('close', (code) => onClose(code));
    ws.on('error', () => onClose(1006));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    write = (bytes) => ws.send(bytes, { binary: true });
    socketOf = () => (ws as unknown as { _socket: net.Socket })._socket;
  } else {
    const socket = net.connect({ host: target.hostname, port: Number(target.port), noDelay: true });
    t.teardown(() => void socket.destroy());
    socket.on('data', (data) => parser.parse(data));
    // A reset socket is one of the outcomes tests look for, not a failure.
    socket.on('error', () => undefined);
    socket.on('close', () => onClose());
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    });
    write = (bytes) => void socket.write(bytes);
    socketOf = () => socket;
  }

  function waitUntil<T>(probe: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = probe();
        if (value === undefined) return false;
        clearTimeout(timer);
        wakers.delete(wake);
        resolve(value);
        return true;
      };
      const wake = () => void check();
      const timer = setTimeout(() => {
        wakers.delete(wake);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(packets.map((p) => p.cmd))}`));
      }, timeoutMs);
      if (!check()) wakers.add(wake);
    });
  }

  return {
    packets,
    parseErrors,
    get isClosed() {
      return isClosed;
    },
    get closedAt() {
      return closedAt;
    },
    get closeCode() {
      return closeCode;
    },
    send(data) {
      write(data instanceof Uint8Array ? Buffer.from(data) : mqttPacket.generate(data, { protocolVersion: options.protocolVersion ?? 4 }));
    },
    pauseReading() {
      socketOf().pause();
    },
    resumeReading() {
      socketOf().resume();
    },
    waitForPacket(cmd, timeoutMs = 5000) {
      return waitUntil(
        () => packets.find((packet): packet is Extract<Packet, { cmd: typeof cmd }> => packet.cmd === cmd),
        timeoutMs,
        `a ${cmd} packet`,
      );
    },
    async waitFor(predicate, timeoutMs = 5000, what = 'packets') {
      await waitUntil(() => (predicate(packets) ? true : undefined), timeoutMs, what);
    },
    async waitForClose(timeoutMs = 5000) {
      await waitUntil(() => (isClosed ? true : undefined), timeoutMs, 'the broker to close the connection');
    },
  };
}

export interface RawLogin {
  clientId?: string;
  username?: string;
  password?: string;
  will?: { topic: string };
}

/**
 * Opens a raw connection and sends a clean-session CONNECT (keep-alive 30 s);
 * returns the client and the CONNACK's return code, so tests can see refusals
 * and SUBACK codes that mqtt.js turns into errors.
 */
export async function connectWithLogin(t: Test, url: string, login: RawLogin = {}): Promise<{ raw: RawClient; returnCode: number }> {
  const raw = await connectRaw(t, url);
  raw.send({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    keepalive: 30,
    clientId: login.clientId ?? `c-${Math.random().toString(36).slice(2)}`,
    ...(login.username !== undefined ? { username: login.username } : {}),
    ...(login.password !== undefined ? { password: Buffer.from(login.password) } : {}),
    ...(login.will ? { will: { topic: login.will.topic, payload: Buffer.from('bye'), qos: 0, retain: false } } : {}),
  });
  const connack = await raw.waitForPacket('connack');
  return { raw, returnCode: connack.returnCode ?? -1 };
}

/**
 * One MQTT 3.1.1 CONNECT over a fresh TCP connection to `url`, and how the
 * broker answered: 'connack' (accepted, return code 0), 'refused' (a CONNACK
 * with another code) or 'closed' (the connection ended, or was refused or
 * reset, without a CONNACK). The socket is closed once that is known; a broker
 * that does neither within `timeoutMs` fails the call.
 */
export function tcpConnect(url: string, clientId: string, timeoutMs = 10_000): Promise<'connack' | 'refused' | 'closed'> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port) }, () => socket.write(connect({ clientId })));
    let bytes = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${clientId}: neither a CONNACK nor a close within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (outcome: 'connack' | 'refused' | 'closed') => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    socket.on('data', (chunk: Buffer) => {
      bytes = Buffer.concat([bytes, chunk]);
      // CONNACK: 0x20, Remaining Length 2, flags, return code [MQTT-3.2].
      if (bytes.length < 4) return;
      if (bytes[0] !== 0x20) done('closed');
      else done(bytes[3] === 0 ? 'connack' : 'refused');
    });
    socket.on('error', () => done('closed'));
    socket.on('close', () => done('closed'));
  });
}
