/**
 * Retained messages sent on SUBSCRIBE leave in bursts, within the outgoing
 * buffer's bound (src/broker/client-flow.ts #send, PACED_BURST).
 *
 * aedes hands them over one at a time from a stream that waits for each
 * message's callback, and calls its write callbacks a turn later. Waiting for
 * each write sent one retained message a turn, each in a system call of its
 * own: a subscriber to `#` got 100,000 retained messages 3.3× slower than from
 * Mosquitto (bench/persistence-retained.ts). The stream now goes on while the
 * buffer has room, so a turn's messages share one write. The bound is now the
 * flow control's outgoing buffer (limits.maxOutgoingBufferBytes), where aedes'
 * wait for the socket's 'drain' paced the stream before: when that buffer is
 * full the stream waits, and no retained message is dropped.
 */
import net from 'node:net';
import t from 'tap';
import type { Test } from 'tap';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { eventually, openClient } from './helpers/mqtt.js';

const COUNT = 300;
const topicOf = (i: number) => `burst/${String(i).padStart(3, '0')}`;

/** Stores COUNT retained messages of `bytes` each: a QoS 1 PUBACK comes once the retained message is stored. */
async function storeRetained(t: Test, daemon: RunningDaemon, bytes: number): Promise<void> {
  const { client } = await openClient(t, daemon.mqttUrl, { clientId: 'retainer' });
  await Promise.all(Array.from({ length: COUNT }, (_, i) => client.publishAsync(topicOf(i), Buffer.alloc(bytes, i & 0xff), { qos: 1, retain: true })));
}

interface Subscriber {
  socket: net.Socket;
  /** Topics of the PUBLISHes received, in order. */
  topics: string[];
  /** Socket reads that brought at least one byte after the SUBACK. */
  readsAfterSuback: number;
}

/** A raw MQTT 3.1.1 client over TCP that subscribes to `burst/#` and counts its socket reads. */
async function subscribe(t: Test, daemon: RunningDaemon, clientId: string, pauseAfterSuback: boolean): Promise<Subscriber> {
  const socket = net.connect(daemon.mqttPort, '127.0.0.1');
  t.teardown(() => socket.destroy());
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const state: Subscriber = { socket, topics: [], readsAfterSuback: 0 };
  let subacked = false;
  parser.on('packet', (packet: Packet) => {
    if (packet.cmd === 'suback') {
      subacked = true;
      if (pauseAfterSuback) socket.pause();
    }
    if (packet.cmd === 'publish') state.topics.push(packet.topic);
  });
  socket.on('data', (chunk: Buffer) => {
    const counted = subacked;
    parser.parse(chunk);
    if (counted) state.readsAfterSuback++;
  });
  const send = (packet: Packet) => socket.write(mqttPacket.generate(packet));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean: true, keepalive: 0 });
  send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'burst/#', qos: 0 }] });
  await eventually(() => subacked, 5000, 'SUBACK');
  return state;
}

function everyTopicOnce(t: Test, topics: string[]): void {
  t.equal(topics.length, COUNT, `all ${COUNT} retained messages arrived`);
  t.equal(new Set(topics).size, COUNT, 'each one once');
  t.same([...topics].sort(), Array.from({ length: COUNT }, (_, i) => topicOf(i)), 'the topics that were retained');
}

t.test('a subscriber that reads gets the retained messages in a few writes, not one a turn', async (t) => {
  const daemon = await startDaemon(t);
  await storeRetained(t, daemon, 16);
  const subscriber = await subscribe(t, daemon, 'reader', false);
  await eventually(() => subscriber.topics.length >= COUNT, 10_000, `${COUNT} retained messages`);
  everyTopicOnce(t, subscriber.topics);
  // One message a turn came as ~COUNT reads here (the daemon runs in this process, so the
  // client reads once per turn); bursts of up to 65 a turn come in a handful.
  t.ok(subscriber.readsAfterSuback <= COUNT / 10, `${COUNT} messages in ${subscriber.readsAfterSuback} reads (at most ${COUNT / 10})`);
});

t.test('a subscriber that stops reading: the retained stream waits for room in the outgoing buffer, nothing is dropped', async (t) => {
  // A small buffer, and a queue that could hold only a few messages that waited: had the
  // stream run on past the buffer's bound, its messages would have been queued and dropped.
  // 300 × 48 KiB (14 MiB) is more than the kernel's socket buffers on loopback take, so the
  // broker's fills whether the messages leave one a turn or in bursts.
  const daemon = await startDaemon(t, {
    limits: { maxOutgoingBufferBytes: 256 * 1024 },
    persistence: { maxQueuedMessagesPerClient: 5 },
  });
  await storeRetained(t, daemon, 48 * 1024);
  const subscriber = await subscribe(t, daemon, 'stalled', true);
  await eventually(() => daemon.daemon.limitsStats().flow.bufferFullWaits > 0, 20_000, 'the outgoing buffer to fill');
  subscriber.socket.resume();
  await eventually(() => subscriber.topics.length >= COUNT, 20_000, `${COUNT} retained messages after resuming`);
  everyTopicOnce(t, subscriber.topics);
  const flow = daemon.daemon.limitsStats().flow;
  t.ok(flow.bufferFullWaits > 0, `the stream waited for room (${flow.bufferFullWaits} times)`);
  t.equal(flow.droppedQueuedMessages, 0, 'no message dropped from the queue');
  t.equal(flow.droppedQos0Messages, 0, 'no QoS 0 message dropped for a full buffer');
});

t.test('a retained message that does not fit beside another writer\'s bytes still goes', async (t) => {
  // 64 KiB payloads against a 64 KiB buffer: each PUBLISH is a little larger than the buffer, so
  // it fits only into an empty one, and the SUBACK's bytes are still there when the first is
  // handed over. Neither a 'drain' (the socket took everything) nor the flow's own write (nothing
  // of its own was in flight) would come to send it: it has to go at once.
  const daemon = await startDaemon(t, { limits: { maxOutgoingBufferBytes: 64 * 1024 } });
  const { client } = await openClient(t, daemon.mqttUrl, { clientId: 'retainer' });
  await Promise.all([0, 1, 2].map((i) => client.publishAsync(topicOf(i), Buffer.alloc(64 * 1024, i), { qos: 1, retain: true })));
  const subscriber = await subscribe(t, daemon, 'large', false);
  await eventually(() => subscriber.topics.length >= 3, 5000, '3 retained messages of 64 KiB');
  t.same([...subscriber.topics].sort(), [topicOf(0), topicOf(1), topicOf(2)], 'all three arrived');
});
