/**
 * The one hook on what aedes serializes: mqtt-packet's writeToStream, looked
 * up on the module's exports object at each call (lib/write.js
 * `mqtt.writeToStream(packet, client.conn, ...)`). Every packet aedes sends
 * passes there once it is really going out: live deliveries, resent stored
 * queues (handlers/connect.js emptyQueue), retained messages on SUBSCRIBE;
 * a packet for a closed connection never gets there (write() checks first).
 *
 * Per connection, a rewrite of each PUBLISH before it is written may be
 * attached (the broker's Topic Aliases, outgoing-aliases.ts), the function
 * itself in a symbol-keyed field of the connection (cheaper than an entry in
 * a WeakMap); per aedes instance, a tap told of each PUBLISH written to its
 * clients (the traffic counters) and a rewrite of each SUBACK (its Reason
 * Codes, subscribe-outcomes.ts), found through the `client` aedes sets on
 * each connection (lib/client.js) and its `broker`. A stream with neither
 * (and any mqtt.js client in the same process) costs a few property lookups
 * per packet.
 *
 * A PUBLISH or PUBACK in its usual shape is written as one Buffer made
 * here (packet-encoding.ts: the same bytes, without mqtt-packet's chunks,
 * cork and debug calls); other packets and shapes by mqtt-packet itself.
 *
 * Installed once per process, on first use, and kept: mqtt-packet is one
 * module shared by whoever loads it.
 */
import { createRequire } from 'node:module';
import type { Aedes, Client } from 'aedes';
import type { QoS } from './client.js';
import { encodePublish, encodePuback } from './packet-encoding.js';

type WriteToStream = (packet: Record<string, unknown>, stream: object, options?: { protocolVersion?: number }) => boolean;

/** The part of a stream writeToStream writes to. */
interface WriteTarget {
  write(chunk: Buffer): boolean;
}

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

/** Told of each PUBLISH written to the client's connection: its QoS as sent and its payload's size. One function may serve all clients. */
export type PublishTap = (client: Client, qos: QoS, payloadBytes: number) => void;

/** A connection's rewrite of each PUBLISH before it is written: a copy, the packet given never changed. */
export type PublishRewrite = (packet: WrittenPublish) => WrittenPublish;

/** A SUBACK as aedes writes it (handlers/subscribe.js SubAck). */
export interface WrittenSuback extends Record<string, unknown> {
  cmd: string;
  messageId?: number;
  granted: number[];
}

/** A broker's rewrite of each SUBACK to `client` before it is written: the packet given, or a copy. */
export type SubackRewrite = (client: Client, packet: WrittenSuback) => WrittenSuback;

const REWRITE = Symbol('edgemqtt.publishRewrite');
const TAP = Symbol('edgemqtt.publishTap');
const SUBACKS = Symbol('edgemqtt.subackRewrite');
type WithRewrite = { [REWRITE]?: PublishRewrite; client?: { broker?: WithTap } };
type WithTap = { [TAP]?: PublishTap; [SUBACKS]?: SubackRewrite };

/** The tap of the broker whose client `stream` is, if any. */
function tapFor(stream: object): PublishTap | undefined {
  return (stream as WithRewrite).client?.broker?.[TAP];
}
let hooked = false;

function payloadBytes(payload: unknown): number {
  if (typeof payload === 'string') return Buffer.byteLength(payload);
  return payload instanceof Uint8Array ? payload.length : 0;
}

/** A SUBACK through its broker's rewrite, if any (rewriteSubacks). */
function writeSuback(original: WriteToStream, packet: Record<string, unknown>, stream: object, options?: { protocolVersion?: number }): boolean {
  const client = (stream as WithRewrite).client;
  const rewrite = client?.broker?.[SUBACKS];
  return original(rewrite !== undefined ? rewrite(client as Client, packet as WrittenSuback) : packet, stream, options);
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
  const writeToStream = function writeToStream(packet: Record<string, unknown>, stream: object, options?: { protocolVersion?: number }): boolean {
    // mqtt-packet's own reading of the level: 4 without options.
    const version = options ? options.protocolVersion : 4;
    if (packet.cmd === 'puback') {
      const bytes = encodePuback(packet, version);
      // The stream's own answer, where mqtt-packet's confirmation() always says true: a PUBACK to
      // a full socket now makes aedes' write wait for 'drain', so a publisher that never reads is
      // bounded by broker.drainTimeoutSec like any other client that does not read.
      return bytes !== undefined ? (stream as WriteTarget).write(bytes) : original(packet, stream, options);
    }
    if (packet.cmd !== 'publish') return packet.cmd === 'suback' ? writeSuback(original, packet, stream, options) : original(packet, stream, options);
    const rewrite = (stream as WithRewrite)[REWRITE];
    const tap = tapFor(stream);
    const publish = packet as WrittenPublish;
    const sent = rewrite !== undefined ? rewrite(publish) : publish;
    const bytes = encodePublish(sent, version);
    const written = bytes !== undefined ? (stream as WriteTarget).write(bytes) : original(sent, stream, options);
    // After the write: one that threw (a packet mqtt-packet cannot encode) was not sent.
    if (tap !== undefined) tap((stream as { client: Client }).client, publish.qos ?? 0, payloadBytes(publish.payload));
    return written;
  };
  // mqtt.js sets writeToStream.cacheNumbers; it belongs to the original.
  Object.defineProperty(writeToStream, 'cacheNumbers', {
    get: () => original.cacheNumbers,
    set: (value: boolean) => (original.cacheNumbers = value),
  });
  packetModule.writeToStream = writeToStream;
}

/** Rewrites each PUBLISH aedes writes to this client's connection (a copy; the stored packet is never touched). */
export function rewritePublishes(client: Client, rewrite: PublishRewrite): void {
  hookWriteToStream();
  (client.conn as WithRewrite)[REWRITE] = rewrite;
}

/** The rewrite attached to `conn`'s PUBLISH writes, if any (fast-publish.ts writes past mqtt-packet and honours it). */
export function publishRewrite(conn: object): PublishRewrite | undefined {
  return (conn as WithRewrite)[REWRITE];
}

/** The tap of onPublishWritten for `aedes`' clients, if any (fast-publish.ts tells it of what it writes). */
export function publishTap(aedes: Aedes): PublishTap | undefined {
  return (aedes as unknown as WithTap)[TAP];
}

/** Tells `tap` of each PUBLISH aedes writes to the connection of any of its clients. Once per aedes instance, before clients connect. */
export function onPublishWritten(aedes: Aedes, tap: PublishTap): void {
  hookWriteToStream();
  (aedes as unknown as WithTap)[TAP] = tap;
}

/** Rewrites each SUBACK `aedes` writes to its clients (subscribe-outcomes.ts). Once per aedes instance, before clients connect. */
export function rewriteSubacks(aedes: Aedes, rewrite: SubackRewrite): void {
  hookWriteToStream();
  (aedes as unknown as WithTap)[SUBACKS] = rewrite;
}
