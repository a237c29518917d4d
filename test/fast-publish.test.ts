/**
 * The QoS 0 fast path (src/broker/aedes-seam/fast-publish.ts) against aedes'
 * own path as the reference (broker.fastPublish: false): the same clients,
 * the same messages, the same deliveries, message for message.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import t from 'tap';
import type { Test } from 'tap';
import type { IClientOptions, MqttClient } from 'mqtt';
import * as mqttPacket from 'mqtt-packet';
import { connectClient, MessageLog } from './helpers/mqtt.js';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { parsedInPlace, plainTopic } from '../src/broker/aedes-seam/publish-frames.js';
import { emitPacket } from '../src/broker/aedes-seam/parser-events.js';

type Delivery = [payload: string, qos: number, retain: boolean, properties: string];

/** What one subscriber received, per topic in order (order across topics is not promised [MQTT-4.6.0-6]). */
function byTopic(log: MessageLog): Record<string, Delivery[]> {
  const out: Record<string, Delivery[]> = {};
  for (const { topic, payload, packet } of log.messages) {
    const properties = packet.properties ? JSON.stringify(packet.properties) : '';
    (out[topic] ??= []).push([payload, packet.qos, packet.retain, properties]);
  }
  return out;
}

async function subscriber(t: Test, url: string, options: IClientOptions, subscriptions: Array<[string, Record<string, unknown>]>): Promise<MessageLog> {
  const client = await connectClient(t, url, options);
  const log = new MessageLog(client);
  for (const [filter, subscribeOptions] of subscriptions) await client.subscribeAsync(filter, subscribeOptions as never);
  await client.subscribeAsync('end', { qos: 0 });
  return log;
}

function ends(log: MessageLog, count: number): Promise<unknown> {
  return log.waitFor((messages) => messages.filter((m) => m.topic === 'end').length >= count, 5000, `${count} end markers`);
}

/** Runs the script on a daemon with the fast path on or off; what each subscriber got. */
async function script(t: Test, fastPublish: boolean): Promise<Record<string, Record<string, Delivery[]>>> {
  const daemon: RunningDaemon = await startDaemon(t, { broker: { fastPublish } });
  const v5 = { protocolVersion: 5 } as const;
  const logs: Record<string, MessageLog> = {
    tcp311: await subscriber(t, daemon.mqttUrl, { clientId: 's311' }, [['a/#', { qos: 0 }], ['b/+', { qos: 1 }]]),
    // Two subscriptions of one client matching a/x, one with No Local, one with a Subscription Identifier.
    tcp5: await subscriber(t, daemon.mqttUrl, { ...v5, clientId: 's5' }, [['a/#', { qos: 0 }], ['a/+', { qos: 1, nl: true }], ['c/#', { qos: 0, properties: { subscriptionIdentifier: 7 } }]]),
    ws5: await subscriber(t, daemon.wsUrl, { ...v5, clientId: 'sws' }, [['#', { qos: 0 }]]),
    ws311: await subscriber(t, daemon.wsUrl, { clientId: 'sws311' }, [['a/x', { qos: 0 }], ['b/y', { qos: 0 }]]),
    shared: await subscriber(t, daemon.mqttUrl, { ...v5, clientId: 'sshared' }, [['$share/g/b/#', { qos: 0 }]]),
    aliases: await subscriber(t, daemon.mqttUrl, { ...v5, clientId: 'saliases', properties: { topicAliasMaximum: 5 } }, [['a/#', { qos: 0 }]]),
  };
  const p311 = await connectClient(t, daemon.mqttUrl, { clientId: 'p311' });
  const p5 = await connectClient(t, daemon.mqttUrl, { ...v5, clientId: 'p5' });
  // The v5 publisher's own subscriptions: No Local on a/x, none on b/y.
  logs.p5 = new MessageLog(p5);
  await p5.subscribeAsync('a/x', { qos: 0, nl: true });
  await p5.subscribeAsync('b/y', { qos: 0 });
  await p5.subscribeAsync('end', { qos: 0 });

  // QoS 0 and QoS 1/2 are ordered each on its own [MQTT-4.6.0-6]: the end markers (QoS 0) go
  // once every QoS 1/2 PUBLISH is acknowledged, its deliveries already written.
  const acknowledged: Array<Promise<unknown>> = [];
  const send = (client: MqttClient, topic: string, payload: string, options: Record<string, unknown> = {}) => {
    if ((options.qos as number | undefined) ?? 0) acknowledged.push(client.publishAsync(topic, payload, options));
    else client.publish(topic, payload, { qos: 0, ...options });
  };
  send(p311, 'a/x', '1');
  send(p311, 'a/x', '2', { retain: true });
  send(p311, 'a/x', '3');
  send(p311, 'b/y', '4');
  send(p311, 'c/z', '5');
  send(p311, 'a/ü', '6');
  send(p311, 'a/x', '7', { qos: 1 });
  send(p311, 'd/none', '8');
  send(p311, 'c/z', '8b', { qos: 2 });
  send(p311, 'b/y', '8c', { qos: 1, retain: true });
  for (let i = 0; i < 50; i++) send(p311, `a/n${i % 5}`, `burst-${i}`);
  await Promise.all(acknowledged.splice(0));
  send(p311, 'end', 'p311');
  await Promise.all(Object.values(logs).map((log) => ends(log, 1)));
  send(p5, 'a/x', '9');
  send(p5, 'a/x', '10', { properties: { userProperties: { k: 'v' } } });
  send(p5, 'b/y', '11');
  send(p5, 'b/y', '12');
  send(p5, 'c/z', '13');
  send(p5, 'b/y', '14', { qos: 1 });
  send(p5, 'a/x', '15', { qos: 2 });
  for (let i = 0; i < 50; i++) send(p5, `b/n${i % 5}`, `burst5-${i}`);
  await Promise.all(acknowledged.splice(0));
  send(p5, 'end', 'p5');
  await Promise.all(Object.values(logs).map((log) => ends(log, 2)));
  return Object.fromEntries(Object.entries(logs).map(([name, log]) => [name, byTopic(log)]));
}

