/**
 * The PUBLISH and PUBACK bytes the seam writes in one Buffer
 * (src/broker/aedes-seam/packet-encoding.ts) against what mqtt-packet's
 * writeToStream, as aedes loads it, writes for the same packet; and the
 * shapes left to mqtt-packet.
 */
import t from 'tap';
import { createRequire } from 'node:module';
import { encodePublish, encodePuback, type EncodablePacket } from '../src/broker/aedes-seam/packet-encoding.js';

type WriteToStream = (packet: object, stream: object, options?: object) => boolean;
// The mqtt-packet aedes writes with, resolved from aedes' location; nothing in this process hooks it.
const { writeToStream } = createRequire(createRequire(import.meta.url).resolve('aedes'))('mqtt-packet') as { writeToStream: WriteToStream };

/** What mqtt-packet writes for `packet`, all its chunks joined. */
function mqttPacketBytes(packet: object, version: number | undefined): Buffer {
  const chunks: Buffer[] = [];
  const stream = {
    write(chunk: Buffer | string): boolean {
      chunks.push(Buffer.from(chunk));
      return true;
    },
    destroy(error: Error): void {
      throw error;
    },
  };
  writeToStream(packet, stream, version === undefined ? undefined : { protocolVersion: version });
  return Buffer.concat(chunks);
}

const topics = ['a', 'bench/qos1', '', 'ünïcødé/トピック', 'x'.repeat(300)];
const payloads: unknown[] = [Buffer.from('hello'), Buffer.alloc(0), undefined, null, 'text ü', '', Buffer.alloc(200, 7), Buffer.alloc(20_000, 1)];

t.test('a PUBLISH is written as mqtt-packet writes it, at every level, QoS, flag, topic and payload taken', async (t) => {
  let compared = 0;
  for (const version of [undefined, 3, 4, 5]) {
    for (const qos of [0, 1, 2]) {
      for (const topic of topics) {
        for (const payload of payloads) {
          for (const [dup, retain] of [[false, false], [true, false], [false, true], [true, true], [1, 0]] as const) {
            const packet: EncodablePacket = { cmd: 'publish', topic, payload, qos, dup, retain, messageId: qos > 0 ? 1 + ((compared * 257) % 65_535) : undefined };
            const ours = encodePublish(packet, version);
            if (ours === undefined) {
              t.fail(`not encoded: ${JSON.stringify({ version, qos, topic, dup, retain })}`);
              continue;
            }
            t.same(ours, mqttPacketBytes(packet, version), `${version} qos ${qos} ${JSON.stringify(topic).slice(0, 20)}`);
            compared++;
          }
        }
      }
    }
  }
  t.ok(compared > 500, `${compared} packets compared`);
});

t.test('a PUBLISH with identifier 0 or 65535, or QoS 0 carrying one, is written as mqtt-packet writes it', async (t) => {
  for (const packet of [
    { cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 1, messageId: 0 },
    { cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 2, messageId: 65_535 },
    { cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 0, messageId: 42 },
  ]) {
    t.same(encodePublish(packet, 4), mqttPacketBytes(packet, 4));
  }
});

t.test('PUBLISH shapes left to mqtt-packet', async (t) => {
  const plain = { cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 1, messageId: 7 };
  t.equal(encodePublish({ ...plain, properties: { userProperties: { a: 'b' } } }, 5), undefined, 'MQTT 5 properties');
  t.equal(encodePublish({ ...plain, properties: {} }, 5), undefined, 'an empty MQTT 5 properties object');
  t.same(encodePublish({ ...plain, properties: { userProperties: { a: 'b' } } }, 4), mqttPacketBytes({ ...plain, properties: { userProperties: { a: 'b' } } }, 4), 'below 5 properties are not written');
  t.equal(encodePublish({ ...plain, topic: Buffer.from('t') }, 4), undefined, 'a Buffer topic');
  t.equal(encodePublish({ ...plain, payload: new Uint8Array([1, 2]) }, 4), undefined, 'a payload that is not a Buffer');
  t.equal(encodePublish({ ...plain, messageId: undefined }, 4), undefined, 'QoS 1 without identifier');
  t.equal(encodePublish({ ...plain, messageId: 70_000 }, 4), undefined, 'an identifier over 65535');
  t.equal(encodePublish({ ...plain, qos: 3 }, 4), undefined, 'QoS 3');
  t.equal(encodePublish({ ...plain, topic: 'x'.repeat(70_000) }, 4), undefined, 'a topic longer than a string field holds');
});

t.test('a PUBACK is written as mqtt-packet writes it; other shapes are left to it', async (t) => {
  for (const version of [undefined, 3, 4]) {
    for (const messageId of [0, 1, 258, 65_535]) {
      const packet = { cmd: 'puback', messageId };
      t.same(encodePuback(packet, version), mqttPacketBytes(packet, version), `level ${version} id ${messageId}`);
    }
  }
  const success5 = { cmd: 'puback', messageId: 9, reasonCode: 0 };
  t.same(encodePuback(success5, 5), mqttPacketBytes(success5, 5), 'MQTT 5, Reason Code 0 and no properties: the short form');
  const aedes5 = { cmd: 'puback', messageId: 9 };
  t.same(encodePuback(aedes5, 5), mqttPacketBytes(aedes5, 5), 'MQTT 5 without a Reason Code, as aedes makes it: mqtt-packet writes Reason Code 0 and a Property Length of 0');
  t.equal(encodePuback(aedes5, 5)?.length, 6);
  t.equal(encodePuback({ cmd: 'puback', messageId: 9, reasonCode: 0x10 }, 5), undefined, 'MQTT 5 with a Reason Code');
  t.equal(encodePuback({ cmd: 'puback', messageId: 9, reasonCode: 0, properties: { reasonString: 'x' } }, 5), undefined, 'MQTT 5 with properties');
  t.equal(encodePuback({ cmd: 'puback' }, 4), undefined, 'without identifier');
});
