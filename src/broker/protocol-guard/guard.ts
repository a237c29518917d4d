/**
 * Checks every packet a client sends against MQTT 3.1.1 — and, when asked,
 * MQTT 5.0 — before aedes sees it.
 *
 * aedes and mqtt-packet accept much that the standard says must close the
 * connection: invalid UTF-8 (decoded to U+FFFD, the evidence gone), packet
 * identifier 0, empty UNSUBSCRIBEs, Will QoS 3, properties where they do not
 * belong. The guard follows packet boundaries in the raw byte stream (as
 * aedes pulls it with `conn.read()`), collects just the bytes it must look
 * at (a PUBLISH's topic, packet identifier and properties; the whole body of
 * other packets but PINGREQ, which maxPacketBytes bounds) and decides before
 * the last byte of a packet reaches the parser. Payloads are skipped, never
 * copied.
 *
 * Limits that close the connection are checked here too: packet size (from
 * the fixed header alone), topic length and levels of a PUBLISH or a will.
 */
import { CLAUSES_3_1_1, CLAUSES_5, type Clauses } from './clauses.js';
import { FieldReader } from './field-reader.js';
import { AUTH, CONNECT, DISCONNECT, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBSCRIBE, UNSUBSCRIBE } from './packet-types.js';
import { checkPropertyList, PropertyFacts } from './properties.js';
import { checkConnect311, checkSubscriptions311 } from './rules-3-1-1.js';
import { checkAck5, checkAuth5, checkConnect5, checkDisconnect5, checkSubscribe5, checkUnsubscribe5, type Session5 } from './rules-5.js';
import { hasWildcard, MQTT_MAX_STRING_BYTES, plainTopicLevels, topicLevels, utf8StringProblem } from './strings.js';
import { limit, malformedAs, protocol, within, type ProtocolGuardOptions, type TopicChecks, type Verdict, type Violation } from './verdict.js';

const TYPE_NAMES = [
  'reserved (0)', 'CONNECT', 'CONNACK', 'PUBLISH', 'PUBACK', 'PUBREC', 'PUBREL', 'PUBCOMP',
  'SUBSCRIBE', 'SUBACK', 'UNSUBSCRIBE', 'UNSUBACK', 'PINGREQ', 'PINGRESP', 'DISCONNECT', 'reserved (15)',
];

// Reading states of the framing.
const HEADER = 0;
const LENGTH = 1;
const BODY = 2;

// Steps through a PUBLISH's variable header.
const TOPIC_LENGTH = 0;
const TOPIC = 1;
const PROPERTY_LENGTH = 2;
const PROPERTIES = 3;

/** What #buffer is between the packets that need none kept (no Buffer per idle connection). */
const EMPTY = Buffer.alloc(0);
/** Fields up to this many bytes are collected a byte at a time rather than through a subarray view. */
const SHORT_COPY = 64;

/** The violation as a connection of `level` reports it: MQTT 5 Reason Codes only where MQTT 5 is spoken. */
function asReported(violation: Violation, level: number): Violation {
  if (level === 5) return violation;
  return violation.kind === 'protocol'
    ? { kind: 'protocol', rule: violation.rule, reason: violation.reason }
    : { kind: 'limit', limit: violation.limit, reason: violation.reason };
}

/** Told of each complete, accepted packet by a guard (ProtocolGuard.listener). */
export interface PacketListener {
  /** Once per complete, accepted packet: its type and, for an MQTT 5 PUBACK, PUBREC, PUBREL or PUBCOMP, its Reason Code (else 0). */
  onPacket(type: number, reasonCode: number): void;
}

/**
 * Follows one client's byte stream packet by packet. Feed it every chunk in
 * order; the first verdict is final (the connection is to be closed).
 */
export class ProtocolGuard {
  readonly #limits: ProtocolGuardOptions;
  /** Told of each complete, accepted packet (an object, so that a connection's owner needs no closure for it). */
  listener: PacketListener | undefined;

