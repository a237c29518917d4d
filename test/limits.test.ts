/**
 * Every configurable limit against the running daemon over real sockets:
 * hit, enforced on the offending connection only, counted in
 * limitsStats().limitHits and logged (once per 10 s per limit, however often
 * it is hit). The slow-client limits (outgoing buffer, inflight window,
 * queue, drain timeout) are in slow-consumers.test.ts.
 */
import t from 'tap';
import net from 'node:net';
import WebSocket from 'ws';
import type { Test } from 'tap';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { authFiles } from './helpers/security.js';
import { connectRaw, openClient, eventually, tcpConnect } from './helpers/mqtt.js';
import { captureLogs, WARN, type CapturedLogs } from './helpers/logs.js';
import { connect, connect5, disconnect, publish, subscribe, unsubscribe } from './helpers/packets.js';
import type { LimitName } from '../src/index.js';

const transports = ['tcp', 'ws'] as const;
type Transport = (typeof transports)[number];
const urlOf = (daemon: RunningDaemon, transport: Transport) => (transport === 'tcp' ? daemon.mqttUrl : daemon.wsUrl);

const hits = (daemon: RunningDaemon, limit: LimitName) => daemon.daemon.limitsStats().limitHits[limit];

/** The WebSocket handshake's outcome: open, or the HTTP status it was refused with. */
function upgrade(t: Test, url: string): Promise<{ opened: true; ws: WebSocket } | { opened: false; status: number }> {
  const ws = new WebSocket(url, ['mqtt']);
  t.teardown(() => ws.terminate());
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ opened: true, ws }));
    ws.once('unexpected-response', (_request, response) => {
      resolve({ opened: false, status: response.statusCode ?? 0 });
      response.resume();
    });
    ws.once('error', reject);
  });
}

function loggedOnce(t: Test, logs: CapturedLogs, limit: LimitName): void {
  const lines = logs.lines.filter((line) => line.limit === limit);
  t.equal(lines.length, 1, `${limit}: one log line`);
  t.ok(lines.every((line) => line.level === WARN), `${limit}: logged at warn`);
}

t.test('limits.maxConnections caps connections over all listeners', async (t) => {
  const logs = captureLogs();
  const daemon = await startDaemon(t, { limits: { maxConnections: 3 } }, { logger: logs.logger });
  const first = await openClient(t, daemon.mqttUrl, { clientId: 'one' });
  await openClient(t, daemon.wsUrl, { clientId: 'two' });
  await openClient(t, daemon.mqttUrl, { clientId: 'three' });
  t.equal(await tcpConnect(daemon.mqttUrl, 'four'), 'closed', 'a 4th TCP connection is closed without CONNACK');
  t.same(await upgrade(t, daemon.wsUrl), { opened: false, status: 503 }, 'a 4th WebSocket upgrade gets 503');
  t.equal(hits(daemon, 'maxConnections'), 2);
  loggedOnce(t, logs, 'maxConnections');
  await first.client.endAsync();
  await eventually(() => daemon.daemon.limitsStats().openConnections === 2, 5000, 'the closed connection to be released');
  t.equal(await tcpConnect(daemon.mqttUrl, 'four-again'), 'connack', 'once one closes, a new one is admitted');
});

t.test('per-listener limits: mqtt.maxConnections and http.websocket.maxConnections', async (t) => {
  const logs = captureLogs();
  const daemon = await startDaemon(t, { mqtt: { maxConnections: 1 }, http: { websocket: { maxConnections: 1 } } }, { logger: logs.logger });
  await openClient(t, daemon.mqttUrl, { clientId: 'tcp-one' });
  await openClient(t, daemon.wsUrl, { clientId: 'ws-one' });
  t.equal(await tcpConnect(daemon.mqttUrl, 'tcp-two'), 'closed', 'the TCP listener refuses a 2nd connection');
  t.same(await upgrade(t, daemon.wsUrl), { opened: false, status: 503 }, 'the WebSocket path refuses a 2nd with 503');
  await eventually(() => hits(daemon, 'listenerMaxConnections') === 2, 5000, 'both refusals counted');
  loggedOnce(t, logs, 'listenerMaxConnections');
  t.equal((await fetch(`${daemon.httpUrl}/healthz`)).status, 200, 'plain HTTP is not limited by the WebSocket limit');
});

