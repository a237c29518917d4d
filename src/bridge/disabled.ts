/**
 * The bridge when `bridge.enabled` is false: state `disabled`, every counter
 * zero. The daemon uses it instead of bridge.ts, so that a broker without a
 * bridge never loads the NATS client, msgpackr and the outbox (about 3 MB of
 * heap at idle). It does not import bridge.ts (which imports the zero
 * figures from here); the daemon's `Bridge` annotation checks its shape.
 */
import type { ImporterStats } from './importer.js';
import type { OutboxStats } from './outbox.js';
import type { SenderStats } from './sender.js';

export const NO_SENDS: Readonly<SenderStats> = { exported: 0, duplicates: 0, resent: 0, publishFailures: 0, refused: 0, inflight: 0 };
export const EMPTY_OUTBOX: Readonly<OutboxStats> = { depth: 0, bytes: 0, oldestAgeMs: 0, added: 0, removed: 0, droppedOldest: 0, droppedNew: 0, failedWrites: 0 };
export const NO_IMPORTS: Readonly<ImporterStats> = { imported: 0, redeliveries: 0, loopSkipped: 0, skipped: 0, staleRetained: 0, expired: 0 };

export function disabledBridge() {
  return {
    state: 'disabled' as const,
    start: () => Promise.resolve(),
    stop: () => Promise.resolve(),
    stats: () => ({ state: 'disabled' as const, problem: undefined, ...NO_SENDS, ...NO_IMPORTS, outbox: { ...EMPTY_OUTBOX }, unmappable: 0, reconciled: 0 }),
  };
}
