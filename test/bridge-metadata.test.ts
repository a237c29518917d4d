/**
 * The MQTT 5.0 metadata of a bridged message, without a v5 broker: from a
 * PUBLISH's properties into the outbox record (and an outbox written before
 * this record format still read and exported), through NATS headers over a
 * real nats-server, back into the properties of the local PUBLISH; and the
 * expiry arithmetic of an import.
 */
import t from 'tap';
import path from 'node:path';
import { pack, unpack } from 'msgpackr';
import { headers } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Outbox, decode, encode, outboxKey } from '../src/bridge/outbox.js';
import {
  HEADER,
  escape,
  metadataOfPacket,
  readMetadataHeaders,
  remainingExpiry,
  toPublishProperties,
  unescape,
  writeMetadataHeaders,
  type MessageMetadata,
} from '../src/bridge/metadata.js';
import { createLevelPersistence } from '../src/persistence/index.js';
import { startDaemon, tempDir } from './helpers/daemon.js';
import { eventually } from './helpers/mqtt.js';
import { NatsServer, natsClient, natsUnavailable, readStream } from './helpers/nats.js';
import { capturingLogger, harness, publish } from './helpers/store.js';

const unavailable = natsUnavailable();
const limits = { maxMessages: 0, maxBytes: 0, overflow: 'drop-oldest' as const };

/** Properties as mqtt-packet parses a v5 PUBLISH: user properties on a null-prototype object, a repeated name as an array. */
function parsedProperties() {
  const userProperties = Object.create(null) as Record<string, string | string[]>;
  userProperties.site = 'a';
  userProperties.tag = ['first', 'second', 'first'];
  userProperties['  spaced key= '] = ' value with\r\nnewline and 100% = signs ';
  userProperties['__proto__'] = 'just data';
  userProperties['ключ'] = 'значение ✓';
  return {
    payloadFormatIndicator: true,
    messageExpiryInterval: 3600,
    contentType: 'text/plain; charset=utf-8',
    responseTopic: 'replies/ a b /ünï',
    correlationData: Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x20]),
    userProperties,
    topicAlias: undefined,
    subscriptionIdentifier: 7,
  };
}

const expected: MessageMetadata = {
  payloadFormat: 1,
  expiryInterval: 3600,
  contentType: 'text/plain; charset=utf-8',
  responseTopic: 'replies/ a b /ünï',
  correlationData: Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x20]),
  userProperties: [
    ['site', 'a'],
    ['tag', 'first'],
    ['tag', 'second'],
    ['tag', 'first'],
    ['  spaced key= ', ' value with\r\nnewline and 100% = signs '],
    ['__proto__', 'just data'],
    ['ключ', 'значение ✓'],
  ],
};

t.test('a PUBLISH without properties (MQTT 3.1.1) is stored exactly as before: five fields, no metadata', async (t) => {
  const packet = publish('plant/a', 'x', { qos: 1, retain: true });
  t.equal(metadataOfPacket(packet), undefined);
  t.equal(metadataOfPacket({ ...packet, properties: {} }), undefined, 'empty properties are no metadata');
  const value = encode({ topic: 'plant/a', payload: Buffer.from('x'), qos: 1, retain: true, time: 42 });
  t.same(value, pack(['plant/a', Buffer.from('x'), 1, true, 42]), 'byte for byte the earlier record');
});

t.test('the properties go into the outbox record and come out of it unchanged, order of user properties kept', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  const outbox = new Outbox(persistence, limits, { logger: capturingLogger().logger });
  await outbox.recover();
  await persistence.commit.write(outbox.add(publish('plant/a', 'v5', { qos: 2, properties: parsedProperties() })));
  await persistence.commit.write(outbox.add(publish('plant/b', '311', { qos: 1 })));
  const [v5, v311] = await outbox.read(0, 10);
  t.same(v5!.metadata, expected, 'all six carried; topic alias and subscription identifier not');
  t.same([v5!.topic, v5!.payload.toString(), v5!.qos], ['plant/a', 'v5', 2]);
  t.equal(v311!.metadata, undefined, 'a 3.1.1 message has none');
  t.notOk('metadata' in v311!, 'not even an empty field');

  // What a reader of the earlier format (five fields) makes of a new record: the message, without the metadata.
  const [topic, payload, qos, retain, time] = unpack(encode({ ...v5!, seq: undefined } as never)) as unknown[];
  t.same([topic, Buffer.from(payload as Uint8Array).toString(), qos, retain, time], ['plant/a', 'v5', 2, false, v5!.time], 'the first five fields as before');
});

