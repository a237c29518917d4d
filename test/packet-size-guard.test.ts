/**
 * PacketSizeGuard follows MQTT packet boundaries from fixed headers alone
 * [MQTT-2.2]: it must never lose sync, whatever the chunking, and must refuse
 * a packet from its header before the body arrives.
 */
import t from 'tap';
import { PassThrough } from 'node:stream';
import { generate, type Packet } from 'mqtt-packet';
import { PacketSizeGuard, guardPacketSize } from '../src/transports/packet-size-guard.js';

const publish = (topic: string, size: number): Packet => ({
  cmd: 'publish',
  topic,
  payload: Buffer.alloc(size, 0x61),
  qos: 0,
  retain: false,
  dup: false,
});

/** Remaining Length encoding [MQTT-2.2.3]. */
function remainingLength(length: number): number[] {
  const bytes: number[] = [];
  do {
    let byte = length % 128;
    length = Math.floor(length / 128);
    if (length > 0) byte |= 0x80;
    bytes.push(byte);
  } while (length > 0);
  return bytes;
}

/** Feeds chunks in order; returns the index of the chunk that got a verdict and the verdict. */
function feed(guard: PacketSizeGuard, chunks: Uint8Array[]): { at: number; reason: string } | null {
  for (let i = 0; i < chunks.length; i++) {
    const reason = guard.inspect(chunks[i] as Uint8Array);
    if (reason !== null) return { at: i, reason };
  }
  return null;
}

// A realistic stream: CONNECT, zero-length packets, PUBLISH with one-, two-
// and three-byte Remaining Lengths, and a payload that looks like a huge
// fixed header (a guard that lost sync would read it as one).
const decoy = Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]);
const packets: Buffer[] = [
  generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'guard', clean: true, keepalive: 30 }),
  generate({ cmd: 'pingreq' }),
  generate(publish('a', 10)),
  generate({ cmd: 'pingreq' }),
  generate({ cmd: 'pingreq' }),
  generate(publish('b/c', 200)),
  generate({ cmd: 'publish', topic: 'decoy', payload: decoy, qos: 1, messageId: 7, retain: false, dup: false }),
  generate(publish('d', 20_000)),
  generate({ cmd: 'disconnect' }),
];
const stream = Buffer.concat(packets);
const largest = Math.max(...packets.map((p) => p.length));

t.test('the test stream covers what it claims', async (t) => {
  t.ok(packets.some((p) => p.length === 2), 'zero-length packets');
  t.ok(packets.some((p) => p[1] !== undefined && p[1] >= 0x80 && p.length < 16_384 + 3), 'a two-byte Remaining Length');
  t.ok(largest > 16_384 + 3, 'a three-byte Remaining Length');
});

t.test('a valid stream passes whole, at every split point, and byte by byte', async (t) => {
  t.equal(feed(new PacketSizeGuard(largest), [stream]), null, 'one chunk holding every packet');
  let failures = 0;
  for (let split = 1; split < stream.length; split++) {
    if (feed(new PacketSizeGuard(largest), [stream.subarray(0, split), stream.subarray(split)]) !== null) failures++;
  }
  t.equal(failures, 0, `no verdict at any of ${stream.length - 1} split points`);
  const bytes = [...stream].map((byte) => Uint8Array.of(byte));
  t.equal(feed(new PacketSizeGuard(largest), bytes), null, 'one byte per chunk');
});

t.test('a packet over the limit is refused from its header, wherever the chunks split', async (t) => {
  const limit = largest - 1;
  const offending = packets.findIndex((p) => p.length === largest);
  const before = packets.slice(0, offending).reduce((sum, p) => sum + p.length, 0);
  const lengthBytes = remainingLength(largest - 1 - 3).length;
  t.equal(lengthBytes, 3);
  const headerEnd = before + 1 + lengthBytes; // offset just past the offending header
  let wrong = 0;
  for (let split = 1; split < stream.length; split++) {
    const verdict = feed(new PacketSizeGuard(limit), [stream.subarray(0, split), stream.subarray(split)]);
    // Refused in the chunk that completes the header, never later.
    const expectedChunk = split >= headerEnd ? 0 : 1;
    if (verdict === null || verdict.at !== expectedChunk || !verdict.reason.includes(`${largest} bytes exceeds the limit of ${limit}`)) wrong++;
  }
  t.equal(wrong, 0, 'refused exactly when the header is complete, at every split point');
  // The header alone is enough: no body byte needed.
  const header = stream.subarray(before, headerEnd);
  const guard = new PacketSizeGuard(limit);
  t.equal(guard.inspect(stream.subarray(0, before)), null);
  t.match(guard.inspect(header), /exceeds the limit/);
});

t.test('the limit counts the whole packet, fixed header included', async (t) => {
  for (const length of [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455]) {
    const header = Uint8Array.from([0x30, ...remainingLength(length)]);
    const total = header.length + length;
    t.equal(new PacketSizeGuard(total).inspect(header), null, `Remaining Length ${length}: ${total} bytes at a limit of ${total} passes`);
    t.match(new PacketSizeGuard(total - 1).inspect(header), /exceeds/, `Remaining Length ${length}: refused at a limit of ${total - 1}`);
  }
});

t.test('zero-length packets keep the guard in step', async (t) => {
  const pings = Buffer.concat([generate({ cmd: 'pingreq' }), generate({ cmd: 'pingreq' }), generate({ cmd: 'pingreq' })]);
  const small = generate(publish('x', 4));
  const big = generate(publish('x', 40));
  const guard = new PacketSizeGuard(small.length);
  t.equal(guard.inspect(Buffer.concat([pings, small, pings])), null, 'PINGREQs and a packet at the limit');
  t.match(guard.inspect(Buffer.concat([pings, big])), /exceeds/, 'the next larger packet is still seen');
});

t.test('a Remaining Length longer than four bytes is malformed [MQTT-2.2.3]', async (t) => {
  t.equal(
    new PacketSizeGuard(268_435_460).inspect(Uint8Array.of(0x30, 0xff, 0xff, 0xff, 0xff, 0x7f)),
    'malformed Remaining Length',
  );
  // Split across chunks, and after a valid packet.
  const guard = new PacketSizeGuard(268_435_460);
  t.equal(guard.inspect(Buffer.concat([generate({ cmd: 'pingreq' }), Buffer.from([0x30, 0xff, 0xff])])), null);
  t.equal(guard.inspect(Uint8Array.of(0xff, 0xff)), 'malformed Remaining Length');
});

t.test('guardPacketSize withholds the offending bytes and destroys the stream', async (t) => {
  const conn = new PassThrough();
  const reasons: string[] = [];
  guardPacketSize(conn, 64, (reason) => reasons.push(reason));
  const ping = generate({ cmd: 'pingreq' });
  conn.write(ping);
  t.same(conn.read(), ping, 'bytes within the limit pass through read()');
  conn.write(generate(publish('y', 100)));
  t.equal(conn.read(), null, 'the oversized packet is withheld');
  t.equal(reasons.length, 1);
  t.match(reasons[0], /exceeds the limit of 64/);
  t.ok(conn.destroyed, 'the connection is destroyed');
  t.equal(conn.read(), null, 'and nothing more is read from it');
});
