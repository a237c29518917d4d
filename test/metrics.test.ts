/**
 * GET /metrics: scraped by a real Prometheus (Debian's package) and read back
 * through its query API after known traffic over TCP and WebSocket, MQTT
 * 3.1.1 and 5; linted by promtool; moved to its own listener; turned off;
 * other methods refused. Real daemon, real mqtt.js clients, loopback only.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { hashPassword } from '../src/auth/password-file.js';
import { startDaemon, tempDir } from './helpers/daemon.js';
import { connectClient, connectRaw, eventually } from './helpers/mqtt.js';
import { prometheusUnavailable, promtoolBinary, startPrometheus } from './helpers/prometheus.js';

const unavailable = prometheusUnavailable();

/** Client ids and a topic that must never appear in the metrics (labels are bounded sets). */
const SECRET_IDS = ['sensor-tcp-4f1c', 'panel-ws-9a2e', 'gauge-tcp5-77b0'];
const SECRET_TOPIC = 'plant/boiler-room-7/pressure';

t.test('Prometheus scrapes the daemon and reads back what was published', { skip: unavailable }, async (t) => {
  // No $SYS updates: they are retained messages too, and would be counted below.
  const { daemon, mqttUrl, wsUrl, httpPort } = await startDaemon(t, { broker: { sysIntervalSec: 0 } });
  const prometheus = await startPrometheus(t, [`127.0.0.1:${httpPort}`]);

  // Known traffic: TCP 3.1.1 publishes 3 × QoS 0 and 2 × QoS 1; WebSocket 5 publishes 1 × QoS 2;
  // a TCP 5 client stays connected; a fourth client comes and goes.
  const tcp = await connectClient(t, mqttUrl, { clientId: SECRET_IDS[0], protocolVersion: 4 });
  const ws = await connectClient(t, wsUrl, { clientId: SECRET_IDS[1], protocolVersion: 5 });
  await connectClient(t, mqttUrl, { clientId: SECRET_IDS[2], protocolVersion: 5 });
  const passing = await connectClient(t, mqttUrl, { clientId: 'passing-by', protocolVersion: 4 });
  await passing.endAsync();
  for (let i = 0; i < 3; i++) await tcp.publishAsync(SECRET_TOPIC, 'abcd', { qos: 0 });
  for (let i = 0; i < 2; i++) await tcp.publishAsync(SECRET_TOPIC, 'abcdefgh', { qos: 1, retain: i === 1 });
  await ws.publishAsync(SECRET_TOPIC, 'x'.repeat(10), { qos: 2 });

  await prometheus.waitFor('up{job="edgemqtt"}', 1);
  await prometheus.waitFor('edgemqtt_received_messages_total{qos="0"}', 3);
  await prometheus.waitFor('edgemqtt_received_messages_total{qos="1"}', 2);
  await prometheus.waitFor('edgemqtt_received_messages_total{qos="2"}', 1);
  t.equal(await prometheus.query('edgemqtt_received_payload_bytes_total{qos="1"}'), 16, 'payload bytes by QoS');
  t.equal(await prometheus.query('edgemqtt_received_payload_bytes_total{qos="2"}'), 10);
  t.equal(await prometheus.query('edgemqtt_clients_connected{listener="mqtt",protocol="3.1.1"}'), 1, 'TCP 3.1.1: one connected (the other left)');
  t.equal(await prometheus.query('edgemqtt_clients_connected{listener="mqtt",protocol="5"}'), 1, 'TCP 5: one');
  t.equal(await prometheus.query('edgemqtt_clients_connected{listener="http",protocol="5"}'), 1, 'WebSocket 5: one');
  t.equal(await prometheus.query('edgemqtt_connects_total{listener="mqtt",protocol="3.1.1"}'), 2, 'two TCP 3.1.1 connects');
  t.equal(await prometheus.query('sum(edgemqtt_disconnects_total)'), 1, 'one disconnect, whatever its reason');
  t.equal(await prometheus.query('edgemqtt_retained_messages'), 1, 'the retained message');
  t.equal(await prometheus.query('edgemqtt_bridge_state{state="disabled"}'), 1, 'bridge state as a 0/1 series per state');
  t.equal(await prometheus.query('edgemqtt_bridge_state{state="connected"}'), 0);
  t.equal(await prometheus.query('count(edgemqtt_build_info)'), 1, 'build info');
  t.ok(((await prometheus.query('edgemqtt_store_commit_duration_seconds_count')) ?? 0) > 0, 'QoS 1/2 publishes went through group-commit batches');
  t.ok(((await prometheus.query('edgemqtt_store_size_bytes')) ?? 0) > 0, 'the store has a size on disk');
  t.not(await prometheus.query('nodejs_eventloop_lag_seconds'), undefined, 'event-loop lag from the default metrics');
  t.not(await prometheus.query('process_resident_memory_bytes'), undefined, 'process metrics');

  const response = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
  t.equal(response.status, 200);
  t.match(response.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  const text = await response.text();

  const lint = spawnSync(promtoolBinary, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  t.equal(lint.status, 0, `promtool check metrics exits 0: ${lint.stdout}${lint.stderr}`);
  t.equal(`${lint.stdout}${lint.stderr}`.trim(), '', 'with no warnings');

  for (const secret of [...SECRET_IDS, SECRET_TOPIC, 'passing-by', 'boiler']) {
    t.notOk(text.includes(secret), `"${secret}" appears nowhere in the metrics`);
  }
  t.equal(daemon.readiness().ready, true);
});

t.test('GET and HEAD only: other methods get 405 with Allow', async (t) => {
  const { httpUrl } = await startDaemon(t);
  const post = await fetch(`${httpUrl}/metrics`, { method: 'POST', body: 'x' });
  t.equal(post.status, 405);
  t.equal(post.headers.get('allow'), 'GET, HEAD');
  t.match(await post.json(), { error: /GET and HEAD/ });
  const head = await fetch(`${httpUrl}/metrics`, { method: 'HEAD' });
  t.equal(head.status, 200);
  t.equal(await head.text(), '', 'HEAD: headers only');
  t.match(head.headers.get('content-type'), /^text\/plain/);
});

t.test('metrics.path moves the metrics on the HTTP listener', async (t) => {
  const { httpUrl } = await startDaemon(t, { metrics: { path: '/internal/prom' } });
  t.equal((await fetch(`${httpUrl}/metrics`)).status, 404, 'not at the default path');
  const moved = await fetch(`${httpUrl}/internal/prom`);
  t.equal(moved.status, 200);
  t.match(await moved.text(), /^edgemqtt_build_info\{version="\d+\.\d+\.\d+[^"]*"\} 1$/m);
});

t.test('metrics.enabled false: /metrics is 404', async (t) => {
  const { httpUrl, daemon } = await startDaemon(t, { metrics: { enabled: false } });
  const response = await fetch(`${httpUrl}/metrics`);
  t.equal(response.status, 404);
  t.equal(daemon.addresses().metrics, undefined, 'no metrics listener either');
  t.equal((await fetch(`${httpUrl}/healthz`)).status, 200, 'the rest of the HTTP listener works');
});

t.test('metrics.ownListener: served on its own port, in addresses() and readiness; 404 on the HTTP listener', async (t) => {
  const { daemon, httpUrl } = await startDaemon(t, { metrics: { ownListener: { enabled: true, host: '127.0.0.1', port: 0 } } });
  const address = daemon.addresses().metrics;
  t.ok(address && address.port > 0, 'addresses() names the metrics listener');
  const own = await fetch(`http://127.0.0.1:${address!.port}/metrics`);
  t.equal(own.status, 200);
  t.match(await own.text(), /^edgemqtt_clients_connected|^# TYPE edgemqtt_clients_connected gauge$/m);
  t.equal((await fetch(`http://127.0.0.1:${address!.port}/other`)).status, 404, 'it serves the metrics only');
  t.equal((await fetch(`${httpUrl}/metrics`)).status, 404, 'no longer on the HTTP listener');
  t.equal(daemon.readiness().ready, true, 'ready with it bound');
  await daemon.stop();
  t.equal(daemon.addresses().metrics, undefined, 'released on stop');
});

t.test('the metrics listener on a port in use fails the start with a clear error', async (t) => {
  const first = await startDaemon(t, { metrics: { ownListener: { enabled: true, host: '127.0.0.1', port: 0 } } });
  const port = first.daemon.addresses().metrics!.port;
  await t.rejects(startDaemon(t, { metrics: { ownListener: { enabled: true, host: '127.0.0.1', port } } }), { code: 'EDGEMQTT_LISTEN_FAILED' });
});

/** The value of one sample in a scrape's text, e.g. sample(text, 'edgemqtt_logins_total{result="success"}'). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

t.test('login failures, limit hits, protocol violations and drops by ACL are counted by their label', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwords');
  await writeFile(passwordFile, `alice:${await hashPassword('right')}\n`, { mode: 0o600 });
  const aclFile = path.join(dir, 'acl');
  await writeFile(aclFile, 'user alice\ntopic readwrite plant/#\n');
  const { mqttUrl, httpUrl } = await startDaemon(t, {
    auth: { passwordFile, aclFile },
    limits: { maxTopicLevels: 4 },
    broker: { sysIntervalSec: 0 },
  });

  await t.rejects(connectClient(t, mqttUrl, { username: 'alice', password: 'wrong' }), 'a wrong password is refused');
  const alice = await connectClient(t, mqttUrl, { username: 'alice', password: 'right' });
  await alice.publishAsync('elsewhere/x', 'denied', { qos: 1 });
  // A topic over limits.maxTopicLevels (the connection may be closed for it: QoS 0, nothing to wait for).
  alice.publish('plant/a/b/c/d/e', 'deep', { qos: 0 });
  // A protocol violation: a second CONNECT on one connection [MQTT-3.1.0-2].
  const raw = await connectRaw(t, mqttUrl);
  raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw-twice', clean: true, keepalive: 0 });
  await raw.waitForPacket('connack');
  raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw-twice', clean: true, keepalive: 0 });
  await raw.waitForClose();

  let text = '';
  await eventually(async () => {
    text = await (await fetch(`${httpUrl}/metrics`)).text();
    const violations = sample(text, 'edgemqtt_protocol_violations_total{rule="MQTT-3.1.0-2"}') ?? 0;
    return violations >= 1 && (sample(text, 'edgemqtt_limit_hits_total{limit="maxTopicLevels"}') ?? 0) >= 1;
  }, 5000, 'the violation and the limit hit to be counted');
  t.equal(sample(text, 'edgemqtt_logins_total{result="bad_credentials"}'), 1, 'the failed login');
  t.equal(sample(text, 'edgemqtt_logins_total{result="success"}'), 1, 'the good one');
  t.equal(sample(text, 'edgemqtt_dropped_messages_total{cause="acl_publish"}'), 1, 'the PUBLISH the ACL denied');
  t.equal(sample(text, 'edgemqtt_limit_hits_total{limit="maxTopicLevels"}'), 1, 'the topic over limits.maxTopicLevels');
  t.equal(sample(text, 'edgemqtt_protocol_violations_total{rule="MQTT-3.1.0-2"}'), 1, 'the second CONNECT, by its clause');
});
