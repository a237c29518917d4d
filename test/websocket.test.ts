/**
 * MQTT over WebSocket [MQTT-6.0]: which handshakes the HTTP listener accepts
 * (path, subprotocol, Origin), and how it treats frames an MQTT peer must not
 * send (text frames, messages over the packet size limit).
 */
import t from 'tap';
import net from 'node:net';
import WebSocket from 'ws';
import type { Test } from 'tap';
import { startDaemon } from './helpers/daemon.js';
import { connectRaw, eventually, openClient } from './helpers/mqtt.js';

type Handshake = { opened: true; protocol: string } | { opened: false; status: number };

/**
 * Performs a WebSocket handshake and reports its outcome: the chosen
 * subprotocol when the upgrade succeeded, the HTTP status when it was refused.
 */
function handshake(t: Test, url: string, protocols: string[], origin?: string): Promise<Handshake> {
  const ws = new WebSocket(url, protocols, origin === undefined ? {} : { origin });
  t.teardown(() => ws.terminate());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no handshake outcome for ${url} within 5 s`)), 5000);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve({ opened: true, protocol: ws.protocol });
      ws.close();
    });
    ws.once('unexpected-response', (_request, response) => {
      clearTimeout(timer);
      resolve({ opened: false, status: response.statusCode ?? 0 });
      response.resume();
      ws.terminate();
    });
    ws.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** A valid MQTT 3.1.1 CONNECT carrying a will, encoded by hand (mqtt-packet would do, but the bytes are the point). */
function connectWithWill(clientId: string, willTopic: string): Buffer {
  const str = (s: string) => {
    const bytes = Buffer.from(s, 'utf8');
    return Buffer.concat([Buffer.from([bytes.length >> 8, bytes.length & 0xff]), bytes]);
  };
  // Protocol name "MQTT", level 4, flags: clean session (0x02) + will flag (0x04), keep-alive 60 s.
  const variableHeader = Buffer.concat([str('MQTT'), Buffer.from([4, 0x06, 0, 60])]);
  const payload = Buffer.concat([str(clientId), str(willTopic), str('gone')]);
  const body = Buffer.concat([variableHeader, payload]);
  if (body.length > 127) throw new Error('test CONNECT must fit a one-byte Remaining Length');
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

t.test('an upgrade on a path other than the MQTT path gets 404 and no WebSocket', async (t) => {
  const { httpPort } = await startDaemon(t);
  for (const path of ['/', '/mqtt/extra', '/ws', '/MQTT']) {
    const outcome = await handshake(t, `ws://127.0.0.1:${httpPort}${path}`, ['mqtt']);
    t.same(outcome, { opened: false, status: 404 }, `upgrade on ${path} is refused with 404`);
  }
  // A query string does not change the path: still the MQTT endpoint.
  t.same(await handshake(t, `ws://127.0.0.1:${httpPort}/mqtt?token=x`, ['mqtt']), { opened: true, protocol: 'mqtt' });
});

t.test('with WebSocket disabled, the MQTT path is refused too', async (t) => {
  const { wsUrl, httpUrl } = await startDaemon(t, { http: { websocket: { enabled: false } } });
  t.same(await handshake(t, wsUrl, ['mqtt']), { opened: false, status: 404 });
  const response = await fetch(wsUrl.replace(/^ws:/, 'http:'));
  t.equal(response.status, 404, 'and plain GET is just not found');
  await response.body?.cancel();
  t.equal((await fetch(`${httpUrl}/healthz`)).status, 200, 'health endpoints still served');
});

