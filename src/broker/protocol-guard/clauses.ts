/**
 * Rules both versions share, under the clause numbers of each: MQTT 5.0
 * renumbered most of them (UTF-8 strings moved from 1.5.3 to 1.5.4, the
 * wildcard rules shifted by one, packet identifiers moved to 2.2.1).
 */
export interface Clauses {
  /** Ill-formed UTF-8, encoded surrogates included. */
  readonly utf8: string;
  /** U+0000 in a string. */
  readonly nul: string;
  /** '#' not last, or not alone in its level. */
  readonly hash: string;
  /** '+' not alone in its level. */
  readonly plus: string;
  /** Empty topic name or filter. */
  readonly empty: string;
  /** Packet identifier 0. */
  readonly packetId: string;
  /** Bytes that do not add up: the connection is closed. */
  readonly malformed: string;
  /** SUBSCRIBE without a topic filter. */
  readonly noFilter: string;
}

export const CLAUSES_3_1_1: Clauses = {
  utf8: 'MQTT-1.5.3-1',
  nul: 'MQTT-1.5.3-2',
  hash: 'MQTT-4.7.1-2',
  plus: 'MQTT-4.7.1-3',
  empty: 'MQTT-4.7.3-1',
  packetId: 'MQTT-2.3.1-1',
  malformed: 'MQTT-4.8.0-1',
  noFilter: 'MQTT-3.8.3-3',
};

export const CLAUSES_5: Clauses = {
  utf8: 'MQTT-1.5.4-1',
  nul: 'MQTT-1.5.4-2',
  hash: 'MQTT-4.7.1-1',
  plus: 'MQTT-4.7.1-2',
  empty: 'MQTT-4.7.3-1',
  packetId: 'MQTT-2.2.1-3',
  malformed: 'MQTT-4.13.1-1',
  noFilter: 'MQTT-3.8.3-2',
};
