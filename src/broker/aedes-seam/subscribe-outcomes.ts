/**
 * What a SUBSCRIBE leaves behind for a filter the broker refused: nothing in
 * the persistent session, and, to an MQTT 5 client, the reason in its SUBACK.
 *
 * 1. The session. aedes 2.0.0-beta.1 stores a persistent session's
 *    subscriptions once per granted filter, each time the SUBSCRIBE packet's
 *    whole list (handlers/subscribe.js storeSubscriptions:
 *    `addSubscriptions(client, packet.subscriptions)`), refused filters
 *    included. A filter refused in the SUBACK (by the ACL or a limit) was
 *    then kept with the session: the store queued messages on it while the
 *    client was away and resent them at its next CONNECT, though the client
 *    had been told it was not subscribed [MQTT-3.9.3-1]. Here the
 *    authorizeSubscribe aedes calls marks each filter the whole chain (ACL,
 *    limits, shared subscriptions) granted, before aedes goes on to store
 *    it, and the store is handed only marked filters. Each granted filter's
 *    own call stores it (marked by then), so every granted filter is stored
 *    before its SUBACK, as before; a filter still being decided is left to
 *    its own call.
 * 2. The SUBACK. aedes answers every filter authorizeSubscribe refuses with
 *    0x87 Not authorized to an MQTT 5 client (128 to 3.1.1, which has one
 *    failure code), whatever the reason. MQTT 5.0 has codes for the broker's
 *    own limits (3.9.3): 0x8F Topic Filter invalid (over
 *    limits.maxTopicLengthBytes or maxTopicLevels), 0x97 Quota exceeded
 *    (over limits.maxSubscriptionsPerClient). A limit says so with
 *    refuseFilter. A v5 client's SUBSCRIBE is remembered by its packet
 *    identifier from when it is parsed (rememberSubscribe, from the parser
 *    listener of shared.ts) until its SUBACK is written, which the client
 *    awaits before it may use that identifier again [MQTT-2.2.1-3]; in the
 *    SUBACK aedes writes (packet-writes.ts), a refused filter's 0x87 becomes
 *    the code its limit gave. The SUBACK's codes follow `packet.subscriptions`
 *    as aedes left it (its _dedupe may replace the array, on the same packet)
 *    [MQTT-3.9.3-1].
 *
 * Touches of aedes (2.0.0-beta.1): `aedes.authorizeSubscribe` (called as
 * `client.broker.authorizeSubscribe(client, sub, done)` with an entry of the
 * packet's `subscriptions`), `aedes.persistence.addSubscriptions`, Client
 * `version`, the SubAck packet `{ cmd, messageId, granted }`. Canaries:
 * test/aedes-canaries-v5.test.ts.
 */
import type { Aedes, Client, Subscription } from 'aedes';
import { rewriteSubacks, type WrittenSuback } from './packet-writes.js';

/** MQTT 5.0 SUBACK Reason Codes (3.9.3) the broker gives. */
export const SUBACK_NOT_AUTHORIZED = 0x87;
export const SUBACK_TOPIC_FILTER_INVALID = 0x8f;
export const SUBACK_QUOTA_EXCEEDED = 0x97;

const GRANTED = Symbol('edgemqtt.subscriptionGranted');
const REFUSAL = Symbol('edgemqtt.subscriptionRefusal');
const SUBSCRIBES = Symbol('edgemqtt.subscribesAwaitingSuback');

type Marked = { [GRANTED]?: true; [REFUSAL]?: number };

interface SubscribePacket {
  messageId?: number;
  subscriptions?: object[];
}

type Tracked = { version?: number | null; [SUBSCRIBES]?: Map<number, SubscribePacket> };

type AuthorizeSubscribe = (client: Client, sub: Subscription, done: (error: Error | null, sub?: Subscription | null) => void) => void;

interface SubscriptionStore {
  addSubscriptions(client: Client, subs: readonly object[]): Promise<void>;
}

/**
 * Tells the SUBACK why `subscription` (the entry of the SUBSCRIBE aedes
 * handed authorizeSubscribe) is refused: the MQTT 5 Reason Code to send
 * instead of 0x87. Call before refusing it.
 */
export function refuseFilter(subscription: object, reasonCode: number): void {
  (subscription as Marked)[REFUSAL] = reasonCode;
}

/** Remembers an MQTT 5 client's SUBSCRIBE until its SUBACK (see the header); for the parser's 'packet' listener. */
export function rememberSubscribe(client: Client, packet: SubscribePacket): void {
  const tracked = client as unknown as Tracked;
  if (tracked.version !== 5 || typeof packet.messageId !== 'number') return;
  (tracked[SUBSCRIBES] ??= new Map()).set(packet.messageId, packet);
}

/** The SUBACK as it goes to `client`: refusals with their own Reason Code (a copy), or the packet itself. */
function withReasonCodes(client: Client, suback: WrittenSuback): WrittenSuback {
  const tracked = client as unknown as Tracked;
  const subscribes = tracked[SUBSCRIBES];
  if (subscribes === undefined || typeof suback.messageId !== 'number') return suback;
  const subscribe = subscribes.get(suback.messageId);
  if (subscribe === undefined) return suback;
  subscribes.delete(suback.messageId);
  // An idle client keeps no empty Map.
  if (subscribes.size === 0) tracked[SUBSCRIBES] = undefined;
  const subscriptions = subscribe.subscriptions ?? [];
  let granted = suback.granted;
  for (let i = 0; i < subscriptions.length && i < granted.length; i++) {
    const code = (subscriptions[i] as Marked)[REFUSAL];
    if (code === undefined || granted[i] !== SUBACK_NOT_AUTHORIZED) continue;
    if (granted === suback.granted) granted = granted.slice();
    granted[i] = code;
  }
  return granted === suback.granted ? suback : { ...suback, granted };
}

/**
 * Installs both corrections (see the header) on `aedes`; call after
 * `listen()` (the persistence exists then) and before any client connects.
 */
export function installSubscribeOutcomes(aedes: Aedes): void {
  const broker = aedes as unknown as { authorizeSubscribe: AuthorizeSubscribe; persistence: SubscriptionStore };
  const authorize = broker.authorizeSubscribe;
  broker.authorizeSubscribe = function authorizeAndMark(client, sub, done) {
    authorize.call(this, client, sub, (error, allowed) => {
      if (!error && allowed) (sub as Marked)[GRANTED] = true;
      done(error, allowed);
    });
  };
  const persistence = broker.persistence;
  const addSubscriptions = persistence.addSubscriptions;
  persistence.addSubscriptions = function addGranted(client, subs) {
    const granted = subs.filter((sub) => (sub as Marked)[GRANTED] === true);
    return granted.length === 0 ? Promise.resolve() : addSubscriptions.call(this, client, granted);
  };
  rewriteSubacks(aedes, withReasonCodes);
}
