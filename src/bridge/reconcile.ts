/**
 * No duplicate even after JetStream's duplicate window. The stream drops a
 * resent `Nats-Msg-Id` only within that window (2 minutes by default). An
 * outbox entry whose outcome is unknown (sent, then the connection or the
 * daemon died before its PubAck, or before the entry was removed) and that
 * is resent after a longer outage would be stored twice.
 *
 * So before the sender resends entries older than the window allows, this
 * reads what the stream took since the oldest of them (an ordered consumer,
 * headers only, from that time on, up to the stream's last sequence now) and
 * answers which of this site's outbox sequences are already there; those
 * leave the outbox without being sent again. Within the window the stream's
 * own check is enough and nothing is read.
 */
import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';

/** Margin below the duplicate window within which a resend is left to the stream's own check. */
export const WINDOW_MARGIN_MS = 10_000;
const QUIET_MS = 5000;

/**
 * Outbox sequences of `siteId` the stream holds among messages stored since
 * `sinceMs` (ms since the epoch, a little before the oldest entry in doubt).
 */
export async function storedSince(
  js: JetStreamClient,
  jsm: JetStreamManager,
  options: { stream: string; siteId: string; sinceMs: number; fromSeq: number },
): Promise<Set<number>> {
  const found = new Set<number>();
  const info = await jsm.streams.info(options.stream);
  const end = info.state.last_seq;
  // Nothing stored since then: nothing to read (a consumer would wait for news).
  if (info.state.messages === 0 || end === 0 || Date.parse(info.state.last_ts) < options.sinceMs) return found;
  const consumer = await js.consumers.get(options.stream, {
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: new Date(options.sinceMs).toISOString(),
    headers_only: true,
  });
  const prefix = `${options.siteId}:`;
  const messages = await consumer.consume({ max_messages: 1000 });
  // Should the stream stop delivering short of `end` (trimmed meanwhile by its max age), the scan ends when it goes quiet.
  let quiet: NodeJS.Timeout | undefined;
  const idle = () => {
    clearTimeout(quiet);
    quiet = setTimeout(() => messages.stop(), QUIET_MS);
  };
  idle();
  let reached = false;
  try {
    for await (const message of messages) {
      idle();
      const id = message.headers?.get('Nats-Msg-Id') ?? '';
      if (id.startsWith(prefix)) {
        const seq = Number(id.slice(prefix.length));
        if (Number.isInteger(seq) && seq >= options.fromSeq) found.add(seq);
      }
      if (message.seq >= end) {
        reached = true;
        break;
      }
    }
  } finally {
    clearTimeout(quiet);
    messages.stop();
  }
  // A scan cut short (the connection dropped, the stream went quiet) proves nothing: check again later.
  if (!reached) throw new Error(`the check of the stream stopped before its sequence ${end}`);
  return found;
}
