/**
 * The seam's connect path (src/broker/aedes-seam/connect.ts) against aedes
 * as the reference. The canaries show, on plain aedes
 * (test/helpers/plain-aedes.ts), why it exists and what it relies on: aedes
 * reads the stored queue through a stream pipeline for every CONNECT, a
 * clean one with nothing stored included, and its parser's one 'packet'
 * listener is lib/client.js `enqueue`. When one fails after an aedes
 * upgrade, read handlers/connect.js and lib/client.js again. The other
 * tests run the same 3.1.1 CONNECTs against plain aedes and against a
 * broker with the connect path, and compare what a client and the broker's
 * listeners see.
 */
import t from 'tap';
import type { Test } from 'tap';
import type { Aedes, Client } from 'aedes';
import { AedesSeam, installConnectPath } from '../src/broker/aedes-seam/index.js';
import {
  connectPacket,
  installedAedesVersion,
  interceptPersistence,
  payloads,
  publishVia,
  rawClient,
  rawConnected,
  serveAedes,
  startPlainAedes,
  subscribedAndGone,
  until,
  type PlainBroker,
} from './helpers/plain-aedes.js';

const V = installedAedesVersion();

type Options = Record<string, unknown>;
type Kind = 'aedes' | 'connect path';

interface Observed extends PlainBroker {
  /** The broker's connect events, in order. */
  events: string[];
  /** The Client fields handlers/connect.js sets, as they were at 'clientReady', by client id. */
  fields: Map<string, Record<string, unknown>>;
  /** How often the persistence's outgoingStream was called. */
  streams: { count: number };
  /** The connect path only: the client ids it asked `queued` about, one per CONNECT it took to the CONNACK. */
  asked?: string[];
  /** CONNACKs with return code 0 so far (a scenario may clear `events`). */
  accepted: { count: number };
}

const FIELDS = [
  'version',
  '_wireVersion',
  'clean',
  '_cleanStart',
  'sessionExpiryInterval',
  '_connectSessionExpiryInterval',
  '_sessionExpiryClamped',
  'receiveMaximum',
  'maximumPacketSize',
  '_requestProblemInformation',
  '_requestResponseInformation',
  '_authorized',
  '_keepaliveInterval',
  'connecting',
  'connected',
  'connackSent',
] as const;

function observe(aedes: Aedes): Pick<Observed, 'events' | 'fields' | 'streams' | 'accepted'> {
  const events: string[] = [];
  const accepted = { count: 0 };
  aedes.on('connackSent', (packet) => {
    if ((packet as { returnCode?: number }).returnCode === 0) accepted.count++;
  });
  const fields = new Map<string, Record<string, unknown>>();
  const streams = { count: 0 };
  const id = (client: Client) => (client.id?.startsWith('aedes_') ? 'aedes_…' : client.id);
  aedes.on('client', (client) => events.push(`client ${id(client)}`));
  aedes.on('connackSent', (packet, client) => events.push(`connackSent ${id(client)} ${JSON.stringify(packet)}`));
  aedes.on('clientReady', (client) => {
    events.push(`clientReady ${id(client)}`);
    const state = client as unknown as Record<string, unknown>;
    fields.set(id(client)!, Object.fromEntries(FIELDS.map((key) => [key, state[key]])));
  });
  aedes.on('clientError', (client, error) => events.push(`clientError ${id(client)}: ${error.message}`));
  aedes.on('clientDisconnect', (client) => events.push(`clientDisconnect ${id(client)}`));
  interceptPersistence(aedes, {
    outgoingStream: (original, ...args) => {
      streams.count++;
      return original(...args);
    },
  });
  return { events, fields, streams, accepted };
}

