/**
 * The protocol guard: every packet a client sends, checked against MQTT
 * 3.1.1 or 5.0 before aedes parses it (guard.ts), hooked into a connection
 * by guardConnection (connection.ts).
 */
export { ProtocolGuard } from './guard.js';
export { guardConnection } from './connection.js';
export { MQTT_MAX_STRING_BYTES, topicFilterProblem, utf8StringProblem } from './strings.js';
export {
  MALFORMED_PACKET,
  PACKET_TOO_LARGE,
  PROTOCOL_ERROR,
  RECEIVE_MAXIMUM_EXCEEDED,
  TOPIC_NAME_INVALID,
  type GuardLimit,
  type ProtocolGuardLimits,
  type ProtocolGuardOptions,
  type Verdict,
  type Violation,
} from './verdict.js';
