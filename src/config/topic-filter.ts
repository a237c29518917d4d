/**
 * MQTT topic filter matching [MQTT-4.7], shared by the broker's delivery
 * rules and the bridge's export and import rules.
 */

const HASH = 0x23; // #
const PLUS = 0x2b; // +
const DOLLAR = 0x24; // $

/**
 * Whether an MQTT topic filter matches a topic name [MQTT-4.7]: `+` is one
 * level (possibly empty), `#` is the rest including the parent level, and a
 * filter starting with a wildcard does not match a `$` topic [MQTT-4.7.2-1].
 */
export function topicMatches(filter: string, topic: string): boolean {
  // The most common filter of all, on every delivery to a client subscribed to everything.
  if (filter === '#') return topic.charCodeAt(0) !== DOLLAR;
  const first = filter.charCodeAt(0);
  if ((first === HASH || first === PLUS) && topic.charCodeAt(0) === DOLLAR) return false;
  // Level by level on both strings in place: this runs for deliveries and bridge messages, and
  // splitting both into arrays of strings was most of its cost.
  const filterLength = filter.length;
  const topicLength = topic.length;
  let f = 0; // start of the filter's current level
  let t = 0; // start of the topic's current level; past its end once its last level is used
  while (f <= filterLength) {
    let filterEnd = filter.indexOf('/', f);
    if (filterEnd === -1) filterEnd = filterLength;
    const wildcard = filterEnd - f === 1 ? filter.charCodeAt(f) : 0;
    if (wildcard === HASH) return true;
    if (t > topicLength) return false;
    let topicEnd = topic.indexOf('/', t);
    if (topicEnd === -1) topicEnd = topicLength;
    if (wildcard !== PLUS) {
      const length = filterEnd - f;
      if (length !== topicEnd - t) return false;
      for (let i = 0; i < length; i++) if (filter.charCodeAt(f + i) !== topic.charCodeAt(t + i)) return false;
    }
    f = filterEnd + 1;
    t = topicEnd + 1;
  }
  return t > topicLength;
}
