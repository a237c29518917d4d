/**
 * Client identifiers and topic filters that name an inherited property of a
 * plain object (src/broker/wire-keyed-maps.ts): aedes 2.0.0-beta.1 ends the
 * process on them; here they are ordinary names.
 */
import t from 'tap';
import { startDaemon } from './helpers/daemon.js';
import { openClient } from './helpers/mqtt.js';

for (const protocolVersion of [4, 5] as const) {
  t.test(`MQTT ${protocolVersion === 4 ? '3.1.1' : '5'}: client ids and filters like "constructor" are ordinary names`, async (t) => {
    const { mqttUrl } = await startDaemon(t);
    for (const clientId of ['constructor', '__proto__', 'toString']) {
      const { connack } = await openClient(t, mqttUrl, { protocolVersion, clientId });
      t.equal(connack.returnCode ?? connack.reasonCode ?? 0, 0, `client id ${clientId} is accepted`);
    }
    const subscriber = await openClient(t, mqttUrl, { protocolVersion, clientId: 'subscriber' });
    const granted = await subscriber.client.subscribeAsync(['constructor', 'hasOwnProperty'], { qos: 1 });
    t.same(granted.map((g) => [g.topic, g.qos]), [['constructor', 1], ['hasOwnProperty', 1]], 'both filters granted');
    const publisher = await openClient(t, mqttUrl, { protocolVersion, clientId: 'publisher' });
    await publisher.client.publishAsync('constructor', 'c', { qos: 1 });
    await publisher.client.publishAsync('hasOwnProperty', 'h', { qos: 1 });
    const messages = await subscriber.log.waitForCount(2);
    t.same(messages.map((m) => [m.topic, m.payload]).sort(), [['constructor', 'c'], ['hasOwnProperty', 'h']], 'and delivered: the daemon is up');
  });
}
