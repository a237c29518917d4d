/**
 * The write coalescer (src/broker/write-coalescer.ts): one write per
 * connection per event-loop turn, with order, backpressure and graceful
 * closes as the stream itself would have them; end to end, fewer WebSocket
 * frames than messages.
 */
import t from 'tap';
import net from 'node:net';
import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import type { Test } from 'tap';
import WebSocket from 'ws';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { COALESCE_LIMIT_BYTES, coalesceWrites } from '../src/broker/write-coalescer.js';
import { startDaemon } from './helpers/daemon.js';
import { connectRaw, eventually } from './helpers/mqtt.js';
import { connect, publish, subscribe } from './helpers/packets.js';

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

interface Pair {
  /** Server side: the socket under test. */
  server: net.Socket;
  /** Client side: collects everything the server writes. */
  client: net.Socket;
  received(): Buffer;
  /** Resolves when the client saw the server's FIN (or close). */
  ended: Promise<void>;
  /** Calls to the server socket's own write(), made under the coalescer. */
  writes: Buffer[];
}

/** A connected loopback TCP pair whose server side is coalesced, with its real write() calls recorded. */
async function socketPair(t: Test, options: { coalesce?: boolean } = {}): Promise<Pair> {
  const listener = net.createServer({ noDelay: true });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  const client = net.connect({ port: (listener.address() as AddressInfo).port, host: '127.0.0.1' });
  const server = await accepted;
  listener.close();
  t.teardown(() => {
    client.destroy();
    server.destroy();
  });
  const chunks: Buffer[] = [];
  client.on('data', (data: Buffer) => chunks.push(data));
  client.on('error', () => undefined);
  server.on('error', () => undefined);
  const ended = new Promise<void>((resolve) => {
    client.once('end', resolve);
    client.once('close', resolve);
  });
  const writes: Buffer[] = [];
  const write = server.write;
  server.write = function recorded(this: net.Socket, chunk: unknown, ...rest: unknown[]) {
    writes.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array));
    return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as net.Socket['write'];
  if (options.coalesce !== false) coalesceWrites(server);
  return { server, client, received: () => Buffer.concat(chunks), ended, writes };
}

/** `count` distinct small chunks, as mqtt-packet would write the pieces of packets. */
function pieces(count: number): Buffer[] {
  return Array.from({ length: count }, (_, index) => Buffer.from(`<${index}>`));
}

t.test('many writes in one turn leave as one write, in order', async (t) => {
  const pair = await socketPair(t);
  const chunks = pieces(2000);
  t.ok(chunks.map((chunk) => pair.server.write(chunk)).every(Boolean), 'every write() answers true');
  t.equal(pair.writes.length, 0, 'nothing written during the turn');
  await nextTurn();
  t.equal(pair.writes.length, 1, 'one write of the socket at the end of the turn');
  const expected = Buffer.concat(chunks);
  await eventually(() => pair.received().length >= expected.length, 5000, 'all bytes');
  t.ok(pair.received().equals(expected), 'bytes arrive complete and in order');
});

t.test('each turn is flushed on its own, without waiting for the next', async (t) => {
  const pair = await socketPair(t);
  const expected: Buffer[] = [];
  for (let turn = 0; turn < 5; turn++) {
    for (const chunk of pieces(10)) {
      const tagged = Buffer.concat([Buffer.from(`${turn}`), chunk]);
      expected.push(tagged);
      pair.server.write(tagged);
    }
    // A turn: what aedes does between deliveries (setImmediate).
    await nextTurn();
    t.equal(pair.writes.length, turn + 1, `turn ${turn} written by the end of it`);
  }
  const all = Buffer.concat(expected);
  await eventually(() => pair.received().length >= all.length, 5000, 'all bytes');
  t.ok(pair.received().equals(all));
});

