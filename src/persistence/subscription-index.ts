/**
 * Subscriptions of persistent sessions, in memory for matching (LevelDB holds
 * the truth; see store.ts). The matcher is qlobber's QlobberSub,
 * the same one aedes' in-memory persistence uses, so results and their order
 * are what aedes expects. Semantics follow aedes-persistence's reference:
 * QoS 0 subscriptions are kept per client (restored on reconnect) but not in
 * the matcher, since no message is queued for them.
 */
import { createRequire } from 'node:module';
import type { SubscriptionRecord } from './codec.js';

/** What subscriptionsByTopic() returns per matching subscription. */
export interface MatchedSubscription {
  clientId: string;
  topic: string;
  qos: number;
  rh?: number | undefined;
  rap?: boolean | undefined;
  nl?: boolean | undefined;
  /** MQTT 5: queued copies carry it as a live delivery does [MQTT-3.3.4-3]. */
  subscriptionIdentifier?: number | undefined;
}

/** A subscription as aedes passes it to addSubscriptions(). */
export interface SubscriptionInput {
  topic: string;
  qos: number;
  rh?: number;
  rap?: boolean;
  nl?: boolean;
  subscriptionIdentifier?: number;
}

interface QlobberSub {
  readonly subscriptionsCount: number;
  add(topic: string, value: MatchedSubscription): unknown;
  remove(topic: string, value: { clientId: string; topic: string }): unknown;
  match(topic: string): MatchedSubscription[];
}

/** Topics whose matches are remembered at once; past it the memory starts over. */
const MAX_CACHED_TOPICS = 10_000;

type QlobberSubConstructor = new (options: Record<string, unknown>) => QlobberSub;

// qlobber ships CommonJS without type declarations; the typed surface above is
// the part used here.
const QlobberSubClass = createRequire(import.meta.url)('qlobber/aedes/qlobber-sub.js') as QlobberSubConstructor;

const QLOBBER_OPTIONS = {
  separator: '/',
  wildcard_one: '+',
  wildcard_some: '#',
  // `+` matches an empty level too [MQTT-4.7.1-3], as aedes' own mqemitter
  // does; without it, `+/b` would queue nothing for a message on `/b`.
  match_empty_levels: true,
};

const NO_MATCHES: readonly MatchedSubscription[] = Object.freeze([]);

export class SubscriptionIndex {
  readonly #byClient = new Map<string, Map<string, SubscriptionRecord>>();
  // Exact filter → clients, in subscription order (getClientList).
  readonly #byFilter = new Map<string, Set<string>>();
  readonly #trie: QlobberSub = new QlobberSubClass(QLOBBER_OPTIONS);
  /**
   * match()'s answers by topic, until the next change of a matchable
   * subscription (#changed): aedes asks once per QoS 1/2 PUBLISH, mostly for
   * the same few topics, and the trie's walk (split, match, one object per
   * result) was ~3% of the broker's CPU on the persistent-session QoS 1 path.
   */
  readonly #matches = new Map<string, readonly MatchedSubscription[]>();

  /** Subscriptions with QoS > 0 (the ones messages are queued for). */
  get matchableCount(): number {
    return this.#trie.subscriptionsCount;
  }

  /** Clients with at least one subscription. */
  get clientCount(): number {
    return this.#byClient.size;
  }

  has(clientId: string): boolean {
    return this.#byClient.has(clientId);
  }

  clients(): IterableIterator<string> {
    return this.#byClient.keys();
  }

  /**
   * Adds or replaces subscriptions; returns the resulting record per topic
   * (for a topic repeated in `subs`, the last one wins).
   */
  add(clientId: string, subs: readonly SubscriptionInput[]): Map<string, SubscriptionRecord> {
    const changed = new Map<string, SubscriptionRecord>();
    for (const sub of subs) {
      const record: SubscriptionRecord = { qos: sub.qos as 0 | 1 | 2, rh: sub.rh, rap: sub.rap, nl: sub.nl };
      // Kept only when present, so pre-MQTT 5 records keep their exact shape.
      if (sub.subscriptionIdentifier !== undefined) record.subscriptionIdentifier = sub.subscriptionIdentifier;
      this.restore(clientId, sub.topic, record);
      changed.set(sub.topic, record);
    }
    return changed;
  }

