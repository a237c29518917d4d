/**
 * The admin API under /api/v1, against a real daemon with real mqtt.js
 * clients (MQTT 3.1.1 and 5) and plain HTTP requests: who may call it, each
 * endpoint, the errors, and the log line every call leaves.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { IDisconnectPacket } from 'mqtt-packet';
import { createDaemon } from '../src/index.js';
import { isLoopbackAddress, TokenFile } from '../src/admin/access.js';
import { LoginGuard } from '../src/auth/login-limiter.js';
import { loadConfig, validateConfig } from '../src/config/load.js';
import { checkSecurityFiles } from '../src/cli/check-security-files.js';
import { adminFiles, call, OPS, SENSOR, startAdminDaemon, TOKEN } from './helpers/admin.js';
import { testConfig, tempDir } from './helpers/daemon.js';
import { connectClient, eventually, MessageLog, openClient } from './helpers/mqtt.js';
import { connackFrom } from './helpers/security.js';

const version = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

t.test('loopback classification: only this machine is loopback', async (t) => {
  for (const address of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1']) t.ok(isLoopbackAddress(address), address);
  for (const address of ['10.0.0.1', '192.168.1.127', '::ffff:10.0.0.1', 'fe80::1', '128.0.0.1', '', undefined]) {
    t.notOk(isLoopbackAddress(address), String(address));
  }
});

t.test('token file: trimmed, compared whole; an empty or missing file is refused with its code', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'token');
  await writeFile(file, '  s3cret-token \n');
  const token = TokenFile.load(file);
  t.ok(token.matches('s3cret-token'));
  t.notOk(token.matches('s3cret'), 'a prefix is not the token');
  t.notOk(token.matches('s3cret-token '), 'nor is a longer string');
  await writeFile(file, '\n');
  t.throws(() => TokenFile.load(file), { code: 'EDGEMQTT_TOKEN_FILE_INVALID' });
  t.throws(() => TokenFile.load(path.join(dir, 'missing')), { code: 'EDGEMQTT_TOKEN_FILE_INVALID' });
});

t.test('login guard: per address and user, a looser bound per address, blocks listed and lifted', async (t) => {
  let now = 0;
  const guard = new LoginGuard({ burst: 2, refillSec: 10, addressBurst: 4, maxSources: 100, now: () => now });
  guard.recordFailure('10.0.0.9', 'sensor');
  t.same(guard.recordFailure('10.0.0.9', 'sensor'), { blocked: true, retryAfterSec: 10 });
  t.equal(guard.waitSec('10.0.0.9', 'sensor'), 10, 'that user is blocked from that address');
  t.equal(guard.waitSec('10.0.0.9', 'lamp'), 0, 'another user from the same address is not');
  t.equal(guard.waitSec('10.0.0.8', 'sensor'), 0, 'nor the same user from another address');
  guard.recordFailure('10.0.0.9', 'a');
  t.same(guard.recordFailure('10.0.0.9', 'b').blocked, true, 'four failures over many users block the address');
  t.ok(guard.waitSec('10.0.0.9', 'lamp') > 0, 'for every user');
  t.same(
    guard.blocks().map((block) => [block.address, block.user]),
    [
      ['10.0.0.9', null],
      ['10.0.0.9', 'sensor'],
    ],
  );
  t.equal(guard.unblock('10.0.0.9', 'sensor'), 1, 'one user lifted');
  t.equal(guard.unblock('10.0.0.9'), 1, 'then the address');
  t.same(guard.blocks(), []);
  t.equal(guard.waitSec('10.0.0.9', 'sensor'), 0);
  now += 1;
  t.equal(guard.unblock('10.0.0.9'), 0, 'nothing left to lift');
});

t.test('config: the API must name who may call it; users need the password file', async (t) => {
  t.throws(() => validateConfig({ admin: { enabled: true } }), { code: 'EDGEMQTT_CONFIG_INVALID', problems: [/admin\.enabled.*admin\.users or admin\.tokenFile/] });
  t.throws(() => validateConfig({ admin: { enabled: true, users: ['ops'] } }), { code: 'EDGEMQTT_CONFIG_INVALID', problems: [/admin\.users.*auth\.passwordFile/] });
  t.ok(validateConfig({ admin: { enabled: true, tokenFile: '/etc/edgemqtt/admin-token' } }), 'a token file alone is enough');
  t.ok(validateConfig({ admin: { users: ['ops'] } }), 'nothing is checked while the API is off');
  t.ok(
    await loadConfig({ env: { EDGEMQTT_CTL_URL: 'http://127.0.0.1:8080/', EDGEMQTT_CTL_USER: 'ops', EDGEMQTT_CTL_PASSWORD: 'x' } }),
    "ctl's own variables in the environment are not config keys, and no problem",
  );

  const files = await adminFiles(t);
  await writeFile(files.tokenFile, '');
  const daemon = await createDaemon(testConfig(t, { admin: { enabled: true, tokenFile: files.tokenFile } }));
  t.teardown(() => daemon.stop());
  await t.rejects(daemon.start(), { code: 'EDGEMQTT_TOKEN_FILE_INVALID' }, 'an empty token file stops the start');
  t.match(
    checkSecurityFiles(validateConfig({ admin: { enabled: true, tokenFile: files.tokenFile } })),
    [/^admin\.tokenFile: .*admin-token: the file is empty/],
    'check-config reads the token file as the start does',
  );
});

t.test('off unless enabled: /api/v1 is a plain 404', async (t) => {
  const files = await adminFiles(t);
  const { httpUrl } = await startAdminDaemon(t, { admin: { enabled: false, tokenFile: files.tokenFile } });
  const response = await call(httpUrl, 'GET', '/api/v1/status', { token: TOKEN });
  t.equal(response.status, 404);
});

t.test('access: 401 without or with bad credentials, 403 for a user not named, token and admin users allowed; each call logged', async (t) => {
  const { httpUrl, log } = await startAdminDaemon(t);
  const anonymous = await call(httpUrl, 'GET', '/api/v1/status', null);
  t.equal(anonymous.status, 401);
  t.equal(anonymous.headers['www-authenticate'], 'Basic realm="edgemqtt"');
  t.type(anonymous.body.error, 'string', 'errors are JSON');
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { user: OPS.user, password: 'wrong' })).status, 401, 'wrong password');
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { token: 'not-the-token' })).status, 401, 'wrong token');
  const sensor = await call(httpUrl, 'GET', '/api/v1/status', SENSOR);
  t.equal(sensor.status, 403, 'a valid user not in admin.users');
  t.match(sensor.body.error, /admin\.users/);
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', OPS)).status, 200, 'an admin user');
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { token: TOKEN })).status, 200, 'the token');

  const unknown = await call(httpUrl, 'GET', '/api/v1/nothing-here');
  t.equal(unknown.status, 404);
  t.type(unknown.body.error, 'string');
  const wrongMethod = await call(httpUrl, 'DELETE', '/api/v1/status');
  t.equal(wrongMethod.status, 405);
  t.equal(wrongMethod.headers.allow, 'GET');
  t.equal((await call(httpUrl, 'GET', '/api/v1/nothing-here', null)).status, 401, 'refused before anything about the path is told');

  const lines = log.records.filter((record) => record.msg === 'admin API call');
  t.equal(lines.length, 9, 'one line per call');
  t.match(lines[4], { who: 'ops', method: 'GET', path: '/api/v1/status', status: 200, remote: /127\.0\.0\.1/ });
  t.match(lines[5], { who: 'token', status: 200 });
  t.match(lines[3], { who: 'sensor', status: 403 });
  t.match(lines[0], { who: null, status: 401 });
  t.notOk(log.raw.includes(OPS.password) || log.raw.includes(TOKEN), 'no password or token is logged');
});

t.test('clients: listed with filters and pages, shown one by one, 404 when not connected', async (t) => {
  const { httpUrl, mqttUrl } = await startAdminDaemon(t);
  const v5 = await connectClient(t, mqttUrl, { clientId: 'plant/line 1', protocolVersion: 5, keepalive: 30, username: SENSOR.user, password: SENSOR.password });
  const v311 = await connectClient(t, mqttUrl, { clientId: 'boiler', protocolVersion: 4, keepalive: 45, clean: false });
  await connectClient(t, mqttUrl, { clientId: 'alpha', protocolVersion: 4 });
  await v5.subscribeAsync('plant/#', { qos: 1, nl: true, rap: true, rh: 2 });
  await v5.subscribeAsync('alarms', { qos: 0 });
  await v311.subscribeAsync('heating/+/temp', { qos: 1 });
  await v5.publishAsync('plant/status', 'running', { qos: 1 });

  const list = await call(httpUrl, 'GET', '/api/v1/clients');
  t.equal(list.status, 200);
  t.match(list.body, { total: 3, offset: 0, limit: 100 });
  t.same(
    list.body.clients.map((client: { id: string }) => client.id),
    ['alpha', 'boiler', 'plant/line 1'],
    'sorted by id',
  );
  const line1 = list.body.clients[2];
  t.match(line1, {
    id: 'plant/line 1',
    user: 'sensor',
    address: /^127\.0\.0\.1:\d+$/,
    listener: 'mqtt',
    protocol: '5',
    clean: true,
    keepAliveSec: 30,
    subscriptions: 2,
    queued: 0,
    inflight: 0,
    messagesIn: 1,
    bytesIn: 7,
  });
  t.ok(Math.abs(Date.parse(line1.connectedAt) - Date.now()) < 60_000, 'connectedAt is an ISO 8601 time of now');
  t.match(list.body.clients[1], { id: 'boiler', user: null, protocol: '3.1.1', clean: false, keepAliveSec: 45, subscriptions: 1 });

  const ids = async (query: string) => ((await call(httpUrl, 'GET', `/api/v1/clients?${query}`)).body.clients as Array<{ id: string }>).map((c) => c.id);
  t.same(await ids('id=l'), ['alpha', 'boiler', 'plant/line 1'], 'id: substring');
  t.same(await ids('id=line'), ['plant/line 1']);
  t.same(await ids('user=sens'), ['plant/line 1'], 'user: substring; anonymous clients never match');
  t.same(await ids('address=127.0.0.1'), ['alpha', 'boiler', 'plant/line 1']);
  t.same(await ids('address=10.9.9.9'), []);
  const page = await call(httpUrl, 'GET', '/api/v1/clients?limit=1&offset=1');
  t.match(page.body, { total: 3, offset: 1, limit: 1 });
  t.same(page.body.clients.map((c: { id: string }) => c.id), ['boiler']);
  for (const query of ['limit=0', 'limit=1001', 'limit=ten', 'offset=-1']) {
    const bad = await call(httpUrl, 'GET', `/api/v1/clients?${query}`);
    t.equal(bad.status, 400, query);
    t.match(bad.body.error, /must be an integer/);
  }

  const one = await call(httpUrl, 'GET', `/api/v1/clients/${encodeURIComponent('plant/line 1')}`);
  t.equal(one.status, 200, 'an id with / and a space, URL-encoded');
  t.same(one.body.subscriptions, [
    { filter: 'alarms', qos: 0, noLocal: false, retainAsPublished: false, retainHandling: 0 },
    { filter: 'plant/#', qos: 1, noLocal: true, retainAsPublished: true, retainHandling: 2 },
  ]);
  t.same((await call(httpUrl, 'GET', '/api/v1/clients/boiler')).body.subscriptions, [{ filter: 'heating/+/temp', qos: 1 }], 'MQTT 3.1.1: no MQTT 5 options');
  const missing = await call(httpUrl, 'GET', '/api/v1/clients/nobody');
  t.equal(missing.status, 404);
  t.match(missing.body.error, /nobody/);
  t.equal((await call(httpUrl, 'GET', '/api/v1/clients/%E0%A4%A')).status, 400, 'malformed percent-encoding');
});

t.test('disconnect: MQTT 5 clients hear 0x98, the will of a kicked client is published, both counted as kicked', async (t) => {
  const { daemon, httpUrl, mqttUrl, log } = await startAdminDaemon(t);
  const watcher = await connectClient(t, mqttUrl, { clientId: 'watcher' });
  await watcher.subscribeAsync('wills/#', { qos: 1 });
  const wills = new MessageLog(watcher);
  const v5 = await connectClient(t, mqttUrl, { clientId: 'v5-device', protocolVersion: 5 });
  const v311 = await connectClient(t, mqttUrl, { clientId: 'old-device', protocolVersion: 4, will: { topic: 'wills/old-device', payload: Buffer.from('gone'), qos: 1, retain: false } });
  const told = new Promise<IDisconnectPacket>((resolve) => v5.once('disconnect', resolve));
  const closed311 = new Promise<void>((resolve) => v311.once('close', () => resolve()));

  const kicked5 = await call(httpUrl, 'POST', '/api/v1/clients/v5-device/disconnect');
  t.same(kicked5.body, { disconnected: 'v5-device' });
  t.equal((await told).reasonCode, 0x98, 'DISCONNECT with Reason Code 0x98 Administrative action');
  const kicked311 = await call(httpUrl, 'POST', '/api/v1/clients/old-device/disconnect', { token: TOKEN });
  t.equal(kicked311.status, 200);
  await closed311;
  await wills.waitFor((messages) => messages.some((m) => m.topic === 'wills/old-device' && m.payload === 'gone'), 5000, 'the will');
  await eventually(() => daemon.trafficStats().disconnects.kicked === 2, 5000, 'two kicked disconnects');
  t.equal((await call(httpUrl, 'GET', '/api/v1/clients?id=device')).body.total, 0, 'neither is listed any more');
  t.equal((await call(httpUrl, 'POST', '/api/v1/clients/v5-device/disconnect')).status, 404, 'a client not connected: 404');
  t.equal((await call(httpUrl, 'GET', '/api/v1/clients/v5-device/disconnect')).status, 405, 'GET on an action: 405');
  t.ok(log.find('admin API call', (r) => r.path === '/api/v1/clients/old-device/disconnect' && r.who === 'token' && r.status === 200));
});

t.test('sessions: a persistent session deleted (queue and subscriptions), a connected owner kicked first', async (t) => {
  const { daemon, httpUrl, mqttUrl } = await startAdminDaemon(t);
  const options = { clientId: 'meter', protocolVersion: 4 as const, clean: false };
  const meter = await connectClient(t, mqttUrl, options);
  await meter.subscribeAsync('meter/#', { qos: 1 });
  await meter.endAsync();
  const publisher = await connectClient(t, mqttUrl, { clientId: 'publisher' });
  await publisher.publishAsync('meter/reading', '1', { qos: 1 });
  await publisher.publishAsync('meter/reading', '2', { qos: 1 });
  await eventually(() => daemon.storeStats().queuedEntries === 2, 5000, 'two queued messages');

  const deleted = await call(httpUrl, 'DELETE', '/api/v1/sessions/meter');
  t.same(deleted.body, { deleted: 'meter' });
  t.equal(daemon.storeStats().queuedEntries, 0, 'its queue is gone');
  const back = await openClient(t, mqttUrl, options);
  t.equal(back.connack.sessionPresent, false, 'the client finds no session');
  await publisher.publishAsync('meter/reading', '3', { qos: 1 });
  await publisher.publishAsync('marker', 'x', { qos: 1 });
  await back.client.subscribeAsync('marker', { qos: 1 });
  await publisher.publishAsync('marker', 'y', { qos: 1 });
  await back.log.waitFor((messages) => messages.some((m) => m.topic === 'marker'), 5000, 'the marker');
  t.same(back.log.messages.map((m) => m.topic), ['marker'], 'neither the queued messages nor its old subscription are left');

  const closed = new Promise<void>((resolve) => back.client.once('close', () => resolve()));
  const again = await call(httpUrl, 'DELETE', '/api/v1/sessions/meter');
  t.same(again.body, { deleted: 'meter' }, 'connected: kicked, then deleted');
  await closed;
  t.equal(daemon.trafficStats().disconnects.kicked, 1);
  const missing = await call(httpUrl, 'DELETE', '/api/v1/sessions/never-seen');
  t.equal(missing.status, 404);
});

t.test('retained: listed under a filter (text, binary, capped at 4 KiB), cleared as a client would', async (t) => {
  const { httpUrl, mqttUrl } = await startAdminDaemon(t);
  const publisher = await connectClient(t, mqttUrl, { clientId: 'publisher' });
  const big = Buffer.alloc(5000, 'x');
  await publisher.publishAsync('plant/a', 'on', { qos: 1, retain: true });
  await publisher.publishAsync('plant/b', Buffer.from([0xff, 0xfe, 0x00]), { qos: 0, retain: true });
  await publisher.publishAsync('plant/big', big, { qos: 1, retain: true });
  await publisher.publishAsync('office/door', 'closed', { qos: 1, retain: true });
  const watcher = await connectClient(t, mqttUrl, { clientId: 'watcher' });
  const seen = new MessageLog(watcher);
  await watcher.subscribeAsync('plant/#', { qos: 1 });
  await seen.waitForCount(3);

  const listed = await call(httpUrl, 'GET', `/api/v1/retained?filter=${encodeURIComponent('plant/#')}`);
  t.equal(listed.status, 200);
  t.equal(listed.body.total, 3);
  const byTopic = Object.fromEntries(listed.body.messages.map((m: { topic: string }) => [m.topic, m]));
  t.same(byTopic['plant/a'], { topic: 'plant/a', qos: 1, payloadBytes: 2, payload: 'on', payloadBase64: Buffer.from('on').toString('base64') });
  t.match(byTopic['plant/b'], { qos: 0, payloadBytes: 3, payload: null, payloadBase64: Buffer.from([0xff, 0xfe, 0]).toString('base64') }, 'not UTF-8: base64 only');
  t.match(byTopic['plant/big'], { payloadBytes: 5000, payload: 'x'.repeat(4096) }, 'the payload shown is capped at 4 KiB');
  t.equal(Buffer.from(byTopic['plant/big'].payloadBase64, 'base64').length, 4096);
  const limited = await call(httpUrl, 'GET', '/api/v1/retained?filter=%23&limit=2');
  t.equal(limited.body.total, 4, 'total counts every match');
  t.equal(limited.body.messages.length, 2, 'limit bounds the list');
  t.equal((await call(httpUrl, 'GET', '/api/v1/retained')).status, 400, 'filter is required');
  const bad = await call(httpUrl, 'DELETE', `/api/v1/retained?filter=${encodeURIComponent('plant/#/x')}`);
  t.equal(bad.status, 400);
  t.match(bad.body.error, /#/);

  const cleared = await call(httpUrl, 'DELETE', `/api/v1/retained?filter=${encodeURIComponent('plant/#')}`);
  t.same(cleared.body, { cleared: 3 });
  await seen.waitFor((messages) => messages.filter((m) => m.payload === '').length === 3, 5000, 'three empty messages');
  t.same(
    seen.messages.filter((m) => m.payload === '').map((m) => m.topic).sort(),
    ['plant/a', 'plant/b', 'plant/big'],
    'subscribers see the empty retained message a client would send',
  );
  t.same((await call(httpUrl, 'GET', '/api/v1/retained?filter=%23')).body.messages.map((m: { topic: string }) => m.topic), ['office/door'], 'only the others are left');
  const late = await connectClient(t, mqttUrl, { clientId: 'late' });
  const lateSeen = new MessageLog(late);
  await late.subscribeAsync(['plant/#', 'office/#'], { qos: 1 });
  await lateSeen.waitForCount(1);
  t.same(lateSeen.messages.map((m) => m.topic), ['office/door'], 'a new subscriber gets no cleared message');
});

t.test('login blocks: one user locked does not lock another from the same address; the API lists and lifts them', async (t) => {
  const { httpUrl, mqttUrl } = await startAdminDaemon(t, { auth: { allowAnonymous: false, failedLogins: { burst: 2, refillSec: 3600 } } });
  const port = Number(new URL(mqttUrl).port);
  const mqttFrom = async (localAddress: string, login: { user: string; password: string }) => {
    const code = await connackFrom(localAddress, port, login.user, login.password);
    return code === 0 ? 'accepted' : `refused ${code}`;
  };
  t.equal(await mqttFrom('127.0.0.2', { user: SENSOR.user, password: 'bad' }), 'refused 4');
  t.equal(await mqttFrom('127.0.0.2', { user: SENSOR.user, password: 'bad' }), 'refused 4');
  t.equal(await mqttFrom('127.0.0.2', SENSOR), 'refused 5', 'sensor is blocked from 127.0.0.2, right password or not');
  t.equal(await mqttFrom('127.0.0.2', OPS), 'accepted', 'another user from the same address is not');

  const blocks = await call(httpUrl, 'GET', '/api/v1/login-blocks');
  t.match(blocks.body, { blocks: [{ address: '127.0.0.2', user: 'sensor', retryAfterSec: Number }] });
  t.equal(blocks.body.blocks.length, 1);
  t.equal((await call(httpUrl, 'DELETE', '/api/v1/login-blocks')).status, 400, 'address is required');
  t.same((await call(httpUrl, 'DELETE', '/api/v1/login-blocks?address=127.0.0.2&user=sensor')).body, { unblocked: 1 });
  t.equal(await mqttFrom('127.0.0.2', SENSOR), 'accepted', 'the block is lifted');
  t.same((await call(httpUrl, 'GET', '/api/v1/login-blocks')).body, { blocks: [] });

  // Failed API logins count too: the third attempt is refused before any check, right password or not.
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { user: OPS.user, password: 'x' }, '127.0.0.3')).status, 401);
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { user: OPS.user, password: 'y' }, '127.0.0.3')).status, 401);
  const refused = await call(httpUrl, 'GET', '/api/v1/status', OPS, '127.0.0.3');
  t.equal(refused.status, 429);
  t.ok(Number(refused.headers['retry-after']) > 0, 'with Retry-After');
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', OPS, '127.0.0.4')).status, 200, 'from another address: fine');
  t.same((await call(httpUrl, 'DELETE', '/api/v1/login-blocks?address=127.0.0.3', OPS, '127.0.0.4')).body, { unblocked: 1 }, 'every user of the address');
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', OPS, '127.0.0.3')).status, 200);
});

t.test('reload: re-reads the token file (embedded: the current config); status tells version, traffic, store, bridge', async (t) => {
  // No $SYS figures: they are retained messages too, and this counts the test's own.
  const { httpUrl, mqttUrl, files } = await startAdminDaemon(t, { broker: { sysIntervalSec: 0 } });
  await writeFile(files.tokenFile, 'a-new-token\n');
  const reloaded = await call(httpUrl, 'POST', '/api/v1/reload', { token: TOKEN });
  t.equal(reloaded.status, 200);
  t.match(reloaded.body, { applied: ['auth.passwordFile', 'admin.tokenFile'], needsRestart: [] });
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { token: TOKEN })).status, 401, 'the old token no longer works');
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { token: 'a-new-token' })).status, 200, 'the new one does');

  await writeFile(files.tokenFile, '');
  const refused = await call(httpUrl, 'POST', '/api/v1/reload');
  t.match(refused.body, { failed: [{ key: 'admin.tokenFile', code: 'EDGEMQTT_TOKEN_FILE_INVALID' }] }, 'an empty token file is refused');
  t.equal((await call(httpUrl, 'GET', '/api/v1/status', { token: 'a-new-token' })).status, 200, 'and the token in use stays');

  const client = await connectClient(t, mqttUrl, { clientId: 'status-check' });
  await client.publishAsync('x', 'hello', { qos: 1, retain: true });
  const status = await call(httpUrl, 'GET', '/api/v1/status');
  t.match(status.body, {
    version,
    uptimeSec: Number,
    traffic: { connected: [{ listener: 'mqtt', protocol: '3.1.1', count: 1 }], messagesIn: [0, 1, 0] },
    store: { sessions: Number, queuedMessages: 0, retainedMessages: 1, writesFailing: false },
    bridge: { state: 'disabled', outboxDepth: 0 },
  });
});