/** Plain aedes, or aedes built through the seam with the connect path installed (`queued` handed to it), observed. */
async function start(t: Test, kind: Kind, options: Options = {}, queued?: (clientId: string) => boolean): Promise<Observed> {
  if (kind === 'aedes') {
    let observed!: Pick<Observed, 'events' | 'fields' | 'streams' | 'accepted'>;
    const broker = await startPlainAedes(t, options, (aedes) => (observed = observe(aedes)));
    return { ...broker, ...observed };
  }
  const seam = new AedesSeam(options as never, () => 'allow');
  const { aedes } = seam;
  await aedes.listen();
  const observed = observe(aedes);
  // Without a check of its own, one that records who was asked and answers "maybe queued", so
  // that the connect path reads the stored queue whenever aedes would.
  const asked: string[] = [];
  await installConnectPath(
    seam,
    queued ??
      ((clientId) => {
        asked.push(clientId);
        return true;
      }),
  );
  return { ...(await serveAedes(t, aedes)), ...observed, asked };
}

/** Runs `scenario` on both brokers and checks they answered alike; returns what each saw. */
async function compare(t: Test, options: Options, scenario: (t: Test, broker: Observed) => Promise<unknown>): Promise<void> {
  const seen: Record<Kind, unknown> = { aedes: undefined, 'connect path': undefined };
  for (const kind of ['aedes', 'connect path'] as const) {
    const broker = await start(t, kind, options);
    const answer = await scenario(t, broker);
    seen[kind] = { answer, events: broker.events, fields: Object.fromEntries(broker.fields) };
    if (kind === 'connect path') {
      // The comparison means something only if the connect path, not aedes, took the CONNECTs.
      t.equal(broker.asked?.length, broker.accepted.count, 'every accepted CONNECT went through the connect path');
    }
  }
  t.same(seen['connect path'], seen.aedes, 'the connect path answers as aedes does');
}

const WILL = { topic: 'will/c1', payload: Buffer.from('gone'), qos: 1, retain: false };

t.test(`aedes ${V} reads the stored queue through outgoingStream for every CONNECT, a clean one with nothing stored too (why: connect.ts)`, async (t) => {
  const broker = await start(t, 'aedes');
  const raw = await rawConnected(t, broker.port, 'fresh');
  await raw.ping();
  t.equal(broker.streams.count, 1, 'one stream (and a pipeline) for a CONNECT that has nothing to resend');
});

t.test(`aedes ${V}: a client's parser has one 'packet' listener, lib/client.js enqueue (relied on by connect.ts)`, async (t) => {
  const listeners: string[][] = [];
  await startPlainAedes(t, {}, (aedes) => {
    const handle = aedes.handle.bind(aedes);
    aedes.handle = (conn, request) => {
      const client = handle(conn, request);
      const parser = (client as unknown as { _parser: NodeJS.EventEmitter })._parser;
      listeners.push(parser.rawListeners('packet').map((listener) => listener.name));
      return client;
    };
  }).then((broker) => rawConnected(t, broker.port, 'listened'));
  t.same(listeners, [['enqueue']]);
});

t.test('a clean CONNECT with a will and a keep-alive', async (t) => {
  await compare(t, {}, async (t, broker) => {
    const raw = await rawClient(t, broker.port);
    const before = await raw.connectAndPing(connectPacket('c1', 4, { keepalive: 30, will: WILL }));
    const persistence = (broker.aedes as unknown as { persistence: { getWill(client: { id: string }): Promise<{ topic: string; payload: Buffer } | undefined> } }).persistence;
    const will = await persistence.getWill({ id: 'c1' });
    return { packets: before, will: will && { topic: will.topic, payload: will.payload.toString() } };
  });
});

t.test('an empty client identifier is assigned one [MQTT-3.1.3-6]', async (t) => {
  await compare(t, {}, async (t, broker) => {
    const raw = await rawClient(t, broker.port);
    return raw.connectAndPing(connectPacket('', 4));
  });
});

t.test('a persistent session resumes its subscriptions and stored messages, session present [MQTT-3.2.2-2]', async (t) => {
  await compare(t, {}, async (t, broker) => {
    await subscribedAndGone(t, broker, 'p1', 'stored/#');
    await publishVia(broker.aedes, { topic: 'stored/1', payload: 'while away', qos: 1 });
    broker.events.length = 0;
    const raw = await rawClient(t, broker.port);
    const before = await raw.connectAndPing(connectPacket('p1', 4, { clean: false }));
    // Live messages reach the restored subscription.
    await publishVia(broker.aedes, { topic: 'stored/2', payload: 'live', qos: 1 });
    await raw.waitFor((packets) => payloads(packets).includes('live'), 'the live message');
    return { cmds: before.map((p) => p.cmd), connack: before[0], payloads: payloads(raw.packets) };
  });
});

