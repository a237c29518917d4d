/**
 * Bad input from one client costs that client its connection and nothing
 * else: other clients keep publishing and receiving, the daemon keeps
 * answering /healthz [MQTT-4.8.0-1].
 */
import t from 'tap';
import type { MqttClient } from 'mqtt';
import { startDaemon } from './helpers/daemon.js';
import { bystanders, transports, urlOf } from './helpers/bystanders.js';
import { connectRaw, openClient } from './helpers/mqtt.js';



/** A valid CONNECT (clean session, keep-alive 60 s) for a given client id. */
function connectBytes(clientId: string, protocolName = 'MQTT', flags = 0x02): Buffer {
  const str = (s: string) => {
    const bytes = Buffer.from(s, 'utf8');
    return Buffer.concat([Buffer.from([bytes.length >> 8, bytes.length & 0xff]), bytes]);
  };
  const body = Buffer.concat([str(protocolName), Buffer.from([4, flags, 0, 60]), str(clientId)]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}


function closed(client: MqttClient, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (client.disconnected) return resolve();
    const timer = setTimeout(() => reject(new Error(`client not closed within ${timeoutMs} ms`)), timeoutMs);
    client.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

for (const transport of transports) {
  t.test(`${transport}: an oversized PUBLISH closes only that connection`, async (t) => {
    const daemon = await startDaemon(t, { broker: { maxPacketSizeBytes: 1024 } });
    const check = await bystanders(t, daemon);
    const watcher = await openClient(t, daemon.mqttUrl);
    await watcher.client.subscribeAsync(['big/#', 'offender/will'], { qos: 1 });

    const offender = await openClient(t, urlOf(daemon, transport), {
      clientId: `offender-${transport}`,
      will: { topic: 'offender/will', payload: Buffer.from('cut off'), qos: 1, retain: false },
    });
    // Just under the limit passes…
    await offender.client.publishAsync('big/ok', Buffer.alloc(900, 0x61), { qos: 1 });
    await watcher.log.waitFor((m) => m.some((x) => x.topic === 'big/ok'), 5000, 'the 900-byte message');
    // …2 KiB does not.
    const gone = closed(offender.client);
    offender.client.publish('big/too-large', Buffer.alloc(2048, 0x62), { qos: 0 });
    await gone;
    t.pass('the sender of the 2 KiB PUBLISH is disconnected');

    // Closed for a protocol violation, not by DISCONNECT: the will goes out
    // [MQTT-3.1.2-8]; the oversized message itself never does.
    await watcher.log.waitFor((m) => m.some((x) => x.topic === 'offender/will'), 5000, 'the offender will');
    t.same(
      watcher.log.messages.map((m) => m.topic),
      ['big/ok', 'offender/will'],
      'the oversized message was not delivered',
    );
    await check();
  });
}

/** Bytes that each violate MQTT 3.1.1; `afterConnect` sends a valid CONNECT first. */
const malformed: { name: string; afterConnect: boolean; bytes: Buffer }[] = [
  { name: 'reserved packet type 0 as the first packet [MQTT-2.2.1]', afterConnect: false, bytes: Buffer.from([0x00, 0x00]) },
  { name: 'reserved packet type 15 after CONNECT', afterConnect: true, bytes: Buffer.from([0xf0, 0x00]) },
  { name: 'CONNECT with protocol name "MQTX" [MQTT-3.1.2-1]', afterConnect: false, bytes: connectBytes('bad-name', 'MQTX') },
  { name: 'CONNECT with the reserved flag set [MQTT-3.1.2-3]', afterConnect: false, bytes: connectBytes('bad-flags', 'MQTT', 0x03) },
  { name: 'PUBLISH before CONNECT [MQTT-3.1.0-1]', afterConnect: false, bytes: Buffer.from([0x30, 0x05, 0x00, 0x01, 0x61, 0x68, 0x69]) },
  { name: 'a second CONNECT [MQTT-3.1.0-2]', afterConnect: true, bytes: connectBytes('second-connect') },
  { name: 'PUBLISH with QoS 3 [MQTT-3.3.1-4]', afterConnect: true, bytes: Buffer.from([0x36, 0x07, 0x00, 0x01, 0x61, 0x00, 0x01, 0x68, 0x69]) },
  { name: 'PUBLISH to a wildcard topic [MQTT-3.3.2-2]', afterConnect: true, bytes: Buffer.from([0x30, 0x05, 0x00, 0x01, 0x23, 0x68, 0x69]) },
  { name: 'SUBSCRIBE with wrong fixed-header flags [MQTT-3.8.1-1]', afterConnect: true, bytes: Buffer.from([0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00]) },
  {
    // Remaining Length is at most four bytes [MQTT-2.2.3]; this one has five.
    name: 'a Remaining Length with 5 continuation bytes',
    afterConnect: true,
    bytes: Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]),
  },
  {
    // Announces 2 MiB (> the 1 MiB default limit) and sends no body: refused
    // from the header alone instead of waiting to buffer it.
    name: 'a header announcing a packet over maxPacketSizeBytes',
    afterConnect: true,
    bytes: Buffer.from([0x30, 0x80, 0x80, 0x80, 0x01]),
  },
];

for (const transport of transports) {
  t.test(`${transport}: a malformed packet closes only that connection [MQTT-4.8.0-1]`, async (t) => {
    const daemon = await startDaemon(t);
    const check = await bystanders(t, daemon);
    for (const { name, afterConnect, bytes } of malformed) {
      const raw = await connectRaw(t, urlOf(daemon, transport));
      if (afterConnect) {
        raw.send(connectBytes(`bad-${transport}`));
        t.equal((await raw.waitForPacket('connack')).returnCode, 0, `${name}: connected first`);
      }
      raw.send(bytes);
      await raw.waitForClose();
      t.notOk(
        raw.packets.some((p) => p.cmd !== 'connack'),
        `${name}: connection closed, nothing but CONNACK was ever answered`,
      );
      if (!afterConnect) t.same(raw.packets, [], `${name}: no CONNACK`);
    }
    await check();
  });
}