t.test('every subscriber gets the same messages, per topic in the same order, with the fast path as through aedes', async (t) => {
  const reference = await script(t, false);
  const fast = await script(t, true);
  t.same(fast, reference, 'fast path deliveries equal aedes\' deliveries');
  // And what a user would check by hand, so that both paths being wrong the same way fails too.
  // The retained '2' waits for the store before aedes delivers it: it may come after '3' (aedes' own order).
  const plain = (deliveries: Delivery[] | undefined) => (deliveries ?? []).map((d) => d[0]).filter((payload) => payload !== '2');
  t.same(plain(fast.tcp311!['a/x']), ['1', '3', '7', '9', '10', '15'], 'a 3.1.1 subscriber gets a/x in order, QoS 1 and 2 included');
  t.ok(fast.tcp311!['a/x']!.some((d) => d[0] === '2'), 'and the retained one');
  t.same(plain(fast.ws5!['a/x']), ['1', '3', '7', '9', '10', '15'], 'a WebSocket subscriber to # gets a/x from both publishers in order');
  t.same(fast.tcp311!['b/y']!.map((d) => [d[0], d[1]]), [['4', 0], ['8c', 1], ['11', 0], ['12', 0], ['14', 1]], 'QoS 1 and 2 PUBLISHes arrive at the granted QoS');
  t.same(fast.ws5!['a/n0']!.map((d) => d[0]), ['burst-0', 'burst-5', 'burst-10', 'burst-15', 'burst-20', 'burst-25', 'burst-30', 'burst-35', 'burst-40', 'burst-45'], 'a burst arrives whole and in order');
  t.same(fast.tcp5!['c/z']!.map((d) => d[3]), ['{"subscriptionIdentifier":7}', '{"subscriptionIdentifier":7}', '{"subscriptionIdentifier":7}'], 'the Subscription Identifier is sent [MQTT-3.3.4-3]');
  t.equal(fast.tcp5!['a/x']!.length, 7, 'two matching subscriptions of one client: one copy each message [MQTT-3.3.4-2]');
  t.same(plain(fast.p5!['a/x']), ['1', '3', '7'], 'No Local: the publisher does not get its own a/x [MQTT-3.8.3-3]');
  t.same(fast.tcp5!['c/z']!.map((d) => d[0]), ['5', '8b', '13'], 'QoS 2 from a 3.1.1 publisher arrives once');
  t.same(fast.p5!['b/y']!.map((d) => d[0]), ['4', '8c', '11', '12', '14'], 'without No Local it does');
  t.same(fast.shared!['b/y']!.map((d) => d[0]), ['4', '8c', '11', '12', '14'], 'a shared subscription gets its messages');
  t.same(fast.tcp5!['a/x']!.find((d) => d[0] === '10')?.[3], '{"userProperties":{"k":"v"}}', 'User Properties travel');
  t.notOk(fast.tcp311!['d/none'], 'no subscriber, no delivery');
  t.same(plain(fast.aliases!['a/x']), ['1', '3', '7', '9', '10', '15'], 'a client with Topic Aliases gets every message with its topic');
});

