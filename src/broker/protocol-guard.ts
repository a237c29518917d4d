/**
 * Checks every packet a client sends against MQTT 3.1.1 before aedes sees it.
 *
 * aedes 1.2 and mqtt-packet accept much that the standard says must close the
 * connection: mqtt-packet decodes strings with Buffer#toString, which turns
 * invalid UTF-8 and encoded surrogates into U+FFFD, so by the time aedes sees
 * a topic the evidence is gone; nothing checks packet identifiers, empty
 * UNSUBSCRIBEs, Will QoS 3 or a password without a user name. The guard
 * follows packet boundaries in the raw byte stream (as aedes pulls it with
 * `conn.read()`), collects just the bytes it must look at (a PUBLISH's topic
 * and packet identifier; the whole body of CONNECT, SUBSCRIBE, UNSUBSCRIBE,
 * which maxPacketBytes bounds) and decides before the last byte of a packet
 * reaches the parser. Payloads are skipped, never copied.
 *
 * Limits that close the connection are checked here too: packet size (from
 * the fixed header alone), topic length and levels of a PUBLISH or a will.
 */
import { isUtf8 } from 'node:buffer';
import type { Duplex } from 'node:stream';
import { interceptReads } from './aedes-seam.js';

/** The protocol's own ceiling for a UTF-8 string [MQTT-1.5.3]. */
export const MQTT_MAX_STRING_BYTES = 65_535;

export interface ProtocolGuardLimits {
  /** Largest packet, fixed header included. */
  maxPacketBytes: number;
  /** Longest topic name (PUBLISH, will) in UTF-8 bytes; 0 = the protocol's 65,535. */
  maxTopicLengthBytes: number;
  /** Most levels in a topic name; 0 = no limit here. */
  maxTopicLevels: number;
}

/** A limit this guard enforces by closing the connection. */
export type GuardLimit = 'maxPacketSize' | 'maxTopicLength' | 'maxTopicLevels';

export type Violation =
  /** Breaks MQTT 3.1.1; `rule` cites the clause, e.g. `MQTT-2.3.1-1`. */
  | { kind: 'protocol'; rule: string; reason: string }
  /** Within the protocol but over a configured limit. */
  | { kind: 'limit'; limit: GuardLimit; reason: string };

/**
 * What to do with a chunk: close for a violation, or (`withhold`) just keep
 * the bytes after a CONNECT that aedes will refuse. `validBytes` of the chunk
 * (complete, valid packets before the offending one) are still handed over.
 */
export type Verdict = (Violation & { validBytes: number }) | { kind: 'withhold'; validBytes: number };

// Control packet types [MQTT-2.2.1].
const CONNECT = 1;
const PUBLISH = 3;
const PUBACK = 4;
const PUBREC = 5;
const PUBREL = 6;
const PUBCOMP = 7;
const SUBSCRIBE = 8;
const UNSUBSCRIBE = 10;
const PINGREQ = 12;
const DISCONNECT = 14;

const TYPE_NAMES = [
  'reserved (0)', 'CONNECT', 'CONNACK', 'PUBLISH', 'PUBACK', 'PUBREC', 'PUBREL', 'PUBCOMP',
  'SUBSCRIBE', 'SUBACK', 'UNSUBSCRIBE', 'UNSUBACK', 'PINGREQ', 'PINGRESP', 'DISCONNECT', 'reserved (15)',
];

// Reading states of the framing.
const HEADER = 0;
const LENGTH = 1;
const BODY = 2;

const SLASH = 0x2f;
const PLUS = 0x2b;
const HASH = 0x23;

const protocol = (rule: string, reason: string): Violation => ({ kind: 'protocol', rule, reason });

/** Reasons a packet's bytes do not add up; [MQTT-4.8.0-1] says close. */
const malformed = (reason: string): Violation => protocol('MQTT-4.8.0-1', `malformed packet: ${reason}`);

/**
 * Why `bytes` is not an acceptable UTF-8 encoded string, or null: it must be
 * well-formed UTF-8, which excludes encoded surrogates U+D800..U+DFFF
 * [MQTT-1.5.3-1], and must not contain U+0000 [MQTT-1.5.3-2].
 */
export function utf8StringProblem(bytes: Uint8Array): Violation | null {
  if (!isUtf8(bytes)) return protocol('MQTT-1.5.3-1', 'ill-formed UTF-8 (or an encoded UTF-16 surrogate) in a string');
  if (bytes.includes(0)) return protocol('MQTT-1.5.3-2', 'U+0000 in a string');
  return null;
}

