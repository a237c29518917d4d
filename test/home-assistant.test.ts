/**
 * Home Assistant and zigbee2mqtt on edgemqtt, each client connecting exactly
 * the way the real one does, with MQTT 5, logged in, under the ACL the README
 * gives them.
 *
 * Home Assistant's MQTT integration (homeassistant/components/mqtt/client.py
 * and const.py) uses paho-mqtt: protocol MQTTv5, keep-alive 60, a client id of
 * 22 random base62 characters kept for the life of the client object, no
 * CONNECT properties (so no Session Expiry Interval: 0), and paho's default
 * MQTT_CLEAN_START_FIRST_ONLY: Clean Start 1 on the first connection, Clean
 * Start 0 on every reconnect. Its will and birth are on homeassistant/status,
 * "offline" and "online", QoS 0; HA's default leaves them unretained, and
 * its settings let a user retain them, which these tests do (the stronger
 * case: the broker keeps both). It subscribes to the discovery topics
 * homeassistant/+/+/config and homeassistant/+/+/+/config at QoS 0, then to
 * each entity's state and availability topics as discovery creates them,
 * and on every (re)connect subscribes to everything again in one SUBSCRIBE,
 * then publishes its birth. It never sends DISCONNECT on shutdown, so that
 * the broker publishes its will.
 *
 * zigbee2mqtt (lib/mqtt.ts) uses mqtt.js: protocol version 5 when configured
 * (`mqtt.version: 5`), its mqtt.maximum_packet_size as the CONNECT's Maximum
 * Packet Size, a will on zigbee2mqtt/bridge/state {"state":"offline"}
 * retained at QoS 1; after CONNACK it publishes {"state":"online"} there
 * retained, subscribes to zigbee2mqtt/# and (its Home Assistant extension)
 * homeassistant/status, publishes each device's discovery config retained at
 * QoS 1 and device states under zigbee2mqtt/<device>.
 */
import t, { type Test } from 'tap';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import type { IClientOptions, IConnackPacket, MqttClient } from 'mqtt';
import type { ConfigInput } from '../src/config/schema.js';
import { hashPassword } from '../src/auth/password-file.js';
import { tempDir, testConfig, runDaemon } from './helpers/daemon.js';
import { MessageLog, openClient } from './helpers/mqtt.js';

/** The ACL the README's Home Assistant section gives (the password file is made with `edgemqtt passwd add`). */
const ACL = `user homeassistant
topic readwrite homeassistant/#
topic readwrite zigbee2mqtt/#

user zigbee2mqtt
topic readwrite zigbee2mqtt/#
topic readwrite homeassistant/#

user nodered
topic readwrite zigbee2mqtt/#
`;
const USERS = ['homeassistant', 'zigbee2mqtt', 'nodered'];
const password = (user: string): string => `${user}-secret`;

/** zigbee2mqtt's mqtt.maximum_packet_size in these tests (its default is 1 MiB). */
const Z2M_MAXIMUM_PACKET_SIZE = 1024;

const LAMP = 'zigbee2mqtt/living_room_lamp';
const DISCOVERY = {
  'homeassistant/light/0x00158d0001a2b3c4/light/config': {
    name: null,
    unique_id: '0x00158d0001a2b3c4_light_zigbee2mqtt',
    schema: 'json',
    state_topic: LAMP,
    command_topic: `${LAMP}/set`,
    availability: [{ topic: 'zigbee2mqtt/bridge/state', value_template: '{{ value_json.state }}' }],
    brightness: true,
  },
  'homeassistant/sensor/0x00158d0001a2b3c5/temperature/config': {
    unique_id: '0x00158d0001a2b3c5_temperature_zigbee2mqtt',
    device_class: 'temperature',
    unit_of_measurement: '°C',
    state_topic: 'zigbee2mqtt/hallway_sensor',
    value_template: '{{ value_json.temperature }}',
  },
} as const;
type DiscoveryTopic = keyof typeof DISCOVERY;
const DISCOVERY_TOPICS = Object.keys(DISCOVERY).sort() as DiscoveryTopic[];

