/**
 * Puts a guard in front of aedes on one connection: every chunk aedes reads
 * passes it first (interceptReads, aedes-seam/client.ts), without an extra stream
 * stage. On a violation the complete packets before the offending one are
 * still handed over (the client sent them first), the rest is withheld and
 * the connection closed by `close` (by default destroyed at once: the owner
 * may first tell an MQTT 5 client why, with the violation's Reason Code);
 * `onViolation` is told why before.
 */
import type { Duplex } from 'node:stream';
import { interceptReads } from '../aedes-seam/index.js';
import { ProtocolGuard } from './guard.js';
import type { ProtocolGuardOptions, Violation } from './verdict.js';

export function guardConnection(
  conn: Duplex,
  options: ProtocolGuardOptions,
  onViolation: (violation: Violation) => void,
  close: (violation: Violation) => void = () => conn.destroy(),
): ProtocolGuard {
  const guard = new ProtocolGuard(options);
  let closed = false;
  interceptReads(
    conn,
    (chunk) => {
      const verdict = guard.inspect(chunk);
      if (verdict === null) return chunk;
      const { validBytes } = verdict;
      if (verdict.kind !== 'withhold') {
        closed = true;
        const { validBytes: _handedOver, ...violation } = verdict;
        onViolation(violation);
        close(violation);
      }
      return validBytes > 0 ? chunk.subarray(0, validBytes) : null;
    },
    () => closed,
  );
  return guard;
}
