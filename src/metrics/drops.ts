/**
 * Messages a subscriber did not get, per cause, from the counters the flow
 * control and the store keep: the one definition behind the metrics'
 * `dropped_messages_total{cause}` and $SYS's dropped figure.
 */
import type { LimitsStats } from '../broker/limits.js';
import type { PersistenceStats } from '../persistence/index.js';

export interface DeliveryDrops {
  /** A full queue: a clean session's in the flow control, a persistent session's in the store. */
  queue_limit: number;
  /** QoS 0 messages to a full socket. */
  outgoing_buffer_full: number;
  /** Larger than the client's MQTT 5 Maximum Packet Size. */
  client_max_packet_size: number;
  /** Message Expiry Interval passed while queued. */
  expired: number;
}

export function deliveryDrops(limits: LimitsStats, store: PersistenceStats): DeliveryDrops {
  const { flow } = limits;
  return {
    queue_limit: flow.droppedQueuedMessages + store.queueDroppedMessages,
    outgoing_buffer_full: flow.droppedQos0Messages,
    client_max_packet_size: flow.oversizeDrops,
    expired: store.expiredMessages,
  };
}
