/**
 * aedes' lib/write.js and lib/qos-packet.js, which its package exports do not
 * name: loaded by path from aedes' own location, so they are the very
 * modules aedes runs (one instance each: the same URL); and aedes-packet as
 * aedes loads it. For the direct deliveries (direct-deliveries.ts), which
 * write as aedes' deliver0 and deliverQoS do.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Client } from 'aedes';

/** A packet as aedes writes it: an aedes-packet, for QoS 1/2 a QoSPacket with its write callback. */
export type AedesPacket = Record<string, unknown> & { cmd?: string; writeCallback: () => void };
/** lib/write.js: writes `packet` to the client's connection; `done` comes in setImmediate, or after 'drain'. */
export type AedesWrite = (client: Client, packet: object, done: (error: Error | null) => void) => void;
/** lib/qos-packet.js: the copy a client is sent, numbered from the client's own counter unless it carries a packet identifier. */
export type QoSPacketClass = new (original: object, client: Client) => AedesPacket;

/** aedes-packet: a subscriber's copy of a message (aedes' deliver0 makes one per QoS 0 delivery). */
export type PacketClass = new (original: object, broker: unknown) => AedesPacket;

export interface AedesWrites {
  write: AedesWrite;
  QoSPacket: QoSPacketClass;
  Packet: PacketClass;
}

let loaded: Promise<AedesWrites> | undefined;

export function loadAedesWrites(): Promise<AedesWrites> {
  loaded ??= (async () => {
    const main = createRequire(import.meta.url).resolve('aedes');
    const lib = path.join(path.dirname(main), 'lib');
    const [write, qos] = await Promise.all([
      import(pathToFileURL(path.join(lib, 'write.js')).href) as Promise<{ default: AedesWrite }>,
      import(pathToFileURL(path.join(lib, 'qos-packet.js')).href) as Promise<{ default: QoSPacketClass }>,
    ]);
    const Packet = createRequire(main)('aedes-packet') as PacketClass;
    return { write: write.default, QoSPacket: qos.default, Packet };
  })();
  return loaded;
}