t.test('a peer that resets the socket after a refused upgrade does not take the daemon down', async (t) => {
  // Node's HTTP server drops its own 'error' listener from a socket it hands
  // to 'upgrade'; a refusal that leaves none makes a peer's RST an uncaught
  // exception, i.e. anyone on the network could crash the daemon.
  const { httpPort, httpUrl } = await startDaemon(t);
  for (const [path, origin, status] of [
    ['/nope', undefined, 404],
    ['/mqtt', 'http://evil.example', 403],
  ] as const) {
    const socket = net.connect(httpPort, '127.0.0.1');
    t.teardown(() => void socket.destroy());
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${httpPort}\r\n${origin ? `Origin: ${origin}\r\n` : ''}` +
        'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n',
    );
    const head = await new Promise<string>((resolve) => socket.once('data', (data) => resolve(data.toString('latin1'))));
    t.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), `${path} answered ${status}`);
    socket.resetAndDestroy();
    await new Promise((resolve) => socket.once('close', resolve));
  }
  const response = await fetch(`${httpUrl}/healthz`);
  t.equal(response.status, 200, 'the daemon still answers /healthz');
});

t.test('the mqtt subprotocol is chosen [MQTT-6.0.0-3] [MQTT-6.0.0-4]', async (t) => {
  const { wsUrl } = await startDaemon(t);
  t.same(await handshake(t, wsUrl, ['mqtt']), { opened: true, protocol: 'mqtt' });
  // Offered in either order, 3.1.1's name wins over the legacy one.
  t.same(await handshake(t, wsUrl, ['mqttv3.1', 'mqtt']), { opened: true, protocol: 'mqtt' });
  t.same(await handshake(t, wsUrl, ['mqttv3.1']), { opened: true, protocol: 'mqttv3.1' });
});

t.test('plain GET on the MQTT path answers 426 Upgrade Required', async (t) => {
  const { wsUrl, httpUrl } = await startDaemon(t);
  const response = await fetch(wsUrl.replace(/^ws:/, 'http:'));
  t.equal(response.status, 426);
  t.equal(response.headers.get('upgrade'), 'websocket');
  await response.body?.cancel();
  t.equal((await fetch(`${httpUrl}/elsewhere`)).status, 404, 'other paths are simply not found');
});

t.test('Origin allowlist', async (t) => {
  t.test('default: same-origin and Origin-less clients only', async (t) => {
    const { wsUrl, httpPort } = await startDaemon(t);
    t.same(await handshake(t, wsUrl, ['mqtt'], 'http://evil.example'), { opened: false, status: 403 }, 'foreign page refused');
    // Same host but another port is another origin.
    t.same(await handshake(t, wsUrl, ['mqtt'], `http://127.0.0.1:${httpPort + 1}`), { opened: false, status: 403 });
    // Sandboxed iframes and file:// pages send the opaque origin "null".
    t.same(await handshake(t, wsUrl, ['mqtt'], 'null'), { opened: false, status: 403 }, 'opaque origin refused');
    t.same(
      await handshake(t, wsUrl, ['mqtt'], `http://127.0.0.1:${httpPort}`),
      { opened: true, protocol: 'mqtt' },
      'a page served by the gateway itself (Origin host = Host) is accepted',
    );
    t.same(await handshake(t, wsUrl, ['mqtt']), { opened: true, protocol: 'mqtt' }, 'no Origin (a device, not a browser) is accepted');
  });

  t.test('an explicit list admits exactly those origins', async (t) => {
    const { wsUrl, httpPort } = await startDaemon(t, { http: { websocket: { allowedOrigins: ['http://dash.example:3000'] } } });
    t.same(await handshake(t, wsUrl, ['mqtt'], 'http://dash.example:3000'), { opened: true, protocol: 'mqtt' });
    t.same(await handshake(t, wsUrl, ['mqtt'], 'http://DASH.example:3000'), { opened: true, protocol: 'mqtt' }, 'host compared case-insensitively');
    t.same(await handshake(t, wsUrl, ['mqtt'], 'http://other.example:3000'), { opened: false, status: 403 });
    t.same(await handshake(t, wsUrl, ['mqtt'], 'http://dash.example:3001'), { opened: false, status: 403 }, 'port is part of the origin');
    t.same(await handshake(t, wsUrl, ['mqtt'], 'https://dash.example:3000'), { opened: false, status: 403 }, 'scheme is part of the origin');
    t.same(await handshake(t, wsUrl, ['mqtt'], `http://127.0.0.1:${httpPort}`), { opened: true, protocol: 'mqtt' }, 'same-origin still accepted');
  });

  t.test('"*" admits any origin', async (t) => {
    const { wsUrl } = await startDaemon(t, { http: { websocket: { allowedOrigins: ['*'] } } });
    t.same(await handshake(t, wsUrl, ['mqtt'], 'http://evil.example'), { opened: true, protocol: 'mqtt' });
  });
});

t.test('a closed WebSocket frees its place under http.websocket.maxConnections', async (t) => {
  const { wsUrl } = await startDaemon(t, { http: { websocket: { maxConnections: 1 } } });
  const { client } = await openClient(t, wsUrl, { clientId: 'first' });
  t.same(await handshake(t, wsUrl, ['mqtt']), { opened: false, status: 503 }, 'a second is refused while the first is open');
  await client.endAsync();
  // The place is freed when the broker has seen the close, a moment after the client's end.
  let second: Awaited<ReturnType<typeof openClient>> | undefined;
  await eventually(
    async () => {
      second = await openClient(t, wsUrl, { clientId: 'second' }).catch(() => undefined);
      return second !== undefined;
    },
    5000,
    'a second WebSocket client admitted',
  );
  t.equal(second?.connack.returnCode, 0, 'once the first has closed, another is admitted and speaks MQTT');
});

