/**
 * Canaries for what the seam's lightenClient (src/broker/aedes-seam/client.ts)
 * replaces in each aedes Client: that aedes still makes those pieces per
 * connection as it names them, and that a lightened client still closes,
 * parses and reports errors as aedes' own did. Used plainly
 * (test/helpers/plain-aedes.ts: no other edgemqtt code between the clients
 * and aedes). When the first fails after an aedes upgrade, lightenClient
 * finds nothing to replace: read lib/client.js again and update it.
 */
import t from 'tap';
import type { Test } from 'tap';
import type { Client } from 'aedes';
import type { Duplex } from 'node:stream';
import { createRequire } from 'node:module';
import { createServer, type AddressInfo } from 'node:net';
import { AedesSeam, lightenClient } from '../src/broker/aedes-seam/index.js';
import { loadAedesWrites } from '../src/broker/aedes-seam/aedes-lib.js';
import { newQoSPacket } from '../src/broker/aedes-seam/direct-deliveries.js';
import { installedAedesVersion, interceptPersistence, payloads, published, publishVia, rawConnected, startPlainAedes, until } from './helpers/plain-aedes.js';
import { publish } from './helpers/packets.js';

const V = installedAedesVersion();

interface Weighed {
  conn: Duplex;
  _eos: unknown;
  _parser: NodeJS.EventEmitter & { _list: { pipe?: unknown; constructor: { BufferList?: unknown } }; _states: string[]; parse(buffer: Buffer): number };
}

const names = (emitter: NodeJS.EventEmitter, event: string) => emitter.rawListeners(event).map((listener) => listener.name);

/** A plain aedes whose clients are lightened as they are made; what each had before, and the clients. */
async function lightened(t: Test, options: Record<string, unknown> = {}) {
  const before: Array<Record<string, unknown>> = [];
  const clients: Client[] = [];
  const events: string[] = [];
  const broker = await startPlainAedes(t, options, (aedes) => {
    const handle = aedes.handle.bind(aedes);
    aedes.handle = (conn, request) => {
      const client = handle(conn, request);
      const weighed = client as unknown as Weighed;
      before.push({
        eos: typeof weighed._eos,
        connEnd: names(weighed.conn, 'end').includes('bound close'),
        connError: names(weighed.conn, 'error').includes('bound emit'),
        parserError: names(weighed._parser, 'error').includes('bound emit'),
        parserListIsStream: typeof weighed._parser._list.pipe === 'function',
        bufferList: typeof weighed._parser._list.constructor.BufferList,
        parserStates: [...weighed._parser._states],
      });
      lightenClient(client);
      clients.push(client);
      return client;
    };
    aedes.on('clientError', (client, error) => events.push(`clientError ${client.id}: ${error.message}`));
    aedes.on('clientDisconnect', (client) => events.push(`clientDisconnect ${client.id}`));
  });
  return { ...broker, before, clients, events };
}

t.test(`aedes ${V} still makes per client what lightenClient replaces (relied on by lightenClient, src/broker/aedes-seam/client.ts)`, async (t) => {
  const { port, before, clients } = await lightened(t);
  await rawConnected(t, port, 'weighed');
  t.same(
    before[0],
    {
      eos: 'function',
      connEnd: true,
      connError: true,
      parserError: true,
      parserListIsStream: true,
      bufferList: 'function',
      parserStates: ['_parseHeader', '_parseLength', '_parsePayload', '_newPacket'],
    },
    "end-of-stream's cleanup, three bound listeners, a BufferListStream with bl's BufferList beside it, and the parser's own list of its states",
  );
  const after = clients[0] as unknown as Weighed;
  t.notOk(names(after.conn, 'end').includes('bound close'), "the connection's 'end' listener replaced");
  t.notOk(names(after.conn, 'error').includes('bound emit'), "the connection's 'error' listener replaced");
  t.notOk(names(after._parser, 'error').includes('bound emit'), "the parser's 'error' listener replaced");
  t.equal(typeof after._parser._list.pipe, 'undefined', 'the parser buffers into a plain BufferList');
  t.ok(Object.isFrozen(after._parser._states), "the parser's states are the one shared list");
  const table = (after._parser as unknown as { _events: Record<string, unknown> })._events;
  t.equal(table['constructor'], undefined, "the parser's listener table still has no prototype keys");
  // aedes' once('connected') is gone once connected; the client's table is then replaced.
  await until(() => (after as unknown as NodeJS.EventEmitter).listenerCount('connected') === 0, 5000, "the client's 'connected' listeners to have run");
  const clientTable = (after as unknown as { _events: Record<string, unknown> })._events;
  t.equal(clientTable['constructor'], undefined, "the client's listener table still has no prototype keys");
  t.ok((after as unknown as NodeJS.EventEmitter).listenerCount('error') > 0, "the client's 'error' listener kept");
});

