/**
 * The bridge never stores a message twice in the stream: not after a
 * restart (outbox sequences are never reused, or JetStream would drop new
 * messages as duplicates of old ones), and not after JetStream's duplicate
 * window has passed (the outbox is checked against the stream before a
 * resend the window no longer covers, see src/bridge/reconcile.ts).
 */
import t, { type Test } from 'tap';
import { cp } from 'node:fs/promises';
import path from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { startDaemon, tempDir, type RunningDaemon } from './helpers/daemon.js';
import { connectClient, eventually } from './helpers/mqtt.js';
import { NatsServer, natsClient, natsUnavailable } from './helpers/nats.js';

const unavailable = natsUnavailable();
const STREAM = 'EDGEMQTT';

async function site(t: Test, dataDir: string, nats: NatsServer, duplicateWindowSec = 60): Promise<RunningDaemon> {
  return startDaemon(t, {
    dataDir,
    bridge: {
      enabled: true,
      siteId: 'a',
      nats: { servers: [nats.url] },
      stream: { name: STREAM, duplicateWindowSec, maxAgeSec: 3600 },
      export: [{ filter: 'plant/#' }],
    },
  });
}

async function publish(t: Test, daemon: RunningDaemon, from: number, count: number): Promise<void> {
  const publisher = await connectClient(t, daemon.mqttUrl, { clientId: `pub-${from}` });
  for (let i = from; i < from + count; i++) await publisher.publishAsync('plant/a', String(i), { qos: 1 });
  await publisher.endAsync();
}

async function drained(daemon: RunningDaemon): Promise<void> {
  await eventually(() => daemon.daemon.bridgeStats().state === 'connected' && daemon.daemon.bridgeStats().outbox.depth === 0, 20_000, 'the outbox to empty');
}

async function streamPayloads(t: Test, nats: NatsServer): Promise<string[]> {
  const jsm = await jetstreamManager(await natsClient(t, nats));
  const info = await jsm.streams.info(STREAM);
  const payloads: string[] = [];
  for (let seq = info.state.first_seq; info.state.messages > 0 && seq <= info.state.last_seq; seq++) {
    const message = await jsm.streams.getMessage(STREAM, { seq });
    if (message) payloads.push(new TextDecoder().decode(message.data));
  }
  return payloads;
}

t.test('after a restart with an empty outbox, new messages get new ids: none is dropped as a duplicate', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const dataDir = tempDir(t);
  const first = await site(t, dataDir, nats);
  await publish(t, first, 0, 3);
  await drained(first);
  await first.daemon.stop();
  const second = await site(t, dataDir, nats);
  await publish(t, second, 3, 3);
  await drained(second);
  t.same(await streamPayloads(t, nats), ['0', '1', '2', '3', '4', '5'], 'all six stored, once each');
  t.equal(second.daemon.bridgeStats().duplicates, 0, 'none taken for a duplicate');
});

t.test('entries stored by JetStream but still in the outbox are not stored again after the duplicate window', { skip: unavailable }, async (t) => {
  const nats = new NatsServer(t);
  await nats.start();
  const dataDir = tempDir(t);
  // Messages wait in the outbox while NATS is away.
  const url = nats.url;
  await nats.kill();
  const waiting = await site(t, dataDir, nats, 1);
  await publish(t, waiting, 0, 20);
  t.equal(waiting.daemon.bridgeStats().outbox.depth, 20);
  await waiting.daemon.stop();
  // The same store as a crash would leave it: the messages still in the outbox after JetStream stored them.
  const crashed = tempDir(t);
  await cp(path.join(dataDir, 'store'), path.join(crashed, 'store'), { recursive: true });

  await nats.start();
  t.equal(nats.url, url, 'NATS came back on its address');
  const sent = await site(t, dataDir, nats, 1);
  await drained(sent);
  await sent.daemon.stop();
  // Let the stream's 1 s duplicate window pass: from now on only the outbox check can tell.
  await new Promise((resolve) => setTimeout(resolve, 1500));

  const recovered = await site(t, crashed, nats, 1);
  await drained(recovered);
  t.equal(recovered.daemon.bridgeStats().reconciled, 20, 'all 20 found in the stream and removed without a resend');
  t.equal(recovered.daemon.bridgeStats().exported, 0, 'nothing sent again');
  const payloads = await streamPayloads(t, nats);
  t.same(payloads, Array.from({ length: 20 }, (_, i) => String(i)), 'the stream holds each message once');
});
