/**
 * MQTT topic <-> NATS subject mapping for the JetStream bridge, the same one
 * nats-server's own MQTT listener applies (server/mqtt.go,
 * mqttToNATSSubjectConversion and natsSubjectToMQTTTopic, 2.10+), so that a
 * message bridged from here lands on the subject an MQTT client of
 * nats-server would have published it to, and the other way round.
 *
 * nats-server converts character by character; stated per level it is:
 *   - the levels of a topic (split on '/') are the tokens of the subject
 *     (joined with '.'): `a/b` -> `a.b`;
 *   - an empty level becomes the token `/`, since NATS has no empty tokens.
 *     This one rule is mqtt.go's three '/' clauses: a leading '/' -> `/.`
 *     (`/a` -> `/.a`), a '/' before another '/' or at the end -> `./`
 *     (`a//b` -> `a./.b`, `a/` -> `a./`), and a '/' following a `/.` is
 *     `/.` again with a `/` appended if the subject then ends in '.'
 *     (`/` -> `/./`, `//` -> `/././`). Older servers (< 2.10) left a lone
 *     `/` as `/`; that is irreversible ('/' vs an empty topic) and not followed;
 *   - a '.' inside a level becomes `//` (2.10+; older servers refused '.'):
 *     `a.b` -> `a//b`, so every '/' in a subject is either the whole
 *     empty-level token or one of a pair;
 *   - in filters '+' -> '*' and '#' -> '>', and `x/#` also subscribes `x`
 *     (mqtt.go mqttNeedSubForLevelUp), as `#` matches the parent level too
 *     (MQTT 3.1.1 section 4.7.1.2). An empty level is a token `/` that NATS `*`
 *     matches, as MQTT `+` matches an empty level [MQTT-4.7.1-3].
 *
 * Unlike nats-server (which only refuses ' '), anything that would not come
 * back unchanged is refused here, with a reason, instead of being mangled:
 * whitespace and control characters (not allowed in NATS subjects), NATS
 * wildcards inside a level, `$` topics (server-specific, never exported
 * [MQTT-4.7.2-1]) and, on import, subjects this mapping never produces
 * (nats-server's reverse silently drops a stray '/': `a/b` -> `ab`). So
 * subjectToTopic(p, topicToSubject(p, t)) === t for every accepted t, and
 * topicToSubject(p, subjectToTopic(p, s)) === s for every accepted s.
 */

export type Mapped = { ok: true; subject: string } | { ok: false; reason: string };

type Refused = { ok: false; reason: string };

/** A NATS subject prefix: tokens of [A-Za-z0-9_-] joined by single dots. */
const PREFIX = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$/;
/** Unicode White_Space (space, tab, NBSP, U+2028, U+3000, ...): NATS splits protocol lines on whitespace. */
const WHITESPACE = /\p{White_Space}/u;
/** C0 and C1 controls: [MQTT-1.5.3-2] forbids U+0000, section 1.5.3 advises against the rest. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
/** With the u flag only unpaired surrogates match: they have no UTF-8 encoding [MQTT-1.5.3-1]. */
const LONE_SURROGATE = /\p{Surrogate}/u;
/** Token standing for an empty MQTT level (mqtt.go: '/' -> '/.' or './'). */
const EMPTY_LEVEL = '/';

/** Whether a prefix is a valid NATS subject prefix (tokens of [A-Za-z0-9_-] separated by single dots, no wildcards), '' allowed. */
export function isValidPrefix(prefix: string): boolean {
  return prefix === '' || PREFIX.test(prefix);
}

export function topicToSubject(prefix: string, topic: string): Mapped {
  const refused = checkPrefix(prefix) ?? checkTopic(topic, false);
  if (refused) return refused;
  return { ok: true, subject: withPrefix(prefix, topic.split('/').map(levelToToken)) };
}