t.test('an outbox written before this format is read after the upgrade', async (t) => {
  const h = harness(t);
  const first = await h.open();
  // The record format of the earlier release, written as it wrote it.
  const old = pack(['plant/old', Buffer.from('from before'), 1, false, 1_700_000_000_000]);
  await first.commit.write([{ type: 'put', key: outboxKey(5), value: old }]);
  await first.stop();
  const second = await h.open();
  const outbox = new Outbox(second, limits, { logger: capturingLogger().logger });
  await outbox.recover();
  t.equal(outbox.depth, 1);
  const [record] = await outbox.read(0, 10);
  t.same({ ...record, payload: record!.payload.toString() }, { seq: 5, topic: 'plant/old', payload: 'from before', qos: 1, retain: false, time: 1_700_000_000_000 });
  t.same(decode(old), { topic: 'plant/old', payload: Buffer.from('from before'), qos: 1, retain: false, time: 1_700_000_000_000 });
});

t.test('an earlier-format outbox left in a data directory is exported by the upgraded daemon', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const dataDir = tempDir(t);
  const store = createLevelPersistence({ path: path.join(dataDir, 'store') }, { logger: capturingLogger().logger });
  await store.start();
  await store.commit.write([{ type: 'put', key: outboxKey(9), value: pack(['plant/old', Buffer.from('waited'), 1, false, Date.now()]) }]);
  await store.stop();
  const daemon = await startDaemon(t, {
    dataDir,
    bridge: { enabled: true, siteId: 'a', nats: { servers: [nats.url] }, export: [{ filter: 'plant/#' }] },
  });
  await eventually(() => daemon.daemon.bridgeStats().exported === 1, 10_000, 'the old entry to be exported');
  const [entry, ...more] = await readStream(await jetstreamManager(await natsClient(t, nats)), 'EDGEMQTT');
  t.same([entry?.subject, entry?.data, entry?.msgId, more.length], ['mqtt.plant.old', 'waited', 'a:9', 0]);
});

t.test('the metadata crosses as NATS headers (a real nats-server) and comes back as the same properties', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const nc = await natsClient(t, nats);
  const h = headers();
  writeMetadataHeaders(h, expected);
  const subscription = nc.subscribe('meta.test', { max: 1 });
  nc.publish('meta.test', 'x', { headers: h });
  let received: ReturnType<typeof readMetadataHeaders>;
  let raw: string[] = [];
  for await (const message of subscription) {
    received = readMetadataHeaders(message.headers);
    raw = message.headers!.values(HEADER.userProperty);
    t.equal(message.headers!.get(HEADER.contentType), 'text/plain;%20charset=utf-8', 'readable: only what would not survive is escaped');
    t.equal(message.headers!.get(HEADER.correlationData), Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x20]).toString('base64'), 'correlation data in base64');
    t.equal(message.headers!.get(HEADER.payloadFormat), '1');
    t.equal(message.headers!.get(HEADER.expiry), '3600');
  }
  t.same(received!, expected, 'every field back unchanged');
  t.equal(raw.length, 7, 'one header per user property, repeats included');
  t.equal(raw[1], 'tag=first', 'plain ones stay plain');

  const properties = toPublishProperties(received!, 1200);
  t.same(
    { ...properties, userProperties: { ...properties.userProperties } },
    {
      payloadFormatIndicator: true,
      messageExpiryInterval: 1200,
      contentType: 'text/plain; charset=utf-8',
      responseTopic: 'replies/ a b /ünï',
      correlationData: Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x20]),
      userProperties: { site: 'a', tag: ['first', 'second', 'first'], '  spaced key= ': ' value with\r\nnewline and 100% = signs ', ['__proto__']: 'just data', ключ: 'значение ✓' },
    },
    'the properties the local PUBLISH gets, in mqtt-packet shape, with the remaining expiry',
  );
  t.equal(Object.getPrototypeOf(properties.userProperties), null, 'a user property named __proto__ is data');
  t.same(Object.keys(properties.userProperties!), ['site', 'tag', '  spaced key= ', '__proto__', 'ключ'], 'names in their first order');
});

