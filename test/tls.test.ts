/**
 * TLS: MQTT over TLS and HTTPS/WSS listeners with certificates from files,
 * TLS 1.2 as the floor, client certificates (required, optional, CN as the
 * user name), the WebSocket Origin allowlist over WSS, and certificates
 * reloaded without dropping connections. Every certificate is made by the
 * test with openssl (helpers/pki.ts).
 */
import t from 'tap';
import https from 'node:https';
import tls from 'node:tls';
import { copyFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import WebSocket from 'ws';
import * as mqttPacket from 'mqtt-packet';
import type { Packet } from 'mqtt-packet';
import type { Test } from 'tap';
import { validateConfig } from '../src/config/load.js';
import { redactConfig } from '../src/config/redact.js';
import { hashPassword } from '../src/auth/password-file.js';
import { tempDir } from './helpers/daemon.js';
import { MessageLog, connectClient, eventually } from './helpers/mqtt.js';
import { makePki, type KeyPair, type Pki } from './helpers/pki.js';
import { startSecureDaemon } from './helpers/security.js';

interface TlsClientOptions {
  ca?: Buffer;
  cert?: KeyPair;
  minVersion?: tls.SecureVersion;
  maxVersion?: tls.SecureVersion;
  ciphers?: string;
}

/** A TLS connection to the daemon on loopback with the given client settings. */
function connectTls(port: number, options: TlsClientOptions): tls.TLSSocket {
  return tls.connect({
    host: '127.0.0.1',
    port,
    ca: options.ca,
    ...(options.cert ? { cert: options.cert.cert, key: options.cert.key } : {}),
    ...(options.minVersion ? { minVersion: options.minVersion } : {}),
    ...(options.maxVersion ? { maxVersion: options.maxVersion } : {}),
    ...(options.ciphers ? { ciphers: options.ciphers } : {}),
  });
}

/** Opens a TLS connection; resolves with the negotiated protocol and the server's certificate fingerprint. */
function handshake(port: number, options: TlsClientOptions): Promise<{ protocol: string | null; fingerprint: string; socket: tls.TLSSocket }> {
  return new Promise((resolve, reject) => {
    const socket = connectTls(port, options);
    socket.once('secureConnect', () => resolve({ protocol: socket.getProtocol(), fingerprint: socket.getPeerCertificate().fingerprint256, socket }));
    socket.once('error', reject);
  });
}

/**
 * An MQTT CONNECT over TLS at the byte level; resolves with the CONNACK's
 * return code, or rejects with the error that ended the connection first
 * (a refused client certificate is only reported after the TLS 1.3
 * handshake completes on the client's side).
 */
function connackOverTls(port: number, options: TlsClientOptions & { username?: string; password?: string }): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connectTls(port, options);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no CONNACK and no error within 5 s'));
    }, 5000);
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    parser.on('packet', (packet: Packet) => {
      if (packet.cmd !== 'connack') return;
      clearTimeout(timer);
      socket.destroy();
      resolve(packet.returnCode ?? -1);
    });
    socket.on('data', (data) => parser.parse(data));
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once('close', () => {
      clearTimeout(timer);
      reject(new Error('closed before CONNACK'));
    });
    socket.once('secureConnect', () =>
      socket.write(
        mqttPacket.generate({
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clean: true,
          keepalive: 30,
          clientId: `tls-${Math.random().toString(36).slice(2)}`,
          ...(options.username !== undefined ? { username: options.username } : {}),
          ...(options.password !== undefined ? { password: Buffer.from(options.password) } : {}),
        }),
      ),
    );
  });
}

/** A WSS handshake: the HTTP status of a refusal, or the chosen subprotocol. */
function wssHandshake(t: Test, url: string, ca: Buffer, origin?: string): Promise<{ opened: boolean; status?: number; protocol?: string }> {
  const ws = new WebSocket(url, ['mqtt'], { ca, ...(origin ? { origin } : {}) });
  t.teardown(() => ws.terminate());
  return new Promise((resolve, reject) => {
    ws.once('open', () => {
      resolve({ opened: true, protocol: ws.protocol });
      ws.close();
    });
    ws.once('unexpected-response', (_request, response) => {
      resolve({ opened: false, status: response.statusCode });
      response.resume();
    });
    ws.once('error', reject);
  });
}