t.test('strings, Uint8Arrays and writes with a callback keep their place', async (t) => {
  const pair = await socketPair(t);
  pair.server.write('héllo ', 'utf8');
  pair.server.write(new Uint8Array([0x41, 0x42]));
  let called = false;
  pair.server.write(Buffer.from('!'), () => {
    called = true;
  });
  t.equal(pair.writes.length, 2, 'a write with a callback flushes what was pending, then goes through');
  pair.server.write(' tail');
  await nextTurn();
  const expected = Buffer.from('héllo AB! tail', 'utf8');
  await eventually(() => pair.received().length >= expected.length, 5000, 'all bytes');
  t.ok(pair.received().equals(expected));
  await eventually(() => called, 5000, 'write callback');
});

t.test('writableLength counts the bytes waiting for the end of the turn', async (t) => {
  const pair = await socketPair(t);
  t.equal(pair.server.writableLength, 0);
  pair.server.write(Buffer.alloc(100));
  pair.server.write(Buffer.alloc(50));
  t.equal(pair.server.writableLength, 150);
  await nextTurn();
  await eventually(() => pair.server.writableLength === 0, 5000, 'socket buffer empty');
});

t.test('end() flushes the pending bytes before the FIN', async (t) => {
  const pair = await socketPair(t);
  const chunks = pieces(100);
  for (const chunk of chunks) pair.server.write(chunk);
  pair.server.end(Buffer.from('<last>'));
  await pair.ended;
  t.ok(pair.received().equals(Buffer.concat([...chunks, Buffer.from('<last>')])), 'everything before end() arrived, then end()');
});

t.test('destroy() flushes the pending bytes first (a CONNACK or SUBACK before the close)', async (t) => {
  const pair = await socketPair(t);
  const chunks = pieces(100);
  for (const chunk of chunks) pair.server.write(chunk);
  pair.server.destroy();
  await pair.ended;
  t.ok(pair.received().equals(Buffer.concat(chunks)));
  // The turn's flush finds nothing to do and writes nothing after the close.
  await nextTurn();
  t.equal(pair.writes.length, 1);
});

t.test('a write of 64 KiB or more goes out at once, uncopied', async (t) => {
  const pair = await socketPair(t);
  const big = Buffer.alloc(COALESCE_LIMIT_BYTES + 1, 7);
  pair.server.write(big);
  t.equal(pair.writes.length, 1, 'written within the same turn');
  t.equal(pair.writes[0], big, 'the caller\'s buffer itself');
  pair.server.write(Buffer.from('x'));
  await nextTurn();
  await eventually(() => pair.received().length === big.length + 1, 5000, 'all bytes');
  t.ok(pair.received().subarray(0, big.length).equals(big));
});

t.test('pending bytes never exceed the stream highWaterMark or 64 KiB', async (t) => {
  const pair = await socketPair(t);
  const hwm = pair.server.writableHighWaterMark;
  const chunk = Buffer.alloc(1000, 1);
  for (let i = 0; i < 200; i++) pair.server.write(chunk);
  t.ok(pair.writes.length > 1, `flushed during the turn (${pair.writes.length} writes for 200 KB)`);
  // Flushed by the chunk that reaches the mark: at most one chunk beyond it.
  const bound = Math.min(hwm, COALESCE_LIMIT_BYTES) + chunk.length;
  t.ok(pair.writes.every((write) => write.length < bound), `every write under ${bound} bytes`);
  await nextTurn();
  await eventually(() => pair.received().length === 200 * chunk.length, 5000, 'all bytes');
});

/** A real Writable that takes a while per chunk: its buffer fills as a slow socket's would. */
function slowWritable(highWaterMark: number): Writable & { got: Buffer[]; writes: number } {
  const got: Buffer[] = [];
  const stream = new Writable({
    highWaterMark,
    write(chunk: Buffer, _encoding, callback) {
      got.push(chunk);
      setTimeout(callback, 2);
    },
  }) as Writable & { got: Buffer[]; writes: number };
  stream.got = got;
  stream.writes = 0;
  return stream;
}

