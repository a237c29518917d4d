/**
 * The bridge's JetStream publisher (src/bridge/stream-publisher.ts) against a
 * real nats-server -js: many publishes in flight, each answered by its own
 * PubAck; a resent id comes back as a duplicate; and each way an outcome can
 * be unknown (no stream, no answer, a refusal, a closed publisher) is an
 * error, never a success.
 */
import t from 'tap';
import { connect, headers } from '@nats-io/transport-node';
import { DiscardPolicy, jetstreamManager } from '@nats-io/jetstream';
import { JetStreamPublisher, MessageRefusedError, pubAck, type PublishDone } from '../src/bridge/stream-publisher.js';
import { NatsServer, natsClient, natsUnavailable, readStream } from './helpers/nats.js';
import { eventually } from './helpers/mqtt.js';

const unavailable = natsUnavailable();

interface Outcome {
  error: Error | undefined;
  duplicate: boolean;
}

/** Publishes and resolves with what the publisher reported. */
function publishOnce(publisher: JetStreamPublisher, subject: string, data: string, msgId: string): Promise<Outcome> {
  const h = headers();
  h.set('Nats-Msg-Id', msgId);
  return new Promise((resolve) => {
    const done: PublishDone = (error, duplicate) => resolve({ error, duplicate });
    publisher.publish(subject, Buffer.from(data), h, done);
  });
}

t.test('with nats-server', { skip: unavailable }, async (t) => {
  const server = new NatsServer(t);
  await server.start();
  const nc = await natsClient(t, server);
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: 'S', subjects: ['s.>'] });

  t.test('500 publishes in flight at once: each acknowledged, each stored once, in order', async (t) => {
    const publisher = new JetStreamPublisher(nc, { timeoutMs: 5000 });
    const outcomes = await Promise.all(Array.from({ length: 500 }, (_, i) => publishOnce(publisher, 's.a', String(i), `a:${i}`)));
    t.equal(outcomes.filter((o) => o.error === undefined && !o.duplicate).length, 500, 'every one acknowledged, none a duplicate');
    t.equal(publisher.inflight, 0);
    const stored = await readStream(jsm, 'S');
    t.same(
      stored.map((entry) => entry.data),
      Array.from({ length: 500 }, (_, i) => String(i)),
    );

    const again = await publishOnce(publisher, 's.a', '7', 'a:7');
    t.same(again, { error: undefined, duplicate: true }, 'a resent id is acknowledged as a duplicate');
    t.equal((await jsm.streams.info('S')).state.messages, 500, 'and not stored twice');
    publisher.close();
  });

  t.test('no stream takes the subject: "no responders", an error', async (t) => {
    const publisher = new JetStreamPublisher(nc, { timeoutMs: 5000 });
    const outcome = await publishOnce(publisher, 'nostream.a', 'x', 'n:1');
    t.match(outcome.error?.message, /no responders/);
    publisher.close();
  });

  t.test('nothing answers: an error after the time-out, and the publisher goes on', async (t) => {
    // A core subscriber takes the subject (so no 503) and never replies.
    const silent = nc.subscribe('quiet.>');
    t.teardown(() => silent.unsubscribe());
    const publisher = new JetStreamPublisher(nc, { timeoutMs: 300 });
    const outcomes = await Promise.all([publishOnce(publisher, 'quiet.a', 'x', 'q:1'), publishOnce(publisher, 'quiet.a', 'y', 'q:2')]);
    for (const outcome of outcomes) t.match(outcome.error?.message, /no JetStream acknowledgement within 300 ms/);
    t.equal(publisher.inflight, 0);
    // The publisher still works after its time-outs.
    t.same(await publishOnce(publisher, 's.b', 'after', 'q:3'), { error: undefined, duplicate: false });
    publisher.close();
  });

  t.test('the stream refuses the message: its reason, as an error', async (t) => {
    await jsm.streams.add({ name: 'FULL', subjects: ['full.>'], max_msgs: 1, discard: DiscardPolicy.New });
    const publisher = new JetStreamPublisher(nc, { timeoutMs: 5000 });
    t.same(await publishOnce(publisher, 'full.a', '1', 'f:1'), { error: undefined, duplicate: false });
    const refused = await publishOnce(publisher, 'full.a', '2', 'f:2');
    t.match(refused.error?.message, /JetStream refused the message: maximum messages exceeded \(err_code \d+\)/);
    publisher.close();
  });

  t.test("a message over the stream's max_msg_size: refused for good (MessageRefusedError)", async (t) => {
    await jsm.streams.add({ name: 'SMALL', subjects: ['small.>'], max_msg_size: 100 });
    const publisher = new JetStreamPublisher(nc, { timeoutMs: 5000 });
    const refused = await publishOnce(publisher, 'small.a', 'x'.repeat(200), 'm:1');
    t.ok(refused.error instanceof MessageRefusedError, 'a refusal sending again cannot change');
    t.match(refused.error?.message, /message size exceeds maximum allowed \(err_code 10054\)/);
    const full = await publishOnce(publisher, 'full.a', '3', 'f:3');
    t.notOk(full.error instanceof MessageRefusedError, 'a full stream is not such a refusal: it may take it later');
    t.same(await publishOnce(publisher, 'small.a', 'fits', 'm:2'), { error: undefined, duplicate: false });
    publisher.close();
  });

  t.test('close(): what is in flight fails, and so does what comes after', async (t) => {
    const silent = nc.subscribe('held.>');
    t.teardown(() => silent.unsubscribe());
    const publisher = new JetStreamPublisher(nc, { timeoutMs: 60_000 });
    const waiting = publishOnce(publisher, 'held.a', 'x', 'h:1');
    publisher.close();
    t.match((await waiting).error?.message, /closed/);
    t.match((await publishOnce(publisher, 's.c', 'x', 'h:2')).error?.message, /closed/);
  });
});

