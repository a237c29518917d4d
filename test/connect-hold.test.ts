/**
 * Nothing sent after a CONNECT is acted on before the CONNECT is accepted
 * [MQTT-3.1.4-5] (src/broker/connect-hold.ts), and nothing a client pipelines
 * after an accepted CONNECT is lost or reordered. Against the running daemon
 * with a password file (and an ACL), over TCP and WebSocket, with raw clients.
 *
 * How the test makes a packet overtake the password check: aedes queues the
 * packets parsed from the socket read that held the CONNECT, but handles at
 * once one that completes in a later read of the same event-loop turn, before
 * the client is paused for authentication. The client and the daemon share
 * this process, so everything a test writes is in the daemon's socket buffer
 * before the daemon next reads; the daemon reads at most 64 KiB at a time, so
 * a PUBLISH (or SUBSCRIBE) of some 70 to 120 KB written after a CONNECT
 * completes in the second read or later. Several sizes are tried, so that a
 * kernel with other buffer sizes still hits the window with one of them.
 */
import t from 'tap';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import type { Test } from 'tap';
import type { Packet } from 'mqtt-packet';
import { hashPassword } from '../src/auth/password-file.js';
import { tempDir } from './helpers/daemon.js';
import { transports, type Transport } from './helpers/bystanders.js';
import { MessageLog, connectClient, connectRaw, type RawClient } from './helpers/mqtt.js';
import * as bytes from './helpers/packets.js';
import { startSecureDaemon, type SecureDaemon } from './helpers/security.js';

const ACCEPTED = 0;
const BAD_USERNAME_OR_PASSWORD = 4;

/** Payload sizes that make a PUBLISH end in a later 64 KiB read than the CONNECT before it. */
const LARGE_SIZES = [70_000, 96_000, 120_000];

const urlOf = (daemon: SecureDaemon, transport: Transport): string => (transport === 'tcp' ? daemon.mqttUrl : daemon.wsUrl);

async function securityFiles(t: Test, acl?: string): Promise<{ passwordFile: string; aclFile?: string }> {
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwd');
  const users = ['alice', 'mallory'];
  const lines = await Promise.all(users.map(async (user) => `${user}:${await hashPassword(`${user}-pw`, { N: 1024, r: 8, p: 1 })}`));
  await writeFile(passwordFile, `${lines.join('\n')}\n`);
  if (acl === undefined) return { passwordFile };
  const aclFile = path.join(dir, 'acl');
  await writeFile(aclFile, acl);
  return { passwordFile, aclFile };
}

/** A daemon that refuses anonymous clients and never rate-limits failed logins (each attempt gets a real password check). */
async function daemonWith(t: Test, acl?: string): Promise<SecureDaemon> {
  const files = await securityFiles(t, acl);
  return startSecureDaemon(t, { auth: { ...files, allowAnonymous: false, failedLogins: { burst: 0 } } });
}

/** alice, connected with mqtt.js and subscribed to `filter`: the legitimate client that must not see what was never accepted. */
async function watcher(t: Test, daemon: SecureDaemon, filter: string) {
  const client = await connectClient(t, daemon.mqttUrl, { clientId: `watcher-${Math.random().toString(36).slice(2)}`, username: 'alice', password: 'alice-pw' });
  const log = new MessageLog(client);
  await client.subscribeAsync(filter, { qos: 1 });
  /** Publishes a marker after everything before it and returns the topics received up to it. */
  const topicsUntilMarker = async (marker: string): Promise<string[]> => {
    await client.publishAsync(marker, 'marker', { qos: 1 });
    const messages = await log.waitFor((list) => list.some((m) => m.topic === marker), 5000, marker);
    return messages.map((m) => m.topic).filter((topic) => topic !== marker);
  };
  return { client, log, topicsUntilMarker };
}

const commands = (raw: RawClient): string[] => raw.packets.map((packet) => packet.cmd);
const connackCode = (raw: RawClient): number | undefined =>
  (raw.packets.find((packet) => packet.cmd === 'connack') as Extract<Packet, { cmd: 'connack' }> | undefined)?.returnCode;