t.test('a lightened client parses a packet that arrives in two pieces', async (t) => {
  const { port, clients } = await lightened(t);
  const raw = await rawConnected(t, port, 'pieces');
  type Parking = { packet: object; _list: { length: number }; parse(buffer: Buffer): number };
  const parser = (clients[0] as unknown as { _parser: Parking })._parser;
  await rawConnected(t, port, 'other');
  const other = (clients[1] as unknown as { _parser: Parking })._parser;
  // Idle between packets: both parsers hold the one shared, frozen empty Packet and BufferList (parser-parking.ts).
  t.ok(Object.isFrozen(parser.packet) && Object.isFrozen(parser._list), 'an idle parser holds frozen empty buffers');
  t.equal(parser.packet, other.packet, 'the same Packet for all idle parsers');
  t.equal(parser._list, other._list, 'the same BufferList for all idle parsers');
  // A PINGREQ's two bytes in two parses: the first is held in the BufferList.
  parser.parse(Buffer.of(0xc0));
  t.notOk(Object.isFrozen(parser._list), 'a half-read packet has buffers of its own');
  t.equal(parser._list.length, 0, 'its first byte consumed into its own Packet');
  parser.parse(Buffer.of(0x00));
  await raw.next('pingresp');
  t.pass('PINGRESP for the PINGREQ given in two pieces');
  t.equal(parser.packet, other.packet, 'back to the shared buffers after it');
});

/** mqtt-packet's exports as aedes imports them (lib/client.js calls `mqtt.parser()` on this object). */
const mqttPacket = createRequire(createRequire(import.meta.url).resolve('aedes'))('mqtt-packet') as { parser: (options?: object) => object };

t.test(`aedes ${V} makes each client's parser with mqtt-packet's exported parser() during handle, on a BufferListStream (relied on by src/broker/aedes-seam/parser-list.ts)`, async (t) => {
  const original = mqttPacket.parser;
  t.teardown(() => void (mqttPacket.parser = original));
  const made: object[] = [];
  const lists: boolean[] = [];
  const { port } = await startPlainAedes(t, {}, (aedes) => {
    const handle = aedes.handle.bind(aedes);
    aedes.handle = (conn, request) => {
      mqttPacket.parser = (options?: object) => {
        const parser = original(options);
        made.push(parser);
        return parser;
      };
      try {
        const client = handle(conn, request);
        const parser = (client as unknown as Weighed)._parser;
        t.equal(made.at(-1), parser, "the client's parser is the one parser() made");
        lists.push(typeof parser._list.pipe === 'function');
        return client;
      } finally {
        mqttPacket.parser = original;
      }
    };
  });
  await rawConnected(t, port, 'made');
  t.equal(made.length, 1, 'one parser() call per client');
  t.same(lists, [true], 'its list a stream');
});