t.test('limits.connectRatePerAddressPerSec and connectBurstPerAddress, shared by TCP and WebSocket', async (t) => {
  const logs = captureLogs();
  // Loopback is exempt by default (connect-rate-exempt.test.ts); the test's clients are on it.
  const daemon = await startDaemon(
    t,
    { limits: { connectBurstPerAddress: 4, connectRatePerAddressPerSec: 2, connectRateExemptLoopback: false } },
    { logger: logs.logger },
  );
  const burst: string[] = [];
  for (let i = 0; i < 3; i++) burst.push(await tcpConnect(daemon.mqttUrl, `burst-${i}`));
  const ws = await upgrade(t, daemon.wsUrl);
  t.same(burst, ['connack', 'connack', 'connack'], 'a burst of 4 from one address is admitted (3 TCP…');
  t.equal(ws.opened, true, '…and 1 WebSocket)');
  t.equal(await tcpConnect(daemon.mqttUrl, 'over'), 'closed', 'the 5th at once is closed');
  t.same(await upgrade(t, daemon.wsUrl), { opened: false, status: 429 }, 'a WebSocket upgrade over the rate gets 429');
  t.equal(hits(daemon, 'connectRate'), 2);
  loggedOnce(t, logs, 'connectRate');
  // At 2 a second a token is back within about 500 ms.
  const refusedAt = performance.now();
  await eventually(async () => (await tcpConnect(daemon.mqttUrl, 'later')) === 'connack', 3000, 'the rate to admit again');
  t.comment(`admitted again after ${(performance.now() - refusedAt).toFixed(0)} ms`);
});