export function subjectToTopic(
  prefix: string,
  subject: string,
): { ok: true; topic: string } | { ok: false; reason: string } {
  const refusedPrefix = checkPrefix(prefix);
  if (refusedPrefix) return refusedPrefix;
  let rest = subject;
  if (prefix !== '') {
    // The prefix must end on a token boundary: `mqttx.a` is not under `mqtt`.
    if (!subject.startsWith(`${prefix}.`)) return refuse(`subject ${show(subject)} is not under prefix ${show(prefix)}`);
    rest = subject.slice(prefix.length + 1);
  }
  if (rest === '') return refuse(`subject ${show(subject)} has no topic after the prefix`);
  const levels: string[] = [];
  for (const token of rest.split('.')) {
    // `a..b`, `.a`, `a.`: not a valid NATS subject, and no topic maps to it.
    if (token === '') return refuse(`subject ${show(subject)} has an empty token`);
    if (token === EMPTY_LEVEL) {
      levels.push('');
      continue;
    }
    // Pairs of '/' read left to right are the '.'s of the level; a '/' left
    // over (`a/b`, `a///b`) was not written by the mapping (see above).
    const level = token.replaceAll('//', '.');
    if (level.includes('/')) return refuse(`subject token ${show(token)} has a '/' that is neither an empty level nor an escaped '.'`);
    levels.push(level);
  }
  const topic = levels.join('/');
  // Same checks as the export (NATS wildcards, whitespace, '$', '+', '#'...),
  // so imports bring in exactly the topics the export would send out.
  const refusedTopic = checkTopic(topic, false);
  if (refusedTopic) return refuse(`subject ${show(subject)} maps to a refused topic: ${refusedTopic.reason}`);
  return { ok: true, topic };
}

/** NATS subjects to subscribe for an MQTT topic filter (one, or two for a trailing '#'); refused for filters that cannot be mapped. */
export function filterToSubjects(
  prefix: string,
  filter: string,
): { ok: true; subjects: string[] } | { ok: false; reason: string } {
  const refused = checkPrefix(prefix) ?? checkTopic(filter, true);
  if (refused) return refused;
  // checkTopic has made sure '+' and '#' are whole levels and '#' is last.
  const tokens = filter.split('/').map((level) => (level === '+' ? '*' : level === '#' ? '>' : levelToToken(level)));
  const subjects = [withPrefix(prefix, tokens)];
  // `x/#` matches `x` itself (MQTT 3.1.1 section 4.7.1.2: "sport/tennis/player1/#"
  // matches "sport/tennis/player1"), NATS `x.>` does not: subscribe `x` too, as
  // nats-server does. A bare `#` has no parent level. For `/#` the parent is the
  // subject `/` (the empty topic, which no PUBLISH can carry [MQTT-4.7.3-1]):
  // harmless and kept, as nats-server subscribes it too.
  if (tokens.length > 1 && tokens[tokens.length - 1] === '>') subjects.push(withPrefix(prefix, tokens.slice(0, -1)));
  return { ok: true, subjects };
}

/** One MQTT level to one NATS token: '' -> '/', '.' -> '//' (mqtt.go, 2.10+). */
function levelToToken(level: string): string {
  return level === '' ? EMPTY_LEVEL : level.replaceAll('.', '//');
}

function withPrefix(prefix: string, tokens: string[]): string {
  const mapped = tokens.join('.');
  return prefix === '' ? mapped : `${prefix}.${mapped}`;
}

function checkPrefix(prefix: string): Refused | undefined {
  if (isValidPrefix(prefix)) return undefined;
  return refuse(`invalid subject prefix ${show(prefix)}: expected tokens of [A-Za-z0-9_-] separated by single dots`);
}

/**
 * Why a topic name (or, with `isFilter`, a topic filter) cannot be mapped
 * reversibly, or undefined if it can. Order matters only for which reason a
 * topic with several faults gets; whitespace is checked before controls so a
 * tab (both) is reported as whitespace.
 */