  #state = HEADER;
  #first = 0;
  #length = 0;
  #multiplier = 1;
  #lengthBytes = 0;
  /** Body bytes of the current packet not yet seen. */
  #bodyLeft = 0;
  /** Bytes still to collect into #buffer before the next check. */
  #need = 0;
  #buffer: Buffer = EMPTY;
  #filled = 0;
  #publishStep = TOPIC_LENGTH;
  /** MQTT 5 PUBLISH: a zero-length topic, which needs a Topic Alias (3.3.2.1). */
  #emptyTopic = false;
  /** MQTT 5 PUBLISH: the Property Length as read so far, a byte at a time. */
  #propertyLength = 0;
  #propertyMultiplier = 1;
  #propertyLengthBytes = 0;
  /**
   * Where the connection is: before its CONNECT, after it, after one asking
   * for a level the broker refuses, or (MQTT 5) after the client's DISCONNECT.
   */
  #connect: 'awaiting' | 'connected' | 'unsupported' | 'disconnected' = 'awaiting';
  /** The CONNECT's protocol level once read (3, 4 or 5), else 0. */
  #level = 0;
  #verdict: Violation | null = null;
  // The reader, the property facts, the MQTT 5 session facts and the QoS 2
  // identifiers are made when a packet first needs them, and the reader and
  // facts let go after each packet but PUBLISH and the acknowledgements (the
  // ones that come often): an idle connection keeps none of them.
  #reader: FieldReader | undefined;
  #facts: PropertyFacts | undefined;
  #session: Session5 | undefined;
  /**
   * Packet identifiers of the incoming QoS 2 messages whose PUBREL has not
   * come yet. aedes 1.2.0 bounded them (maxInflightInbound, GHSA-5jvp);
   * 2.0.0-beta.1 stores any number, up to 65,535 per client id.
   */
  #awaitingRelease: Set<number> | undefined;
  /** The Reason Code of the acknowledgement being read (MQTT 5; 0 when it has none). */
  #ackReasonCode = 0;

  constructor(options: ProtocolGuardOptions) {
    this.#limits = options;
  }

  get #propertyFacts(): PropertyFacts {
    return (this.#facts ??= new PropertyFacts());
  }

  get #session5(): Session5 {
    return (this.#session ??= { sessionExpiryZero: true, authenticationMethod: false });
  }

  /** A reader over the bytes collected for the current check. */
  #collectedReader(): FieldReader {
    return (this.#reader ??= new FieldReader()).reset(this.#buffer, this.#filled);
  }

  /**
   * Whether the CONNECT asked for a protocol level the guard does not follow:
   * other than 3 or 4, and other than 5 unless `mqtt5` is on. The broker
   * answers CONNACK 0x01 (5: 0x84) and closes [MQTT-3.1.2-2] (mqtt-packet refuses
   * levels other than 3, 4, 5 outright); the bytes after it are another
   * protocol's framing, which the guard does not judge but withholds.
   */
  get unsupportedLevel(): boolean {
    return this.#connect === 'unsupported';
  }

  /** Whether the client's CONNECT has been read whole (and accepted by the guard). */
  get connectRead(): boolean {
    return this.#connect !== 'awaiting';
  }

  /** The protocol level of the client's CONNECT (3, 4 or 5) once the guard has read it, else 0. */
  get protocolLevel(): number {
    return this.#level;
  }

  /** Keeps `violation` as the connection's verdict; the bytes before its packet (at `packetStart`) are valid. */
  #fail(violation: Violation, packetStart: number): Verdict {
    this.#verdict = asReported(violation, this.#level);
    return { ...this.#verdict, validBytes: packetStart };
  }