t.test("clients made through the seam get their parsers without mqtt-packet's parser() (no BufferListStream), which is left as it was", async (t) => {
  const original = mqttPacket.parser;
  let calls = 0;
  const counting = (options?: object) => {
    calls++;
    return original(options);
  };
  mqttPacket.parser = counting;
  t.teardown(() => void (mqttPacket.parser = original));
  const seam = new AedesSeam({}, () => 'allow');
  await seam.aedes.listen();
  const server = createServer((socket) => seam.aedes.handle(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    await new Promise<void>((resolve) => seam.aedes.close(() => resolve()));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as AddressInfo).port;
  const raws = [];
  for (const id of ['one', 'two', 'three']) raws.push(await rawConnected(t, port, id));
  t.ok(calls <= 1, `mqtt-packet's parser() made at most the first client's parser (${calls} calls for 3 clients)`);
  t.equal(mqttPacket.parser, counting, "mqtt-packet's parser() is the same function after each handle");
  // A PINGREQ in two pieces still parses on every connection.
  for (const raw of raws) {
    raw.send(Buffer.of(0xc0));
    raw.send(Buffer.of(0x00));
    await raw.next('pingresp');
  }
  t.pass('each answers a PINGREQ sent in two pieces');
});

t.test('a lightened client is closed when its connection drops, and only once', async (t) => {
  const { port, events } = await lightened(t);
  const raw = await rawConnected(t, port, 'dropped');
  raw.drop();
  await until(() => events.includes('clientDisconnect dropped'), 5000, 'the client to be gone');
  // A later client's departure is the marker: nothing more came for the first.
  const marker = await rawConnected(t, port, 'marker');
  marker.drop();
  await until(() => events.includes('clientDisconnect marker'), 5000, 'the marker to be gone');
  t.same(events, ['clientDisconnect dropped', 'clientDisconnect marker']);
});

t.test("a lightened client's parse error is still reported and closes it", async (t) => {
  const { port, events } = await lightened(t);
  const raw = await rawConnected(t, port, 'garbled');
  // A PUBLISH with both QoS bits set, which mqtt-packet refuses [MQTT-3.3.1-4].
  const bad = Buffer.from(publish('a/b', { qos: 1, id: 1, payload: 'x' }));
  bad[0] = 0x36;
  raw.send(bad);
  await raw.waitForClose();
  await until(() => events.includes('clientDisconnect garbled'), 5000, 'the client to be gone');
  t.match(events, [/^clientError garbled: ./, 'clientDisconnect garbled']);
});

interface Settled {
  version: number;
  _topicAliases: Map<number, string>;
  _parser: { settings: Record<string, unknown> };
}

t.test(`aedes ${V} keeps each CONNECT as its parser's settings and a topic-alias Map per 3.1.1 client (replaced at 'connected' by lightenClient)`, async (t) => {
  const plain = await startPlainAedes(t);
  const plainClients: Client[] = [];
  plain.aedes.on('client', (client) => plainClients.push(client));
  await rawConnected(t, plain.port, 'kept', 4, { username: 'u', password: Buffer.from('secret') });
  await until(() => plainClients.length === 1, 5000, 'the plain client');
  const kept = plainClients[0] as unknown as Settled;
  t.equal(kept._parser.settings['clientId'], 'kept', "aedes' parser keeps the CONNECT as its settings");
  t.same(kept._parser.settings['password'], Buffer.from('secret'), 'password included');
  t.ok(kept._topicAliases instanceof Map, 'a topic-alias Map of its own');
  const keptParser = kept._parser as unknown as { packet: { length: number }; _list: { length: number }; parse: unknown };
  t.same([keptParser.packet.length, keptParser._list.length, Object.isFrozen(keptParser.packet)], [-1, 0, false], 'and, idle, a Packet and a buffer list of its own');
  t.equal(Object.hasOwn(keptParser, 'parse'), false, "its parse is the prototype's (parser-parking.ts replaces it)");

  const { port, clients } = await lightened(t);
  await rawConnected(t, port, 'light', 4, { username: 'u', password: Buffer.from('secret') });
  const light = clients[0] as unknown as Settled & NodeJS.EventEmitter;
  await until(() => light.listenerCount('connected') === 0, 5000, "the client's 'connected' listeners to have run");
  t.same(light._parser.settings, { protocolVersion: 4 }, 'only what the parser reads of the CONNECT is kept');
  t.ok(Object.isFrozen(light._parser.settings), 'one shared, frozen object');
  t.throws(() => light._topicAliases.set(1, 'a'), /no topic aliases/, "a 3.1.1 client's alias table is the shared one that takes none");
});

t.test('a lightened 3.1.1 client still subscribes and receives, and a v5 client still uses topic aliases', async (t) => {
  const { port, clients } = await lightened(t, { topicAliasMaximum: 10 });
  const v4 = await rawConnected(t, port, 'v4');
  v4.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'alias/#', qos: 0 }] } as never);
  await v4.next('suback');
  const v5 = await rawConnected(t, port, 'v5', 5, { properties: { topicAliasMaximum: 0 } });
  const light = clients[1] as unknown as Settled & NodeJS.EventEmitter;
  await until(() => light.listenerCount('connected') === 0, 5000, "the v5 client's 'connected' listeners to have run");
  t.same(light._parser.settings, { protocolVersion: 5 }, 'the v5 parser reads v5 properties on');
  // Topic Alias 1 set with the first PUBLISH, used alone by the second [MQTT-3.3.2-12].
  v5.send({ cmd: 'publish', topic: 'alias/one', payload: Buffer.from('first'), qos: 0, retain: false, dup: false, properties: { topicAlias: 1 } } as never);
  v5.send({ cmd: 'publish', topic: '', payload: Buffer.from('second'), qos: 0, retain: false, dup: false, properties: { topicAlias: 1 } } as never);
  await v4.waitFor((packets) => payloads(packets).length === 2, 'both messages');
  t.same(
    published(v4.packets).map((p) => [p.topic, p.payload.toString()]),
    [
      ['alias/one', 'first'],
      ['alias/one', 'second'],
    ],
  );
});

