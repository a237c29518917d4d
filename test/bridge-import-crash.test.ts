/**
 * Import survives a crash: site B (the built daemon as a child) imports
 * what site A exports and is SIGKILLed while importing; after its restart
 * on the same data directory, its local persistent subscriber, one mqtt.js
 * client object that reconnects by itself, has every message exactly once:
 * what B had published locally before the crash is not published again
 * (the stream sequence applied is stored in the local publish's batch),
 * and what it had not is.
 */
import t from 'tap';
import mqtt from 'mqtt';
import { startDaemon, tempDir } from './helpers/daemon.js';
import { connectClient, eventually } from './helpers/mqtt.js';
import { NatsServer, natsUnavailable } from './helpers/nats.js';
import { freePorts } from './helpers/nats-cluster.js';
import { CliProcess, staleBuildNote, writeConfig } from './helpers/process.js';
import { DeliveryAudit } from './helpers/delivery-audit.js';

const unavailable = natsUnavailable();
const MESSAGES = 600;

t.test('SIGKILL while importing: the local persistent subscriber gets every message exactly once', { skip: unavailable }, async (t) => {
  const stale = staleBuildNote();
  if (stale) t.comment(`warning: ${stale}`);
  const nats = new NatsServer(t);
  await nats.start();
  const a = await startDaemon(t, {
    bridge: { enabled: true, siteId: 'a', nats: { servers: [nats.url] }, export: [{ filter: 'plant/#' }] },
  });
  await eventually(() => a.daemon.bridgeStats().state === 'connected', 10_000, 'A to connect');

  const dir = tempDir(t, 'edgemqtt-import-crash-');
  const [port] = await freePorts(1);
  const configPath = await writeConfig(dir, {
    dataDir: `${dir}/data`,
    log: { level: 'info' },
    mqtt: { host: '127.0.0.1', port },
    http: { enabled: false },
    bridge: { enabled: true, siteId: 'b', nats: { servers: [nats.url] }, import: [{ filter: 'plant/#', qos: 2 }] },
  });
  const startB = async () => {
    const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir });
    await cli.waitForLog('edgemqtt ready', { timeoutMs: 30_000 });
    await cli.waitForLog('bridge connected to NATS JetStream', { timeoutMs: 30_000 });
    return cli;
  };
  let b = await startB();

  const subscriber = mqtt.connect(`mqtt://127.0.0.1:${port}`, { clientId: 'b-panel', clean: false, reconnectPeriod: 100, keepalive: 0 });
  t.teardown(() => subscriber.endAsync(true));
  subscriber.on('error', () => undefined);
  const audit = new DeliveryAudit(subscriber);
  await new Promise<void>((resolve) => subscriber.once('connect', () => resolve()));
  await subscriber.subscribeAsync('plant/#', { qos: 2 });

  const sensor = await connectClient(t, a.mqttUrl, { clientId: 'sensor' });
  const publishing = (async () => {
    for (let i = 0; i < MESSAGES; i += 20) {
      await Promise.all(Array.from({ length: 20 }, (_, j) => sensor.publishAsync(`plant/p${(i + j) % 2}`, String(i + j), { qos: 2 })));
    }
  })();
  // Kill B in the middle of its import.
  await eventually(() => audit.order.length >= MESSAGES / 4, 30_000, 'B to import a quarter');
  b.signal('SIGKILL');
  await b.waitForExit();
  t.ok(audit.order.length < MESSAGES, `killed while importing (${audit.order.length} of ${MESSAGES} delivered)`);
  await publishing;
  b = await startB();

  const all = Array.from({ length: MESSAGES }, (_, i) => String(i));
  await audit.waitForAll(all, 60_000).catch(() => undefined);
  await sensor.publishAsync('plant/marker', 'end', { qos: 2 });
  await audit.waitForAll(['end'], 20_000).catch(() => undefined);
  t.same(audit.missing(all).slice(0, 10), [], 'every message delivered');
  t.same(audit.duplicates().slice(0, 10), [], 'none twice');
  for (const topic of ['plant/p0', 'plant/p1']) {
    const seqs = audit.order.filter((key) => key !== 'end').map(Number).filter((n) => `plant/p${n % 2}` === topic);
    t.same(seqs, [...seqs].sort((x, y) => x - y), `${topic}: in the order published`);
  }
});