t.test('write() returns false exactly when the stream alone would, and drain follows', async (t) => {
  const plain = slowWritable(100);
  const coalesced = slowWritable(100);
  coalesceWrites(coalesced);
  const chunk = Buffer.alloc(30, 9);
  const plainAnswers: boolean[] = [];
  const coalescedAnswers: boolean[] = [];
  for (let i = 0; i < 6; i++) {
    plainAnswers.push(plain.write(chunk));
    coalescedAnswers.push(coalesced.write(chunk));
  }
  t.same(coalescedAnswers, plainAnswers, `same answers: ${plainAnswers.join(',')}`);
  t.ok(coalescedAnswers.includes(false), 'backpressure signalled');
  t.ok(coalesced.writableNeedDrain, 'the stream itself waits for drain');
  await new Promise<void>((resolve) => coalesced.once('drain', resolve));
  t.pass('drain fired');
  await nextTurn();
  await eventually(() => Buffer.concat(coalesced.got).length === 180, 5000, 'all bytes');
  t.ok(coalesced.got.length < 6, `fewer writes than chunks (${coalesced.got.length})`);
});

t.test('over TCP: a reader that stops gets backpressure, and drain when it reads again', async (t) => {
  const pair = await socketPair(t);
  pair.client.pause();
  const chunk = Buffer.alloc(4096, 3);
  let sent = 0;
  let answer = true;
  // Each turn's writes are coalesced; keep writing turns until the socket says stop.
  for (let turn = 0; turn < 2000 && answer; turn++) {
    for (let i = 0; i < 4 && answer; i++) {
      answer = pair.server.write(chunk);
      sent += chunk.length;
    }
    await nextTurn();
  }
  t.equal(answer, false, `write() returned false after ${sent} bytes`);
  const drained = new Promise<void>((resolve) => pair.server.once('drain', resolve));
  pair.client.resume();
  await drained;
  t.pass('drain fired');
  await eventually(() => pair.received().length === sent, 10_000, 'all bytes');
});

t.test('installing twice changes nothing', async (t) => {
  const pair = await socketPair(t);
  coalesceWrites(pair.server);
  pair.server.write(Buffer.from('a'));
  pair.server.write(Buffer.from('b'));
  t.equal(pair.server.writableLength, 2);
  await nextTurn();
  t.equal(pair.writes.length, 1);
});

t.test('over WebSocket, QoS 0 messages published in one turn arrive in fewer frames than messages, intact and in order', async (t) => {
  const { wsUrl, mqttUrl } = await startDaemon(t);
  const ws = new WebSocket(wsUrl, ['mqtt']);
  t.teardown(() => ws.terminate());
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const packets: Packet[] = [];
  parser.on('packet', (packet: Packet) => packets.push(packet));
  let publishFrames = 0;
  let subscribed = false;
  ws.on('message', (data: Buffer) => {
    if (subscribed) publishFrames++;
    parser.parse(data);
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  ws.send(connect({ clientId: 'ws-frames' }));
  ws.send(subscribe(1, ['frames/#']));
  await eventually(() => packets.some((p) => p.cmd === 'suback'), 5000, 'SUBACK');
  subscribed = true;

  const count = 50;
  const publisher = await connectRaw(t, mqttUrl);
  publisher.send(connect({ clientId: 'tcp-pub' }));
  await publisher.waitForPacket('connack');
  // All PUBLISHes in one TCP write: the broker reads and delivers them in one go.
  const payloads = Array.from({ length: count }, (_, index) => `message ${index} ${'x'.repeat(index)}`);
  publisher.send(Buffer.concat(payloads.map((payload, index) => publish(`frames/${index % 3}`, { payload }))));

  await eventually(() => packets.filter((p) => p.cmd === 'publish').length === count, 10_000, `${count} messages`);
  const received = packets.filter((p): p is mqttPacket.IPublishPacket => p.cmd === 'publish');
  t.same(
    received.map((p) => [p.topic, String(p.payload)]),
    payloads.map((payload, index) => [`frames/${index % 3}`, payload]),
    'every message intact and in order',
  );
  t.ok(publishFrames < count, `${publishFrames} WebSocket frames for ${count} messages`);
});
