/**
 * The connection rate per address (limits.connectRatePerAddressPerSec) and
 * the addresses exempt from it: loopback by default
 * (limits.connectRateExemptLoopback), and the proxies and NAT gateways of
 * limits.connectRateExemptAddresses. Many real mqtt.js clients connect at
 * once, as after a broker restart; clients are bound to other loopback
 * addresses (127.0.0.2, …) to stand for hosts in and out of the list.
 */
import t from 'tap';
import net from 'node:net';
import mqtt, { type IClientOptions } from 'mqtt';
import type { Test } from 'tap';
import { startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { validateConfig } from '../src/index.js';
import { ConfigError } from '../src/errors.js';
import { createAddressMatcher, LOOPBACK_RANGES } from '../src/util/address-list.js';

/** A strict limit, so that a handful of connections shows whether it applies. */
const STRICT = { connectBurstPerAddress: 2, connectRatePerAddressPerSec: 0.1 };

const connectRateHits = (daemon: RunningDaemon) => daemon.daemon.limitsStats().limitHits.connectRate;

/** Connects one mqtt.js client over TCP from `localAddress`; resolves with a CONNACK or the connection closing without one. */
function connectFrom(t: Test, daemon: RunningDaemon, localAddress: string, clientId: string, extra: IClientOptions = {}): Promise<'connack' | 'closed'> {
  const options: IClientOptions = { clientId, reconnectPeriod: 0, connectTimeout: 10_000, ...extra };
  const client = new mqtt.MqttClient(() => net.connect({ host: '127.0.0.1', port: daemon.mqttPort, localAddress }), options);
  t.teardown(() => client.endAsync(true));
  return new Promise((resolve) => {
    client.once('connect', () => resolve('connack'));
    // A refused connection is reset by the broker: mqtt.js reports it as an error, then closes.
    client.on('error', () => {});
    client.once('close', () => resolve('closed'));
  });
}

/** Connects one mqtt.js client over WebSocket from 127.0.0.1. */
function connectWs(t: Test, daemon: RunningDaemon, clientId: string): Promise<'connack' | 'closed'> {
  const client = mqtt.connect(daemon.wsUrl, { clientId, reconnectPeriod: 0, connectTimeout: 10_000 });
  t.teardown(() => client.endAsync(true));
  return new Promise((resolve) => {
    client.once('connect', () => resolve('connack'));
    // A refused connection is reset by the broker: mqtt.js reports it as an error, then closes.
    client.on('error', () => {});
    client.once('close', () => resolve('closed'));
  });
}

const count = (outcomes: string[], outcome: string) => outcomes.filter((o) => o === outcome).length;

t.test('loopback is exempt by default: a burst of 200 TCP and WebSocket connects from 127.0.0.1 all get CONNACK', async (t) => {
  const daemon = await startDaemon(t, { limits: STRICT });
  const outcomes = await Promise.all([
    ...Array.from({ length: 150 }, (_, i) => connectFrom(t, daemon, '127.0.0.1', `tcp-${i}`)),
    ...Array.from({ length: 50 }, (_, i) => connectWs(t, daemon, `ws-${i}`)),
  ]);
  t.equal(count(outcomes, 'connack'), 200, 'all 200 connected');
  t.equal(connectRateHits(daemon), 0, 'no connectRate hit counted');
  t.equal(daemon.daemon.limitsStats().openConnections, 200);
});

t.test('the rest of the loopback range is exempt too (127.0.0.0/8)', async (t) => {
  const daemon = await startDaemon(t, { limits: STRICT });
  const outcomes = await Promise.all(Array.from({ length: 20 }, (_, i) => connectFrom(t, daemon, '127.0.0.9', `c-${i}`)));
  t.equal(count(outcomes, 'connack'), 20);
  t.equal(connectRateHits(daemon), 0);
});

t.test('without the loopback exemption, loopback is limited like any address', async (t) => {
  const daemon = await startDaemon(t, { limits: { ...STRICT, connectRateExemptLoopback: false } });
  const outcomes = await Promise.all(Array.from({ length: 10 }, (_, i) => connectFrom(t, daemon, '127.0.0.1', `c-${i}`)));
  t.equal(count(outcomes, 'connack'), 2, 'the burst of 2 is admitted');
  t.equal(count(outcomes, 'closed'), 8, 'the other 8 are closed without CONNACK');
  t.equal(connectRateHits(daemon), 8);
});

t.test('connectRateExemptAddresses: a listed proxy is not limited, an address outside the list still is', async (t) => {
  const daemon = await startDaemon(t, {
    limits: { ...STRICT, connectRateExemptLoopback: false, connectRateExemptAddresses: ['127.0.0.2', '127.0.1.0/24', 'fd00::/8'] },
  });
  const [proxy, range, other] = await Promise.all([
    Promise.all(Array.from({ length: 50 }, (_, i) => connectFrom(t, daemon, '127.0.0.2', `proxy-${i}`))),
    Promise.all(Array.from({ length: 20 }, (_, i) => connectFrom(t, daemon, '127.0.1.77', `nat-${i}`))),
    Promise.all(Array.from({ length: 10 }, (_, i) => connectFrom(t, daemon, '127.0.0.3', `other-${i}`))),
  ]);
  t.equal(count(proxy, 'connack'), 50, 'all 50 through the listed address connected');
  t.equal(count(range, 'connack'), 20, 'all 20 from the listed range connected');
  t.equal(count(other, 'connack'), 2, 'an unlisted address gets its burst of 2…');
  t.equal(count(other, 'closed'), 8, '…and no more');
  t.equal(connectRateHits(daemon), 8, 'only the unlisted address hit the limit');
});

t.test('exempt addresses still count against limits.maxConnections', async (t) => {
  const daemon = await startDaemon(t, { limits: { maxConnections: 3 } });
  const outcomes = await Promise.all(Array.from({ length: 5 }, (_, i) => connectFrom(t, daemon, '127.0.0.1', `c-${i}`)));
  t.equal(count(outcomes, 'connack'), 3);
  t.equal(daemon.daemon.limitsStats().limitHits.maxConnections, 2);
});

t.test('a bad entry in connectRateExemptAddresses is a config problem naming it', async (t) => {
  const problemsOf = (entries: string[]): readonly string[] => {
    try {
      validateConfig({ limits: { connectRateExemptAddresses: entries } });
      return [];
    } catch (error) {
      if (error instanceof ConfigError) return error.problems;
      throw error;
    }
  };
  t.same(problemsOf(['10.0.0.5', '192.168.0.0/16', '::1', 'fd00::/8', '0.0.0.0/0']), [], 'addresses and ranges of both families are accepted');
  const problems = problemsOf(['10.0.0.5', 'proxy.local', '10.0.0.0/33', 'fd00::/129', '10.0.0.0/x']);
  t.equal(problems.length, 4, problems.join('\n'));
  t.match(problems[0], /^limits\.connectRateExemptAddresses\.1: .*"proxy\.local" is not an IPv4 or IPv6 address/);
  t.match(problems[1], /^limits\.connectRateExemptAddresses\.2: .*"\/33" must be a whole number from 0 to 32/);
  t.match(problems[2], /^limits\.connectRateExemptAddresses\.3: .*"\/129" must be a whole number from 0 to 128/);
  t.match(problems[3], /^limits\.connectRateExemptAddresses\.4: .*"\/x"/);
});

t.test('a dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d: IPv4 entries match that form', async (t) => {
  const loopback = createAddressMatcher(LOOPBACK_RANGES);
  t.ok(loopback.has('127.0.0.1'));
  t.ok(loopback.has('::ffff:127.0.0.1'), 'IPv4-mapped loopback');
  t.ok(loopback.has('::1'));
  t.notOk(loopback.has('10.0.0.1'));
  t.notOk(loopback.has('::2'));
  t.notOk(loopback.has(undefined), 'a socket without an address is not exempt');
  const proxies = createAddressMatcher(['10.1.0.0/16', 'fd00::/8']);
  t.ok(proxies.has('::ffff:10.1.2.3'));
  t.ok(proxies.has('fd12::7'));
  t.notOk(proxies.has('10.2.0.1'));
  t.notOk(proxies.has('fe80::1'));
});

t.test('answers stay right when asked again, and past the addresses a matcher remembers', async (t) => {
  const proxies = createAddressMatcher(['10.1.0.0/16']);
  t.ok(proxies.has('10.1.0.7'));
  t.ok(proxies.has('10.1.0.7'), 'asked again');
  t.notOk(proxies.has('10.2.0.7'));
  t.notOk(proxies.has('10.2.0.7'), 'asked again');
  // More distinct addresses than it keeps answers for (4,096), alternating in and out of the range.
  let wrong = 0;
  for (let i = 0; i < 10_000; i++) {
    const inside = i % 2 === 0;
    const address = `10.${inside ? 1 : 3}.${(i >> 8) & 255}.${i & 255}`;
    if (proxies.has(address) !== inside) wrong++;
  }
  t.equal(wrong, 0, 'every answer right');
  t.ok(proxies.has('10.1.0.7'), 'the first address, long forgotten, still matches');
});
