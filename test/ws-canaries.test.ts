/**
 * The one place edgemqtt reaches into ws (src/transports/websocket-stream.ts,
 * its header says why): the Receiver's `_fragments` list is kept for the
 * connection's life instead of a new one per message. These tests pin the
 * ws version whose internals that touches, show ws' own behaviour that makes
 * the touch worth it (a new list per message), and check that messages still
 * arrive whole and in order, fragmented ones and ones with control frames
 * between their fragments included.
 */
import t from 'tap';
import type { Test } from 'tap';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { WebSocketStream } from '../src/transports/websocket-stream.js';

const wsVersion = (createRequire(import.meta.url)('ws/package.json') as { version: string }).version;

type WithReceiver = WebSocket & { _receiver: { _fragments: unknown } };

/** A ws server on loopback and a client connected to it; `accept` sees the server's side first. */
async function pair(t: Test, accept: (ws: WebSocket) => void = () => undefined): Promise<{ client: WebSocket; server: WebSocket }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  t.teardown(() => new Promise<void>((resolve) => wss.close(() => resolve())));
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  const accepted = new Promise<WebSocket>((resolve) =>
    wss.once('connection', (ws) => {
      accept(ws);
      resolve(ws);
    }),
  );
  const client = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`, { perMessageDeflate: false });
  t.teardown(() => client.terminate());
  await new Promise<void>((resolve, reject) => {
    client.once('open', () => resolve());
    client.once('error', reject);
  });
  return { client, server: await accepted };
}

/** Resolves with the next value `take` gets, or rejects after 5 s. */
function next<T>(subscribe: (take: (value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('nothing arrived within 5 s')), 5000);
    subscribe((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

t.test('ws is the version whose Receiver internals websocket-stream.ts touches', async (t) => {
  t.equal(wsVersion, '8.23.0', 'pinned in package.json; on an upgrade, check lib/receiver.js dataMessage and update this file and websocket-stream.ts');
});

t.test("ws' own Receiver starts every message with a new fragment list (why websocket-stream.ts reuses one)", async (t) => {
  const { client, server } = await pair(t);
  const lists: unknown[] = [(server as WithReceiver)._receiver._fragments];
  for (let i = 0; i < 3; i++) {
    const arrived = next<void>((take) => server.once('message', () => take()));
    client.send(Buffer.from([i]));
    await arrived;
    lists.push((server as WithReceiver)._receiver._fragments);
  }
  t.equal(new Set(lists).size, lists.length, 'a different array after every message');
});

t.test('a WebSocketStream keeps its Receiver on one fragment list, and every message arrives whole and in order', async (t) => {
  const hooks = { onTextFrame: () => undefined, onOversize: () => undefined, onClose: () => undefined };
  let stream!: WebSocketStream;
  const { client, server } = await pair(t, (ws) => {
    stream = new WebSocketStream(ws, hooks);
  });
  const initial = (server as WithReceiver)._receiver._fragments;
  t.ok(Array.isArray(initial), "the Receiver's list is an array");

  const received: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => received.push(chunk));
  const expected: Buffer[] = [];
  const send = async (parts: Buffer[], pingBetween = false): Promise<void> => {
    const whole = Buffer.concat(parts);
    expected.push(whole);
    const arrived = next<void>((take) => server.once('message', () => setImmediate(take)));
    parts.forEach((part, i) => {
      client.send(part, { binary: true, fin: i === parts.length - 1 });
      if (pingBetween && i < parts.length - 1) client.ping();
    });
    await arrived;
    t.equal((server as WithReceiver)._receiver._fragments, initial, `after a message of ${parts.length} frame(s): the same list`);
    t.same((server as WithReceiver)._receiver._fragments, [], 'and it is empty');
  };
  await send([Buffer.from('one')]);
  await send([Buffer.from('tw'), Buffer.from('o')]);
  await send([Buffer.from('th'), Buffer.from('r'), Buffer.from('ee')], true);
  await send([Buffer.alloc(70_000, 0x61)]);
  await send([Buffer.from('five')]);
  t.same(Buffer.concat(received), Buffer.concat(expected), 'the bytes of every message, in order');

  // A burst in one write of the client's socket: the Receiver reads many frames from one chunk,
  // and the list must be back in place before it reads the frame after each message. (One ping
  // between fragments: with two, or an empty fragment, ws 8.23.0's own client and server end
  // such a corked burst with 1006, with or without this stream.)
  const burst: Buffer[] = [];
  const clientSocket = (client as WebSocket & { _socket: import('node:net').Socket })._socket;
  clientSocket.cork();
  for (let i = 0; i < 200; i++) {
    const parts = i % 5 === 0 ? [Buffer.alloc(0)] : i % 3 === 0 ? [Buffer.from(`b${i}-`), Buffer.from(`${i}`)] : [Buffer.from(`m${i};`)];
    burst.push(Buffer.concat(parts));
    parts.forEach((part, j) => {
      client.send(part, { binary: true, fin: j === parts.length - 1 });
      if (j < parts.length - 1) client.ping();
    });
  }
  clientSocket.uncork();
  const total = Buffer.concat([...expected, ...burst]).length;
  await next<void>((take) => {
    const check = () => (Buffer.concat(received).length >= total ? take() : stream.once('data', () => setImmediate(check)));
    check();
  });
  t.same(Buffer.concat(received), Buffer.concat([...expected, ...burst]), 'a burst of 200 messages (fragmented, empty, pings between fragments) read from one write: every byte, in order');
  t.equal((server as WithReceiver)._receiver._fragments, initial, 'after the burst: the same list');
  t.same((server as WithReceiver)._receiver._fragments, [], 'and it is empty');

  // A message, then in the same read the first fragment of the next one, whose end comes in a
  // later read: the first fragment goes into the list put back after the message before it.
  const before = Buffer.concat(received).length;
  clientSocket.cork();
  client.send(Buffer.from('whole'), { binary: true, fin: true });
  client.send(Buffer.from('first-'), { binary: true, fin: false });
  client.ping();
  clientSocket.uncork();
  await next<void>((take) => server.once('ping', () => setImmediate(() => setImmediate(take))));
  const rest = next<void>((take) => server.once('message', () => setImmediate(take)));
  client.send(Buffer.from('last'), { binary: true, fin: true });
  await rest;
  t.same(Buffer.concat(received).subarray(before), Buffer.from('wholefirst-last'), 'a message split over two reads keeps its first fragment');
});

t.test('the Receiver keeps its own list when it does not look like ws 8.23.0 (fragmentsOf answers undefined)', async (t) => {
  const hooks = { onTextFrame: () => undefined, onOversize: () => undefined, onClose: () => undefined };
  let stream!: WebSocketStream;
  const { client, server } = await pair(t, (ws) => {
    // As if a later ws kept its fragments elsewhere: the stream must leave the Receiver alone.
    (ws as WithReceiver)._receiver._fragments = undefined;
    stream = new WebSocketStream(ws, hooks);
  });
  const received: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => received.push(chunk));
  (server as WithReceiver)._receiver._fragments = [];
  const arrived = next<void>((take) => server.once('message', () => setImmediate(take)));
  client.send(Buffer.from('x'));
  await arrived;
  t.same(Buffer.concat(received), Buffer.from('x'), 'the message arrives');
  t.not((server as WithReceiver)._receiver._fragments, undefined, "the Receiver's own new list is left in place");
});