  /** Feeds the next bytes of the stream; returns a verdict when the connection must close, else null. */
  inspect(chunk: Uint8Array): Verdict | null {
    if (this.#verdict) return { ...this.#verdict, validBytes: 0 };
    if (this.#connect === 'unsupported' && this.#state === HEADER) return { kind: 'withhold', validBytes: 0 };
    // Where the current packet began in this chunk; 0 when it began in an earlier one.
    let packetStart = 0;
    let index = 0;
    while (index < chunk.length) {
      if (this.#state === HEADER) {
        if (this.#connect === 'unsupported') return { kind: 'withhold', validBytes: index };
        packetStart = index;
        this.#first = chunk[index++] as number;
        this.#state = LENGTH;
        this.#length = 0;
        this.#multiplier = 1;
        this.#lengthBytes = 0;
        const problem = this.#level === 5 ? this.#checkFixedHeader5() : this.#checkFixedHeader();
        if (problem) return this.#fail(problem, packetStart);
        continue;
      }
      if (this.#state === LENGTH) {
        // Remaining Length: 7 bits a byte, continuation bit 0x80, at most four bytes [MQTT-2.2.3].
        const byte = chunk[index++] as number;
        this.#length += (byte & 0x7f) * this.#multiplier;
        this.#multiplier *= 128;
        this.#lengthBytes++;
        if (byte & 0x80) {
          if (this.#lengthBytes === 4) return this.#fail(malformedAs(this.#clauses.malformed, 'malformed packet: Remaining Length longer than four bytes'), packetStart);
          continue;
        }
        if (this.#level === 5 && this.#lengthBytes > 1 && byte === 0) {
          return this.#fail(malformedAs('MQTT-1.5.5-1', 'Remaining Length not encoded in the fewest bytes'), packetStart);
        }
        const total = 1 + this.#lengthBytes + this.#length;
        if (total > this.#limits.maxPacketBytes) {
          return this.#fail(limit('maxPacketSize', `packet of ${total} bytes exceeds the limit of ${this.#limits.maxPacketBytes}`), packetStart);
        }
        this.#state = BODY;
        this.#bodyLeft = this.#length;
        const problem = this.#startBody();
        if (problem) return this.#fail(problem, packetStart);
      } else {
        const available = Math.min(this.#bodyLeft, chunk.length - index);
        if (this.#need > 0) {
          const take = Math.min(this.#need, available);
          // A topic, usually: short ones copied a byte at a time, without a subarray() view per packet.
          if (take > SHORT_COPY) this.#buffer.set(chunk.subarray(index, index + take), this.#filled);
          else for (let i = 0, at = this.#filled; i < take; i++) this.#buffer[at + i] = chunk[index + i] as number;
          this.#filled += take;
          this.#need -= take;
          index += take;
          this.#bodyLeft -= take;
          if (this.#need === 0) {
            const problem = this.#collected();
            if (problem) return this.#fail(problem, packetStart);
          }
        } else {
          index += available;
          this.#bodyLeft -= available;
        }
      }
      if (this.#state === BODY && this.#bodyLeft === 0 && this.#need === 0) {
        this.#state = HEADER;
        const type = this.#first >> 4;
        if (type !== PUBLISH && (type < PUBACK || type > PUBCOMP)) {
          this.#buffer = EMPTY;
          this.#reader = undefined;
          this.#facts = undefined;
        }
        if (type === CONNECT && this.#connect === 'awaiting') this.#connect = 'connected';
        // After its DISCONNECT a client sends nothing more [MQTT-3.14.4-1].
        else if (type === DISCONNECT && this.#level === 5) this.#connect = 'disconnected';
        this.listener?.onPacket(type, this.#ackReasonCode);
      }
    }
    return null;
  }

  get #clauses(): Clauses {
    return this.#level === 5 ? CLAUSES_5 : CLAUSES_3_1_1;
  }

  /** MQTT 3.1.1 (and any CONNECT): type and flags [MQTT-2.2.1] [MQTT-2.2.2-1], packet order [MQTT-3.1.0-1] [MQTT-3.1.0-2]. */
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

  /**
   * MQTT 5.0, after a level-5 CONNECT: reserved flags [MQTT-2.1.3-1] (a
   * Malformed Packet), QoS 3 [MQTT-3.3.1-4], DUP on QoS 0 [MQTT-3.3.1-2],
   * AUTH allowed (2.1.2), nothing after DISCONNECT [MQTT-3.14.4-1].
   */
  #checkFixedHeader5(): Violation | null {
    const type = this.#first >> 4;
    const flags = this.#first & 0x0f;
    const name = type === AUTH ? 'AUTH' : (TYPE_NAMES[type] as string);
    if (this.#connect === 'disconnected') return protocol('MQTT-3.14.4-1', `${name} after DISCONNECT`);
    if (type === CONNECT) return protocol('MQTT-3.1.0-2', 'a second CONNECT');
    switch (type) {
      case PUBLISH:
        if ((flags & 0x06) === 0x06) return malformedAs('MQTT-3.3.1-4', 'PUBLISH with QoS 3');
        if ((flags & 0x0e) === 0x08) return malformedAs('MQTT-3.3.1-2', 'QoS 0 PUBLISH with the DUP flag');
        return null;
      case PUBREL:
      case SUBSCRIBE:
      case UNSUBSCRIBE:
        return flags === 0x02 ? null : malformedAs('MQTT-2.1.3-1', `${name} with reserved flags ${flags} instead of 2`);
      case PUBACK:
      case PUBREC:
      case PUBCOMP:
      case PINGREQ:
      case DISCONNECT:
      case AUTH:
        return flags === 0 ? null : malformedAs('MQTT-2.1.3-1', `${name} with reserved flags ${flags} instead of 0`);
      default:
        // 0 is reserved; CONNACK, SUBACK, UNSUBACK, PINGRESP only flow from the server.
        return protocol('MQTT-2.1.2', `${name} is not a packet a client may send`);
    }
  }

  /** Decides what to collect of a body whose Remaining Length is now known. */
  #startBody(): Violation | null {
    const type = this.#first >> 4;
    const name = type === AUTH ? 'AUTH' : (TYPE_NAMES[type] as string);
    const v5 = this.#level === 5;
    switch (type) {
      case PUBACK:
      case PUBREC:
      case PUBREL:
      case PUBCOMP:
        this.#ackReasonCode = 0;
        // A packet identifier; MQTT 5 may add a Reason Code and properties (3.4.2).
        if (v5 && this.#length > 2) return this.#collect(this.#length);
        if (this.#length !== 2) return this.#malformed(`${name} with Remaining Length ${this.#length} instead of 2`);
        // A PUBREL's identifier releases an incoming QoS 2 message (#awaitingRelease).
        return type === PUBREL ? this.#collect(2) : null;
      case PINGREQ:
        return this.#length === 0 ? null : this.#malformed(`${name} with Remaining Length ${this.#length} instead of 0`);
      case DISCONNECT:
        // MQTT 5 may add a Reason Code and properties (3.14.2).
        if (v5) return this.#length === 0 ? null : this.#collect(this.#length);
        return this.#length === 0 ? null : this.#malformed(`${name} with Remaining Length ${this.#length} instead of 0`);
      case PUBLISH:
        if (this.#length < 2) return this.#malformed('PUBLISH too short for its topic length');
        this.#publishStep = TOPIC_LENGTH;
        return this.#collect(2);
      default:
        // CONNECT, SUBSCRIBE, UNSUBSCRIBE, AUTH: the whole body (bounded by maxPacketBytes).
        return this.#collect(this.#length);
    }
  }

  #malformed(reason: string): Violation {
    return malformedAs(this.#clauses.malformed, `malformed packet: ${reason}`);
  }

  #collect(bytes: number): Violation | null {
    this.#need = bytes;
    this.#filled = 0;
    if (this.#buffer.length < bytes || this.#buffer.length > 4096) this.#buffer = Buffer.allocUnsafe(Math.max(bytes, 64));
    return bytes === 0 ? this.#collected() : null;
  }

  /** Runs once the bytes asked for by #collect are in #buffer. */
  #collected(): Violation | null {
    const type = this.#first >> 4;
    if (type === PUBLISH) return this.#checkPublish();
    const reader = this.#collectedReader();
    if (type === CONNECT) return this.#checkConnect(reader);
    if (type >= PUBACK && type <= PUBCOMP) {
      if (type === PUBREL) this.#awaitingRelease?.delete(this.#buffer.readUInt16BE(0));
      if (this.#filled === 2) return null;
      this.#ackReasonCode = this.#buffer[2] as number;
    }
    if (this.#level !== 5) return checkSubscriptions311(reader, type === SUBSCRIBE);
    switch (type) {
      case SUBSCRIBE:
        return checkSubscribe5(reader, this.#propertyFacts);
      case UNSUBSCRIBE:
        return checkUnsubscribe5(reader, this.#propertyFacts);
      case DISCONNECT:
        return checkDisconnect5(reader, this.#propertyFacts, this.#session5);
      case AUTH:
        return checkAuth5(reader, this.#propertyFacts, this.#session5);
      default:
        return checkAck5(type, reader, this.#propertyFacts);
    }
  }

  /**
   * A PUBLISH's variable header, collected in steps so that the payload is
   * never copied: the topic length, then topic, packet identifier (and, in
   * MQTT 5, the first byte of the Property Length), then the rest of the
   * Property Length a byte at a time, then the properties.
   */
  #checkPublish(): Violation | null {
    const qos = (this.#first >> 1) & 0x03;
    const v5 = this.#level === 5;
    const buffer = this.#buffer;
    switch (this.#publishStep) {
      case TOPIC_LENGTH: {
        const topicLength = buffer.readUInt16BE(0);
        const variableHeader = 2 + topicLength + (qos > 0 ? 2 : 0) + (v5 ? 1 : 0);
        if (variableHeader > this.#length) {
          return this.#malformed(v5 ? 'PUBLISH shorter than its topic, packet identifier and Property Length' : 'PUBLISH shorter than its topic and packet identifier');
        }
        const limitProblem = this.#topicLengthProblem(topicLength);
        if (limitProblem) return limitProblem;
        this.#publishStep = TOPIC;
        return this.#collect(variableHeader - 2);
      }
      case TOPIC: {
        const topicLength = this.#filled - (qos > 0 ? 2 : 0) - (v5 ? 1 : 0);
        // MQTT 5: an empty topic stands for the one a Topic Alias names (3.3.2.1).
        this.#emptyTopic = v5 && topicLength === 0;
        if (!this.#emptyTopic) {
          const levels = topicLength > 0 ? plainTopicLevels(buffer, topicLength) : -1;
          const problem = levels > 0 ? this.#levelsProblem(levels) : this.#topicNameProblem(buffer.subarray(0, topicLength));
          if (problem) return problem;
        }
        if (qos > 0 && buffer.readUInt16BE(topicLength) === 0) return protocol(this.#clauses.packetId, `QoS ${qos} PUBLISH with packet identifier 0`);
        if (qos === 2) {
          const problem = this.#awaitRelease(buffer.readUInt16BE(topicLength));
          if (problem) return problem;
        }
        if (!v5) return null;
        this.#propertyLength = 0;
        this.#propertyMultiplier = 1;
        this.#propertyLengthBytes = 0;
        return this.#propertyLengthByte(buffer[this.#filled - 1] as number);
      }
      case PROPERTY_LENGTH:
        return this.#propertyLengthByte(buffer[0] as number);
      default: {
        const facts = this.#propertyFacts;
        const problem = checkPropertyList(this.#collectedReader(), PUBLISH, facts);
        if (problem) return problem;
        if (this.#emptyTopic && !facts.topicAlias) return protocol('MQTT-3.3.2.1', 'an empty Topic Name without a Topic Alias');
        // A Payload Format Indicator of 1 is not checked against the payload:
        // the receiver MAY validate it (3.3.2.3.2), which would mean holding
        // back and reading every payload; the indicator is forwarded unaltered
        // [MQTT-3.3.2-4] and subscribers can check for themselves.
        return null;
      }
    }
  }

  /**
   * Counts an incoming QoS 2 message until its PUBREL; past
   * maxAwaitingRelease the connection closes (MQTT 5: DISCONNECT 0x93
   * Receive Maximum exceeded [MQTT-3.3.4-9], the broker announcing the bound
   * as its Receive Maximum). A resend under an identifier already counted is
   * the same message, acknowledged again and not delivered twice (4.3.3): not
   * counted again.
   */
  #awaitRelease(packetId: number): Violation | null {
    const awaiting = (this.#awaitingRelease ??= new Set());
    if (awaiting.has(packetId)) return null;
    const max = this.#limits.maxAwaitingRelease ?? 0;
    if (max > 0 && awaiting.size >= max) {
      return limit('maxAwaitingRelease', `more than ${max} incoming QoS 2 messages awaiting PUBREL`);
    }
    awaiting.add(packetId);
    return null;
  }

  /** One byte of a PUBLISH's Property Length, a Variable Byte Integer [MQTT-1.5.5-1]. */
  #propertyLengthByte(byte: number): Violation | null {
    this.#propertyLength += (byte & 0x7f) * this.#propertyMultiplier;
    this.#propertyMultiplier *= 128;
    this.#propertyLengthBytes++;
    if (byte & 0x80) {
      if (this.#propertyLengthBytes === 4) return this.#malformed('PUBLISH Property Length longer than four bytes');
      if (this.#bodyLeft === 0) return this.#malformed('PUBLISH too short for its Property Length');
      this.#publishStep = PROPERTY_LENGTH;
      return this.#collect(1);
    }
    if (this.#propertyLengthBytes > 1 && byte === 0) return malformedAs('MQTT-1.5.5-1', 'PUBLISH Property Length not in the fewest bytes');
    if (this.#propertyLength > this.#bodyLeft) return this.#malformed(`PUBLISH Property Length ${this.#propertyLength} runs past the packet`);
    this.#publishStep = PROPERTIES;
    return this.#collect(this.#propertyLength);
  }

  #checkConnect(reader: FieldReader): Violation | null {
    const name = reader.string();
    if (name === null) return this.#malformed('CONNECT too short for its protocol name');
    const nameText = name.toString('latin1');
    if (nameText !== 'MQTT' && nameText !== 'MQIsdp') return protocol('MQTT-3.1.2-1', `unknown protocol name ${JSON.stringify(nameText)}`);
    const level = reader.byte();
    if (level === null) return this.#malformed('CONNECT too short for its protocol level');
    if (level === 3 || level === 4 || (level === 5 && this.#limits.mqtt5)) {
      this.#level = level;
      // Read once per connection: made here rather than kept.
      const topics: TopicChecks = {
        topicLength: (bytes) => this.#topicLengthProblem(bytes),
        topicName: (topic) => this.#topicNameProblem(topic),
      };
      return level === 5 ? checkConnect5(reader, this.#propertyFacts, this.#session5, topics) : checkConnect311(reader, topics);
    }
    // The broker answers CONNACK 0x01 (5: 0x84) and closes [MQTT-3.1.2-2]; what follows is not framing the guard follows.
    this.#connect = 'unsupported';
    return null;
  }

  /**
   * Topic names (PUBLISH [MQTT-3.3.2-1], will [MQTT-3.1.3-10] / 5.0
   * [MQTT-3.1.3-11]): UTF-8 strings of at least one character, without
   * wildcards [MQTT-3.3.2-2], within the configured levels.
   */
  #topicNameProblem(topic: Uint8Array): Violation | null {
    const clauses = this.#clauses;
    if (topic.length === 0) return protocol(clauses.empty, 'empty topic name');
    const problem = utf8StringProblem(topic, clauses);
    if (problem) return within('topic', problem);
    if (hasWildcard(topic)) return malformedAs('MQTT-3.3.2-2', 'wildcard in a topic name');
    return this.#levelsProblem(topicLevels(topic));
  }

  #levelsProblem(levels: number): Violation | null {
    const { maxTopicLevels } = this.#limits;
    if (maxTopicLevels > 0 && levels > maxTopicLevels) return limit('maxTopicLevels', `topic of ${levels} levels exceeds the limit of ${maxTopicLevels}`);
    return null;
  }

  #topicLengthProblem(bytes: number): Violation | null {
    const max = this.#limits.maxTopicLengthBytes || MQTT_MAX_STRING_BYTES;
    return bytes > max ? limit('maxTopicLength', `topic of ${bytes} bytes exceeds the limit of ${max}`) : null;
  }
}