/** Why `bytes` is not a valid topic filter, or null [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1]. */
export function topicFilterProblem(bytes: Uint8Array): Violation | null {
  if (bytes.length === 0) return protocol('MQTT-4.7.3-1', 'empty topic filter');
  const problem = utf8StringProblem(bytes);
  if (problem) return problem;
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i];
    if (byte !== PLUS && byte !== HASH) continue;
    const startsLevel = i === 0 || bytes[i - 1] === SLASH;
    const endsLevel = i === bytes.length - 1 || bytes[i + 1] === SLASH;
    if (byte === HASH && !(startsLevel && i === bytes.length - 1)) {
      return protocol('MQTT-4.7.1-2', "'#' must be the last character of a filter, alone in its level");
    }
    if (byte === PLUS && !(startsLevel && endsLevel)) return protocol('MQTT-4.7.1-3', "'+' must occupy an entire level");
  }
  return null;
}

/** Levels of a topic: one more than its '/' separators. */
function topicLevels(bytes: Uint8Array): number {
  let levels = 1;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] === SLASH) levels++;
  return levels;
}

/**
 * Follows one client's byte stream packet by packet. Feed it every chunk in
 * order; the first verdict is final (the connection is to be closed).
 */
export class ProtocolGuard {
  readonly #limits: ProtocolGuardLimits;
  /** Called once per complete, accepted packet with its type. */
  onPacket: ((type: number) => void) | undefined;

  #state = HEADER;
  #first = 0;
  #length = 0;
  #multiplier = 1;
  #lengthBytes = 0;
  /** Body bytes of the current packet not yet seen. */
  #bodyLeft = 0;
  /** Bytes still to collect into #buffer before the next check. */
  #need = 0;
  #buffer: Buffer = Buffer.alloc(0);
  #filled = 0;
  /** PUBLISH only: 0 collecting the topic length, 1 collecting topic and packet id. */
  #publishStep = 0;
  /** Where the connection is: before its CONNECT, after it, or after one asking for a level aedes refuses. */
  #connect: 'awaiting' | 'connected' | 'unsupported' = 'awaiting';
  #verdict: Violation | null = null;

  constructor(limits: ProtocolGuardLimits) {
    this.#limits = limits;
  }

  /**
   * Whether the CONNECT asked for a protocol level other than 3 or 4. aedes
   * answers CONNACK 0x01 and closes [MQTT-3.1.2-2] (mqtt-packet refuses
   * levels other than 5 outright); the bytes after it are MQTT 5 or unknown
   * framing, which the guard does not judge but withholds.
   */
  get unsupportedLevel(): boolean {
    return this.#connect === 'unsupported';
  }

