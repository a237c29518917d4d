/**
 * Idle MQTT clients for the memory benchmarks (memory.ts, heap-census.ts):
 * raw sockets that CONNECT over TCP or WebSocket, wait for the CONNACK and
 * then read nothing and write only a PINGREQ every half keep-alive, and the
 * edgemqtt daemon started as the CLI runs it in production. They ask for a
 * keep-alive of 60 s (BENCH_KEEPALIVE; mqtt.js' default), as devices do: a
 * broker may hold a timer per client for it.
 */
import { writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectPacket, webSocketFrame, webSocketUpgradeRequest, type BrokerEndpoint } from './common.js';
import { freePort, spawnTracked, stopChild, waitForPort } from './brokers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');

/** wsPort 0: no MQTT over WebSocket. */
export interface Target extends BrokerEndpoint {
  stop(): Promise<void>;
}

// ---------------------------------------------------------------- clients

const KEEPALIVE_SEC = Number(process.env.BENCH_KEEPALIVE ?? 60);
const PINGREQ = Buffer.of(0xc0, 0x00);
/** The open clients and how to ping each (WebSocket frames are masked), pinged by one timer. */
const pinged = new Map<Socket, Buffer>();
let pinger: NodeJS.Timeout | undefined;

function keepAlive(socket: Socket, ping: Buffer): void {
  if (KEEPALIVE_SEC <= 0) return;
  pinged.set(socket, ping);
  socket.once('close', () => pinged.delete(socket));
  pinger ??= setInterval(() => {
    for (const [open, bytes] of pinged) open.write(bytes);
  }, (KEEPALIVE_SEC * 1000) / 2).unref();
}

/** Resolves once the broker answered CONNECT with a CONNACK (first 4 bytes 0x20 0x02 x 0x00). */
export function openClient(target: Target, transport: 'tcp' | 'ws', id: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const port = transport === 'tcp' ? target.tcpPort : target.wsPort;
    const socket = connect(port, target.host);
    const packet = connectPacket(id, 4, KEEPALIVE_SEC);
    let received = Buffer.alloc(0);
    let upgraded = transport === 'tcp';
    const timer = setTimeout(() => fail(new Error(`${target.name}: no CONNACK for ${id} within 10 s`)), 10_000);
    const fail = (error: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(error);
    };
    socket.once('error', fail);
    socket.once('connect', () => {
      if (transport === 'tcp') socket.write(packet);
      else socket.write(webSocketUpgradeRequest(target.host, port, target.wsPath));
    });
    socket.on('data', function onData(chunk: Buffer) {
      received = Buffer.concat([received, chunk]);
      if (!upgraded) {
        const end = received.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (!received.subarray(0, 12).toString('latin1').includes(' 101')) return fail(new Error(`${target.name}: WebSocket upgrade refused`));
        received = received.subarray(end + 4);
        upgraded = true;
        socket.write(webSocketFrame(packet));
      }
      // A server's frame is unmasked: a 2-byte header before the 4-byte CONNACK.
      const connack = transport === 'tcp' ? received : received.subarray(2);
      if (connack.length < 4) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', fail);
      // Idle from here on: nothing more is read, and only the keep-alive's PINGREQs written.
      socket.on('error', () => undefined);
      if (connack[0] !== 0x20 || connack[3] !== 0) return fail(new Error(`${target.name}: CONNACK refused ${id}`));
      keepAlive(socket, transport === 'tcp' ? PINGREQ : webSocketFrame(PINGREQ));
      resolve(socket);
    });
  });
}

/** Opens `count` clients, 50 at a time. */
export async function openClients(target: Target, transport: 'tcp' | 'ws', count: number, round: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  for (let start = 0; start < count; start += 50) {
    const batch: Promise<Socket>[] = [];
    for (let i = start; i < Math.min(count, start + 50); i++) batch.push(openClient(target, transport, `mem-${round}-${transport}-${i}`));
    sockets.push(...(await Promise.all(batch)));
  }
  return sockets;
}

// ---------------------------------------------------------------- brokers

export async function startEdgemqttCli(dir: string, nodeFlags: readonly string[] = []): Promise<Target> {
  const [tcpPort, wsPort] = [await freePort(), await freePort()];
  const configFile = path.join(dir, 'edgemqtt.yaml');
  writeFileSync(
    configFile,
    [
      `dataDir: ${JSON.stringify(path.join(dir, 'data'))}`,
      'log: { level: warn }',
      `mqtt: { host: 127.0.0.1, port: ${tcpPort} }`,
      `http: { host: 127.0.0.1, port: ${wsPort} }`,
      // The benchmark opens every connection from one address.
      'limits: { connectRatePerAddressPerSec: 0 }',
      '',
    ].join('\n'),
  );
  const bin = path.join(root, 'dist', 'bin', 'edgemqtt.js');
  const child = spawnTracked(process.execPath, [...nodeFlags, bin, 'start', '--config', configFile], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(tcpPort, child, 30_000, 'edgemqtt');
  await waitForPort(wsPort, child, 30_000, 'edgemqtt');
  return { name: 'edgemqtt', host: '127.0.0.1', tcpPort, wsPort, wsPath: '/mqtt', pid: child.pid ?? 0, stop: () => stopChild(child, 15_000) };
}