t.test(`aedes ${V} counts a 3.1.1 QoS 1 PUBLISH in the client's batch, writes its PUBACK, then calls the batch back in a later turn (relied on by src/broker/aedes-seam/wire-qos1.ts)`, async (t) => {
  // lib/client.js enqueue (_parsingBatch, handle(client, packet, client._nextBatch)), handlers/publish.js
  // enqueuePublish (write PubAck, then broker.publish) and lib/write.js (setImmediate(done)): the steps
  // wire-qos1.ts takes in their order. If this fails after an aedes upgrade, compare wire-qos1.ts with aedes again.
  const events: string[] = [];
  let publishing = false;
  const { aedes, port } = await startPlainAedes(t);
  aedes.on('client', (client) => {
    const internals = client as unknown as { _nextBatch: (error?: Error | null) => void; _parsingBatch: number; conn: Duplex };
    const next = internals._nextBatch;
    internals._nextBatch = function (this: unknown, error?: Error | null) {
      // The CONNECT's own batch is called back after 'client': only the PUBLISH's counts here.
      if (publishing) events.push(`batch called back, ${internals._parsingBatch} counted`);
      return next.call(this, error);
    };
    const conn = internals.conn as Duplex & { write(chunk: unknown, ...rest: unknown[]): boolean };
    const write = conn.write;
    conn.write = function (this: Duplex, chunk: unknown, ...rest: unknown[]) {
      if (chunk instanceof Uint8Array && chunk[0] === 0x40) {
        events.push('PUBACK written');
        setImmediate(() => events.push('the turn after the PUBACK'));
      }
      return write.call(this, chunk, ...rest);
    } as typeof conn.write;
  });
  const raw = await rawConnected(t, port, 'batch');
  // After the CONNACK the CONNECT's batch may still be called back: a PINGRESP comes after it.
  raw.send({ cmd: 'pingreq' });
  await raw.next('pingresp');
  publishing = true;
  raw.send({ cmd: 'publish', topic: 'batch/t', payload: Buffer.from('x'), qos: 1, messageId: 9, dup: false, retain: false });
  await raw.next('puback');
  await until(() => events.length >= 3, 5000, 'the batch to be called back');
  t.same(events, ['PUBACK written', 'the turn after the PUBACK', 'batch called back, 1 counted']);
});

