/**
 * The stored incoming QoS 2 packets of a session go with the session
 * (src/broker/incoming-cleanup.ts): a clean session's when its connection
 * closes, an earlier session's at a clean CONNECT, a persistent session's
 * never while it lasts.
 */
import t, { type Test } from 'tap';
import type { Packet } from 'mqtt-packet';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { connectRaw, eventually, type RawClient } from './helpers/mqtt.js';

/** Connects (MQTT 3.1.1) and publishes `count` QoS 2 messages without ever sending PUBREL. */
async function halfOpen(t: Test, daemon: RunningDaemon, clientId: string, clean: boolean, count: number): Promise<RawClient> {
  const raw = await connectRaw(t, daemon.mqttUrl);
  raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean, keepalive: 0 });
  await raw.waitForPacket('connack');
  for (let id = 1; id <= count; id++) {
    const publish: Packet = { cmd: 'publish', topic: 'q2', payload: Buffer.from('x'), qos: 2, messageId: id, retain: false, dup: false };
    raw.send(publish);
  }
  await raw.waitFor((packets) => packets.filter((p) => p.cmd === 'pubrec').length === count, 5000, `${count} PUBRECs`);
  return raw;
}

const stored = (daemon: RunningDaemon) => daemon.daemon.storeStats().incomingPackets;

t.test('a clean session leaves no QoS 2 state behind when its connection closes [MQTT-3.1.2-6]', async (t) => {
  const daemon = await startDaemon(t);
  const raw = await halfOpen(t, daemon, 'clean-one', true, 5);
  t.equal(stored(daemon), 5, 'five packets await their PUBREL while connected');
  raw.send({ cmd: 'disconnect' });
  await eventually(() => stored(daemon) === 0, 5000, 'the incoming state to be dropped');
  t.equal(stored(daemon), 0);
});

t.test('a persistent session keeps its QoS 2 state until a clean CONNECT discards the session', async (t) => {
  const daemon = await startDaemon(t);
  const raw = await halfOpen(t, daemon, 'durable', false, 3);
  raw.send({ cmd: 'disconnect' });
  await raw.waitForClose();
  // A later PUBLISH on another connection shows the broker is past the close.
  await halfOpen(t, daemon, 'marker', false, 1);
  t.equal(stored(daemon), 4, 'kept after the close: the PUBREL may come on the next connection [MQTT-4.3.3-2]');
  const fresh = await connectRaw(t, daemon.mqttUrl);
  fresh.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'durable', clean: true, keepalive: 0 });
  const connack = await fresh.waitForPacket('connack');
  t.equal(connack.sessionPresent, false);
  await eventually(() => stored(daemon) === 1, 5000, 'the discarded session\'s state to be dropped');
  t.equal(stored(daemon), 1, 'only the marker session\'s packet is left');
});
