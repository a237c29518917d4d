/**
 * The one hook on what aedes serializes: mqtt-packet's writeToStream, looked
 * up on the module's exports object at each call (lib/write.js
 * `mqtt.writeToStream(packet, client.conn, ...)`). Every packet aedes sends
 * passes there once it is really going out: live deliveries, resent stored
 * queues (handlers/connect.js emptyQueue), retained messages on SUBSCRIBE;
 * a packet for a closed connection never gets there (write() checks first).
 *
 * Per connection, two things may be attached: a rewrite of each PUBLISH
 * before it is written (the broker's Topic Aliases, outgoing-aliases.ts),
 * and a tap told of each PUBLISH written (the traffic counters). A stream
 * with neither (and any mqtt.js client in the same process) costs one
 * WeakMap lookup per packet.
 *
 * Installed once per process, on first use, and kept: mqtt-packet is one
 * module shared by whoever loads it.
 */
import { createRequire } from 'node:module';
import type { Client } from 'aedes';
import type { QoS } from './client.js';

type WriteToStream = (packet: Record<string, unknown>, stream: object, options?: object) => boolean;

interface PacketModule {
  writeToStream: WriteToStream & { cacheNumbers?: boolean };
}

/** A PUBLISH as mqtt-packet writes it: the fields read here and by the rewrite. */
export interface WrittenPublish extends Record<string, unknown> {
  cmd: string;
  topic?: unknown;
  qos?: QoS;
  payload?: unknown;
  properties?: Record<string, unknown>;
}

/** Told of each PUBLISH written to the connection: its QoS as sent and its payload's size. */
export type PublishTap = (qos: QoS, payloadBytes: number) => void;

/** What is attached to one connection; both fields always present, so that every entry has one shape. */
interface StreamWrites {
  rewrite: ((packet: WrittenPublish) => WrittenPublish) | undefined;
  tap: PublishTap | undefined;
}

const byStream = new WeakMap<object, StreamWrites>();
let hooked = false;

function payloadBytes(payload: unknown): number {
  if (typeof payload === 'string') return Buffer.byteLength(payload);
  return payload instanceof Uint8Array ? payload.length : 0;
}

function hookWriteToStream(): void {
  if (hooked) return;
  hooked = true;
  // The mqtt-packet aedes loads, resolved from aedes' own location.
  const require = createRequire(createRequire(import.meta.url).resolve('aedes'));
  const packetModule = require('mqtt-packet') as PacketModule;
  const original = packetModule.writeToStream;
  // On its first write, mqtt-packet would build a table of all 65,536
  // packet identifiers as two-byte Buffers (about 6.5 MB of heap, kept for
  // the life of the process) to save one 2-byte allocation per identifier
  // written. Off, an identifier costs that allocation instead.
  original.cacheNumbers = false;
  const writeToStream = function writeToStream(packet: Record<string, unknown>, stream: object, options?: object): boolean {
    const writes = byStream.get(stream);
    if (writes === undefined || packet.cmd !== 'publish') return original(packet, stream, options);
    const publish = packet as WrittenPublish;
    const written = original(writes.rewrite !== undefined ? writes.rewrite(publish) : publish, stream, options);
    // After the write: one that threw (a packet mqtt-packet cannot encode) was not sent.
    if (writes.tap !== undefined) writes.tap(publish.qos ?? 0, payloadBytes(publish.payload));
    return written;
  };
  // mqtt.js sets writeToStream.cacheNumbers; it belongs to the original.
  Object.defineProperty(writeToStream, 'cacheNumbers', {
    get: () => original.cacheNumbers,
    set: (value: boolean) => (original.cacheNumbers = value),
  });
  packetModule.writeToStream = writeToStream;
}

function writesOf(client: Client): StreamWrites {
  hookWriteToStream();
  let writes = byStream.get(client.conn);
  if (writes === undefined) {
    writes = { rewrite: undefined, tap: undefined };
    byStream.set(client.conn, writes);
  }
  return writes;
}

/** Rewrites each PUBLISH aedes writes to this client's connection (a copy; the stored packet is never touched). */
export function rewritePublishes(client: Client, rewrite: (packet: WrittenPublish) => WrittenPublish): void {
  writesOf(client).rewrite = rewrite;
}

/** What is attached to `conn`'s PUBLISH writes, if anything (fast-publish.ts writes past mqtt-packet and honours both). */
export function publishWrites(conn: object): Readonly<StreamWrites> | undefined {
  return byStream.get(conn);
}

/** Tells `tap` of each PUBLISH aedes writes to this client's connection. Call before the CONNACK. */
export function onPublishWritten(client: Client, tap: PublishTap): void {
  writesOf(client).tap = tap;
}