t.test(`aedes ${V} handles a PUBACK by clearing its message, then telling 'ack', then calling the batch back (relied on by src/broker/aedes-seam/wire-acks.ts)`, async (t) => {
  // lib/client.js enqueue, handlers/index.js handle and handlers/puback.js handlePuback
  // (persistence.outgoingClearMessageId, then broker 'ack' with the cleared packet, then done):
  // the steps wire-acks.ts takes in their order. If this fails after an aedes upgrade, compare wire-acks.ts with aedes again.
  const events: string[] = [];
  let acking = false;
  const { aedes, port } = await startPlainAedes(t, {}, (aedes) =>
    interceptPersistence(aedes, {
      outgoingClearMessageId: (original, client, packet) => {
        if (acking) events.push(`cleared #${(packet as { messageId: number }).messageId}`);
        return original(client, packet);
      },
    }),
  );
  aedes.on('ack', (packet) => events.push(`ack ${(packet as { topic?: string } | undefined)?.topic ?? 'none'}`));
  aedes.on('client', (client) => {
    const internals = client as unknown as { _nextBatch: (error?: Error | null) => void; _parsingBatch: number };
    const next = internals._nextBatch;
    internals._nextBatch = function (this: unknown, error?: Error | null) {
      if (acking) events.push(`batch called back, ${internals._parsingBatch} counted`);
      return next.call(this, error);
    };
  });
  // A persistent session: its copy is stored, so clearing it answers the packet.
  const raw = await rawConnected(t, port, 'acker', 4, { clean: false });
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'ack/t', qos: 1 }] });
  await raw.next('suback');
  await publishVia(aedes, { topic: 'ack/t', payload: 'x', qos: 1 });
  const delivered = await raw.next('publish');
  acking = true;
  raw.send({ cmd: 'puback', messageId: delivered.messageId });
  await until(() => events.length >= 3, 5000, 'the batch to be called back');
  t.same(events, [`cleared #${delivered.messageId}`, 'ack ack/t', 'batch called back, 1 counted']);
});

t.test(`aedes ${V} makes a QoSPacket as newQoSPacket does, but for the write callback deliverQoS replaces (relied on by src/broker/aedes-seam/direct-deliveries.ts)`, async (t) => {
  // When this fails after an aedes upgrade, bring newQoSPacket in line with lib/qos-packet.js.
  const parts = await loadAedesWrites();
  const clients: Client[] = [];
  const { port } = await startPlainAedes(t, {}, (aedes) => aedes.on('client', (client) => clients.push(client)));
  await rawConnected(t, port, 'numbered');
  const client = clients[0]!;
  const numbering = client as unknown as { _nextId: number; broker: unknown };
  const callback = () => {};
  for (const original of [
    { cmd: 'publish', topic: 'q/t', payload: Buffer.from('x'), qos: 1, retain: false, dup: false, brokerId: 'b', brokerCounter: 7, clientId: 'pub' },
    { cmd: 'publish', topic: 'q/t', payload: Buffer.from('y'), qos: 2, retain: true, dup: true, brokerId: 'b', brokerCounter: 8, messageId: 42, properties: { contentType: 'c' } },
  ]) {
    numbering._nextId = 65535;
    const theirs = new parts.QoSPacket(original, client);
    const nextAfterTheirs = numbering._nextId;
    numbering._nextId = 65535;
    const ours = newQoSPacket(parts, original, numbering, callback);
    t.equal(Object.getPrototypeOf(ours), Object.getPrototypeOf(theirs), 'a QoSPacket by its prototype');
    t.same(Object.keys(ours), Object.keys(theirs), 'the same fields in the same order');
    const { writeCallback: theirCallback, ...theirFields } = theirs;
    const { writeCallback: ourCallback, ...ourFields } = ours;
    t.same(ourFields, theirFields, 'the same values, the packet identifier kept or numbered alike');
    t.equal(numbering._nextId, nextAfterTheirs, "the client's counter moved alike (wrapping after 65,535)");
    t.match(theirCallback.name, /^bound _onError$/, "aedes' own write callback is the client's bound _onError, which deliverQoS replaces");
    t.equal(ourCallback, callback, 'ours is the callback given');
  }
});
