/**
 * Retained messages for the admin API: listed from the store under a topic
 * filter, and cleared the way a client clears one, by publishing an empty
 * retained message to its topic [MQTT-3.3.1-10]: the store, subscribers and
 * the bridge see the same as from a client.
 */
import type { Readable } from 'node:stream';
import type { OwnMessage } from '../broker/broker.js';

/** Payload bytes shown per message; the rest is left out (payloadBytes tells the whole size). */
export const PAYLOAD_SHOWN_BYTES = 4096;

export interface RetainedView {
  topic: string;
  qos: number;
  payloadBytes: number;
  /** The payload (up to 4 KiB) as text when it is valid UTF-8; else null. */
  payload: string | null;
  /** The payload (up to 4 KiB), base64. */
  payloadBase64: string;
}

export interface RetainedStore {
  createRetainedStream(pattern: string): Readable;
}

interface RetainedPacket {
  topic: string;
  qos?: number;
  payload?: Buffer | Uint8Array | string;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The retained messages under `filter`, sorted by topic: every topic, and the first `limit` in full. */
export async function listRetained(store: RetainedStore, filter: string, limit: number): Promise<{ topics: string[]; messages: RetainedView[] }> {
  const packets: RetainedPacket[] = [];
  for await (const packet of store.createRetainedStream(filter) as AsyncIterable<RetainedPacket>) packets.push(packet);
  packets.sort((a, b) => (a.topic < b.topic ? -1 : a.topic > b.topic ? 1 : 0));
  return { topics: packets.map((packet) => packet.topic), messages: packets.slice(0, limit).map(view) };
}

function view(packet: RetainedPacket): RetainedView {
  const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : Buffer.from(packet.payload ?? []);
  const shown = payload.subarray(0, PAYLOAD_SHOWN_BYTES);
  let text: string | null;
  try {
    // A cut may split a character: decoding only what is whole keeps the text honest.
    text = utf8.decode(shown.subarray(0, wholeCharacters(shown, payload.length > shown.length)));
  } catch {
    text = null;
  }
  return { topic: packet.topic, qos: packet.qos ?? 0, payloadBytes: payload.length, payload: text, payloadBase64: shown.toString('base64') };
}

/** Length of `bytes` without a UTF-8 sequence the cut split (when cut). */
function wholeCharacters(bytes: Buffer, cut: boolean): number {
  if (!cut) return bytes.length;
  let end = bytes.length;
  // Back over continuation bytes (10xxxxxx) to the lead byte of the last sequence.
  let back = 0;
  while (back < 3 && end - back - 1 >= 0 && (bytes[end - back - 1]! & 0xc0) === 0x80) back++;
  const lead = bytes[end - back - 1];
  if (lead === undefined) return end;
  const length = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  if (length > back + 1) end -= back + 1;
  return end;
}

/** Clears each topic by publishing an empty retained message as the broker's own; returns how many. */
export async function clearRetained(
  topics: readonly string[],
  publishOwn: (message: OwnMessage, register: (brokerCounter: number) => void) => Promise<void>,
): Promise<number> {
  let cleared = 0;
  for (const topic of topics) {
    await publishOwn({ topic, payload: Buffer.alloc(0), qos: 0, retain: true }, () => undefined);
    cleared++;
  }
  return cleared;
}