/** A daemon with a password file and the ACL above; `config` again restarts it on the same store. */
async function brokerConfig(t: Test): Promise<ConfigInput> {
  const dir = tempDir(t, 'edgemqtt-ha-');
  const passwordFile = path.join(dir, 'passwd');
  const aclFile = path.join(dir, 'acl');
  // A cheap scrypt cost keeps the test fast; `edgemqtt passwd` uses the default.
  const lines = await Promise.all(USERS.map(async (user) => `${user}:${await hashPassword(password(user), { N: 1024, r: 8, p: 1 })}`));
  await writeFile(passwordFile, `${lines.join('\n')}\n`);
  await writeFile(aclFile, ACL);
  return testConfig(t, { auth: { allowAnonymous: false, passwordFile, aclFile } });
}


async function connect(t: Test, url: string, options: IClientOptions): Promise<{ client: MqttClient; log: MessageLog; connack: IConnackPacket }> {
  return openClient(t, url, options);
}

/** paho's base62 client id of 22 characters, as HA's MqttClientSetup makes it when none is configured. */
function base62Id(): string {
  const digits = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
  return Array.from({ length: 22 }, () => digits[randomInt(62)]).join('');
}

/**
 * Home Assistant's MQTT client: one object, one client id, Clean Start 1
 * only on its first successful connection (paho MQTT_CLEAN_START_FIRST_ONLY).
 */
class HomeAssistant {
  readonly clientId = base62Id();
  #connected = false;
  client: MqttClient | undefined;
  log: MessageLog | undefined;
  /** Entity topics HA subscribed to after discovery, subscribed again on every reconnect. */
  readonly #entityTopics = new Set<string>();

