/**
 * Checks of UTF-8 strings, topic names and topic filters, for both protocol
 * versions (the clause numbers differ, see clauses.ts). All take the raw
 * bytes: mqtt-packet decodes strings with Buffer#toString, which turns
 * invalid UTF-8 and encoded surrogates into U+FFFD, so by the time aedes sees
 * a topic the evidence is gone.
 */
import { isUtf8 } from 'node:buffer';
import { CLAUSES_3_1_1, type Clauses } from './clauses.js';
import { malformedAs, protocol, type Violation } from './verdict.js';

/** The protocol's own ceiling for a UTF-8 string [MQTT-1.5.3] [MQTT-1.5.4]. */
export const MQTT_MAX_STRING_BYTES = 65_535;

const SLASH = 0x2f;
const PLUS = 0x2b;
const HASH = 0x23;

/**
 * Why `bytes` is not an acceptable UTF-8 encoded string, or null: it must be
 * well-formed UTF-8, which excludes encoded surrogates U+D800..U+DFFF
 * (3.1.1 [MQTT-1.5.3-1], 5.0 [MQTT-1.5.4-1]), and must not contain U+0000
 * ([MQTT-1.5.3-2], [MQTT-1.5.4-2]). MQTT 5 calls either a Malformed Packet.
 */
export function utf8StringProblem(bytes: Uint8Array, clauses: Clauses = CLAUSES_3_1_1): Violation | null {
  if (!isUtf8(bytes)) return malformedAs(clauses.utf8, 'ill-formed UTF-8 (or an encoded UTF-16 surrogate) in a string');
  if (bytes.includes(0)) return malformedAs(clauses.nul, 'U+0000 in a string');
  return null;
}

/** Why `bytes` is not a valid topic filter, or null (3.1.1 [MQTT-4.7.1-2] [MQTT-4.7.1-3], 5.0 [MQTT-4.7.1-1] [MQTT-4.7.1-2]; [MQTT-4.7.3-1]). */
export function topicFilterProblem(bytes: Uint8Array, clauses: Clauses = CLAUSES_3_1_1): Violation | null {
  if (bytes.length === 0) return malformedAs(clauses.empty, 'empty topic filter');
  const problem = utf8StringProblem(bytes, clauses);
  if (problem) return problem;
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i];
    if (byte !== PLUS && byte !== HASH) continue;
    const startsLevel = i === 0 || bytes[i - 1] === SLASH;
    const endsLevel = i === bytes.length - 1 || bytes[i + 1] === SLASH;
    if (byte === HASH && !(startsLevel && i === bytes.length - 1)) {
      return malformedAs(clauses.hash, "'#' must be the last character of a filter, alone in its level");
    }
    if (byte === PLUS && !(startsLevel && endsLevel)) return malformedAs(clauses.plus, "'+' must occupy an entire level");
  }
  return null;
}

/** Whether a topic name contains a wildcard character [MQTT-3.3.2-2] [MQTT-3.3.2-14]. */
export function hasWildcard(bytes: Uint8Array): boolean {
  return bytes.includes(PLUS) || bytes.includes(HASH);
}

/**
 * The levels of the topic name in the first `length` bytes of `bytes` when
 * every byte is ASCII other than U+0000, '+' and '#' (then it is well-formed
 * UTF-8 without a wildcard: utf8StringProblem and hasWildcard have nothing to
 * say); -1 when a byte needs those checks. One pass over the bytes already
 * collected, without the view and the four scans of the full checks, for the
 * topic of every PUBLISH.
 */
export function plainTopicLevels(bytes: Uint8Array, length: number): number {
  let levels = 1;
  for (let i = 0; i < length; i++) {
    const byte = bytes[i] as number;
    if (byte === SLASH) levels++;
    else if (byte >= 0x80 || byte === 0 || byte === PLUS || byte === HASH) return -1;
  }
  return levels;
}

/** Levels of a topic: one more than its '/' separators. */
export function topicLevels(bytes: Uint8Array): number {
  let levels = 1;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === SLASH) levels++;
  return levels;
}

// "$share/" in ASCII.
const SHARE_PREFIX = [0x24, 0x73, 0x68, 0x61, 0x72, 0x65, 0x2f];

/** Whether a filter names a Shared Subscription: it starts with "$share/" [MQTT-4.8.2-1]. */
export function isSharedFilter(bytes: Uint8Array): boolean {
  if (bytes.length < SHARE_PREFIX.length) return false;
  for (let i = 0; i < SHARE_PREFIX.length; i++) if (bytes[i] !== SHARE_PREFIX[i]) return false;
  return true;
}

/**
 * Why a "$share/{ShareName}/{filter}" filter is not well-formed, or null: a
 * ShareName of at least one character [MQTT-4.8.2-1] without '/', '+' or '#',
 * followed by '/' and a topic filter [MQTT-4.8.2-2]. Both are Protocol Errors
 * (4.8.2); the filter after the name is judged as any other.
 */
export function sharedFilterProblem(bytes: Uint8Array, clauses: Clauses): Violation | null {
  const start = SHARE_PREFIX.length;
  let end = start;
  while (end < bytes.length && bytes[end] !== SLASH) {
    if (bytes[end] === PLUS || bytes[end] === HASH) return protocol('MQTT-4.8.2-2', "a ShareName containing '+' or '#'");
    end++;
  }
  if (end === start) return protocol('MQTT-4.8.2-1', 'a Shared Subscription with an empty ShareName');
  if (end === bytes.length) return protocol('MQTT-4.8.2-2', "a ShareName not followed by '/' and a topic filter");
  return topicFilterProblem(bytes.subarray(end + 1), clauses);
}