t.test('headers that cannot be read are left out, the rest kept; none at all is no metadata', async (t) => {
  t.equal(readMetadataHeaders(undefined), undefined);
  const plain = headers();
  plain.set(HEADER.origin, 'a');
  plain.set(HEADER.qos, '1');
  t.equal(readMetadataHeaders(plain), undefined, 'a message from a 3.1.1 client, or an earlier release');
  const h = headers();
  h.set(HEADER.contentType, 'bad%escape');
  h.set(HEADER.payloadFormat, '7');
  h.set(HEADER.expiry, '-3');
  h.append(HEADER.userProperty, 'no-separator');
  h.append(HEADER.userProperty, 'ok=1');
  h.set(HEADER.responseTopic, 'r');
  t.same(readMetadataHeaders(h), { responseTopic: 'r', userProperties: [['ok', '1']] });
});

t.test('escaping: only what a header value would not carry, reversible', async (t) => {
  t.equal(escape('application/json'), 'application/json');
  t.equal(escape(' a\tb\r\n%\u3000'), '%20a%09b%0D%0A%25%E3%80%80');
  t.equal(escape('k=v', true), 'k%3Dv', 'the separator in a name');
  t.equal(escape('k=v'), 'k=v', 'not in a value');
  for (const text of ['', ' ', '%41', 'a=b=c', '\u0085\u00a0\u2028x', '日本語 テキスト', 'emoji 😀 ']) {
    // The message names the text by its escaped form: a raw U+2028 would break the TAP line.
    t.equal(unescape(escape(text, true)), text, `round trip of ${encodeURIComponent(text)}`);
  }
  t.equal(unescape('%E0%A4'), undefined, 'a malformed escape');
});

t.test('expiry: what is left when the message arrives, rounded up; 0 once it has passed [MQTT-3.3.2-5] [MQTT-3.3.2-6]', async (t) => {
  const time = 1_000_000;
  t.equal(remainingExpiry(undefined, time, time + 10_000_000), undefined, 'no interval: never expires');
  t.equal(remainingExpiry(60, time, time), 60);
  t.equal(remainingExpiry(60, time, time + 1), 60, 'a part of a second left counts as one');
  t.equal(remainingExpiry(60, time, time + 1000), 59);
  t.equal(remainingExpiry(60, time, time + 59_001), 1);
  t.equal(remainingExpiry(60, time, time + 60_000), 0, 'expired at the interval');
  t.equal(remainingExpiry(1, time, time + 5000), 0);
  t.equal(remainingExpiry(60, time, time - 5000), 60, 'a clock behind the publisher counts no time');
});

t.test('properties in the shapes a broker may hand over: payload format as a number, a zero expiry', async (t) => {
  t.same(metadataOfPacket({ properties: { payloadFormatIndicator: 0, messageExpiryInterval: 0 } }), { payloadFormat: 0 });
  t.same(metadataOfPacket({ properties: { payloadFormatIndicator: false, correlationData: new Uint8Array([1, 2]) } }), {
    payloadFormat: 0,
    correlationData: Buffer.from([1, 2]),
  });
  t.same(toPublishProperties({ payloadFormat: 0 }), { payloadFormatIndicator: false }, 'false, as mqtt-packet writes it');
});
