/**
 * MQTT 5.0 features of the README's table that no other test shows: what
 * the daemon answers, byte for byte where mqtt.js would hide it (a raw
 * client parses the broker's packets as level 5). Each test names its row.
 */
import t, { type Test } from 'tap';
import { generate, type Packet } from 'mqtt-packet';
import { startDaemon } from './helpers/daemon.js';
import { connectRaw, openClient, type RawClient } from './helpers/mqtt.js';
import { authFiles } from './helpers/security.js';

const encode = (packet: Record<string, unknown>): Buffer => generate(packet as unknown as Packet, { protocolVersion: 5 });

/** A raw level-5 connection after its CONNACK, and that CONNACK. */
async function raw5(t: Test, url: string, clientId: string, connect: Record<string, unknown> = {}): Promise<{ raw: RawClient; connack: Extract<Packet, { cmd: 'connack' }> }> {
  const raw = await connectRaw(t, url, { protocolVersion: 5 });
  raw.send(encode({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, keepalive: 30, clientId, ...connect }));
  return { raw, connack: await raw.waitForPacket('connack') };
}

t.test('reason codes: CONNACK 0x86 for a wrong password, PUBREC 0x87 for a QoS 2 PUBLISH the ACL denies (MQTT 5.0 §3.5.2.1)', async (t) => {
  const auth = await authFiles(t, { reader: 'right' }, 'user reader\ntopic read ro/#\n');
  const { mqttUrl } = await startDaemon(t, { auth });
  const wrong = await raw5(t, mqttUrl, 'wrong', { username: 'reader', password: Buffer.from('wrong') });
  t.equal(wrong.connack.reasonCode, 0x86, 'CONNACK 0x86 Bad User Name or Password');
  const { raw } = await raw5(t, mqttUrl, 'reader', { username: 'reader', password: Buffer.from('right') });
  raw.send(encode({ cmd: 'publish', topic: 'ro/x', payload: 'x', qos: 2, messageId: 7, retain: false, dup: false }));
  const pubrec = await raw.waitForPacket('pubrec');
  t.same([pubrec.messageId, pubrec.reasonCode], [7, 0x87], 'PUBREC 0x87 Not authorized: the flow ends there, no PUBREL expected');
  t.notOk(raw.isClosed, 'the connection stays open');
});

t.test('reason codes: SUBACK 0x8F for a filter over the topic limits, 0x97 over the subscription quota, 0x87 for the ACL (MQTT 5.0 §3.9.3)', async (t) => {
  const auth = await authFiles(t, { reader: 'right' }, 'user reader\ntopic read ro/#\n');
  const { mqttUrl } = await startDaemon(t, { auth, limits: { maxTopicLevels: 3, maxSubscriptionsPerClient: 3 } });
  const { raw } = await raw5(t, mqttUrl, 'limited', { username: 'reader', password: Buffer.from('right') });
  const filters = (...topics: string[]) => topics.map((topic) => ({ topic, qos: 1 }));
  // Two SUBSCRIBEs back to back: each SUBACK carries its own packet's codes.
  raw.send(encode({ cmd: 'subscribe', messageId: 1, subscriptions: filters('ro/a', 'ro/a/b/c', 'secret/x', 'ro/b', 'ro/c', 'ro/d') }));
  raw.send(encode({ cmd: 'subscribe', messageId: 2, subscriptions: filters('ro/e', 'ro/a', 'ro/f/g/h') }));
  await raw.waitFor((packets) => packets.filter((p) => p.cmd === 'suback').length === 2, 5000, 'both SUBACKs');
  const codes = (id: number) => raw.packets.find((p): p is Extract<Packet, { cmd: 'suback' }> => p.cmd === 'suback' && p.messageId === id)?.granted;
  t.same(codes(1), [0x01, 0x8f, 0x87, 0x01, 0x01, 0x97], 'levels: 0x8F; ACL: 0x87; the 4th distinct filter: 0x97; the others granted QoS 1');
  t.same(codes(2), [0x97, 0x01, 0x8f], 'a new filter over the quota 0x97, one held already granted, a 4th level 0x8F');
  t.notOk(raw.isClosed, 'the connection stays open');
  const v311 = await connectRaw(t, mqttUrl);
  v311.send(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30, clientId: 'limited-311', username: 'reader', password: Buffer.from('right') } as Packet));
  v311.send(generate({ cmd: 'subscribe', messageId: 3, subscriptions: filters('ro/a', 'ro/a/b/c') } as Packet));
  t.same((await v311.waitForPacket('suback')).granted, [0x01, 0x80], 'MQTT 3.1.1 has one failure code, 0x80');
});