/** Sends each part in a write (TCP) or frame (WebSocket) of its own, all in the same turn. */
function sendSeparately(raw: RawClient, ...parts: Buffer[]): void {
  for (const part of parts) raw.send(part);
}

/** A SUBSCRIBE to `filter` padded with more filters to about `size` bytes. */
function largeSubscribe(id: number, filter: string, size: number): Buffer {
  const filters = [filter];
  for (let i = 0, total = filter.length; total < size; i++) {
    const pad = `pad/${i}/${'p'.repeat(1000)}`;
    filters.push(pad);
    total += pad.length + 3;
  }
  return bytes.subscribe(id, filters, 1);
}

for (const transport of transports) {
  t.test(`${transport}: a PUBLISH and a SUBSCRIBE after a CONNECT with a wrong password are never acted on`, async (t) => {
    const daemon = await daemonWith(t);
    const watching = await watcher(t, daemon, 'held/#');
    for (const size of LARGE_SIZES) {
      const raw = await connectRaw(t, urlOf(daemon, transport));
      sendSeparately(
        raw,
        bytes.connect({ clientId: `wrong-${size}`, username: 'alice', password: 'not-her-password' }),
        bytes.publish('held/publish', { qos: 1, id: 7, payload: Buffer.alloc(size, 0x61) }),
      );
      await raw.waitForClose();
      t.same(commands(raw), ['connack'], `${size} B PUBLISH: only the CONNACK came back, no PUBACK`);
      t.equal(connackCode(raw), BAD_USERNAME_OR_PASSWORD, `${size} B PUBLISH: CONNACK 4, then the connection closed`);

      const subscriber = await connectRaw(t, urlOf(daemon, transport));
      sendSeparately(
        subscriber,
        bytes.connect({ clientId: `wrong-sub-${size}`, username: 'alice', password: 'not-her-password' }),
        largeSubscribe(8, 'held/#', size),
      );
      await subscriber.waitForClose();
      t.same(commands(subscriber), ['connack'], `${size} B SUBSCRIBE: only the CONNACK came back, no SUBACK`);
      t.equal(connackCode(subscriber), BAD_USERNAME_OR_PASSWORD, `${size} B SUBSCRIBE: CONNACK 4`);
    }
    t.same(await watching.topicsUntilMarker('held/marker'), [], 'the subscriber received none of the refused clients\' messages');
  });

  t.test(`${transport}: with an ACL, bytes after CONNECT are judged as the user who connected, not as an anonymous client`, async (t) => {
    // Anonymous clients may write open/#, but anonymous access is off;
    // mallory may do nothing at all.
    const daemon = await daemonWith(t, 'topic readwrite open/#\n\nuser alice\ntopic readwrite open/#\n\nuser mallory\n');
    const watching = await watcher(t, daemon, 'open/#');
    for (const size of LARGE_SIZES) {
      const refused = await connectRaw(t, urlOf(daemon, transport));
      sendSeparately(
        refused,
        bytes.connect({ clientId: `mallory-wrong-${size}`, username: 'mallory', password: 'guess' }),
        bytes.publish('open/refused', { qos: 1, id: 7, payload: Buffer.alloc(size, 0x62) }),
      );
      await refused.waitForClose();
      t.same(commands(refused), ['connack'], `${size} B, wrong password: only the CONNACK came back`);
      t.equal(connackCode(refused), BAD_USERNAME_OR_PASSWORD, `${size} B, wrong password: CONNACK 4`);

      const accepted = await connectRaw(t, urlOf(daemon, transport));
      sendSeparately(
        accepted,
        bytes.connect({ clientId: `mallory-${size}`, username: 'mallory', password: 'mallory-pw' }),
        bytes.publish('open/denied', { qos: 1, id: 9, payload: Buffer.alloc(size, 0x63) }),
      );
      // MQTT 3.1.1 has no way to refuse a PUBLISH: a denied one is acknowledged and dropped.
      await accepted.waitFor((packets) => packets.some((packet) => packet.cmd === 'puback'), 5000, 'the PUBACK');
      t.same(commands(accepted), ['connack', 'puback'], `${size} B, right password: CONNACK first, then the PUBACK`);
      t.equal(connackCode(accepted), ACCEPTED, `${size} B, right password: CONNACK 0`);
    }
    t.same(await watching.topicsUntilMarker('open/marker'), [], 'nothing mallory sent reached the subscriber');
  });

  t.test(`${transport}: packets pipelined after an accepted CONNECT are all handled, in order, after the CONNACK`, async (t) => {
    const daemon = await daemonWith(t);
    const watching = await watcher(t, daemon, 'pipe/#');
    const big = Buffer.alloc(96_000, 0x64);
    // What both cases send: alice's CONNECT, a SUBSCRIBE, three PUBLISHes (the middle one larger than a 64 KiB read), a PINGREQ.
    const pipeline = (clientId: string, topic: string): Buffer[] => [
      bytes.connect({ clientId, username: 'alice', password: 'alice-pw' }),
      bytes.subscribe(1, [`${topic}/own`], 1),
      bytes.publish(`${topic}/1`, { qos: 1, id: 2, payload: '1' }),
      bytes.publish(`${topic}/2`, { qos: 1, id: 3, payload: big }),
      bytes.publish(`${topic}/3`, { qos: 1, id: 4, payload: '3' }),
      bytes.pingreq(),
    ];
    const cases: Array<{ name: string; send: (raw: RawClient, clientId: string, topic: string) => void }> = [
      { name: 'one write', send: (raw, clientId, topic) => raw.send(Buffer.concat(pipeline(clientId, topic))) },
      { name: 'separate writes', send: (raw, clientId, topic) => sendSeparately(raw, ...pipeline(clientId, topic)) },
    ];
    for (const [index, { name, send }] of cases.entries()) {
      const topic = `pipe/${index}`;
      const raw = await connectRaw(t, urlOf(daemon, transport));
      send(raw, `pipelined-${index}`, topic);
      // PUBACKs follow the store's commit (src/broker/aedes-seam/index.ts, the publish path), so they may come after the PINGRESP.
      await raw.waitFor(
        (packets) => packets.filter((packet) => packet.cmd === 'puback').length >= 3 && packets.some((packet) => packet.cmd === 'pingresp'),
        5000,
        'three PUBACKs and the PINGRESP',
      );
      const received = commands(raw);
      t.equal(received[0], 'connack', `${name}: the CONNACK comes first`);
      t.equal(connackCode(raw), ACCEPTED, `${name}: CONNACK 0`);
      t.same(
        [...received].sort(),
        ['connack', 'pingresp', 'puback', 'puback', 'puback', 'suback'],
        `${name}: a SUBACK, three PUBACKs and the PINGRESP, nothing else`,
      );
      const acked = raw.packets.flatMap((packet) => (packet.cmd === 'puback' ? [packet.messageId] : []));
      t.same(acked, [2, 3, 4], `${name}: PUBLISHes acknowledged in the order sent`);
      t.equal(raw.isClosed, false, `${name}: the connection stays open`);
      await watching.log.waitFor((messages) => messages.filter((m) => m.topic.startsWith(`${topic}/`)).length >= 3, 5000, `${name}: three messages`);
      t.same(
        watching.log.messages.filter((m) => m.topic.startsWith(`${topic}/`)).map((m) => [m.topic, m.payload.length]),
        [[`${topic}/1`, 1], [`${topic}/2`, big.length], [`${topic}/3`, 1]],
        `${name}: the subscriber received every message, whole and in order`,
      );
      // The pipelined SUBSCRIBE took effect: a message published afterwards reaches the raw client.
      await watching.client.publishAsync(`${topic}/own`, 'to the pipelined subscription', { qos: 1 });
      await raw.waitFor((packets) => packets.some((packet) => packet.cmd === 'publish' && packet.topic === `${topic}/own`), 5000, 'the message on the pipelined subscription');
      t.pass(`${name}: the pipelined subscription receives`);
    }
  });
}
