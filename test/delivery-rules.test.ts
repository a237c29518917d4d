/**
 * Topic matching used by src/broker/delivery-rules.ts to find a client's grant
 * for a topic [MQTT-4.7], and that grant following the client's subscriptions
 * on a real daemon.
 */
import t from 'tap';
import { grantedQoS } from '../src/broker/delivery-rules.js';
import { topicMatches } from '../src/config/topic-filter.js';
import { startDaemon } from './helpers/daemon.js';
import { openClient } from './helpers/mqtt.js';

t.test('topicMatches follows MQTT 3.1.1 topic filter rules', async (t) => {
  const cases: [filter: string, topic: string, matches: boolean][] = [
    ['a/b', 'a/b', true],
    ['a/b', 'a/c', false],
    ['a/+', 'a/b', true],
    ['a/+', 'a/b/c', false],
    ['a/+', 'a', false],
    ['a/+', 'a/', true], // + matches an empty level [MQTT-4.7.1-3]
    ['+/+', '/x', true],
    ['a/+/c', 'a//c', true],
    ['a/#', 'a', true], // # matches the parent level [MQTT-4.7.1-2]
    ['a/#', 'a/b/c', true],
    ['a/#', 'ab', false],
    ['#', 'a/b', true],
    ['#', '$SYS/x', false], // [MQTT-4.7.2-1]
    ['+/x', '$SYS/x', false],
    ['$SYS/#', '$SYS/x/y', true],
    ['$SYS/+/y', '$SYS/x/y', true],
    ['a/b', 'a/b/', false],
  ];
  for (const [filter, topic, matches] of cases) t.equal(topicMatches(filter, topic), matches, `${filter} vs ${topic}`);
});

