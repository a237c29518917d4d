/**
 * The record of a PUBREL waiting for its PUBCOMP, written directly instead
 * of through msgpackr: every QoS 2 message delivered to a persistent session
 * has its PUBLISH's record replaced by one (QueueStore.record, on the
 * client's PUBREC), and msgpackr's general walk for this small record was
 * about 6% of the broker's main thread on a resent QoS 2 backlog
 * (bench/persistence-resend.ts).
 *
 * The output is byte for byte what codec.ts's encodePacket gives through
 * msgpackr for the same packet (test/persistence-units.test.ts compares
 * them): [kind 1, mask, 'pubrel', messageId] and, for aedes' PubRel
 * (handlers/pubrec.js: cmd, messageId, reasonCode), the extras map
 * {reasonCode} (a map16 header, as msgpackr writes an object's). Any other shape answers undefined and goes to msgpackr.
 */
import { KIND_PACKET, uintSize, writeUint } from './queued-pack.js';

/** codec.ts's field mask: cmd (bit 4) and messageId (bit 12) of PACKET_FIELDS; the extras bit after the table's 13 fields. */
const CMD_AND_ID = (1 << 4) | (1 << 12);
const EXTRAS = 1 << 13;
const PUBREL = Buffer.from('pubrel', 'latin1');
const REASON_CODE = Buffer.from('reasonCode', 'latin1');

function isUint16(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0xffff;
}

/** See the header; undefined when `packet` is not a PUBREL of the shapes written here. */
export function packPubrel(packet: Record<string, unknown>): Buffer | undefined {
  if (packet.cmd !== 'pubrel') return undefined;
  const keys = Object.keys(packet);
  const { messageId, reasonCode } = packet;
  if (keys[0] !== 'cmd' || keys[1] !== 'messageId' || !isUint16(messageId)) return undefined;
  const withReason = keys.length === 3 && keys[2] === 'reasonCode' && typeof reasonCode === 'number' && Number.isInteger(reasonCode) && reasonCode >= 0 && reasonCode < 0x80;
  if (keys.length !== 2 && !withReason) return undefined;
  const mask = CMD_AND_ID | (withReason ? EXTRAS : 0);
  const size = 1 + 1 + uintSize(mask) + 1 + PUBREL.length + uintSize(messageId) + (withReason ? 3 + 1 + REASON_CODE.length + 1 : 0);
  const buf = Buffer.allocUnsafe(size);
  let at = 0;
  buf[at++] = 0x90 | (withReason ? 5 : 4);
  buf[at++] = KIND_PACKET;
  at = writeUint(buf, at, mask);
  buf[at++] = 0xa0 | PUBREL.length;
  at += PUBREL.copy(buf, at);
  at = writeUint(buf, at, messageId);
  if (withReason) {
    // A map16 header for its one entry, as msgpackr writes an object's (it reserves the room before counting).
    buf[at++] = 0xde;
    buf[at++] = 0;
    buf[at++] = 1;
    buf[at++] = 0xa0 | REASON_CODE.length;
    at += REASON_CODE.copy(buf, at);
    buf[at++] = reasonCode as number;
  }
  return buf;
}
