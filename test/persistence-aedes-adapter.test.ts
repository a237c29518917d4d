/**
 * Where the persistence answers aedes differently from aedes-persistence's
 * reference, on purpose (src/persistence/level-persistence.ts, the header's
 * three corrections), checked on the persistence alone; the broker-level
 * effects are in test/mqtt-behaviour.test.ts and test/reconnect-race.test.ts.
 */
import t from 'tap';
import { collect, fakeBroker, harness, publish } from './helpers/store.js';

t.test('one queued copy per client, at min(published QoS, highest matching grant) [MQTT-3.8.4-6] [MQTT-3.3.5-1]', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  const broker = fakeBroker();
  await persistence.setup(broker);
  const packet = publish('plant/a', 'm', { qos: 2, brokerId: broker.id, brokerCounter: 1 });
  // As aedes passes them: one per matching subscription.
  await persistence.outgoingEnqueueCombi(
    [
      { clientId: 'overlapping', qos: 1 },
      { clientId: 'overlapping', qos: 2 },
      { clientId: 'low', qos: 1 },
      { clientId: 'lower', qos: 0 },
    ],
    packet,
  );
  const queued = async (id: string) => (await collect(persistence.outgoingStream({ id }))).map((p) => p.qos);
  t.same(await queued('overlapping'), [2], 'overlapping subscriptions: one copy, at the highest grant');
  t.same(await queued('low'), [1], 'granted QoS 1: queued at QoS 1');
  t.same(await queued('lower'), [0], 'granted QoS 0: queued at QoS 0');
  t.equal(packet.qos, 2, "the publisher's packet is left as published");
  t.equal(persistence.stats().queuedEntries, 3);

  await persistence.outgoingEnqueue({ clientId: 'single' }, publish('plant/a', 'n', { qos: 1, brokerId: broker.id, brokerCounter: 2 }));
  t.same(await queued('single'), [1], 'no grant given: the published QoS');
});

t.test('the publish taps see each message once, as published, whatever the grants', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  const broker = fakeBroker();
  await persistence.setup(broker);
  const seen: unknown[] = [];
  persistence.addPublishTap((packet) => void seen.push(packet.qos));
  await persistence.outgoingEnqueueCombi(
    [
      { clientId: 'a', qos: 1 },
      { clientId: 'b', qos: 2 },
    ],
    publish('plant/a', 'm', { qos: 2, brokerId: broker.id, brokerCounter: 1 }),
  );
  t.same(seen, [2]);
});

t.test('a PUBREL for a message never queued resolves (aedes #1003) [MQTT-4.3.3-1]; other unknown updates still fail', async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  await persistence.setup(fakeBroker());
  await t.resolves(persistence.outgoingUpdate({ id: 'dev' }, { cmd: 'pubrel', messageId: 7 }));
  t.equal(h.messages('PUBREC for an unstored message').length, 1, 'logged at debug');
  t.equal(persistence.stats().queuedEntries, 0, 'nothing is stored for it');
  await t.rejects(persistence.outgoingUpdate({ id: 'dev' }, publish('plant/a', 'm', { messageId: 7, brokerCounter: 9 })), /no such packet/);
});

t.test("outgoingStream: the resend for one of the broker's connections, the queue as stored for anything else", async (t) => {
  const h = harness(t);
  const persistence = await h.open();
  const broker = fakeBroker();
  await persistence.setup(broker);
  await persistence.outgoingEnqueueCombi([{ clientId: 'dev' }], publish('plant/a', 'm', { qos: 1, brokerId: broker.id, brokerCounter: 1 }));

  const [stored] = await collect(persistence.outgoingStream({ id: 'dev' }));
  t.equal(stored?.messageId, undefined, 'as stored: a message never sent has no identifier');

  // An aedes client carries its broker (lib/client.js); emptyQueue streams for it after CONNECT.
  const connection = { id: 'dev', clean: false, broker };
  broker.clients.dev = connection;
  const [resent] = await collect(persistence.outgoingStream(connection));
  t.equal(resent?.messageId, 1, 'the resend hands out a free identifier');
  t.same(await collect(persistence.outgoingStream(connection)), [], 'and sends each message once per connection');
  t.equal(persistence.claimOutgoing(connection, broker.id, 1), undefined, 'a live copy on the same connection stays home');
  const [later] = await collect(persistence.outgoingStream({ id: 'dev', broker }));
  t.match(later, { messageId: 1, dup: true }, 'a later connection gets it again under the same identifier, DUP set');
});
