import t from 'tap';
import { createServer, connect, type AddressInfo } from 'node:net';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createDaemon } from '../src/index.js';
import { startDaemon, tempDir, testConfig } from './helpers/daemon.js';
import { connectClient } from './helpers/mqtt.js';

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

t.test('embedding: createDaemon → start → addresses → stop', async (t) => {
  const { daemon, mqttPort, httpPort, mqttUrl } = await startDaemon(t);
  t.equal(daemon.state, 'running');
  t.ok(mqttPort > 0 && httpPort > 0, 'both listeners report their bound ports');
  t.same(daemon.readiness(), { ready: true, reasons: [] });
  const client = await connectClient(t, mqttUrl);
  const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));

  await daemon.stop();
  t.equal(daemon.state, 'stopped');
  await closed;
  t.pass('connected clients are closed by stop()');
  t.same(daemon.addresses(), {}, 'no address after stop');
  t.equal(await canConnect(mqttPort), false, 'the MQTT port is released');
  t.equal(await canConnect(httpPort), false, 'the HTTP port is released');
  await daemon.stop();
  t.pass('stop() is idempotent');
});

t.test('stop() during start() waits for start, then releases everything', async (t) => {
  const daemon = await createDaemon(testConfig(t));
  const started = daemon.start();
  // Called while start() is still opening the store, before any listener is bound.
  const stopped = daemon.stop();
  await started;
  await stopped;
  t.equal(daemon.state, 'stopped');
  t.same(daemon.addresses(), {}, 'no listener is left bound after stop resolves');
});

t.test('/healthz and /readyz answer with JSON', async (t) => {
  const { httpUrl } = await startDaemon(t);
  const health = await fetch(`${httpUrl}/healthz`);
  t.equal(health.status, 200);
  t.same(await health.json(), { status: 'ok' });
  const ready = await fetch(`${httpUrl}/readyz`);
  t.equal(ready.status, 200);
  t.same(await ready.json(), { ready: true, reasons: [] });
  t.equal((await fetch(`${httpUrl}/nothing-here`)).status, 404);
  t.equal((await fetch(`${httpUrl}/readyz`, { method: 'POST' })).status, 405);
});

t.test('a port in use fails start with EDGEMQTT_LISTEN_FAILED and releases what had started', async (t) => {
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const busyPort = (blocker.address() as AddressInfo).port;

  const daemon = await createDaemon(testConfig(t, { http: { port: busyPort } }));
  t.teardown(() => daemon.stop());
  const error = await daemon.start().catch((caught: unknown) => caught);
  t.match(error, { code: 'EDGEMQTT_LISTEN_FAILED', message: new RegExp(`http listener cannot bind 127\\.0\\.0\\.1:${busyPort}: EADDRINUSE`) });
  t.equal(daemon.state, 'failed');
  t.same(daemon.addresses(), {}, 'the MQTT listener that had bound is closed again');
});

t.test('an unusable data dir fails start with EDGEMQTT_DATA_DIR', async (t) => {
  const file = path.join(tempDir(t), 'not-a-dir');
  await writeFile(file, '');
  const daemon = await createDaemon(testConfig(t, { dataDir: path.join(file, 'data') }));
  t.teardown(() => daemon.stop());
  await t.rejects(daemon.start(), { code: 'EDGEMQTT_DATA_DIR' });
});

t.test('createDaemon refuses an invalid config, listing the problems', async (t) => {
  await t.rejects(createDaemon({ mqtt: { port: -1 }, http: { nope: true } } as never), {
    code: 'EDGEMQTT_CONFIG_INVALID',
    problems: [/^mqtt\.port: /, 'http.nope: unknown key'],
  });
});

t.test('reload applies the log level and lists what needs a restart', async (t) => {
  const { daemon } = await startDaemon(t);
  const next = { ...daemon.config, log: { level: 'debug' as const }, mqtt: { ...daemon.config.mqtt, port: 1999 } };
  const result = daemon.reload(next);
  t.same(result, { applied: ['log.level'], needsRestart: ['mqtt.port'] });
  t.equal(daemon.logger.level, 'debug');
  t.equal(daemon.config.mqtt.port, 0, 'the running port is unchanged until a restart');
});
