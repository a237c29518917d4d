/** Control packet types, the high nibble of a packet's first byte [MQTT-2.2.1] (MQTT 5: 2.1.2). */
export const CONNECT = 1;
export const PUBLISH = 3;
export const PUBACK = 4;
export const PUBREC = 5;
export const PUBREL = 6;
export const PUBCOMP = 7;
export const SUBSCRIBE = 8;
export const UNSUBSCRIBE = 10;
export const PINGREQ = 12;
export const DISCONNECT = 14;
export const AUTH = 15;
