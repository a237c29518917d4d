/**
 * Many clients connecting at once, as after a broker restart. WebSocket
 * upgrades reach the broker a few per event-loop turn, first come, first
 * served (src/transports/admission.ts): every client still gets its
 * CONNACK, the connection limits hold against a burst of upgrades that
 * arrives in one turn, and one that resets while it waits its turn costs
 * nothing but itself.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { openClient, tcpConnect } from './helpers/mqtt.js';

/**
 * `count` WebSocket upgrade requests from a child process, as a storm sends
 * them: every connection is opened first, then, once the broker has them
 * all, every request is sent at once; with `reset`, each connection is reset
 * (RST) right after its request, else kept until every one has its answer.
 * This process (the broker's) is kept busy while the requests come in, as a
 * broker is during a storm, so that they reach it together, in one turn.
 * Resolves with the count of each HTTP status answered (0: none).
 */
async function upgradeBurst(daemon: RunningDaemon, count: number, reset: boolean): Promise<Record<string, number>> {
  const { hostname, port, pathname } = new URL(daemon.wsUrl);
  const request =
    `GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n';
  const script = `
    const net = require('node:net');
    const [request, reset] = [process.argv[1], process.argv[2] === 'reset'];
    const sockets = [];
    const statuses = {};
    let connected = 0, answered = 0;
    const settle = (socket, status) => {
      if (socket.settled) return;
      socket.settled = true;
      statuses[status] = (statuses[status] ?? 0) + 1;
      if (++answered === ${count}) {
        for (const s of sockets) s.destroy();
        process.stdout.write(JSON.stringify(statuses) + '\\n', () => process.exit(0));
      }
    };
    function sendAll() {
      for (const socket of sockets) {
        socket.write(request);
        if (reset) {
          socket.resetAndDestroy();
          settle(socket, 'reset');
        }
      }
    }
    process.stdin.once('data', sendAll);
    for (let i = 0; i < ${count}; i++) {
      const socket = net.connect({ host: '127.0.0.1', port: ${Number(port)} }, () => {
        if (++connected === ${count}) process.stdout.write('connected\\n');
      });
      sockets.push(socket);
      socket.once('data', (chunk) => settle(socket, /^HTTP\\/1\\.1 (\\d+)/.exec(chunk.toString())?.[1] ?? 0));
      socket.on('error', () => settle(socket, 0));
      socket.on('close', () => settle(socket, 0));
    }`;
  const child = spawn(process.execPath, ['-e', script, request, reset ? 'reset' : 'keep'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let waiter: (() => void) | undefined;
  child.stdout.on('data', (chunk: Buffer) => {
    lines.push(...chunk.toString().split('\n').filter(Boolean));
    waiter?.();
  });
  const line = async (): Promise<string> => {
    while (lines.length === 0) await new Promise<void>((resolve) => (waiter = resolve));
    return lines.shift() as string;
  };
  const first = await line();
  if (first !== 'connected') throw new Error(`the child said ${first}`);
  // libuv accepts one connection per event-loop turn: `count` turns (and as
  // many again for their 'connection' handlers' own) accept them all.
  for (let i = 0; i < 2 * count; i++) await new Promise((resolve) => setImmediate(resolve));
  child.stdin.end('go\n');
  // Busy, not asleep: during a storm the broker's event loop is late to read.
  const until = performance.now() + 300;
  while (performance.now() < until);
  return JSON.parse(await line()) as Record<string, number>;
}

t.test('300 TCP clients connecting at once all get their CONNACK', async (t) => {
  const daemon = await startDaemon(t);
  const outcomes = await Promise.all(Array.from({ length: 300 }, (_, i) => tcpConnect(daemon.mqttUrl, `storm-${i}`)));
  t.equal(outcomes.filter((outcome) => outcome === 'connack').length, 300);
});

t.test('http.websocket.maxConnections holds against a burst of upgrades that arrives in one turn', async (t) => {
  const daemon = await startDaemon(t, { http: { websocket: { maxConnections: 150 } } });
  t.same(await upgradeBurst(daemon, 200, false), { 101: 150, 503: 50 }, '150 upgraded, the other 50 refused with 503');
  t.equal(daemon.daemon.limitsStats().limitHits.listenerMaxConnections, 50, 'counted');
});

t.test('upgrades reset while they wait their turn cost the broker nothing else', async (t) => {
  const daemon = await startDaemon(t);
  // Most reset while they wait their turn, or as the handshake is written.
  t.same(await upgradeBurst(daemon, 300, true), { reset: 300 });
  const client = await openClient(t, daemon.wsUrl, { clientId: 'after-the-resets' });
  t.ok(client.client.connected, 'the broker still takes WebSocket clients');
  t.equal(await tcpConnect(daemon.mqttUrl, 'and-tcp'), 'connack', 'and TCP clients');
});