  /** Connects as paho does, subscribes to everything it tracks in one SUBSCRIBE, then publishes its birth. */
  async connect(t: Test, url: string): Promise<IConnackPacket> {
    const opened = await connect(t, url, {
      protocolVersion: 5,
      clientId: this.clientId,
      clean: !this.#connected,
      keepalive: 60,
      username: 'homeassistant',
      password: password('homeassistant'),
      will: { topic: 'homeassistant/status', payload: Buffer.from('offline'), qos: 0, retain: true },
    });
    this.#connected = true;
    this.client = opened.client;
    this.log = opened.log;
    const filters: Record<string, { qos: 0 }> = {
      'homeassistant/+/+/config': { qos: 0 },
      'homeassistant/+/+/+/config': { qos: 0 },
    };
    for (const topic of this.#entityTopics) filters[topic] = { qos: 0 };
    await opened.client.subscribeAsync(filters);
    await opened.client.publishAsync('homeassistant/status', 'online', { qos: 0, retain: true });
    return opened.connack;
  }

  /** The discovery configs received on this connection, by topic. */
  discovered(): Map<string, { config: Record<string, unknown>; retain: boolean }> {
    const found = new Map<string, { config: Record<string, unknown>; retain: boolean }>();
    for (const m of this.log?.messages ?? []) {
      if (m.topic.startsWith('homeassistant/') && m.topic.endsWith('/config') && m.payload !== '') {
        found.set(m.topic, { config: JSON.parse(m.payload) as Record<string, unknown>, retain: m.packet.retain });
      }
    }
    return found;
  }

  async waitForDiscovery(): Promise<void> {
    await this.log!.waitFor(() => DISCOVERY_TOPICS.every((topic) => this.discovered().has(topic)), 5000, 'the discovery configs');
  }

  /** What discovery makes HA do: subscribe to each entity's state and availability topics. */
  async subscribeEntities(): Promise<void> {
    for (const { config } of this.discovered().values()) {
      if (typeof config.state_topic === 'string') this.#entityTopics.add(config.state_topic);
      for (const { topic } of (config.availability as { topic: string }[] | undefined) ?? []) this.#entityTopics.add(topic);
    }
    await this.client!.subscribeAsync(Object.fromEntries([...this.#entityTopics].map((topic) => [topic, { qos: 0 as const }])));
  }

  /** HA stopping, or its host losing power: the socket goes, no DISCONNECT, so that the will is published. */
  drop(): void {
    this.client!.stream.destroy();
  }
}

/** zigbee2mqtt's MQTT client: connects, announces itself, subscribes, and publishes discovery and states. */
async function zigbee2mqtt(t: Test, url: string): Promise<{ client: MqttClient; log: MessageLog; connack: IConnackPacket }> {
  const opened = await connect(t, url, {
    protocolVersion: 5,
    keepalive: 60,
    username: 'zigbee2mqtt',
    password: password('zigbee2mqtt'),
    will: { topic: 'zigbee2mqtt/bridge/state', payload: Buffer.from('{"state":"offline"}'), qos: 1, retain: true },
    properties: { maximumPacketSize: Z2M_MAXIMUM_PACKET_SIZE },
  });
  const { client } = opened;
  await client.publishAsync('zigbee2mqtt/bridge/state', '{"state":"online"}', { qos: 0, retain: true });
  await client.subscribeAsync({ 'zigbee2mqtt/#': { qos: 0 }, 'homeassistant/status': { qos: 0 } });
  for (const topic of DISCOVERY_TOPICS) await client.publishAsync(topic, JSON.stringify(DISCOVERY[topic]), { qos: 1, retain: true });
  await client.publishAsync(LAMP, '{"state":"OFF","brightness":0}', { qos: 0 });
  // The lamp follows HA's commands, as the real device would through zigbee2mqtt.
  client.on('message', (topic, payload) => {
    if (topic !== `${LAMP}/set`) return;
    const command = JSON.parse(payload.toString()) as { state?: string; brightness?: number };
    client.publish(LAMP, JSON.stringify({ state: command.state ?? 'OFF', brightness: command.brightness ?? 254 }), { qos: 0 });
  });
  return opened;
}

/** HA switches the lamp on; zigbee2mqtt gets the command and HA the new state. */
async function switchLampOn(t: Test, ha: HomeAssistant, what: string): Promise<void> {
  const before = ha.log!.messages.length;
  await ha.client!.publishAsync(`${LAMP}/set`, '{"state":"ON","brightness":200}', { qos: 0 });
  await ha.log!.waitFor((m) => m.slice(before).some((x) => x.topic === LAMP && x.payload.includes('"ON"')), 5000, 'the lamp state ON');
  t.pass(`${what}: HA switched the lamp on through zigbee2mqtt and got its new state`);
}

t.test('Home Assistant gets the retained discovery configs zigbee2mqtt published before it connected, and controls the lamp', async (t) => {
  const broker = await runDaemon(t, await brokerConfig(t));
  const z2m = await zigbee2mqtt(t, broker.url);
  t.equal(z2m.connack.reasonCode, 0, 'zigbee2mqtt logged in with MQTT 5 and a Maximum Packet Size');

  const ha = new HomeAssistant();
  const connack = await ha.connect(t, broker.url);
  t.same([connack.reasonCode, connack.sessionPresent], [0, false], 'HA logged in with MQTT 5; Clean Start 1: Session Present 0 [MQTT-3.2.2-2]');
  await ha.waitForDiscovery();
  const discovered = ha.discovered();
  t.same(
    DISCOVERY_TOPICS.map((topic) => [topic, discovered.get(topic)?.config, discovered.get(topic)?.retain]),
    DISCOVERY_TOPICS.map((topic) => [topic, DISCOVERY[topic], true]),
    'every config, whole, with RETAIN set: the retained messages go to a new subscription (Retain Handling 0) [MQTT-3.3.1-9]',
  );
  await z2m.log.waitFor((m) => m.some((x) => x.topic === 'homeassistant/status' && x.payload === 'online'), 5000, "HA's birth");
  t.pass("zigbee2mqtt received HA's birth message");
  await ha.subscribeEntities();
  await switchLampOn(t, ha, 'live');
  const messages = await ha.log!.waitFor((m) => m.some((x) => x.topic === 'zigbee2mqtt/bridge/state'), 5000, 'the retained availability');
  const availability = messages.find((m) => m.topic === 'zigbee2mqtt/bridge/state');
  t.same([availability?.payload, availability?.packet.retain], ['{"state":"online"}', true], "HA sees zigbee2mqtt's retained availability on subscribing");
});

t.test("HA's birth stays retained; its will is published, and retained, when its connection drops; so is zigbee2mqtt's", async (t) => {
  const broker = await runDaemon(t, await brokerConfig(t));
  const z2m = await zigbee2mqtt(t, broker.url);
  const ha = new HomeAssistant();
  await ha.connect(t, broker.url);
  await ha.waitForDiscovery();
  await ha.subscribeEntities();
  await z2m.log.waitFor((m) => m.some((x) => x.topic === 'homeassistant/status' && x.payload === 'online'), 5000, "HA's birth");

  const late = await connect(t, broker.url, { protocolVersion: 5, username: 'nodered', password: password('nodered') });
  // nodered may not read homeassistant/#: a client of HA's own user checks the retained status instead.
  const statusOf = async (): Promise<[string | undefined, boolean | undefined]> => {
    const probe = await connect(t, broker.url, { protocolVersion: 5, username: 'homeassistant', password: password('homeassistant') });
    await probe.client.subscribeAsync('homeassistant/status', { qos: 0 });
    const [first] = await probe.log.waitForCount(1);
    await probe.client.endAsync();
    return [first?.payload, first?.packet.retain];
  };
  t.same(await statusOf(), ['online', true], 'a client subscribing later gets the retained birth');

  ha.drop();
  await z2m.log.waitFor((m) => m.some((x) => x.topic === 'homeassistant/status' && x.payload === 'offline'), 5000, "HA's will");
  t.pass("zigbee2mqtt received HA's will \"offline\" when HA's socket went without a DISCONNECT (MQTT 5.0 §3.1.2.5)");
  t.same(await statusOf(), ['offline', true], 'the will, Will Retain 1, replaced the birth as the retained status (MQTT 5.0 §3.1.2.7)');

  await ha.connect(t, broker.url);
  await late.client.subscribeAsync('zigbee2mqtt/bridge/state', { qos: 1 });
  await late.log.waitForCount(1);
  z2m.client.stream.destroy();
  await ha.log!.waitFor((m) => m.some((x) => x.topic === 'zigbee2mqtt/bridge/state' && x.payload === '{"state":"offline"}'), 5000, "zigbee2mqtt's will");
  t.pass("HA (subscribed again after its reconnect) received zigbee2mqtt's will: its devices become unavailable");
  await late.log.waitFor((m) => m.some((x) => x.payload === '{"state":"offline"}'), 5000, "zigbee2mqtt's will");
  t.equal(late.log.messages.at(-1)?.packet.qos, 1, "zigbee2mqtt's will went at its QoS 1");
});

t.test('HA reconnects with Clean Start 0 and no Session Expiry: no session was kept, and it gets the retained discovery again', async (t) => {
  const broker = await runDaemon(t, await brokerConfig(t));
  const z2m = await zigbee2mqtt(t, broker.url);
  const ha = new HomeAssistant();
  await ha.connect(t, broker.url);
  await ha.waitForDiscovery();
  await ha.subscribeEntities();
  ha.drop();
  await z2m.log.waitFor((m) => m.some((x) => x.topic === 'homeassistant/status' && x.payload === 'offline'), 5000, "HA's will");

  // paho reconnects the same client object: same id, Clean Start 0, still no Session Expiry Interval.
  const connack = await ha.connect(t, broker.url);
  t.equal(connack.reasonCode, 0, 'accepted');
  t.equal(
    connack.sessionPresent,
    false,
    'Session Present 0: with no Session Expiry Interval the session ended with the connection [MQTT-3.1.2-23] [MQTT-3.2.2-3]',
  );
  await ha.waitForDiscovery();
  t.ok(
    DISCOVERY_TOPICS.every((topic) => ha.discovered().get(topic)?.retain === true),
    'its new SUBSCRIBE brought every retained discovery config again',
  );
  await z2m.log.waitFor((m) => m.filter((x) => x.topic === 'homeassistant/status' && x.payload === 'online').length >= 2, 5000, 'the second birth');
  t.pass('zigbee2mqtt saw HA come back online');
  await switchLampOn(t, ha, 'after the reconnect');
});

t.test('retained discovery, birth and availability survive a restart of the daemon; HA and zigbee2mqtt carry on', async (t) => {
  const config = await brokerConfig(t);
  const first = await runDaemon(t, config);
  const z2m = await zigbee2mqtt(t, first.url);
  const ha = new HomeAssistant();
  await ha.connect(t, first.url);
  await ha.waitForDiscovery();
  await z2m.log.waitFor((m) => m.some((x) => x.topic === 'homeassistant/status' && x.payload === 'online'), 5000, "HA's birth");
  await first.daemon.stop();

  const second = await runDaemon(t, config);
  // A fresh HA (a restarted Home Assistant: a new client, Clean Start 1), before zigbee2mqtt is back.
  const restarted = new HomeAssistant();
  await restarted.connect(t, second.url);
  await restarted.waitForDiscovery();
  const discovered = restarted.discovered();
  t.same(
    DISCOVERY_TOPICS.map((topic) => [discovered.get(topic)?.config, discovered.get(topic)?.retain]),
    DISCOVERY_TOPICS.map((topic) => [DISCOVERY[topic], true]),
    'every discovery config survived the restart, retained',
  );
  await restarted.subscribeEntities();
  // Retained messages for a new subscription follow its SUBACK.
  const messages = await restarted.log!.waitFor((m) => m.some((x) => x.topic === 'zigbee2mqtt/bridge/state'), 5000, 'the retained availability');
  const availability = messages.find((m) => m.topic === 'zigbee2mqtt/bridge/state');
  t.same(availability?.payload, '{"state":"online"}', "zigbee2mqtt's retained availability survived too (its will was not published by the planned stop)");

  const back = await zigbee2mqtt(t, second.url);
  t.equal(back.connack.reasonCode, 0, 'zigbee2mqtt logs in again');
  await switchLampOn(t, restarted, 'after the restart');
});

t.test("a message larger than zigbee2mqtt's Maximum Packet Size is not sent to it, but is to HA [MQTT-3.1.2-24]", async (t) => {
  const broker = await runDaemon(t, await brokerConfig(t));
  const z2m = await zigbee2mqtt(t, broker.url);
  let z2mClosed = false;
  z2m.client.on('close', () => (z2mClosed = true));
  z2m.client.on('error', () => undefined);
  const ha = new HomeAssistant();
  await ha.connect(t, broker.url);
  await ha.waitForDiscovery();
  await ha.subscribeEntities();

  const nodered = await connect(t, broker.url, { protocolVersion: 5, username: 'nodered', password: password('nodered') });
  const big = JSON.stringify({ state: 'ON', note: 'x'.repeat(Z2M_MAXIMUM_PACKET_SIZE * 2) });
  await nodered.client.publishAsync(LAMP, big, { qos: 1 });
  await nodered.client.publishAsync(LAMP, '{"state":"OFF","marker":true}', { qos: 1 });
  await ha.log!.waitFor((m) => m.some((x) => x.payload.includes('"marker"')), 5000, 'the marker at HA');
  t.ok(
    ha.log!.messages.some((m) => m.topic === LAMP && m.payload === big),
    `HA (no Maximum Packet Size) received the ${big.length}-byte message`,
  );

  // The marker arrives: the oversized message before it was discarded for zigbee2mqtt alone (src/broker/flow-control.ts).
  await z2m.log.waitFor((m) => m.some((x) => x.payload.includes('"marker"')), 5000, 'the marker at zigbee2mqtt');
  t.equal(z2mClosed, false, 'zigbee2mqtt stays connected');
  t.same(
    [z2m.log.messages.some((m) => m.payload === big), z2m.log.messages.some((m) => m.payload.includes('"marker"'))],
    [false, true],
    'zigbee2mqtt did not get the oversized message, and got the next one: it was discarded, not queued [MQTT-3.1.2-25]',
  );
});
