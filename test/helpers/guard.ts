/** Feeding a ProtocolGuard chunk by chunk, as a connection would. */
import type { ProtocolGuard, Verdict } from '../../src/broker/protocol-guard/index.js';

/** The first verdict and the index of the chunk that brought it, or null when every chunk passed. */
export function feed(guard: ProtocolGuard, chunks: Uint8Array[]): { at: number; verdict: Verdict } | null {
  for (let i = 0; i < chunks.length; i++) {
    const verdict = guard.inspect(chunks[i] as Uint8Array);
    if (verdict !== null) return { at: i, verdict };
  }
  return null;
}