  /** Puts one record in place (also used when loading the store). */
  restore(clientId: string, topic: string, record: SubscriptionRecord): void {
    let stored = this.#byClient.get(clientId);
    if (!stored) {
      stored = new Map();
      this.#byClient.set(clientId, stored);
    }
    const previous = stored.get(topic);
    if (record.qos > 0) {
      this.#trie.add(topic, { clientId, topic, qos: record.qos, rh: record.rh, rap: record.rap, nl: record.nl });
      this.#matches.clear();
    } else if (previous && previous.qos > 0) {
      this.#trie.remove(topic, { clientId, topic });
      this.#matches.clear();
    }
    stored.set(topic, record);
    let clients = this.#byFilter.get(topic);
    if (!clients) {
      clients = new Set();
      this.#byFilter.set(topic, clients);
    }
    clients.add(clientId);
  }

  /** Removes the given filters; returns those that existed. */
  remove(clientId: string, topics: readonly string[]): string[] {
    const stored = this.#byClient.get(clientId);
    if (!stored) return [];
    const removed: string[] = [];
    for (const topic of topics) {
      const record = stored.get(topic);
      if (!record) continue;
      if (record.qos > 0) {
        this.#trie.remove(topic, { clientId, topic });
        this.#matches.clear();
      }
      stored.delete(topic);
      this.#forgetFilter(topic, clientId);
      removed.push(topic);
    }
    if (stored.size === 0) this.#byClient.delete(clientId);
    return removed;
  }

  /** Removes every subscription of the client; returns the removed filters. */
  clear(clientId: string): string[] {
    const stored = this.#byClient.get(clientId);
    return stored ? this.remove(clientId, [...stored.keys()]) : [];
  }

  byClient(clientId: string): Array<{ topic: string } & SubscriptionRecord> {
    const stored = this.#byClient.get(clientId);
    if (!stored) return [];
    return [...stored].map(([topic, record]) => ({ topic, ...record }));
  }

  /** Whether the client holds a subscription to exactly `topic`. */
  holds(clientId: string, topic: string): boolean {
    return this.#byClient.get(clientId)?.has(topic) ?? false;
  }

  /** Every subscription whose filter starts with `prefix`; a scan of all subscriptions. */
  withPrefix(prefix: string): MatchedSubscription[] {
    const found: MatchedSubscription[] = [];
    for (const [clientId, stored] of this.#byClient) {
      for (const [topic, record] of stored) if (topic.startsWith(prefix)) found.push({ clientId, topic, qos: record.qos, rap: record.rap });
    }
    return found;
  }

  /**
   * The subscriptions above QoS 0 that match `topic`. The answer is shared
   * by every caller until subscriptions change, so it is frozen: read it,
   * copy it to change it.
   */
  match(topic: string): readonly MatchedSubscription[] {
    // No persistent session subscribes above QoS 0 (clean sessions only, say): nothing to split and walk.
    if (this.#trie.subscriptionsCount === 0) return NO_MATCHES;
    const cached = this.#matches.get(topic);
    if (cached !== undefined) return cached;
    const matched = this.#trie.match(topic);
    // QlobberSub keeps qos, rh, rap and nl of a value, not the identifier: added from the record.
    for (const sub of matched) {
      const id = this.#byClient.get(sub.clientId)?.get(sub.topic)?.subscriptionIdentifier;
      if (id !== undefined) sub.subscriptionIdentifier = id;
      Object.freeze(sub);
    }
    if (this.#matches.size >= MAX_CACHED_TOPICS) this.#matches.clear();
    const answer = Object.freeze(matched);
    this.#matches.set(topic, answer);
    return answer;
  }

  clientsOf(filter: string): string[] {
    return [...(this.#byFilter.get(filter) ?? [])];
  }

  #forgetFilter(topic: string, clientId: string): void {
    const clients = this.#byFilter.get(topic);
    if (!clients) return;
    clients.delete(clientId);
    if (clients.size === 0) this.#byFilter.delete(topic);
  }
}