/** A raw TCP client: CONNECT at `level`, then the bytes it is given, as given. */
async function rawPublisher(t: Test, port: number, level: 4 | 5): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port });
  t.teardown(() => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('data', () => resolve());
    socket.once('connect', () => socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: level, clean: true, keepalive: 30, clientId: `raw${level}` })));
  });
  return socket;
}

function publishBytes(topic: string, payload: Buffer, level: 4 | 5): Buffer {
  return mqttPacket.generate({ cmd: 'publish', topic, payload, qos: 0, retain: false, dup: false }, { protocolVersion: level });
}

for (const fastPublish of [true, false]) {
  t.test(`PUBLISHes split anywhere across TCP segments arrive whole and in order (fastPublish ${fastPublish})`, async (t) => {
    const daemon = await startDaemon(t, { broker: { fastPublish } });
    const sub = await connectClient(t, daemon.mqttUrl);
    const log = new MessageLog(sub);
    await sub.subscribeAsync('split/#');
    for (const level of [4, 5] as const) {
      const socket = await rawPublisher(t, daemon.mqttPort, level);
      const big = Buffer.alloc(200_000, 0x62);
      const frames = Buffer.concat([
        publishBytes('split/a', Buffer.from(`first-${level}`), level),
        publishBytes('split/a', big, level),
        publishBytes('split/a', Buffer.from(`third-${level}`), level),
        publishBytes('split/b', Buffer.from(`fourth-${level}`), level),
      ]);
      // Cut points inside a fixed header, a topic and a payload, each sent in its own segment.
      const cuts = [1, 2, 5, 9, 40, 1000, 150_000, frames.length - 20, frames.length - 3];
      let from = 0;
      for (const cut of cuts) {
        socket.write(frames.subarray(from, cut));
        from = cut;
        // Each piece leaves before the next one is written: separate reads at the broker.
        await new Promise<void>((resolve) => (socket.writableLength === 0 ? setImmediate(resolve) : socket.once('drain', () => setImmediate(resolve))));
      }
      socket.write(frames.subarray(from));
      // Order holds per publisher: the next one starts once these are in.
      await log.waitForCount(level === 4 ? 4 : 8, 10_000);
    }
    const messages = log.messages;
    t.same(
      messages.map((m) => (m.payload.length > 100 ? `big ${m.payload.length}` : m.payload)),
      ['first-4', 'big 200000', 'third-4', 'fourth-4', 'first-5', 'big 200000', 'third-5', 'fourth-5'],
    );
  });
}

t.test('a client that only sends QoS 0 PUBLISHes stays connected past its keep-alive [MQTT-3.1.2-22]', async (t) => {
  const daemon = await startDaemon(t);
  const sub = await connectClient(t, daemon.mqttUrl);
  const log = new MessageLog(sub);
  await sub.subscribeAsync('alive');
  const socket = await rawPublisher(t, daemon.mqttPort, 4);
  // keepalive 30 s in rawPublisher; reconnect with 1 s: the server closes after 1.5 s of silence.
  socket.destroy();
  const alive = net.connect({ host: '127.0.0.1', port: daemon.mqttPort });
  t.teardown(() => alive.destroy());
  let closed = false;
  alive.on('close', () => (closed = true));
  await new Promise<void>((resolve) => {
    alive.once('data', () => resolve());
    alive.once('connect', () => alive.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 1, clientId: 'alive' })));
  });
  // 3 s of PUBLISHes only, every 250 ms: twice the 1.5 s the broker allows between packets.
  for (let i = 0; i < 12; i++) {
    alive.write(publishBytes('alive', Buffer.from(String(i)), 4));
    await log.waitForCount(i + 1, 2000);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  t.notOk(closed, 'still connected');
  t.equal(log.messages.length, 12);
});

for (const fastPublish of [true, false]) {
  t.test(`plain QoS 0 messages take the fast path only when it is on (fastPublish ${fastPublish})`, async (t) => {
    const daemon = await startDaemon(t, { broker: { fastPublish } });
    const tcp = await connectClient(t, daemon.mqttUrl);
    const ws = await connectClient(t, daemon.wsUrl, { protocolVersion: 5 });
    const logs = [new MessageLog(tcp), new MessageLog(ws)];
    await tcp.subscribeAsync('plain/#');
    await ws.subscribeAsync('plain/t');
    const publisher = await connectClient(t, daemon.mqttUrl);
    for (let i = 0; i < 100; i++) publisher.publish('plain/t', `m${i}`, { qos: 0 });
    for (const log of logs) {
      const messages = await log.waitForCount(100);
      t.same(messages.map((m) => m.payload), Array.from({ length: 100 }, (_, i) => `m${i}`), 'all 100, in order');
    }
    const stats = daemon.daemon.trafficStats();
    t.equal(stats.messagesIn[0], 100, 'each counted as received');
    t.equal(stats.messagesOut[0], 200, 'and as sent, once per subscriber');
    // The canary for the aedes internals the fast path relies on (subscription handlers, the parser, mqemitter):
    // were one to change, every message would go through aedes — still delivered, but not fast.
    t.equal(stats.fastPathMessagesIn, fastPublish ? 100 : 0, fastPublish ? 'every one past aedes' : 'none past aedes');
  });
}

