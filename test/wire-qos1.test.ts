/**
 * A QoS 1 PUBLISH from an MQTT 3.1 or 3.1.1 client, taken to its PUBACK
 * past aedes' handler chain (src/broker/aedes-seam/wire-qos1.ts), against
 * aedes' own handling as the reference (broker.fastPublish: false): the same
 * PUBACKs in the same order, the same deliveries, live and to a persistent
 * session, for PUBLISHes that arrive many to a read.
 */
import t from 'tap';
import type { Test } from 'tap';
import type { Packet } from 'mqtt-packet';
import { connectRaw, MessageLog, openClient } from './helpers/mqtt.js';
import { startDaemon } from './helpers/daemon.js';
import { connect, publish } from './helpers/packets.js';

const BURST = 300;

interface Outcome {
  /** Packet identifiers of the PUBACKs each publisher got, in order. */
  pubacks: Record<string, number[]>;
  /** Payloads each subscriber got, per topic, in order. */
  live: Record<string, string[]>;
  persistent: Record<string, string[]>;
}

function byTopic(log: MessageLog): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const { topic, payload } of log.messages) (out[topic] ??= []).push(payload);
  return out;
}

const pubackIds = (packets: Packet[]): number[] => packets.filter((p) => p.cmd === 'puback').map((p) => (p as { messageId: number }).messageId);

async function script(t: Test, fastPublish: boolean): Promise<Outcome> {
  const daemon = await startDaemon(t, { broker: { fastPublish } });
  const live = await openClient(t, daemon.mqttUrl, { clientId: 'live' });
  await live.client.subscribeAsync('w/#', { qos: 1 });
  // A persistent session, away while the bursts are published: its copies are queued on disk.
  const away = await openClient(t, daemon.mqttUrl, { clientId: 'away', clean: false });
  await away.client.subscribeAsync('w/#', { qos: 1 });
  await away.client.endAsync();

  const pubacks: Record<string, number[]> = {};
  for (const level of [3, 4] as const) {
    const name = `level${level}`;
    const raw = await connectRaw(t, daemon.mqttUrl);
    raw.send(connect({ clientId: name, protocolLevel: level, protocolName: level === 3 ? 'MQIsdp' : 'MQTT' }));
    await raw.waitForPacket('connack');
    // Many PUBLISHes in one write: the broker reads them as one batch, many to a read. A second
    // write after the first is acknowledged is read only once every packet of the first batch
    // has been called back (lib/client.js nextBatch).
    for (let half = 0; half < 2; half++) {
      const frames = Array.from({ length: BURST / 2 }, (_, j) => {
        const i = half * (BURST / 2) + j;
        return publish(`w/${name}/${i % 3}`, { qos: 1, id: i + 1, payload: `${name}-${i}` });
      });
      raw.send(Buffer.concat(frames));
      await raw.waitFor((packets) => pubackIds(packets).length >= (half + 1) * (BURST / 2), 10_000, `${(half + 1) * (BURST / 2)} PUBACKs`);
    }
    pubacks[name] = pubackIds(raw.packets);
  }
  await live.log.waitForCount(2 * BURST, 10_000);
  const back = await openClient(t, daemon.mqttUrl, { clientId: 'away', clean: false });
  await back.log.waitForCount(2 * BURST, 10_000);
  return { pubacks, live: byTopic(live.log), persistent: byTopic(back.log) };
}

t.test('QoS 1 PUBLISHes of 3.1 and 3.1.1 clients, many to a read: the same PUBACKs and deliveries as through aedes', async (t) => {
  const reference = await script(t, false);
  const taken = await script(t, true);
  t.same(taken, reference, 'PUBACKs, live deliveries and the persistent session\'s queue as aedes makes them');
  // What a user would check by hand, so that both paths being wrong the same way fails too.
  const ids = Array.from({ length: BURST }, (_, i) => i + 1);
  t.same(taken.pubacks, { level3: ids, level4: ids }, 'every PUBLISH acknowledged once, in the order sent');
  const expected = (name: string, topic: number) => Array.from({ length: BURST }, (_, i) => i).filter((i) => i % 3 === topic).map((i) => `${name}-${i}`);
  for (const outcome of [taken.live, taken.persistent]) {
    t.same(outcome['w/level4/1'], expected('level4', 1), 'each topic\'s messages arrive whole and in order');
    t.equal(Object.values(outcome).flat().length, 2 * BURST, 'nothing lost, nothing twice');
  }
});