t.test('the connection drops: what is in flight fails at once, not at its time-out', { skip: unavailable }, async (t) => {
  const server = new NatsServer(t);
  await server.start();
  const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  t.teardown(() => nc.close());
  await (await jetstreamManager(nc)).streams.add({ name: 'AFTER', subjects: ['after.>'] });
  const silent = nc.subscribe('held.>');
  await nc.flush();
  // Long enough that only the disconnect can end what waits; short enough for the attempts after the restart.
  const publisher = new JetStreamPublisher(nc, { timeoutMs: 2000 });
  const waiting = publishOnce(publisher, 'held.a', 'x', 'd:1');
  await nc.flush();
  await server.kill();
  t.match((await waiting).error?.message, /connection to NATS lost/);
  t.equal(publisher.inflight, 0);
  // nats.js drops what is published while it dials again: refused at once until the reconnect.
  t.match((await publishOnce(publisher, 'held.a', 'y', 'd:2')).error?.message, /not connected to NATS/);
  t.equal(publisher.inflight, 0, 'nothing left waiting for a time-out');
  await server.start();
  // The stream is on disk: it is back with the server.
  let attempt = 0;
  await eventually(async () => (await publishOnce(publisher, 'after.a', 'z', `d:after-${attempt++}`)).error === undefined, 15_000, 'a publish to go through after the reconnect');
  t.pass('publishes go through again after the reconnect');
  silent.unsubscribe();
  publisher.close();
});

t.test('pubAck: what each answer means', async (t) => {
  const json = (value: unknown) => Buffer.from(JSON.stringify(value));
  t.same(pubAck(0, json({ stream: 'S', seq: 3 })), { duplicate: false });
  t.same(pubAck(0, json({ stream: 'S', seq: 3, duplicate: true })), { duplicate: true });
  t.match(pubAck(503, Buffer.alloc(0)).error?.message, /no responders/);
  t.match(pubAck(408, Buffer.alloc(0)).error?.message, /status 408/);
  t.match(pubAck(0, json({ error: { code: 400, err_code: 10060, description: 'expected stream does not match' } })).error?.message, /expected stream does not match \(err_code 10060\)/);
  t.match(pubAck(0, json({ seq: 3 })).error?.message, /without a stream/);
  t.ok(pubAck(0, json({ error: { code: 400, err_code: 10054, description: 'message size exceeds maximum allowed' } })).error instanceof MessageRefusedError);
  t.notOk(pubAck(0, json({ error: { code: 503, err_code: 10077, description: 'maximum messages exceeded' } })).error instanceof MessageRefusedError);
  t.throws(() => pubAck(0, Buffer.from('{not json')), 'unreadable JSON throws (the publisher reports it as an error)');
});