t.test('reason codes: UNSUBACK 0x00 Success and 0x11 No subscription existed [MQTT-3.11.3-1]', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const { raw } = await raw5(t, mqttUrl, 'unsub');
  raw.send(encode({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/#', qos: 1 }] }));
  await raw.waitForPacket('suback');
  raw.send(encode({ cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['a/#', 'never/subscribed'] }));
  const unsuback = await raw.waitForPacket('unsuback');
  t.same(unsuback.granted, [0x00, 0x11], 'one Reason Code per filter, in order');
});

t.test('Topic Alias inbound: up to the announced maximum; one beyond it gets DISCONNECT 0x94 [MQTT-3.3.2-9]', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const subscriber = await openClient(t, mqttUrl, { protocolVersion: 5, clientId: 'alias-reader' });
  await subscriber.client.subscribeAsync('x/#', { qos: 0 });
  const { raw, connack } = await raw5(t, mqttUrl, 'aliaser');
  t.equal(connack.properties?.topicAliasMaximum, 10, 'CONNACK announces Topic Alias Maximum 10 (broker.topicAliasMaximum)');
  // The alias is set with its topic, then used alone [MQTT-3.3.2-12].
  raw.send(encode({ cmd: 'publish', topic: 'x/y', payload: 'first', qos: 0, retain: false, dup: false, properties: { topicAlias: 1 } }));
  raw.send(encode({ cmd: 'publish', topic: '', payload: 'second', qos: 0, retain: false, dup: false, properties: { topicAlias: 1 } }));
  await subscriber.log.waitForCount(2);
  t.same(
    subscriber.log.messages.map((m) => [m.topic, m.payload]),
    [['x/y', 'first'], ['x/y', 'second']],
    'both reach the subscriber under the topic the alias stands for',
  );
  raw.send(encode({ cmd: 'publish', topic: 'x/z', payload: 'p', qos: 0, retain: false, dup: false, properties: { topicAlias: 11 } }));
  await raw.waitForClose();
  const disconnect = raw.packets.find((p): p is Extract<Packet, { cmd: 'disconnect' }> => p.cmd === 'disconnect');
  t.equal(disconnect?.reasonCode, 0x94, 'alias 11: DISCONNECT 0x94 Topic Alias invalid, then the connection closes');
});

t.test('Retain Handling: 1 sends retained messages only for a new subscription, 2 never [MQTT-3.3.1-10] [MQTT-3.3.1-11]', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const client = await openClient(t, mqttUrl, { protocolVersion: 5, clientId: 'rh' });
  await client.client.publishAsync('rh/value', 'kept', { qos: 1, retain: true });
  await client.client.subscribeAsync('rh/+', { qos: 1, rh: 1 });
  await client.log.waitForCount(1);
  await client.client.subscribeAsync('rh/+', { qos: 1, rh: 1 });
  await client.client.subscribeAsync('rh/#', { qos: 1, rh: 2 });
  await client.client.subscribeAsync('marker', { qos: 1 });
  await client.client.publishAsync('marker', 'm', { qos: 1 });
  await client.log.waitFor((m) => m.some((x) => x.topic === 'marker'), 5000, 'the marker');
  t.same(
    client.log.messages.map((m) => [m.topic, m.packet.retain]),
    [['rh/value', true], ['marker', false]],
    'the retained message once: for the new rh=1 subscription, not its repeat, not for rh=2',
  );
});

t.test('Request/Response: Response Topic and Correlation Data reach the responder unaltered; no Response Information is offered', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const responder = await openClient(t, mqttUrl, { protocolVersion: 5, clientId: 'responder' });
  await responder.client.subscribeAsync('svc/time', { qos: 1 });
  responder.client.on('message', (_topic, _payload, packet) => {
    const { responseTopic, correlationData } = packet.properties ?? {};
    if (responseTopic) responder.client.publish(responseTopic, 'noon', { qos: 1, properties: { correlationData } });
  });
  const requester = await openClient(t, mqttUrl, { protocolVersion: 5, clientId: 'requester', properties: { requestResponseInformation: true } });
  t.equal(requester.connack.properties?.responseInformation, undefined, 'CONNACK: no Response Information (optional, MQTT 5.0 §3.2.2.3.15)');
  await requester.client.subscribeAsync('reply/requester', { qos: 1 });
  const correlationData = Buffer.from([0, 1, 2, 0xff]);
  await requester.client.publishAsync('svc/time', 'what time?', { qos: 1, properties: { responseTopic: 'reply/requester', correlationData } });
  const [reply] = await requester.log.waitForCount(1);
  t.same([reply?.topic, reply?.payload], ['reply/requester', 'noon'], 'the response came back on the Response Topic');
  t.same(Buffer.from(reply?.packet.properties?.correlationData ?? []), correlationData, 'with the Correlation Data, byte for byte [MQTT-3.3.2-16]');
});

t.test('Enhanced Authentication: a CONNECT with an Authentication Method is refused with CONNACK 0x8C Bad authentication method', async (t) => {
  const { mqttUrl } = await startDaemon(t);
  const { raw, connack } = await raw5(t, mqttUrl, 'scram', { properties: { authenticationMethod: 'SCRAM-SHA-256', authenticationData: Buffer.from('client-first') } });
  t.equal(connack.reasonCode, 0x8c);
  await raw.waitForClose();
  t.pass('and the connection is closed [MQTT-4.12.0-1]');
  t.notOk(raw.packets.some((p) => p.cmd === 'auth'), 'no AUTH exchange was started');
});
