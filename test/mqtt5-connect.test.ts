/**
 * MQTT 5.0 requirements around CONNECT, publish authorization and session
 * lifetime that first failed on the daemon when it moved to aedes
 * 2.0.0-beta.1: an assigned Client Identifier, 0x87 for a denied PUBLISH,
 * Session Expiry across a restart.
 */
import t from 'tap';
import net from 'node:net';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import * as mqttPacket from 'mqtt-packet';
import type { IClientOptions } from 'mqtt';
import { createDaemon } from '../src/index.js';
import { startDaemon, tempDir, testConfig } from './helpers/daemon.js';
import { eventually, openClient } from './helpers/mqtt.js';

const v5 = (options: IClientOptions = {}): IClientOptions => ({ protocolVersion: 5, ...options });

/** Sends raw CONNECT bytes (mqtt.js and mqtt-packet refuse an empty id with Clean Start 0) and returns the CONNACK. */
async function rawConnack(url: string, connect: Buffer): Promise<mqttPacket.IConnackPacket | undefined> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  try {
    return await new Promise((resolve) => {
      parser.on('packet', (packet) => resolve(packet.cmd === 'connack' ? packet : undefined));
      socket.on('data', (data) => parser.parse(data));
      socket.on('close', () => resolve(undefined));
      socket.on('connect', () => socket.write(connect));
    });
  } finally {
    socket.destroy();
  }
}

t.test('an empty Client Identifier with Clean Start 0 is assigned one [MQTT-3.1.3-7]', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  // CONNECT, level 5, flags 0 (Clean Start 0), keep-alive 60, no properties, empty client id.
  const connack = await rawConnack(mqttUrl, Buffer.from([0x10, 0x0d, 0, 4, 0x4d, 0x51, 0x54, 0x54, 5, 0, 0, 0x3c, 0, 0, 0]));
  t.equal(connack?.reasonCode, 0, 'accepted');
  t.type(connack?.properties?.assignedClientIdentifier, 'string', 'with an Assigned Client Identifier');
});

t.test('a PUBLISH the ACL denies is answered 0x87 Not authorized [MQTT-3.4.2.1]', async (t) => {
  const aclFile = path.join(tempDir(t), 'acl');
  await writeFile(aclFile, 'topic read ro/#\n');
  const { mqttUrl } = await startDaemon(t, { auth: { aclFile } });
  const { client } = await openClient(t, mqttUrl, v5({ clientId: 'reader' }));
  const outcome = await client.publishAsync('ro/x', 'x', { qos: 1 }).then(
    () => 'acknowledged',
    (error: Error) => error.message,
  );
  t.match(outcome, /Not authorized/, 'the publisher learns it was refused');
});

t.test("a session's Session Expiry Interval still runs after a restart", async (t) => {
  const config = testConfig(t);
  const session = v5({ clientId: 'short', clean: false, properties: { sessionExpiryInterval: 1 } });
  const first = await createDaemon(config);
  await first.start();
  const device = await openClient(t, `mqtt://127.0.0.1:${first.addresses().mqtt!.port}`, session);
  await device.client.subscribeAsync('s/#', { qos: 1 });
  await device.client.endAsync();
  await first.stop();
  const second = await createDaemon(config);
  t.teardown(() => second.stop());
  await second.start();
  // The interval is a point in time; nothing to poll for.
  await new Promise((resolve) => setTimeout(resolve, 1100));
  await eventually(() => second.storeStats().sessions === 0, 2000, 'the session to expire').catch(() => undefined);
  const back = await openClient(t, `mqtt://127.0.0.1:${second.addresses().mqtt!.port}`, session);
  t.equal(back.connack.sessionPresent, false, 'the session expired 1 s after the disconnect, restart or not');
});