for (const transport of transports) {
  t.test(`${transport}: topic length and levels: a PUBLISH over them closes, a SUBSCRIBE filter over them gets 0x80`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, { limits: { maxTopicLengthBytes: 16, maxTopicLevels: 3 } }, { logger: logs.logger });
    const url = urlOf(daemon, transport);
    const subscriber = await connectRaw(t, url);
    subscriber.send(connect({ clientId: 'filters' }));
    subscriber.send(subscribe(1, ['a/b/c', 'a/b/c/d', 'x'.repeat(17), 'x'.repeat(16), '+/+/#'], 1));
    const suback = await subscriber.waitForPacket('suback');
    t.same(suback.granted, [1, 128, 128, 1, 1], 'filters over the limits refused, the others granted');
    t.notOk(subscriber.isClosed, 'the subscriber stays connected');

    for (const [topic, limit] of [
      ['a/b/c/d', 'maxTopicLevels'],
      ['y'.repeat(17), 'maxTopicLength'],
    ] as const) {
      const publisher = await connectRaw(t, url);
      publisher.send(connect({ clientId: `pub-${limit}` }));
      await publisher.waitForPacket('connack');
      publisher.send(publish('a/b/c', { qos: 1, id: 1 }));
      await publisher.waitForPacket('puback');
      publisher.send(publish(topic, { qos: 1, id: 2 }));
      await publisher.waitForClose();
      t.same(publisher.packets.map((p) => p.cmd), ['connack', 'puback'], `a PUBLISH over ${limit} closes the connection, unanswered`);
    }
    t.equal(hits(daemon, 'maxTopicLevels'), 2, 'levels: one filter, one PUBLISH');
    t.equal(hits(daemon, 'maxTopicLength'), 2, 'length: one filter, one PUBLISH');
    loggedOnce(t, logs, 'maxTopicLevels');
    loggedOnce(t, logs, 'maxTopicLength');
    const will = await connectRaw(t, url);
    will.send(connect({ clientId: 'long-will', will: { topic: 'w/w/w/w' } }));
    await will.waitForClose();
    t.same(will.packets, [], 'a will topic over the limit closes the CONNECT unanswered');
  });

  t.test(`${transport}: limits.maxSubscriptionsPerClient`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, { limits: { maxSubscriptionsPerClient: 3 } }, { logger: logs.logger });
    const raw = await connectRaw(t, urlOf(daemon, transport));
    raw.send(connect({ clientId: 'collector' }));
    raw.send(subscribe(1, ['s/1', 's/2']));
    await raw.waitFor((packets) => packets.some((p) => p.cmd === 'suback' && p.messageId === 1), 5000, 'SUBACK 1');
    // Re-subscribing to a held filter takes no new place.
    raw.send(subscribe(2, ['s/1', 's/3', 's/4', 's/5']));
    const second = () => raw.packets.find((p): p is Extract<typeof p, { cmd: 'suback' }> => p.cmd === 'suback' && p.messageId === 2);
    await raw.waitFor(() => second() !== undefined, 5000, 'SUBACK 2');
    t.same(second()?.granted, [0, 0, 128, 128], 'the 4th and 5th distinct filters are refused');
    raw.send(unsubscribe(3, ['s/2']));
    await raw.waitForPacket('unsuback');
    raw.send(subscribe(4, ['s/4']));
    const fourth = () => raw.packets.find((p): p is Extract<typeof p, { cmd: 'suback' }> => p.cmd === 'suback' && p.messageId === 4);
    await raw.waitFor(() => fourth() !== undefined, 5000, 'SUBACK 4');
    t.same(fourth()?.granted, [0], 'after an UNSUBSCRIBE there is room again');
    t.notOk(raw.isClosed);
    t.equal(hits(daemon, 'maxSubscriptions'), 2);
    loggedOnce(t, logs, 'maxSubscriptions');
  });

  t.test(`${transport}: broker.minKeepaliveSec and maxKeepaliveSec refuse other keep-alives with CONNACK 0x02`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, { broker: { minKeepaliveSec: 10, maxKeepaliveSec: 60 } }, { logger: logs.logger });
    const outcome = async (keepalive: number) => {
      const raw = await connectRaw(t, urlOf(daemon, transport));
      raw.send(connect({ clientId: `keepalive-${keepalive}`, keepalive }));
      const connack = await raw.waitForPacket('connack');
      if (connack.returnCode !== 0) await raw.waitForClose();
      return connack.returnCode;
    };
    t.equal(await outcome(5), 2, 'keep-alive 5 s < 10 s: identifier rejected, then closed');
    t.equal(await outcome(10), 0, 'keep-alive 10 s is accepted');
    t.equal(await outcome(60), 0, 'keep-alive 60 s is accepted');
    t.equal(await outcome(61), 2, 'keep-alive 61 s > 60 s: refused');
    t.equal(await outcome(0), 2, 'no keep-alive (0) with a maximum set: refused');
    t.equal(hits(daemon, 'minKeepalive'), 1);
    t.equal(hits(daemon, 'maxKeepalive'), 2);
    loggedOnce(t, logs, 'minKeepalive');
    loggedOnce(t, logs, 'maxKeepalive');
  });

  t.test(`${transport}: broker.maxClientIdLength bounds the client id in UTF-8 bytes, for MQTT 3.1.1 and 5`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, {}, { logger: logs.logger });
    /** The CONNACK's return code (3.1.1) or Reason Code (5) for a CONNECT with `clientId`; a refused connection is then closed. */
    const outcome = async (clientId: string, version: 4 | 5) => {
      const raw = await connectRaw(t, urlOf(daemon, transport), { protocolVersion: version });
      raw.send(version === 5 ? connect5({ clientId }) : connect({ clientId }));
      const connack = await raw.waitForPacket('connack');
      const code = version === 5 ? connack.reasonCode : connack.returnCode;
      if (code !== 0) await raw.waitForClose();
      return code;
    };
    // The longest id the protocol allows: 65,535 bytes [MQTT-1.5.3].
    t.equal(await outcome('x'.repeat(65_535), 4), 2, 'MQTT 3.1.1: a 65,535-byte id gets 0x02 Identifier rejected');
    t.equal(await outcome('x'.repeat(65_535), 5), 0x85, 'MQTT 5: 0x85 Client Identifier not valid');
    t.equal(await outcome('x'.repeat(256), 4), 0, 'the default 256 bytes is accepted (3.1.1)');
    t.equal(await outcome('y'.repeat(256), 5), 0, 'and for MQTT 5');
    // 128 two-byte characters: 128 UTF-16 units, 256 bytes; one more is 258 bytes.
    t.equal(await outcome('é'.repeat(128), 4), 0, '256 bytes of UTF-8 (128 characters) is accepted');
    t.equal(await outcome('é'.repeat(129), 4), 2, '258 bytes of UTF-8 (129 characters) is refused: bytes count, not characters');
    t.equal(hits(daemon, 'maxClientIdLength'), 3, 'each refusal counted as a limit hit');
    loggedOnce(t, logs, 'maxClientIdLength');
    t.ok(logs.find('connect refused', { reason: 'client id of 65535 bytes is over broker.maxClientIdLength (256)' }).length > 0, 'the refusal says why');
  });

  t.test(`${transport}: broker.maxClientIdLength is configurable`, async (t) => {
    const daemon = await startDaemon(t, { broker: { maxClientIdLength: 23 } });
    const returnCode = async (clientId: string) => {
      const raw = await connectRaw(t, urlOf(daemon, transport));
      raw.send(connect({ clientId }));
      return (await raw.waitForPacket('connack')).returnCode;
    };
    t.equal(await returnCode('a'.repeat(23)), 0, '23 bytes: accepted');
    t.equal(await returnCode('a'.repeat(24)), 2, '24 bytes: refused');
    t.equal(hits(daemon, 'maxClientIdLength'), 1);
  });

  t.test(`${transport}: broker.maxPacketSizeBytes is counted and logged`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, { broker: { maxPacketSizeBytes: 1024 } }, { logger: logs.logger });
    const raw = await connectRaw(t, urlOf(daemon, transport));
    raw.send(connect({ clientId: 'big' }));
    await raw.waitForPacket('connack');
    raw.send(publish('big', { payload: Buffer.alloc(2000) }));
    await raw.waitForClose();
    await eventually(() => hits(daemon, 'maxPacketSize') === 1, 5000, 'the hit to be counted');
    loggedOnce(t, logs, 'maxPacketSize');
  });

  t.test(`${transport}: a CONNECT trickled in slower than broker.connectTimeoutSec is cut off (slowloris)`, async (t) => {
    const logs = captureLogs();
    const daemon = await startDaemon(t, { broker: { connectTimeoutSec: 1 } }, { logger: logs.logger });
    const raw = await connectRaw(t, urlOf(daemon, transport));
    const bytes = connect({ clientId: 'slowloris-with-a-long-client-id' });
    const openedAt = performance.now();
    // One byte every 100 ms: the whole CONNECT would take about 4 s, and every
    // byte is progress that a per-read idle timer would accept.
    let sent = 0;
    const timer = setInterval(() => {
      if (raw.isClosed || sent >= bytes.length) return clearInterval(timer);
      raw.send(bytes.subarray(sent, ++sent));
    }, 100);
    t.teardown(() => clearInterval(timer));
    await raw.waitForClose(5000);
    const elapsed = performance.now() - openedAt;
    t.ok(sent < bytes.length, `closed before the CONNECT was complete (${sent} of ${bytes.length} bytes)`);
    t.ok(elapsed >= 900 && elapsed < 2500, `closed after ${elapsed.toFixed(0)} ms (limit 1000 ms)`);
    t.same(raw.packets, [], 'no CONNACK');
    t.equal(hits(daemon, 'connectTimeout'), 1);
    loggedOnce(t, logs, 'connectTimeout');
  });
}

