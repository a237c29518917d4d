/**
 * aedes' lib/ modules (write.js, qos-packet.js, handlers/subscribe.js,
 * constants.js), which its package exports do not name: loaded by path from
 * aedes' own location, so they are the very modules aedes runs (one instance
 * each: the same URL); and aedes-packet as aedes loads it. For the seam's
 * steps that write as aedes does: the direct deliveries
 * (direct-deliveries.ts, as deliver0 and deliverQoS), the resend after
 * CONNECT (resend.ts) and the connect path (connect.ts).
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

/** Where aedes is installed: its main file. */
const aedesMain = (): string => createRequire(import.meta.url).resolve('aedes');

/** One of aedes' lib/ modules, by its path under lib/ (the very module aedes itself runs: the same URL). */
export function loadAedesLib<T>(file: string): Promise<T> {
  return import(pathToFileURL(path.join(path.dirname(aedesMain()), 'lib', file)).href) as Promise<T>;
}

/** aedes-packet as aedes loads it (a CommonJS module: loaded at once). */
export function loadAedesPacket(): PacketClass {
  return createRequire(aedesMain())('aedes-packet') as PacketClass;
}

let loaded: Promise<AedesWrites> | undefined;

export function loadAedesWrites(): Promise<AedesWrites> {
  loaded ??= (async () => {
    const [write, qos] = await Promise.all([
      loadAedesLib<{ default: AedesWrite }>('write.js'),
      loadAedesLib<{ default: QoSPacketClass }>('qos-packet.js'),
    ]);
    return { write: write.default, QoSPacket: qos.default, Packet: loadAedesPacket() };
  })();
  return loaded;
}
