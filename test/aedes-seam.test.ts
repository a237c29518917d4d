/**
 * The seam to aedes (src/broker/aedes-seam/): it runs on the one aedes
 * release it was written for and refuses any other, and it publishes each
 * message once, dropping or refusing what the access policy says.
 */
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import type { PublishPacket } from 'aedes';
import { AEDES_VERSION, AedesSeam, checkAedesVersion, installedAedesVersion, type PublishPolicy } from '../src/broker/aedes-seam/index.js';
import { EdgeMqttError } from '../src/errors.js';
import { startDaemon } from './helpers/daemon.js';
import { eventually, openClient } from './helpers/mqtt.js';
import { floodEmitter } from './helpers/emitter-flood.js';

t.test('aedes is pinned to the version the seam was written for', async (t) => {
  const manifest = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { dependencies: Record<string, string> };
  t.equal(manifest.dependencies.aedes, AEDES_VERSION, 'package.json asks for exactly that version');
  t.equal(installedAedesVersion(), AEDES_VERSION, 'and it is the one installed');
  t.doesNotThrow(() => checkAedesVersion(AEDES_VERSION));
});

t.test('another aedes version is refused, naming both', async (t) => {
  for (const found of ['1.2.0', '2.0.0-beta.2', '2.0.0']) {
    const error = t.throws(() => checkAedesVersion(found)) as EdgeMqttError;
    t.ok(error instanceof EdgeMqttError, `${found}: an EdgeMqttError`);
    t.equal(error.code, 'EDGEMQTT_AEDES_VERSION');
    t.match(error.message, `aedes ${found} is installed`);
    t.match(error.message, `built for aedes ${AEDES_VERSION} exactly`);
  }
  t.throws(() => new AedesSeam({}, () => 'allow', '1.3.0'), { code: 'EDGEMQTT_AEDES_VERSION' }, 'the seam builds no broker on another version');
});

t.test('the daemon starts with the installed aedes', async (t) => {
  const { daemon, mqttUrl } = await startDaemon(t);
  t.equal(daemon.state, 'running');
  const { connack } = await openClient(t, mqttUrl);
  t.equal(connack.returnCode, 0, 'and serves clients');
});

/** A broker built through the seam with `policy`, on aedes' memory persistence, behind a TCP listener. */
async function seamBroker(t: Test, policy: PublishPolicy): Promise<{ url: string; published: string[] }> {
  const seam = new AedesSeam({}, policy);
  const { aedes } = seam;
  await aedes.listen();
  const published: string[] = [];
  aedes.on('publish', (packet) => {
    if (!packet.topic.startsWith('$SYS')) published.push(`${packet.topic} ${packet.payload.toString()}`);
  });
  const server = createServer((socket) => aedes.handle(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`, published };
}

const policy: PublishPolicy = (_client, packet: PublishPacket) =>
  packet.topic === 'seam/drop' ? 'drop' : packet.topic === 'seam/refuse' ? 'refuse' : 'allow';

t.test('each message is published once, at every QoS', async (t) => {
  const { url, published } = await seamBroker(t, policy);
  const subscriber = await openClient(t, url, { clientId: 'subscriber' });
  await subscriber.client.subscribeAsync('seam/#', { qos: 2 });
  const publisher = await openClient(t, url, { clientId: 'publisher' });
  for (const qos of [0, 1, 2] as const) await publisher.client.publishAsync('seam/ok', `qos${qos}`, { qos });
  await subscriber.log.waitForCount(3);
  // The QoS 0 marker goes after the rest: a second copy of any would be there by now.
  await publisher.client.publishAsync('seam/marker', 'end', { qos: 0 });
  await subscriber.log.waitFor((m) => m.some((x) => x.topic === 'seam/marker'), 5000, 'the marker');
  t.same(subscriber.log.messages.map((m) => m.payload), ['qos0', 'qos1', 'qos2', 'end'], 'each delivered once');
  // aedes emits 'publish' once a message's deliveries have called back, which may be after the subscriber has it.
  await eventually(() => published.includes('seam/marker end'), 5000, "the marker's publish event");
  t.same(published, ['seam/ok qos0', 'seam/ok qos1', 'seam/ok qos2', 'seam/marker end'], "aedes' publish ran once for each");
});

t.test('a dropped PUBLISH is acknowledged, never published, and the connection stays', async (t) => {
  const { url, published } = await seamBroker(t, policy);
  const subscriber = await openClient(t, url, { clientId: 'subscriber' });
  await subscriber.client.subscribeAsync('seam/#', { qos: 1 });
  const publisher = await openClient(t, url, { clientId: 'publisher' });
  for (const qos of [0, 1, 2] as const) await publisher.client.publishAsync('seam/drop', `qos${qos}`, { qos });
  t.pass('QoS 1 and 2 were acknowledged');
  await publisher.client.publishAsync('seam/marker', 'end', { qos: 1 });
  await subscriber.log.waitFor((m) => m.some((x) => x.topic === 'seam/marker'), 5000, 'the marker');
  await eventually(() => published.includes('seam/marker end'), 5000, "the marker's publish event");
  t.same(subscriber.log.messages.map((m) => m.topic), ['seam/marker'], 'only the marker arrived');
  t.same(published, ['seam/marker end'], 'nothing dropped was published');
  t.equal(publisher.client.connected, true, 'the publisher is still connected');
});

t.test('a refused PUBLISH closes the connection without an acknowledgement', async (t) => {
  const { url, published } = await seamBroker(t, policy);
  const publisher = await openClient(t, url, { clientId: 'publisher' });
  const closed = new Promise<void>((resolve) => publisher.client.once('close', () => resolve()));
  let acknowledged = false;
  publisher.client.publish('seam/refuse', 'no', { qos: 1 }, (error) => (acknowledged = !error));
  await closed;
  t.equal(acknowledged, false, 'no PUBACK');
  t.same(published, [], 'nothing published');
});

t.test('a long queue on aedes\' message bus drains without exhausting the stack, every message completed', async (t) => {
  const seam = new AedesSeam({}, () => 'allow');
  t.teardown(() => new Promise<void>((resolve) => seam.aedes.close(() => resolve())));
  const { completed, total, error } = await floodEmitter(seam.aedes);
  t.equal(error, undefined, 'no error while draining');
  t.equal(completed, total, `all ${total} messages completed`);
});