t.test('a filter refused in the SUBACK, by a limit or the ACL, is not kept with a persistent session', async (t) => {
  // Anonymous clients publish; keeper may read all of kept/#, so only its subscriptions decide what it gets.
  const auth = await authFiles(t, { keeper: 'keeper-pw' }, 'topic write kept/#\nuser keeper\ntopic read kept/#\n');
  const daemon = await startDaemon(t, { limits: { maxSubscriptionsPerClient: 2 }, auth });
  const keeperConnect = { cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: false, keepalive: 30, clientId: 'keeper', username: 'keeper', password: Buffer.from('keeper-pw') } as const;
  const keeper = await connectRaw(t, daemon.mqttUrl);
  keeper.send(keeperConnect);
  keeper.send({ cmd: 'subscribe', messageId: 1, subscriptions: ['kept/a', '#', 'kept/b', 'kept/c'].map((topic) => ({ topic, qos: 1 as const })) });
  const suback = await keeper.waitForPacket('suback');
  t.same(suback.granted, [1, 128, 1, 128], '# refused by the ACL, kept/c by limits.maxSubscriptionsPerClient');
  keeper.send(disconnect());
  await keeper.waitForClose();

  const publisher = await openClient(t, daemon.mqttUrl, { clientId: 'publisher' });
  await publisher.client.publishAsync('kept/c', 'over the quota', { qos: 1 });
  await publisher.client.publishAsync('kept/d', 'matched only by the refused #', { qos: 1 });
  await publisher.client.publishAsync('kept/a', 'marker', { qos: 1 });
  const back = await openClient(t, daemon.mqttUrl, { clientId: 'keeper', clean: false, username: 'keeper', password: 'keeper-pw' });
  t.equal(back.connack.sessionPresent, true, 'the session is resumed');
  const messages = await back.log.waitFor((m) => m.some((x) => x.topic === 'kept/a'), 5000, 'the marker');
  t.same(
    messages.map((m) => [m.topic, m.payload]),
    [['kept/a', 'marker']],
    'nothing was queued on the refused filters while the client was away; the granted one queued its message',
  );
});