function checkTopic(topic: string, isFilter: boolean): Refused | undefined {
  const what = isFilter ? 'topic filter' : 'topic';
  // [MQTT-4.7.3-1]: topic names and filters are at least one character long.
  if (topic === '') return refuse(`empty ${what} [MQTT-4.7.3-1]`);
  // `$SYS/...` and the like belong to the server they come from; a filter
  // `$SYS/#` would bridge another broker's internals [MQTT-4.7.2-1].
  if (topic.startsWith('$')) return refuse(`${what} ${show(topic)} starts with '$': reserved for server topics, never bridged [MQTT-4.7.2-1]`);
  const surrogate = LONE_SURROGATE.exec(topic);
  if (surrogate) return refuse(`${what} has an unpaired surrogate ${codePoint(surrogate[0])}: not well-formed UTF-8 [MQTT-1.5.3-1]`);
  // MQTT allows spaces (section 4.7.3) but a NATS subject cannot hold any
  // whitespace; nats-server refuses ' ' too.
  const space = WHITESPACE.exec(topic);
  if (space) return refuse(`${what} has whitespace ${codePoint(space[0])} at index ${space.index}: not allowed in NATS subjects`);
  const control = CONTROL.exec(topic);
  if (control) return refuse(`${what} has control character ${codePoint(control[0])} at index ${control.index} [MQTT-1.5.3-2]`);
  const levels = topic.split('/');
  for (const [i, level] of levels.entries()) {
    if (isFilter) {
      // [MQTT-4.7.1-2]: '#' alone in its level and the last level.
      if (level.includes('#') && (level !== '#' || i !== levels.length - 1))
        return refuse(`'#' must be a whole level and the last one [MQTT-4.7.1-2], in ${show(topic)}`);
      // [MQTT-4.7.1-3]: '+' alone in its level.
      if (level.includes('+') && level !== '+') return refuse(`'+' must be a whole level [MQTT-4.7.1-3], in ${show(topic)}`);
    } else if (/[+#]/.test(level)) {
      // [MQTT-3.3.2-2], [MQTT-4.7.1-1]: wildcards only in filters.
      return refuse(`wildcard '+' or '#' in topic name ${show(topic)} [MQTT-3.3.2-2]`);
    }
    // A token `*` or `>` would be a NATS wildcard; inside a token NATS takes
    // them literally, but clients and ACL tools treat them inconsistently.
    if (/[*>]/.test(level)) return refuse(`${what} level ${show(level)} has a NATS wildcard '*' or '>'`);
  }
  return undefined;
}

function refuse(reason: string): Refused {
  return { ok: false, reason };
}

function show(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
}

function codePoint(char: string): string {
  return `U+${(char.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * topicToSubject and subjectToTopic for one prefix, remembering the last
 * `max` topics and subjects they mapped: a gateway's topics repeat (a sensor
 * publishes to the same few), and the mapping checks every character each
 * time (an exported message is mapped when it enters the outbox and when it
 * is sent). Full, a direction starts over. Topics and subjects longer than
 * MAX_CACHED are mapped each time, so that the cache stays within a few MB
 * whatever clients publish.
 */
const MAX_CACHED = 256;

export class SubjectCache {
  readonly #prefix: string;
  readonly #max: number;
  readonly #subjects = new Map<string, Mapped>();
  readonly #topics = new Map<string, ReturnType<typeof subjectToTopic>>();

  constructor(prefix: string, max = 4096) {
    this.#prefix = prefix;
    this.#max = max;
  }

  subjectOf(topic: string): Mapped {
    return remembered(this.#subjects, topic, this.#max, () => topicToSubject(this.#prefix, topic));
  }

  topicOf(subject: string): ReturnType<typeof subjectToTopic> {
    return remembered(this.#topics, subject, this.#max, () => subjectToTopic(this.#prefix, subject));
  }
}

function remembered<T>(cache: Map<string, T>, key: string, max: number, map: () => T): T {
  if (key.length > MAX_CACHED) return map();
  let value = cache.get(key);
  if (value === undefined) {
    value = map();
    if (cache.size >= max) cache.clear();
    cache.set(key, value);
  }
  return value;
}