function tlsSection(pki: Pki, extra: Record<string, unknown> = {}) {
  return { enabled: true, certFile: pki.server.certFile, keyFile: pki.server.keyFile, ...extra };
}

t.test('MQTT over TLS talks to MQTT over TCP; TLS 1.2 is the floor', async (t) => {
  const pki = await makePki(t);
  const { mqttUrl, mqttsUrl, tlsPort, log } = await startSecureDaemon(t, { tls: tlsSection(pki) });
  const secure = await connectClient(t, mqttsUrl, { ca: pki.ca.cert });
  t.match((secure.stream as tls.TLSSocket).getProtocol(), /^TLSv1\.[23]$/, 'a TLS 1.2+ session');
  const seen = new MessageLog(secure);
  await secure.subscribeAsync('plant/#', { qos: 1 });
  const plain = await connectClient(t, mqttUrl);
  await plain.publishAsync('plant/line1/temp', '21.5', { qos: 1 });
  await seen.waitForCount(1);
  t.equal(seen.messages[0]?.payload, '21.5', 'TCP → TLS');

  // The control proves this client can speak TLS 1.1 to a server that allows it.
  const old: TlsClientOptions = { ca: pki.ca.cert, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' };
  const control = tls.createServer({ cert: pki.server.cert, key: pki.server.key, minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' }, (socket) => socket.end());
  await new Promise<void>((resolve) => control.listen(0, '127.0.0.1', resolve));
  t.teardown(() => control.close());
  const controlSession = await handshake((control.address() as { port: number }).port, old);
  t.equal(controlSession.protocol, 'TLSv1.1', 'control: TLS 1.1 is possible');
  controlSession.socket.destroy();
  await t.rejects(handshake(tlsPort, old), { code: /^ERR_SSL_/ }, 'edgemqtt refuses TLS 1.1');
  await eventually(() => log.find('TLS handshake failed') !== undefined, 5000, 'the refusal to be logged');
  t.equal(log.find('TLS handshake failed')?.level, 'info', 'logged at info with its reason');

  const strict = await startSecureDaemon(t, { tls: tlsSection(pki, { minVersion: 'TLSv1.3' }) });
  await t.rejects(handshake(strict.tlsPort, { ca: pki.ca.cert, maxVersion: 'TLSv1.2' }), { code: /^ERR_SSL_/ }, 'minVersion TLSv1.3 refuses TLS 1.2');
  const modern = await handshake(strict.tlsPort, { ca: pki.ca.cert });
  t.equal(modern.protocol, 'TLSv1.3');
  modern.socket.destroy();
});

t.test('TLS connections pass the same limits as TCP ones: listener connections, packet size', async (t) => {
  const pki = await makePki(t);
  const { daemon, tlsPort, mqttsUrl } = await startSecureDaemon(t, {
    tls: tlsSection(pki, { maxConnections: 1 }),
    broker: { maxPacketSizeBytes: 1024 },
  });
  const first = await connectClient(t, mqttsUrl, { ca: pki.ca.cert });
  await t.rejects(connackOverTls(tlsPort, { ca: pki.ca.cert }), 'a second connection is refused while the listener is full');
  await eventually(() => daemon.limitsStats().limitHits.listenerMaxConnections >= 1, 5000, 'the refusal to be counted');
  const closed = new Promise<void>((resolve) => first.once('close', () => resolve()));
  first.publish('big', Buffer.alloc(4096));
  await closed;
  t.ok(daemon.limitsStats().limitHits.maxPacketSize >= 1, 'a packet over broker.maxPacketSizeBytes closes a TLS connection too');
});

t.test('client certificates: required, verified against caFile, CN as the user name', async (t) => {
  const pki = await makePki(t);
  const sensor = await pki.issue('sensor', 'sensor-7');
  const monitor = await pki.issue('monitor', 'monitor');
  const stranger = await pki.issue('stranger', 'sensor-7', { ca: pki.foreignCa });
  const aclFile = path.join(tempDir(t), 'acl');
  await writeFile(aclFile, 'user sensor-7\ntopic write plant/sensor-7/#\nuser monitor\ntopic read plant/#\n');
  const { daemon, tlsPort, mqttsUrl, log } = await startSecureDaemon(t, {
    tls: tlsSection(pki, { caFile: pki.ca.certFile, requireClientCert: true, useCnAsUsername: true }),
    auth: { allowAnonymous: false, aclFile },
  });
  await t.rejects(connackOverTls(tlsPort, { ca: pki.ca.cert }), 'no certificate: no MQTT session');
  await t.rejects(connackOverTls(tlsPort, { ca: pki.ca.cert, cert: stranger }), 'a certificate from another CA: none either');
  t.equal(
    await connackOverTls(tlsPort, { ca: pki.ca.cert, cert: sensor, username: 'admin', password: 'whatever' }),
    0,
    "the certificate is the credential: CONNECT's user name and password are ignored",
  );

  const watcher = await connectClient(t, mqttsUrl, { ca: pki.ca.cert, cert: monitor.cert, key: monitor.key });
  const seen = new MessageLog(watcher);
  await watcher.subscribeAsync('plant/#', { qos: 1 });
  const device = await connectClient(t, mqttsUrl, { ca: pki.ca.cert, cert: sensor.cert, key: sensor.key, username: 'monitor' });
  await device.publishAsync('plant/other/temp', 'not mine', { qos: 1 });
  await device.publishAsync('plant/sensor-7/temp', '20.1', { qos: 1 });
  await seen.waitFor((messages) => messages.some((m) => m.topic === 'plant/sensor-7/temp'));
  t.same(seen.messages.map((m) => m.topic), ['plant/sensor-7/temp'], 'the ACL of CN=sensor-7 applies, not that of the user name it sent');
  t.match(daemon.authStats(), { publishesDenied: 1, loginsSucceeded: 3 });
  t.match(
    log.find('client connected', (record) => record.clientId === device.options.clientId),
    { user: 'sensor-7', listener: 'tls', protocol: '3.1.1' },
    "the connected line names the certificate's user, not the one the CONNECT sent",
  );
});

t.test('a failed handshake is logged with the address and port it came from', async (t) => {
  const pki = await makePki(t);
  const { tlsPort, log } = await startSecureDaemon(t, { tls: tlsSection(pki, { caFile: pki.ca.certFile, requireClientCert: true }) });
  /** Starts a handshake; resolves with the client's local port and the server's log line for its failure. */
  const failedHandshake = async (options: TlsClientOptions) => {
    const socket = connectTls(tlsPort, options);
    t.teardown(() => socket.destroy());
    socket.on('error', () => {});
    const localPort = await new Promise<number>((resolve) => socket.once('connect', () => resolve(socket.localPort!)));
    const logged = () => log.find('TLS handshake failed', (record) => record.remote === `127.0.0.1:${localPort}`);
    await eventually(() => logged() !== undefined, 5000, `a TLS handshake failed line with remote 127.0.0.1:${localPort}`);
    return logged();
  };
  // The client does not trust the server's certificate and hangs up: Node
  // reports this after the TLS socket lost its address ("undefined:undefined" before).
  t.match(await failedHandshake({ ca: pki.foreignCa.cert }), { reason: 'socket hang up' }, 'a client that hangs up mid-handshake: its address and port');
  // The server refuses: no client certificate where one is required.
  t.match(await failedHandshake({ ca: pki.ca.cert }), { reason: /did not return a certificate/ }, 'a refused client: its address and port, and why');
  t.notOk(log.find('TLS handshake failed', (record) => typeof record.remote !== 'string' || record.remote.includes('undefined')), 'no line without an address');
});

t.test('optional client certificates: a certificate or a password', async (t) => {
  const pki = await makePki(t);
  const sensor = await pki.issue('sensor', 'sensor-7');
  const stranger = await pki.issue('stranger', 'intruder', { ca: pki.foreignCa });
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwd');
  await writeFile(passwordFile, `alice:${await hashPassword('alice-pw', { N: 1024, r: 8, p: 1 })}\n`);
  const { tlsPort } = await startSecureDaemon(t, {
    tls: tlsSection(pki, { caFile: pki.ca.certFile, useCnAsUsername: true }),
    auth: { allowAnonymous: false, passwordFile },
  });
  t.equal(await connackOverTls(tlsPort, { ca: pki.ca.cert, cert: sensor }), 0, 'a CA-signed certificate logs in as its CN');
  t.equal(await connackOverTls(tlsPort, { ca: pki.ca.cert, username: 'alice', password: 'alice-pw' }), 0, 'no certificate: a password');
  t.equal(await connackOverTls(tlsPort, { ca: pki.ca.cert }), 5, 'neither: anonymous, which is off');
  t.equal(
    await connackOverTls(tlsPort, { ca: pki.ca.cert, cert: stranger, username: 'intruder', password: 'x' }),
    4,
    "an unverified certificate names nobody; its holder needs a password like anyone",
  );
});

t.test('WSS: MQTT over WebSocket on HTTPS, Origin allowlist and client certificates', async (t) => {
  const pki = await makePki(t);
  const dashboard = await pki.issue('dashboard', 'dash-1');
  const aclFile = path.join(tempDir(t), 'acl');
  // Anonymous clients may write plant/ but not read it; CN=dash-1 may read it.
  await writeFile(aclFile, 'topic write plant/#\nuser dash-1\ntopic read plant/#\n');
  const { wssUrl, httpsUrl, httpPort, mqttUrl, log } = await startSecureDaemon(t, {
    http: {
      tls: tlsSection(pki, { caFile: pki.ca.certFile, useCnAsUsername: true }),
      websocket: { allowedOrigins: ['https://dashboard.example.com'] },
    },
    auth: { aclFile },
  });
  const health = await new Promise<number>((resolve, reject) => {
    const request = https.get(`${httpsUrl}/healthz`, { ca: pki.ca.cert }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    request.on('error', reject);
  });
  t.equal(health, 200, '/healthz is served over HTTPS too');

  t.same(await wssHandshake(t, wssUrl, pki.ca.cert), { opened: true, protocol: 'mqtt' }, 'a WSS handshake without Origin (a device)');
  t.same(await wssHandshake(t, wssUrl, pki.ca.cert, 'https://dashboard.example.com'), { opened: true, protocol: 'mqtt' }, 'an allowed Origin');
  t.same(await wssHandshake(t, wssUrl, pki.ca.cert, 'https://evil.example.net'), { opened: false, status: 403 }, 'another Origin gets 403');
  t.ok(log.find('WebSocket refused: origin not allowed', (record) => record.origin === 'https://evil.example.net'), 'and a log line');
  await t.rejects(wssHandshake(t, `ws://127.0.0.1:${httpPort}/mqtt`, pki.ca.cert), 'plain ws:// is not served on the HTTPS port');

  const browser = await connectClient(t, wssUrl, { ca: pki.ca.cert, cert: dashboard.cert, key: dashboard.key, wsOptions: { origin: 'https://dashboard.example.com' } });
  const seen = new MessageLog(browser);
  await browser.subscribeAsync('plant/#', { qos: 1 });
  const anonymous = await connectClient(t, wssUrl, { ca: pki.ca.cert });
  await t.rejects(anonymous.subscribeAsync('plant/#', { qos: 1 }), 'without the certificate, plant/# is not granted (SUBACK 0x80)');
  const plain = await connectClient(t, mqttUrl);
  await plain.publishAsync('plant/line2/pressure', '1.2', { qos: 1 });
  await seen.waitForCount(1);
  t.equal(seen.messages[0]?.topic, 'plant/line2/pressure', 'TCP → WSS, to the user named by the certificate');
});

t.test('certificates reload on SIGHUP without dropping connections; a broken one is refused', async (t) => {
  const pki = await makePki(t);
  const dir = tempDir(t);
  const certFile = path.join(dir, 'live.crt');
  const keyFile = path.join(dir, 'live.key');
  await copyFile(pki.server.certFile, certFile);
  await copyFile(pki.server.keyFile, keyFile);
  const live = { enabled: true, certFile, keyFile };
  const { daemon, tlsPort, httpPort, mqttsUrl, wssUrl, log } = await startSecureDaemon(t, { tls: live, http: { tls: live } });
  const before = await handshake(tlsPort, { ca: pki.ca.cert });
  before.socket.destroy();

  const tlsClient = await connectClient(t, mqttsUrl, { ca: pki.ca.cert });
  const wssClient = await connectClient(t, wssUrl, { ca: pki.ca.cert });
  const tlsSeen = new MessageLog(tlsClient);
  const wssSeen = new MessageLog(wssClient);
  await tlsClient.subscribeAsync('news', { qos: 1 });
  await wssClient.subscribeAsync('news', { qos: 1 });

  const renewed = await pki.issue('renewed', 'localhost', { usage: 'server' });
  await copyFile(renewed.certFile, certFile);
  await copyFile(renewed.keyFile, keyFile);
  const result = daemon.reload(daemon.config);
  t.same(result, { applied: ['tls.certFile', 'tls.keyFile', 'http.tls.certFile', 'http.tls.keyFile'], needsRestart: [] });
  const after = await handshake(tlsPort, { ca: pki.ca.cert });
  after.socket.destroy();
  t.not(after.fingerprint, before.fingerprint, 'new TLS connections get the renewed certificate');
  const afterHttps = await handshake(httpPort, { ca: pki.ca.cert });
  afterHttps.socket.destroy();
  t.equal(afterHttps.fingerprint, after.fingerprint, 'so do new HTTPS/WSS connections');

  await tlsClient.publishAsync('news', 'after reload', { qos: 1 });
  await tlsSeen.waitForCount(1);
  await wssSeen.waitForCount(1);
  t.ok(tlsClient.connected && wssClient.connected, 'connections made before the reload carry on');

  // A key that does not belong to the certificate: refused, the renewed one stays.
  await copyFile(pki.server.keyFile, keyFile);
  const refused = daemon.reload(daemon.config);
  t.match(refused.failed, [
    { key: 'tls.keyFile', code: 'EDGEMQTT_TLS_INVALID', file: keyFile },
    { key: 'http.tls.keyFile', code: 'EDGEMQTT_TLS_INVALID', file: keyFile },
  ]);
  t.same(refused.applied, []);
  const still = await handshake(tlsPort, { ca: pki.ca.cert });
  still.socket.destroy();
  t.equal(still.fingerprint, after.fingerprint, 'handshakes still use the last good certificate');
  t.ok(log.find(/^reload: tls\.keyFile refused/), 'the refusal is logged');
});

t.test('unusable certificate settings stop the start with a code', async (t) => {
  const pki = await makePki(t);
  t.throws(() => validateConfig({ tls: { enabled: true } }), { code: 'EDGEMQTT_CONFIG_INVALID', problems: [/^tls\.certFile: /, /^tls\.keyFile: /] });
  t.throws(() => validateConfig({ http: { tls: { enabled: true, certFile: 'a', keyFile: 'b', requireClientCert: true } } }), {
    code: 'EDGEMQTT_CONFIG_INVALID',
    problems: [/^http\.tls\.caFile: /],
  });
  const missing = await startSecureDaemon(t, { tls: tlsSection(pki, { certFile: '/nonexistent/server.crt' }) }, { start: false });
  await t.rejects(missing.daemon.start(), { code: 'EDGEMQTT_TLS_INVALID', file: '/nonexistent/server.crt' });
  t.same(missing.daemon.addresses(), {}, 'nothing stays bound');
  const other = await pki.issue('other', 'localhost', { usage: 'server' });
  const mismatched = await startSecureDaemon(t, { tls: tlsSection(pki, { keyFile: other.keyFile }) }, { start: false });
  await t.rejects(mismatched.daemon.start(), { code: 'EDGEMQTT_TLS_INVALID', file: other.keyFile });

  const encryptedKey = await pki.encryptKey(pki.server, 'open sesame');
  const wrong = await startSecureDaemon(t, { tls: tlsSection(pki, { keyFile: encryptedKey, keyPassphrase: 'nope' }) }, { start: false });
  await t.rejects(wrong.daemon.start(), { code: 'EDGEMQTT_TLS_INVALID', file: encryptedKey }, 'a wrong passphrase');
  const right = await startSecureDaemon(t, { tls: tlsSection(pki, { keyFile: encryptedKey, keyPassphrase: 'open sesame' }) });
  t.equal(redactConfig(right.daemon.config).tls.keyPassphrase, '[redacted]', 'the passphrase is a secret: print-config redacts it');
  t.notOk(right.log.raw.includes('open sesame'), 'and no log line carries it');
  const session = await handshake(right.tlsPort, { ca: pki.ca.cert });
  session.socket.destroy();
  t.ok(session.fingerprint, 'an encrypted key with its passphrase works');
});
