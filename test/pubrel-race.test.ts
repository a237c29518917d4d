/**
 * A PUBREL sent twice in one write (the store's incomingDelPacket, src/persistence/level-persistence.ts): both
 * are answered with PUBCOMP and the daemon stays up.
 */
import t from 'tap';
import * as mqttPacket from 'mqtt-packet';
import { startDaemon } from './helpers/daemon.js';
import { connectRaw, openClient } from './helpers/mqtt.js';

t.test('a PUBREL repeated in the same write gets two PUBCOMPs and no unhandled rejection [MQTT-4.3.3-2]', async (t) => {
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => rejections.push(reason);
  process.on('unhandledRejection', onRejection);
  t.teardown(() => void process.off('unhandledRejection', onRejection));
  const { mqttUrl } = await startDaemon(t);
  const raw = await connectRaw(t, mqttUrl);
  raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'twice', clean: false, keepalive: 0 });
  await raw.waitForPacket('connack');
  raw.send({ cmd: 'publish', topic: 'q2', payload: Buffer.from('x'), qos: 2, messageId: 1, retain: false, dup: false });
  await raw.waitForPacket('pubrec');
  const pubrel = mqttPacket.generate({ cmd: 'pubrel', messageId: 1 });
  raw.send(Buffer.concat([pubrel, pubrel]));
  await raw.waitFor((packets) => packets.filter((p) => p.cmd === 'pubcomp').length === 2, 5000, 'two PUBCOMPs');
  // A new connection after both are handled: the daemon is up and any rejection has surfaced.
  const { connack } = await openClient(t, mqttUrl, { clientId: 'after' });
  t.equal(connack.returnCode, 0);
  t.same(rejections.map(String), [], 'no unhandled rejection (it would end the process)');
});
