/**
 * Puts a guard in front of aedes on one connection: every chunk aedes reads
 * passes it first (interceptReads, aedes-seam/client.ts), without an extra stream
 * stage. On a violation the complete packets before the offending one are
 * still handed over (the client sent them first), the rest is withheld and
 * the connection closed by `close` (without one, destroyed at once: the owner
 * may first tell an MQTT 5 client why, with the violation's Reason Code);
 * `onViolation` is told why before.
 */
import type { Duplex } from 'node:stream';
import { interceptReads, type ReadFilter } from '../aedes-seam/index.js';
import { ProtocolGuard } from './guard.js';
import type { ProtocolGuardOptions, Violation } from './verdict.js';

/** The guard's hold on one connection's reads: an object, not closures, per connection. */
class GuardedReads implements ReadFilter {
  closed = false;

  constructor(
    readonly guard: ProtocolGuard,
    readonly onViolation: (violation: Violation) => void,
    readonly close: ((violation: Violation) => void) | undefined,
    readonly conn: Duplex,
  ) {}

  filter(chunk: Uint8Array): Uint8Array | null {
    const verdict = this.guard.inspect(chunk);
    if (verdict === null) return chunk;
    const { validBytes } = verdict;
    if (verdict.kind !== 'withhold') {
      this.closed = true;
      const { validBytes: _handedOver, ...violation } = verdict;
      this.onViolation(violation);
      if (this.close) this.close(violation);
      else this.conn.destroy();
    }
    return validBytes > 0 ? chunk.subarray(0, validBytes) : null;
  }
}

export function guardConnection(
  conn: Duplex,
  options: ProtocolGuardOptions,
  onViolation: (violation: Violation) => void,
  close?: (violation: Violation) => void,
): ProtocolGuard {
  const guard = new ProtocolGuard(options);
  interceptReads(conn, new GuardedReads(guard, onViolation, close, conn));
  return guard;
}