t.test('a connection publishing to topics that differ in one byte gets each message on its own topic (the topic read in place is reused only when its bytes match)', async (t) => {
  const daemon = await startDaemon(t);
  const subscriber = await connectClient(t, daemon.mqttUrl);
  const log = new MessageLog(subscriber);
  await subscriber.subscribeAsync('same/#', { qos: 1 });
  const publisher = await connectClient(t, daemon.mqttUrl);
  const topics = ['same/a1', 'same/a1', 'same/a2', 'same/b2', 'same/b2', 'same/a1', 'same/long'];
  for (const qos of [0, 1] as const) {
    for (const [i, topic] of topics.entries()) publisher.publish(topic, `${qos}:${i}`, { qos });
  }
  const messages = await log.waitForCount(topics.length * 2);
  t.same(
    messages.map((m) => `${m.topic} ${m.payload}`),
    [0, 1].flatMap((qos) => topics.map((topic, i) => `${topic} ${qos}:${i}`)),
    'each payload on the topic it was sent to, QoS 0 and QoS 1 alike',
  );
  t.equal(plainTopic(Buffer.from('\x00\x07same/a1'), 0, 9, 'same/a2'), 'same/a1', 'a topic of the same length, one byte apart, is read anew');
});

t.test('a PUBACK, PUBREC or PUBCOMP read in place is the packet mqtt-packet parses from the same bytes', async (t) => {
  for (const protocolVersion of [4, 5] as const) {
    for (const cmd of ['puback', 'pubrec', 'pubcomp'] as const) {
      for (const messageId of [1, 258, 65_535]) {
        // The 2-byte form, the one clients send without a Reason Code (at level 5 too [MQTT-3.4.2.1]).
        const bytes = Buffer.from([{ puback: 0x40, pubrec: 0x50, pubcomp: 0x70 }[cmd], 2, messageId >> 8, messageId & 0xff]);
        const parser = mqttPacket.parser({ protocolVersion });
        let parsed: unknown;
        parser.on('packet', (packet) => (parsed = packet));
        parser.parse(bytes);
        const inPlace = parsedInPlace(bytes, 0, 2, bytes.length, protocolVersion === 5);
        t.same(inPlace, parsed, `${cmd} ${messageId} at level ${protocolVersion}`);
        t.same(Object.keys(inPlace ?? {}), Object.keys(parsed as object), 'its fields in the same order');
      }
      // A Reason Code or properties (MQTT 5) are left to mqtt-packet.
      const withReason = mqttPacket.generate({ cmd, messageId: 7, reasonCode: 0x10 } as mqttPacket.Packet, { protocolVersion: 5 });
      t.equal(parsedInPlace(withReason, 0, 2, withReason.length, true), undefined, `${cmd} with a Reason Code`);
    }
  }
});

t.test("a packet read in place reaches the parser's listeners as EventEmitter's emit would deliver it, without its copy of the list", (t) => {
  // emit reads the listener list once per event: a listener removed or added by an earlier one still
  // runs, or does not, for this event; every later event sees the change.
  const run = (deliver: (parser: EventEmitter, packet: object) => void, listenerCount: number): string[] => {
    const parser = new EventEmitter();
    const heard: string[] = [];
    const listeners = Array.from({ length: listenerCount }, (_, i) =>
      function (this: unknown, packet: object) {
        heard.push(`${i}:${(packet as { n: number }).n}:${this === parser}`);
        // The first listener takes the last one off during the first event.
        if (i === 0 && (packet as { n: number }).n === 1) parser.removeListener('packet', listeners[listenerCount - 1]!);
      },
    );
    for (const listener of listeners) parser.on('packet', listener);
    deliver(parser, { n: 1 });
    deliver(parser, { n: 2 });
    return heard;
  };
  for (const count of [1, 2, 3]) {
    const viaEmit = run((parser, packet) => parser.emit('packet', packet), count);
    const inPlace = run((parser, packet) => emitPacket(parser as never, packet), count);
    t.same(inPlace, viaEmit, `${count} listener(s)`);
  }
  t.same(
    run((parser, packet) => emitPacket(parser as never, packet), 2),
    ['0:1:true', '1:1:true', '0:2:true'],
    'two listeners: both hear the first packet, the one taken off does not hear the second',
  );
  t.end();
});
