/**
 * MQTT topic filter matching [MQTT-4.7], shared by the broker's delivery
 * rules and the bridge's export and import rules.
 */

/**
 * Whether an MQTT topic filter matches a topic name [MQTT-4.7]: `+` is one
 * level (possibly empty), `#` is the rest including the parent level, and a
 * filter starting with a wildcard does not match a `$` topic [MQTT-4.7.2-1].
 */
export function topicMatches(filter: string, topic: string): boolean {
  const filterLevels = filter.split('/');
  const topicLevels = topic.split('/');
  if ((filterLevels[0] === '#' || filterLevels[0] === '+') && topic.startsWith('$')) return false;
  for (let i = 0; i < filterLevels.length; i++) {
    const level = filterLevels[i];
    if (level === '#') return true;
    if (i >= topicLevels.length) return false;
    if (level !== '+' && level !== topicLevels[i]) return false;
  }
  return filterLevels.length === topicLevels.length;
}