t.test('Clean Session 1 discards a stored session: no session present, its queue cleared [MQTT-3.1.2-6]', async (t) => {
  await compare(t, {}, async (t, broker) => {
    await subscribedAndGone(t, broker, 'p2', 'stored/#');
    await publishVia(broker.aedes, { topic: 'stored/1', payload: 'while away', qos: 1 });
    const clean = await rawClient(t, broker.port);
    const first = await clean.connectAndPing(connectPacket('p2', 4, { clean: true }));
    clean.send({ cmd: 'disconnect' });
    await clean.waitForClose();
    const again = await rawClient(t, broker.port);
    const second = await again.connectAndPing(connectPacket('p2', 4, { clean: false }));
    return { first, second };
  });
});

t.test('a refused authentication gets its return code, then the close [MQTT-3.2.2-5]', async (t) => {
  const options = {
    authenticate(_client: Client, username: string | undefined, _password: Buffer | undefined, done: (error: Error | null, success: boolean) => void) {
      if (username === 'bad') done(Object.assign(new Error('wrong password'), { returnCode: 4 }), false);
      else if (username === 'nobody') done(null, false);
      else done(null, true);
    },
  };
  await compare(t, options, async (t, broker) => {
    const answers = [];
    for (const username of ['bad', 'nobody']) {
      const raw = await rawClient(t, broker.port);
      raw.send(connectPacket(`u-${username}`, 4, { username, password: Buffer.from('x') }));
      const connack = await raw.next('connack');
      await raw.waitForClose();
      answers.push({ connack, closed: raw.closed });
    }
    await until(() => broker.events.filter((e) => e.startsWith('clientError')).length === 2, 5000, 'both refusals reported');
    return answers;
  });
});

t.test('a second connection with the same client identifier takes the session over [MQTT-3.1.4-2]', async (t) => {
  await compare(t, {}, async (t, broker) => {
    const first = await rawConnected(t, broker.port, 'twice');
    const second = await rawClient(t, broker.port);
    const before = await second.connectAndPing(connectPacket('twice', 4));
    await first.waitForClose();
    await until(() => broker.events.includes('clientDisconnect twice'), 5000, 'the first one gone');
    return { before, firstClosed: first.closed, connected: Object.keys((broker.aedes as unknown as { clients: object }).clients) };
  });
});

t.test('the connect path asks the persistence whether anything is queued, and reads the queue only then', async (t) => {
  const asked: string[] = [];
  let stored = false;
  const broker = await start(t, 'connect path', {}, (clientId) => {
    asked.push(clientId);
    return stored;
  });
  await (await rawConnected(t, broker.port, 'empty')).ping();
  t.same(asked, ['empty']);
  t.equal(broker.streams.count, 0, 'no stream for a client with nothing queued');

  await subscribedAndGone(t, broker, 'kept', 'kept/#');
  await publishVia(broker.aedes, { topic: 'kept/1', payload: 'queued', qos: 1 });
  stored = true;
  const streams = broker.streams.count;
  const raw = await rawClient(t, broker.port);
  const before = await raw.connectAndPing(connectPacket('kept', 4, { clean: false }));
  t.same(payloads(before), ['queued'], 'the stored message is resent when the persistence may hold one');
  t.equal(broker.streams.count, streams + 1);
});

t.test('an MQTT 5 CONNECT is left to aedes', async (t) => {
  const broker = await start(t, 'connect path', {}, () => {
    t.fail('the connect path took an MQTT 5 CONNECT');
    return true;
  });
  await (await rawConnected(t, broker.port, 'five', 5)).ping();
  t.equal(broker.streams.count, 1, "aedes' own emptyQueue ran");
});
