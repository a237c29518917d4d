/**
 * Puts a guard in front of aedes on one connection: every chunk aedes reads
 * passes it first (interceptReads, aedes-seam/client.ts), without an extra stream
 * stage. On a violation the complete packets before the offending one are
 * still handed over (the client sent them first), the rest is withheld and
 * the connection closed by the owner's `closeFor`, which may first tell an
 * MQTT 5 client why with the violation's Reason Code (without one, destroyed
 * at once); its `onViolation` is told why before.
 */
import type { Duplex } from 'node:stream';
import { interceptReads, type ReadFilter } from '../aedes-seam/index.js';
import { ProtocolGuard, type PacketListener } from './guard.js';
import type { ProtocolGuardOptions, Violation } from './verdict.js';

/** Who a guarded connection reports to: one object per connection, its methods shared. */
export interface GuardOwner extends Partial<PacketListener> {
  /** Why the connection is about to be closed. */
  onViolation(violation: Violation): void;
  /** Closes it (an MQTT 5 client may first be told why); without this, it is destroyed at once. */
  closeFor?(violation: Violation): void;
}

/** The guard's hold on one connection's reads: an object, not closures, per connection. */
class GuardedReads implements ReadFilter {
  closed = false;

  constructor(
    readonly guard: ProtocolGuard,
    readonly owner: GuardOwner,
    readonly conn: Duplex,
  ) {}

  filter(chunk: Uint8Array): Uint8Array | null {
    const verdict = this.guard.inspect(chunk);
    if (verdict === null) return chunk;
    const { validBytes } = verdict;
    if (verdict.kind !== 'withhold') {
      this.closed = true;
      const { validBytes: _handedOver, ...violation } = verdict;
      this.owner.onViolation(violation);
      if (this.owner.closeFor) this.owner.closeFor(violation);
      else this.conn.destroy();
    }
    return validBytes > 0 ? chunk.subarray(0, validBytes) : null;
  }
}

/** Guards `conn`'s reads; `owner` hears of violations and, if it listens (onPacket), of each accepted packet. */
export function guardConnection(conn: Duplex, options: ProtocolGuardOptions, owner: GuardOwner): ProtocolGuard {
  const guard = new ProtocolGuard(options);
  if (owner.onPacket) guard.listener = owner as PacketListener;
  interceptReads(conn, new GuardedReads(guard, owner, conn));
  return guard;
}
