/**
 * Who gets a queued copy of a message, from the subscriptions aedes found
 * matching it (outgoingEnqueueCombi in level-persistence.ts).
 */
import type { PacketLike } from './codec.js';
import type { Recipient } from './queue-store.js';
import type { MatchedSubscription } from './subscription-index.js';

/** A subscription as aedes hands it to outgoingEnqueueCombi (one per matching subscription): ours from subscriptionsByTopic, or a bare recipient. */
export type MatchingSubscription = Recipient & Partial<Pick<MatchedSubscription, 'rap' | 'nl' | 'subscriptionIdentifier'>>;

/** Whether a matching subscription has MQTT 5 options that change its queued copy. */
export function hasOptions(sub: MatchingSubscription | undefined): boolean {
  return sub !== undefined && (sub.nl === true || sub.rap !== undefined || sub.subscriptionIdentifier !== undefined);
}

/**
 * One recipient per client (correction 1 in level-persistence.ts' header), judged over its
 * matching subscriptions as a live delivery is (src/broker/delivery-rules.ts,
 * rule 5): for the client's own message (the broker stamps the publisher's
 * client id on it, aedes-seam), a subscription with No Local does not count
 * [MQTT-3.8.3-3], and a client with no other is not queued a copy; the QoS
 * is the highest grant of those that count (a subscription without a QoS
 * grants the published one); RETAIN is cleared unless one of them has
 * Retain As Published [MQTT-3.3.1-12/13] (3.1.1 subscriptions have no such
 * option and keep it, as before); their Subscription Identifiers go with the
 * copy [MQTT-3.3.4-3].
 */
export function recipientsOf(subs: readonly MatchingSubscription[], packet: PacketLike): Recipient[] {
  const publisher = packet.clientId;
  const perClient = new Map<string, { qos: number | undefined; rap: boolean | undefined; ids: number[] | undefined }>();
  for (const sub of subs) {
    if (sub.nl === true && sub.clientId === publisher) continue;
    const seen = perClient.get(sub.clientId);
    const id = sub.subscriptionIdentifier;
    if (!seen) {
      perClient.set(sub.clientId, { qos: sub.qos, rap: sub.rap, ids: id === undefined ? undefined : [id] });
      continue;
    }
    if (grantOf(sub) > grantOf(seen)) seen.qos = sub.qos;
    if (sub.rap === true || seen.rap === undefined) seen.rap = sub.rap;
    if (id !== undefined && !(seen.ids ??= []).includes(id)) seen.ids.push(id);
  }
  const recipients: Recipient[] = [];
  for (const [clientId, { qos, rap, ids }] of perClient) {
    const recipient: Recipient = { clientId };
    if (qos !== undefined) recipient.qos = qos;
    if (rap === false && packet.retain === true) recipient.retain = false;
    if (ids) recipient.subscriptionIdentifiers = ids;
    recipients.push(recipient);
  }
  return recipients;
}

function grantOf(sub: { qos?: number | undefined }): number {
  return sub.qos ?? Infinity;
}

/** The recipients of a message from its matching subscriptions: a single plain one as it is (the usual case), else recipientsOf. */
export function queuedRecipients(subs: readonly MatchingSubscription[], packet: PacketLike): readonly Recipient[] {
  return subs.length > 1 || hasOptions(subs[0]) ? recipientsOf(subs, packet) : subs;
}