t.test('topicMatches agrees with matching level by level over split strings, on every pair of a generated set', async (t) => {
  // The plain definition [MQTT-4.7], as the function read before it matched in place.
  const reference = (filter: string, topic: string): boolean => {
    const filterLevels = filter.split('/');
    const topicLevels = topic.split('/');
    if ((filterLevels[0] === '#' || filterLevels[0] === '+') && topic.startsWith('$')) return false;
    for (let i = 0; i < filterLevels.length; i++) {
      if (filterLevels[i] === '#') return true;
      if (i >= topicLevels.length) return false;
      if (filterLevels[i] !== '+' && filterLevels[i] !== topicLevels[i]) return false;
    }
    return filterLevels.length === topicLevels.length;
  };
  const parts = ['', 'a', 'b', 'ab', '$SYS', '+', '#', 'ü'];
  const strings = new Set<string>();
  for (const x of parts) {
    strings.add(x);
    for (const y of parts) {
      strings.add(`${x}/${y}`);
      for (const z of parts) strings.add(`${x}/${y}/${z}`);
    }
  }
  const filters = [...strings].filter((filter) => !/#./.test(filter) && !/[^/]#|#[^/]/.test(filter));
  const topics = [...strings].filter((topic) => !/[+#]/.test(topic));
  let disagreements = 0;
  let matches = 0;
  for (const filter of filters) {
    for (const topic of topics) {
      const expected = reference(filter, topic);
      if (topicMatches(filter, topic) !== expected) {
        disagreements++;
        t.fail(`${JSON.stringify(filter)} vs ${JSON.stringify(topic)}: expected ${expected}`);
      }
      if (expected) matches++;
    }
  }
  t.equal(disagreements, 0, `${filters.length} valid filters × ${topics.length} topics`);
  t.ok(matches > 1000, `${matches} of the pairs match`);
});

t.test('grantedQoS is the highest grant among matching subscriptions', async (t) => {
  const subscriptions = { 'a/#': { qos: 0 as const }, 'a/b': { qos: 2 as const }, 'a/+': { qos: 1 as const } };
  t.equal(grantedQoS(subscriptions, 'a/b'), 2);
  t.equal(grantedQoS(subscriptions, 'a/c'), 1);
  t.equal(grantedQoS(subscriptions, 'a/c/d'), 0);
  t.equal(grantedQoS(subscriptions, 'b'), undefined);
});

for (const others of [0, 6]) {
  // With a few subscriptions the grant is worked out per delivery; with more it is remembered per
  // topic until the subscriptions change (DIRECT_GRANTS in src/broker/delivery-rules.ts).
  t.test(`the delivery QoS follows a client changing its subscriptions, with ${others} others: added, replaced and removed grants all count [MQTT-3.8.4-6] [MQTT-3.3.5-1]`, async (t) => {
    const { mqttUrl } = await startDaemon(t);
    const subscriber = await openClient(t, mqttUrl);
    const publisher = await openClient(t, mqttUrl);
    for (let i = 0; i < others; i++) await subscriber.client.subscribeAsync(`other/${i}`, { qos: 0 });
    let expected = 0;
    const deliveredQoS = async (payload: string): Promise<number | undefined> => {
      await publisher.client.publishAsync('grant/x', payload, { qos: 2 });
      const messages = await subscriber.log.waitForCount(++expected);
      t.equal(messages.at(-1)?.payload, payload, `${payload} arrived`);
      return messages.at(-1)?.packet.qos;
    };
    await subscriber.client.subscribeAsync('grant/#', { qos: 2 });
    t.equal(await deliveredQoS('first'), 2, 'grant/# granted QoS 2');
    await subscriber.client.subscribeAsync('grant/#', { qos: 1 });
    t.equal(await deliveredQoS('replaced'), 1, 'grant/# replaced at QoS 1');
    await subscriber.client.subscribeAsync('grant/+', { qos: 2 });
    t.equal(await deliveredQoS('added'), 2, 'grant/+ added at QoS 2: the highest grant');
    await subscriber.client.unsubscribeAsync('grant/+');
    t.equal(await deliveredQoS('removed'), 1, 'grant/+ removed: back to QoS 1');
    await subscriber.client.subscribeAsync('grant/x', { qos: 0 });
    t.equal(await deliveredQoS('lower added'), 1, 'grant/x added at QoS 0: the highest grant is still 1');
    await subscriber.client.unsubscribeAsync('grant/#');
    t.equal(await deliveredQoS('only the lower'), 0, 'grant/# removed: grant/x alone, QoS 0');
  });
}

for (const protocolVersion of [4, 5] as const) {
  t.test(`MQTT ${protocolVersion === 4 ? '3.1.1' : '5'}: a subscription to the topic itself granted less than an overlapping wildcard does not lower the delivery, live or retained [MQTT-3.3.5-1]`, async (t) => {
    const { mqttUrl } = await startDaemon(t);
    const publisher = await openClient(t, mqttUrl, { protocolVersion });
    await publisher.client.publishAsync('exact/retained', 'kept', { qos: 2, retain: true });
    const subscriber = await openClient(t, mqttUrl, { protocolVersion });
    await subscriber.client.subscribeAsync('exact/+', { qos: 2 });
    await subscriber.client.subscribeAsync('exact/live', { qos: 0 });
    // A retained message comes with each new subscription that matches it [MQTT-3.3.1-6].
    await subscriber.client.subscribeAsync('exact/retained', { qos: 1 });
    await publisher.client.publishAsync('exact/live', 'matches both', { qos: 1 });
    await publisher.client.publishAsync('exact/marker', 'marker', { qos: 1 });
    const messages = await subscriber.log.waitFor((m) => m.some((x) => x.topic === 'exact/marker'), 5000, 'the marker');
    const qosOf = (topic: string) => messages.filter((m) => m.topic === topic).map((m) => m.packet.qos);
    t.same(qosOf('exact/live'), [1], 'the live message once, at the published QoS 1 (exact/+ granted 2, exact/live 0)');
    t.same(qosOf('exact/retained'), [2, 2], 'the retained one at QoS 2 on both SUBSCRIBEs: exact/+ grants 2, exact/retained only 1')
  });
}