t.test('an HTTP request trickled in slower than broker.connectTimeoutSec is cut off before any upgrade', async (t) => {
  const daemon = await startDaemon(t, { broker: { connectTimeoutSec: 1 } });
  const socket = net.connect(daemon.httpPort, '127.0.0.1');
  t.teardown(() => void socket.destroy());
  await new Promise((resolve) => socket.once('connect', resolve));
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(performance.now())));
  socket.on('error', () => undefined);
  const openedAt = performance.now();
  const request = `GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Padding: ${'p'.repeat(60)}\r\n`;
  let sent = 0;
  const timer = setInterval(() => {
    if (socket.destroyed || sent >= request.length) return clearInterval(timer);
    socket.write(request[sent++] as string);
  }, 50);
  t.teardown(() => clearInterval(timer));
  const elapsed = (await closed) - openedAt;
  t.ok(elapsed >= 900 && elapsed < 2500, `closed after ${elapsed.toFixed(0)} ms with ${sent} of ${request.length} header bytes sent`);
  t.equal(hits(daemon, 'connectTimeout'), 1, 'counted');
});

t.test('limit hits are all counted, but logged at most once per 10 s per limit', async (t) => {
  const logs = captureLogs();
  const daemon = await startDaemon(t, { limits: { maxConnections: 1 } }, { logger: logs.logger });
  await openClient(t, daemon.mqttUrl, { clientId: 'only' });
  const refused: ReturnType<typeof tcpConnect>[] = [];
  for (let i = 0; i < 50; i++) refused.push(tcpConnect(daemon.mqttUrl, `flood-${i}`));
  t.ok((await Promise.all(refused)).every((outcome) => outcome === 'closed'), '50 refused');
  t.equal(hits(daemon, 'maxConnections'), 50, 'all counted');
  t.equal(logs.lines.filter((line) => line.limit === 'maxConnections').length, 1, 'one line logged');
});
