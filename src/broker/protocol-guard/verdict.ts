/**
 * What the protocol guard decides, and the MQTT 5 Reason Codes that go with
 * it. Shared by the framing (guard.ts) and the rules of each version.
 */

/** Limits the guard enforces by closing the connection. */
export interface ProtocolGuardLimits {
  /** Largest packet, fixed header included. */
  maxPacketBytes: number;
  /** Longest topic name (PUBLISH, will) in UTF-8 bytes; 0 = the protocol's 65,535. */
  maxTopicLengthBytes: number;
  /** Most levels in a topic name; 0 = no limit here. */
  maxTopicLevels: number;
  /**
   * Most incoming QoS 2 messages on one connection whose PUBREL has not come
   * yet (distinct packet identifiers); one more closes the connection. 0 or
   * absent = no limit here.
   */
  maxAwaitingRelease?: number;
}

export interface ProtocolGuardOptions extends ProtocolGuardLimits {
  /**
   * Follow and judge MQTT 5.0 connections (protocol level 5); the daemon
   * always sets it (limits.ts). Off, the guard serves a 3.1.1-only broker:
   * it withholds what follows a level-5 CONNECT, as for any level it does
   * not know.
   */
  mqtt5?: boolean;
}

/** A limit this guard enforces by closing the connection. */
export type GuardLimit = 'maxPacketSize' | 'maxTopicLength' | 'maxTopicLevels' | 'maxAwaitingRelease';

export type Violation =
  /** Breaks the protocol; `rule` cites the clause, e.g. `MQTT-2.3.1-1`. */
  | { kind: 'protocol'; rule: string; reason: string; reasonCode?: number }
  /** Within the protocol but over a configured limit. */
  | { kind: 'limit'; limit: GuardLimit; reason: string; reasonCode?: number };
// `reasonCode` is set on MQTT 5 connections only: the Reason Code the server
// sends before it closes [MQTT-4.13.1-1] — in a CONNACK when the violation is
// in the CONNECT itself (or comes before the CONNACK went out: a DISCONNECT
// must not precede a successful CONNACK [MQTT-3.14.0-1]), in a DISCONNECT
// otherwise. A 3.1.1 server has no way to say why and just closes.

/**
 * What to do with a chunk: close for a violation, or (`withhold`) just keep
 * the bytes after a CONNECT that the broker will refuse. `validBytes` of the
 * chunk (complete, valid packets before the offending one) are still handed over.
 */
export type Verdict = (Violation & { validBytes: number }) | { kind: 'withhold'; validBytes: number };

/** MQTT 5 Reason Codes the guard gives (Table 2-6); the same values in CONNACK and DISCONNECT. */
export const MALFORMED_PACKET = 0x81;
export const PROTOCOL_ERROR = 0x82;
export const TOPIC_NAME_INVALID = 0x90;
export const PACKET_TOO_LARGE = 0x95;
export const RECEIVE_MAXIMUM_EXCEEDED = 0x93;

const LIMIT_REASON_CODES: Record<GuardLimit, number> = {
  maxPacketSize: PACKET_TOO_LARGE,
  maxTopicLength: TOPIC_NAME_INVALID,
  maxTopicLevels: TOPIC_NAME_INVALID,
  maxAwaitingRelease: RECEIVE_MAXIMUM_EXCEEDED,
};

/** A Protocol Error: well-formed bytes the protocol does not allow (v5: 0x82). */
export const protocol = (rule: string, reason: string): Violation => ({ kind: 'protocol', rule, reason, reasonCode: PROTOCOL_ERROR });

/** A Malformed Packet: bytes that do not parse as the specification says (v5: 0x81). */
export const malformedAs = (rule: string, reason: string): Violation => ({ kind: 'protocol', rule, reason, reasonCode: MALFORMED_PACKET });

export const limit = (which: GuardLimit, reason: string): Violation => ({
  kind: 'limit',
  limit: which,
  reason,
  reasonCode: LIMIT_REASON_CODES[which],
});

/** Checks of a topic name that need the configured limits (the guard's). */
export interface TopicChecks {
  topicLength(bytes: number): Violation | null;
  topicName(topic: Uint8Array): Violation | null;
}

/** The same violation with a prefix on its reason (which field it was found in). */
export function within(field: string, violation: Violation): Violation {
  return { ...violation, reason: `${field}: ${violation.reason}` };
}
