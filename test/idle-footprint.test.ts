/**
 * What an idle daemon loads: a part the config leaves off is never imported,
 * so it costs no memory. Checked on the CommonJS module cache, where the
 * NATS client's packages land when anything imports them.
 */
import { createRequire } from 'node:module';
import t from 'tap';
import { startDaemon } from './helpers/daemon.js';

const moduleCache = createRequire(import.meta.url).cache;
const loaded = (pkg: string): boolean => Object.keys(moduleCache).some((file) => file.includes(`/node_modules/${pkg}/`));

t.test('the NATS client is loaded only once a bridge is configured', async (t) => {
  const plain = await startDaemon(t);
  t.equal(plain.daemon.bridgeStats().state, 'disabled');
  t.notOk(loaded('@nats-io/transport-node'), 'no bridge configured: the NATS client is not loaded');
  // The same check must see the client when a bridge is configured (NATS
  // need not answer: the bridge starts and keeps trying).
  const bridged = await startDaemon(t, { bridge: { enabled: true, siteId: 'site-a', nats: { servers: ['nats://127.0.0.1:1'] }, export: [{ filter: 'sensors/#' }] } });
  t.not(bridged.daemon.bridgeStats().state, 'disabled');
  t.ok(loaded('@nats-io/transport-node'), 'bridge configured: the NATS client is loaded');
});
