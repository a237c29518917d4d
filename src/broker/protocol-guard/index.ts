/**
 * The protocol guard: every packet a client sends, checked against MQTT
 * 3.1.1 or 5.0 before aedes parses it (guard.ts), hooked into a connection
 * by guardConnection (connection.ts).
 */
export { ProtocolGuard, type PacketListener } from './guard.js';
export { guardConnection, type GuardOwner } from './connection.js';
export { MQTT_MAX_STRING_BYTES } from './strings.js';
export { CONNECT, DISCONNECT, PUBACK, PUBCOMP, PUBREC } from './packet-types.js';
export type { ProtocolGuardOptions, Verdict, Violation } from './verdict.js';