t.test('an MQTT packet may span WebSocket frames, and a frame may hold several packets [MQTT-6.0.0-2]', async (t) => {
  const { wsUrl } = await startDaemon(t);
  const raw = await connectRaw(t, wsUrl);
  // CONNECT one byte per binary message.
  for (const byte of connectWithWill('split-frames', 'split/will')) raw.send(Uint8Array.of(byte));
  const connack = await raw.waitForPacket('connack');
  t.equal(connack.returnCode, 0);
  // SUBSCRIBE and PINGREQ in a single message.
  raw.send(Uint8Array.of(0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 0x61, 0x2f, 0x62, 0x00, 0xc0, 0x00));
  const suback = await raw.waitForPacket('suback');
  t.same(suback.granted, [0]);
  await raw.waitForPacket('pingresp');
  t.notOk(raw.isClosed);
});

t.test('a text frame closes the connection and the broker never sees its CONNECT [MQTT-6.0.0-1]', async (t) => {
  const { wsUrl, mqttUrl } = await startDaemon(t);
  const watcher = await openClient(t, mqttUrl);
  await watcher.client.subscribeAsync('text/will', { qos: 1 });

  // Positive control: the very same bytes in a binary frame are a valid CONNECT.
  const control = await connectRaw(t, wsUrl);
  control.send(connectWithWill('binary-control', 'text/control'));
  t.equal((await control.waitForPacket('connack')).returnCode, 0, 'the bytes are a valid CONNECT');

  const ws = new WebSocket(wsUrl, ['mqtt']);
  t.teardown(() => ws.terminate());
  const received: Buffer[] = [];
  ws.on('message', (data: Buffer) => received.push(data));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const closed = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('text frame did not close the WebSocket within 5 s')), 5000);
    ws.once('close', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
  ws.send(connectWithWill('text-frame', 'text/will').toString('latin1'), { binary: false });
  const code = await closed;
  t.equal(code, 1003, 'closed with 1003 (unsupported data)');
  t.same(received, [], 'no CONNACK was sent');

  // Had the broker accepted that CONNECT, the abrupt close would publish its
  // will; a marker published afterwards on the same topic must arrive alone.
  const publisher = await openClient(t, mqttUrl);
  await publisher.client.publishAsync('text/will', 'marker', { qos: 1 });
  await watcher.log.waitFor((messages) => messages.some((m) => m.payload === 'marker'), 5000, 'the marker');
  t.same(
    watcher.log.messages.map((m) => m.payload),
    ['marker'],
    'the text-frame CONNECT never reached the broker (its will was never published)',
  );
});

t.test('a WebSocket message larger than broker.maxPacketSizeBytes closes the socket with 1009', async (t) => {
  const { wsUrl, mqttUrl } = await startDaemon(t, { broker: { maxPacketSizeBytes: 1024 } });
  const raw = await connectRaw(t, wsUrl);
  raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'big-frame', clean: true, keepalive: 60 });
  t.equal((await raw.waitForPacket('connack')).returnCode, 0);
  // One binary message of 1025 bytes; its content does not matter, its size does.
  raw.send(Buffer.alloc(1025, 0x30));
  await raw.waitForClose();
  t.equal(raw.closeCode, 1009, 'closed with 1009 (message too big)');

  // A message of exactly the limit is fine: a 1024-byte PUBLISH goes through.
  const subscriber = await openClient(t, mqttUrl);
  await subscriber.client.subscribeAsync('big/ok', { qos: 0 });
  const sender = await connectRaw(t, wsUrl);
  sender.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'exact-frame', clean: true, keepalive: 60 });
  await sender.waitForPacket('connack');
  // Fixed header 3 bytes (Remaining Length 1021 needs two bytes) + topic 2+6 + payload 1013 = 1024.
  const publish = Buffer.concat([Buffer.from([0x30, 0xfd, 0x07, 0x00, 0x06]), Buffer.from('big/ok'), Buffer.alloc(1013, 0x61)]);
  t.equal(publish.length, 1024);
  sender.send(publish);
  const messages = await subscriber.log.waitForCount(1);
  t.equal(messages[0]?.payload.length, 1013, 'a packet of exactly the limit is delivered');
  t.notOk(sender.isClosed, 'and its sender stays connected');
});