  /** Feeds the next bytes of the stream; returns a verdict when the connection must close, else null. */
  inspect(chunk: Uint8Array): Verdict | null {
    if (this.#verdict) return { ...this.#verdict, validBytes: 0 };
    if (this.#connect === 'unsupported' && this.#state === HEADER) return { kind: 'withhold', validBytes: 0 };
    // Where the current packet began in this chunk; 0 when it began in an earlier one.
    let packetStart = 0;
    let index = 0;
    const fail = (violation: Violation): Verdict => {
      this.#verdict = violation;
      return { ...violation, validBytes: packetStart };
    };
    while (index < chunk.length) {
      if (this.#state === HEADER) {
        if (this.#connect === 'unsupported') return { kind: 'withhold', validBytes: index };
        packetStart = index;
        this.#first = chunk[index++] as number;
        this.#state = LENGTH;
        this.#length = 0;
        this.#multiplier = 1;
        this.#lengthBytes = 0;
        const problem = this.#checkFixedHeader();
        if (problem) return fail(problem);
        continue;
      }
      if (this.#state === LENGTH) {
        // Remaining Length: 7 bits a byte, continuation bit 0x80, at most four bytes [MQTT-2.2.3].
        const byte = chunk[index++] as number;
        this.#length += (byte & 0x7f) * this.#multiplier;
        this.#multiplier *= 128;
        this.#lengthBytes++;
        if (byte & 0x80) {
          if (this.#lengthBytes === 4) return fail(malformed('Remaining Length longer than four bytes'));
          continue;
        }
        const total = 1 + this.#lengthBytes + this.#length;
        if (total > this.#limits.maxPacketBytes) {
          return fail({ kind: 'limit', limit: 'maxPacketSize', reason: `packet of ${total} bytes exceeds the limit of ${this.#limits.maxPacketBytes}` });
        }
        this.#state = BODY;
        this.#bodyLeft = this.#length;
        const problem = this.#startBody();
        if (problem) return fail(problem);
      } else {
        const available = Math.min(this.#bodyLeft, chunk.length - index);
        if (this.#need > 0) {
          const take = Math.min(this.#need, available);
          this.#buffer.set(chunk.subarray(index, index + take), this.#filled);
          this.#filled += take;
          this.#need -= take;
          index += take;
          this.#bodyLeft -= take;
          if (this.#need === 0) {
            const problem = this.#collected();
            if (problem) return fail(problem);
          }
        } else {
          index += available;
          this.#bodyLeft -= available;
        }
      }
      if (this.#state === BODY && this.#bodyLeft === 0 && this.#need === 0) {
        this.#state = HEADER;
        const type = this.#first >> 4;
        if (type === CONNECT && this.#connect === 'awaiting') this.#connect = 'connected';
        this.onPacket?.(type);
      }
    }
    return null;
  }

  /** Checks type and flags [MQTT-2.2.1] [MQTT-2.2.2-1] and packet order [MQTT-3.1.0-1] [MQTT-3.1.0-2]. */
  #checkFixedHeader(): Violation | null {
    const type = this.#first >> 4;
    const flags = this.#first & 0x0f;
    const name = TYPE_NAMES[type] ?? String(type);
    if (this.#connect === 'awaiting' && type !== CONNECT) return protocol('MQTT-3.1.0-1', `${name} before CONNECT`);
    if (this.#connect !== 'awaiting' && type === CONNECT) return protocol('MQTT-3.1.0-2', 'a second CONNECT');
    switch (type) {
      case PUBLISH:
        if ((flags & 0x06) === 0x06) return protocol('MQTT-3.3.1-4', 'PUBLISH with QoS 3');
        return null;
      case PUBREL:
      case SUBSCRIBE:
      case UNSUBSCRIBE:
        return flags === 0x02 ? null : protocol('MQTT-2.2.2-2', `${name} with reserved flags ${flags} instead of 2`);
      case CONNECT:
      case PUBACK:
      case PUBREC:
      case PUBCOMP:
      case PINGREQ:
      case DISCONNECT:
        return flags === 0 ? null : protocol('MQTT-2.2.2-2', `${name} with reserved flags ${flags} instead of 0`);
      default:
        // 0 and 15 are reserved; CONNACK, SUBACK, UNSUBACK, PINGRESP only flow from the server.
        return protocol('MQTT-2.2.1', `${name} is not a packet a client may send`);
    }
  }

  /** Decides what to collect of a body whose Remaining Length is now known. */
  #startBody(): Violation | null {
    const type = this.#first >> 4;
    const name = TYPE_NAMES[type] as string;
    switch (type) {
      case PUBACK:
      case PUBREC:
      case PUBREL:
      case PUBCOMP:
        // These carry exactly a packet identifier.
        return this.#length === 2 ? null : malformed(`${name} with Remaining Length ${this.#length} instead of 2`);
      case PINGREQ:
      case DISCONNECT:
        return this.#length === 0 ? null : malformed(`${name} with Remaining Length ${this.#length} instead of 0`);
      case PUBLISH:
        if (this.#length < 2) return malformed('PUBLISH too short for its topic length');
        this.#publishStep = 0;
        return this.#collect(2);
      default:
        // CONNECT, SUBSCRIBE, UNSUBSCRIBE: the whole body (bounded by maxPacketBytes).
        return this.#collect(this.#length);
    }
  }

  #collect(bytes: number): Violation | null {
    this.#need = bytes;
    this.#filled = 0;
    if (this.#buffer.length < bytes || this.#buffer.length > 4096) this.#buffer = Buffer.allocUnsafe(Math.max(bytes, 64));
    return bytes === 0 ? this.#collected() : null;
  }

  /** Runs once the bytes asked for by #collect are in #buffer. */
  #collected(): Violation | null {
    const body = this.#buffer.subarray(0, this.#filled);
    switch (this.#first >> 4) {
      case PUBLISH:
        return this.#checkPublish(body);
      case CONNECT:
        return this.#checkConnect(body);
      case SUBSCRIBE:
        return this.#checkSubscriptions(body, true);
      default:
        return this.#checkSubscriptions(body, false);
    }
  }

  #checkPublish(body: Buffer): Violation | null {
    const qos = (this.#first >> 1) & 0x03;
    if (this.#publishStep === 0) {
      const topicLength = body.readUInt16BE(0);
      const variableHeader = 2 + topicLength + (qos > 0 ? 2 : 0);
      if (variableHeader > this.#length) return malformed('PUBLISH shorter than its topic and packet identifier');
      const limitProblem = this.#topicLengthProblem(topicLength);
      if (limitProblem) return limitProblem;
      this.#publishStep = 1;
      return this.#collect(variableHeader - 2);
    }
    const topicLength = this.#filled - (qos > 0 ? 2 : 0);
    const topic = body.subarray(0, topicLength);
    const problem = this.#topicNameProblem(topic);
    if (problem) return problem;
    if (qos > 0 && body.readUInt16BE(topicLength) === 0) return protocol('MQTT-2.3.1-1', `QoS ${qos} PUBLISH with packet identifier 0`);
    return null;
  }

  #checkConnect(body: Buffer): Violation | null {
    const reader = new FieldReader(body);
    const name = reader.string();
    if (name === null) return malformed('CONNECT too short for its protocol name');
    const nameText = name.toString('latin1');
    if (nameText !== 'MQTT' && nameText !== 'MQIsdp') return protocol('MQTT-3.1.2-1', `unknown protocol name ${JSON.stringify(nameText)}`);
    const level = reader.byte();
    if (level === null) return malformed('CONNECT too short for its protocol level');
    if (level !== 3 && level !== 4) {
      // aedes answers CONNACK 0x01 and closes [MQTT-3.1.2-2]; what follows is not 3.1.1 framing.
      this.#connect = 'unsupported';
      return null;
    }
    const flags = reader.byte();
    if (flags === null || reader.uint16() === null) return malformed('CONNECT too short for its flags and keep-alive');
    const will = (flags & 0x04) !== 0;
    const willQoS = (flags >> 3) & 0x03;
    const willRetain = (flags & 0x20) !== 0;
    const password = (flags & 0x40) !== 0;
    const username = (flags & 0x80) !== 0;
    if (flags & 0x01) return protocol('MQTT-3.1.2-3', 'CONNECT reserved flag set');
    if (!will && willQoS !== 0) return protocol('MQTT-3.1.2-13', 'Will QoS set without the Will Flag');
    if (!will && willRetain) return protocol('MQTT-3.1.2-15', 'Will Retain set without the Will Flag');
    if (will && willQoS === 3) return protocol('MQTT-3.1.2-14', 'Will QoS 3');
    if (password && !username) return protocol('MQTT-3.1.2-22', 'a password without a user name');

    const clientId = reader.string();
    if (clientId === null) return malformed('CONNECT too short for its client identifier');
    const idProblem = utf8StringProblem(clientId);
    if (idProblem) return { ...idProblem, reason: `client identifier: ${idProblem.reason}` };
    if (will) {
      const topic = reader.string();
      if (topic === null || reader.string() === null) return malformed('CONNECT too short for its will');
      const limitProblem = this.#topicLengthProblem(topic.length);
      if (limitProblem) return limitProblem;
      const topicProblem = this.#topicNameProblem(topic);
      if (topicProblem) return { ...topicProblem, reason: `will topic: ${topicProblem.reason}` };
    }
    if (username) {
      const user = reader.string();
      if (user === null) return malformed('CONNECT too short for its user name');
      const userProblem = utf8StringProblem(user);
      if (userProblem) return { ...userProblem, reason: `user name: ${userProblem.reason}` };
    }
    if (password && reader.string() === null) return malformed('CONNECT too short for its password');
    if (!reader.done) return malformed(`${reader.left} unexpected bytes at the end of CONNECT`);
    return null;
  }

  /** SUBSCRIBE [MQTT-3.8.3-1] [MQTT-3.8.3-3] [MQTT-3-8.3-4] and UNSUBSCRIBE [MQTT-3.10.3-1] [MQTT-3.10.3-2]. */
  #checkSubscriptions(body: Buffer, subscribe: boolean): Violation | null {
    const name = subscribe ? 'SUBSCRIBE' : 'UNSUBSCRIBE';
    const reader = new FieldReader(body);
    const packetId = reader.uint16();
    if (packetId === null) return malformed(`${name} too short for its packet identifier`);
    if (packetId === 0) return protocol('MQTT-2.3.1-1', `${name} with packet identifier 0`);
    if (reader.done) {
      return subscribe
        ? protocol('MQTT-3.8.3-3', 'SUBSCRIBE without a topic filter')
        : protocol('MQTT-3.10.3-2', 'UNSUBSCRIBE without a topic filter');
    }
    while (!reader.done) {
      const filter = reader.string();
      if (filter === null) return malformed(`${name} topic filter runs past the packet`);
      const problem = topicFilterProblem(filter);
      if (problem) return { ...problem, reason: `topic filter: ${problem.reason}` };
      if (subscribe) {
        const options = reader.byte();
        if (options === null) return malformed('SUBSCRIBE topic filter without its requested QoS');
        if (options > 2) return protocol('MQTT-3-8.3-4', `SUBSCRIBE requested QoS byte ${options}`);
      }
    }
    return null;
  }

  /** Topic names (PUBLISH [MQTT-3.3.2-1], will [MQTT-3.1.3-10]): UTF-8 strings of at least one character, without wildcards. */
  #topicNameProblem(topic: Uint8Array): Violation | null {
    if (topic.length === 0) return protocol('MQTT-4.7.3-1', 'empty topic name');
    const problem = utf8StringProblem(topic);
    if (problem) return { ...problem, reason: `topic: ${problem.reason}` };
    if (topic.includes(PLUS) || topic.includes(HASH)) return protocol('MQTT-3.3.2-2', 'wildcard in a topic name');
    const { maxTopicLevels } = this.#limits;
    if (maxTopicLevels > 0) {
      const levels = topicLevels(topic);
      if (levels > maxTopicLevels) {
        return { kind: 'limit', limit: 'maxTopicLevels', reason: `topic of ${levels} levels exceeds the limit of ${maxTopicLevels}` };
      }
    }
    return null;
  }

  #topicLengthProblem(bytes: number): Violation | null {
    const max = this.#limits.maxTopicLengthBytes || MQTT_MAX_STRING_BYTES;
    return bytes > max ? { kind: 'limit', limit: 'maxTopicLength', reason: `topic of ${bytes} bytes exceeds the limit of ${max}` } : null;
  }
}

/** Reads the length-prefixed fields of a collected body; null when a field runs past the end. */
class FieldReader {
  readonly #bytes: Buffer;
  #position = 0;

  constructor(bytes: Buffer) {
    this.#bytes = bytes;
  }

  get done(): boolean {
    return this.#position >= this.#bytes.length;
  }

  get left(): number {
    return this.#bytes.length - this.#position;
  }

  byte(): number | null {
    if (this.#position + 1 > this.#bytes.length) return null;
    return this.#bytes[this.#position++] as number;
  }

  uint16(): number | null {
    if (this.#position + 2 > this.#bytes.length) return null;
    const value = this.#bytes.readUInt16BE(this.#position);
    this.#position += 2;
    return value;
  }

  /** A two-byte length and that many bytes (UTF-8 string or binary data) [MQTT-1.5.3]. */
  string(): Buffer | null {
    const length = this.uint16();
    if (length === null || this.#position + length > this.#bytes.length) return null;
    const value = this.#bytes.subarray(this.#position, this.#position + length);
    this.#position += length;
    return value;
  }
}

/**
 * Puts a guard in front of aedes on one connection: every chunk aedes reads
 * passes it first (interceptReads in aedes-seam.ts), without an extra stream
 * stage. On a violation the complete packets before the offending one are
 * still handed over (the client sent them first), the rest is withheld and
 * the connection destroyed; `onViolation` is told why.
 */
export function guardConnection(
  conn: Duplex,
  limits: ProtocolGuardLimits,
  onViolation: (violation: Violation) => void,
): ProtocolGuard {
  const guard = new ProtocolGuard(limits);
  let closed = false;
  interceptReads(
    conn,
    (chunk) => {
      const verdict = guard.inspect(chunk);
      if (verdict === null) return chunk;
      const { validBytes } = verdict;
      if (verdict.kind !== 'withhold') {
        closed = true;
        onViolation(
          verdict.kind === 'protocol'
            ? { kind: 'protocol', rule: verdict.rule, reason: verdict.reason }
            : { kind: 'limit', limit: verdict.limit, reason: verdict.reason },
        );
        conn.destroy();
      }
      return validBytes > 0 ? chunk.subarray(0, validBytes) : null;
    },
    () => closed,
  );
  return guard;
}
