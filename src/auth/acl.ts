/**
 * Topic access control, read from a Mosquitto-style ACL file (mosquitto.conf
 * `acl_file` semantics):
 *
 *   # comment
 *   topic read $SYS/#                 ← before any `user` line: anonymous clients
 *   user alice
 *   topic readwrite plant/#           ← alice only
 *   topic sensors/+/temp              ← access omitted: readwrite
 *   pattern write devices/%u/#        ← every client, %u = user name, %c = client id
 *
 * Whatever no rule grants is denied. A rule whose filter does not start with
 * `$` never matches a `$` topic (as Mosquitto; and [MQTT-4.7.2-1] for
 * wildcards). Pattern rules with %u do not apply to anonymous clients, and no
 * pattern applies to a client whose user name or client id contains `+`, `#`
 * or `/`: substituted, those would widen the filter.
 *
 * Compiled, not interpreted: the rules of each user (and of the anonymous
 * section, and the patterns) go into tries (qlobber), so a check costs one
 * walk down the topic's levels per rule set, however many rules there are.
 */
import { createRequire } from 'node:module';
import { SecurityFileError } from '../errors.js';
import { readSecurityFile } from '../util/read-security-file.js';
import { MAX_TOPIC_LEVELS } from '../config/limits-schema.js';

/** Most levels a filter may have: qlobber's limit, and aedes' maxTopicLevels (limits.maxTopicLevels at most). */
const MAX_LEVELS = MAX_TOPIC_LEVELS;

interface QlobberTrue {
  add(filter: string): unknown;
  test(topic: string): boolean;
}
type QlobberTrueConstructor = new (options: Record<string, unknown>) => QlobberTrue;
// qlobber ships CommonJS without type declarations; the typed surface above is
// the part used here.
const { QlobberTrue: QlobberTrueClass } = createRequire(import.meta.url)('qlobber') as { QlobberTrue: QlobberTrueConstructor };

const QLOBBER_OPTIONS = {
  separator: '/',
  wildcard_one: '+',
  wildcard_some: '#',
  // `+` matches an empty level too [MQTT-4.7.1-3].
  match_empty_levels: true,
  max_words: MAX_LEVELS,
};

export interface AclRule {
  filter: string;
  read: boolean;
  write: boolean;
  /** Line in the file, for messages. */
  line: number;
}

/** The parsed file, before compilation. */
export interface AclRules {
  /** Rules before the first `user` line. */
  anonymous: AclRule[];
  users: Map<string, AclRule[]>;
  patterns: AclRule[];
}

/** Whether a filter has a wildcard level. */
function hasWildcard(filter: string): boolean {
  return filter.includes('+') || filter.includes('#');
}

/**
 * Whether every topic that `inner` matches is matched by `outer`, both topic
 * filters: the test for SUBSCRIBE, where a client may subscribe to a filter
 * only if a read rule covers all of it.
 */
export function filterCovers(outer: string, inner: string): boolean {
  return levelsCover(outer.split('/'), inner.split('/'));
}

function levelsCover(o: readonly string[], i: readonly string[]): boolean {
  // A rule starting with a wildcard never matches a `$` topic.
  if ((o[0] === '+' || o[0] === '#') && i[0]!.startsWith('$')) return false;
  for (let level = 0; level < o.length; level++) {
    const rule = o[level];
    // `#` matches the rest, the parent level included [MQTT-4.7.1-2].
    if (rule === '#') return true;
    if (level >= i.length) return false;
    const wanted = i[level];
    if (wanted === '#') return false;
    if (rule === '+') continue;
    if (wanted === '+' || wanted !== rule) return false;
  }
  return o.length === i.length;
}

/** Why a topic filter is invalid [MQTT-4.7.1], or null. */
export function filterProblem(filter: string): string | null {
  if (filter === '') return 'empty topic filter';
  if (filter.includes('\u0000')) return 'topic filter contains U+0000';
  if (Buffer.byteLength(filter, 'utf8') > 65535) return 'topic filter longer than 65535 bytes';
  const levels = filter.split('/');
  if (levels.length > MAX_LEVELS) return `topic filter has more than ${MAX_LEVELS} levels`;
  for (let index = 0; index < levels.length; index++) {
    const level = levels[index]!;
    if (level.includes('#') && (level !== '#' || index !== levels.length - 1)) {
      return `"#" must be a whole level and the last one: ${filter}`;
    }
    if (level.includes('+') && level !== '+') return `"+" must be a whole level: ${filter}`;
  }
  return null;
}

/** Rules compiled for matching: a trie for `$` filters and one for the rest. */
class Matcher {
  #plain: QlobberTrue | undefined;
  #dollar: QlobberTrue | undefined;
  readonly filters: string[] = [];
  /** The filters split into levels, for coverage checks (SUBSCRIBE). */
  readonly #levels: string[][] = [];

  add(filter: string): void {
    this.filters.push(filter);
    this.#levels.push(filter.split('/'));
    if (filter.startsWith('$')) (this.#dollar ??= new QlobberTrueClass(QLOBBER_OPTIONS)).add(filter);
    else (this.#plain ??= new QlobberTrueClass(QLOBBER_OPTIONS)).add(filter);
  }

  /** Whether a rule matches this topic name. */
  test(topic: string): boolean {
    const trie = topic.charCodeAt(0) === 36 /* $ */ ? this.#dollar : this.#plain;
    return trie !== undefined && trie.test(topic);
  }

  /** Whether a rule covers every topic of this filter (see filterCovers). */
  covers(filter: string): boolean {
    if (!hasWildcard(filter)) return this.test(filter);
    const levels = filter.split('/');
    return this.#levels.some((rule) => levelsCover(rule, levels));
  }
}

class RuleSet {
  readonly read = new Matcher();
  readonly write = new Matcher();

  constructor(rules: Iterable<{ filter: string; read: boolean; write: boolean }>) {
    for (const rule of rules) {
      if (rule.read) this.read.add(rule.filter);
      if (rule.write) this.write.add(rule.filter);
    }
  }
}

const EMPTY = new RuleSet([]);

/** What one connected client may do. */
export interface ClientAcl {
  canRead(topic: string): boolean;
  canWrite(topic: string): boolean;
  /** Whether a SUBSCRIBE to this filter is granted: a read rule must cover all of it. */
  canSubscribe(filter: string): boolean;
  /** True when patterns were skipped because the user name or client id holds + # or /. */
  readonly patternsSkipped: boolean;
}

const SUBSTITUTION = /%[uc]/;

export class Acl {
  readonly #anonymous: RuleSet;
  readonly #users = new Map<string, RuleSet>();
  /** Patterns without %u/%c: the same for everyone, compiled once. */
  readonly #staticPatterns: RuleSet;
  /** Patterns with %u/%c, compiled per client. */
  readonly #dynamicPatterns: AclRule[];
  readonly #patternCount: number;
  readonly ruleCount: number;
  readonly userCount: number;

  constructor(rules: AclRules) {
    this.#anonymous = new RuleSet(rules.anonymous);
    for (const [user, userRules] of rules.users) this.#users.set(user, new RuleSet(userRules));
    this.#staticPatterns = new RuleSet(rules.patterns.filter((rule) => !SUBSTITUTION.test(rule.filter)));
    this.#dynamicPatterns = rules.patterns.filter((rule) => SUBSTITUTION.test(rule.filter));
    this.#patternCount = rules.patterns.length;
    this.ruleCount =
      rules.anonymous.length + rules.patterns.length + [...rules.users.values()].reduce((sum, list) => sum + list.length, 0);
    this.userCount = rules.users.size;
  }

  static parse(text: string, file = 'ACL file'): Acl {
    return new Acl(parseAclRules(text, file));
  }

  /** Reads and parses a file. */
  static load(file: string): Acl {
    return Acl.parse(readSecurityFile('EDGEMQTT_ACL_FILE_INVALID', file).toString('utf8'), file);
  }

  /** Whether a `user` section names this user. */
  hasUser(user: string): boolean {
    return this.#users.has(user);
  }

  /** The rules for one client; build it once per connection. `username` null = anonymous. */
  forClient(username: string | null, clientId: string): ClientAcl {
    const own = username === null ? this.#anonymous : (this.#users.get(username) ?? EMPTY);
    const hasPatterns = this.#patternCount > 0;
    const dangerous = /[+#/]/.test(clientId) || (username !== null && /[+#/]/.test(username));
    const sets = [own];
    if (hasPatterns && !dangerous) {
      sets.push(this.#staticPatterns);
      const substituted: AclRule[] = [];
      for (const rule of this.#dynamicPatterns) {
        if (username === null && rule.filter.includes('%u')) continue;
        substituted.push({ ...rule, filter: substitute(rule.filter, username ?? '', clientId) });
      }
      if (substituted.length > 0) sets.push(new RuleSet(substituted));
    }
    const active = sets.filter((set) => set.read.filters.length > 0 || set.write.filters.length > 0);
    const patternsSkipped = hasPatterns && dangerous;
    if (active.length === 1) {
      // The common case (a user's own rules, or only patterns): no loop per check.
      const [set] = active as [RuleSet];
      return {
        canRead: (topic) => set.read.test(topic),
        canWrite: (topic) => set.write.test(topic),
        canSubscribe: (filter) => set.read.covers(filter),
        patternsSkipped,
      };
    }
    return {
      canRead: (topic) => active.some((set) => set.read.test(topic)),
      canWrite: (topic) => active.some((set) => set.write.test(topic)),
      canSubscribe: (filter) => active.some((set) => set.read.covers(filter)),
      patternsSkipped,
    };
  }
}

function substitute(filter: string, username: string, clientId: string): string {
  return filter.replace(/%([uc])/g, (_match, which: string) => (which === 'u' ? username : clientId));
}

const ACCESS: Record<string, { read: boolean; write: boolean }> = {
  read: { read: true, write: false },
  write: { read: false, write: true },
  readwrite: { read: true, write: true },
};

/** Parses the file's text; throws a SecurityFileError listing every problem with its line. */
export function parseAclRules(text: string, file = 'ACL file'): AclRules {
  const rules: AclRules = { anonymous: [], users: new Map(), patterns: [] };
  const problems: string[] = [];
  let user: string | null = null;
  const lines = text.split(/\r?\n/);
  for (let index = 0; index < lines.length; index++) {
    const number = index + 1;
    const line = (lines[index] ?? '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const keyword = /^\S+/.exec(line)![0];
    const rest = line.slice(keyword.length).trim();
    if (keyword === 'user') {
      if (rest === '') {
        problems.push(`line ${number}: user without a name`);
        continue;
      }
      user = rest;
      if (!rules.users.has(user)) rules.users.set(user, []);
      continue;
    }
    if (keyword !== 'topic' && keyword !== 'pattern') {
      problems.push(`line ${number}: unknown keyword ${JSON.stringify(keyword)} (expected user, topic or pattern)`);
      continue;
    }
    if (rest === '') {
      problems.push(`line ${number}: ${keyword} without a topic filter`);
      continue;
    }
    const first = /^\S+/.exec(rest)![0];
    const afterFirst = rest.slice(first.length).trim();
    let access = ACCESS.readwrite!;
    let filter = rest;
    if (afterFirst !== '' && first in ACCESS) {
      access = ACCESS[first]!;
      filter = afterFirst;
    } else if (afterFirst !== '' && first === 'deny') {
      problems.push(`line ${number}: "deny" rules are not supported; grant only what is allowed (everything else is denied)`);
      continue;
    }
    const isPattern = keyword === 'pattern';
    if (!isPattern && SUBSTITUTION.test(filter)) {
      problems.push(`line ${number}: %u and %c are substituted in pattern lines only, not in topic lines`);
      continue;
    }
    // Placeholders stand for one user name or client id, checked as such.
    const problem = filterProblem(isPattern ? filter.replace(/%[uc]/g, 'x') : filter);
    if (problem) {
      problems.push(`line ${number}: ${problem}`);
      continue;
    }
    const rule: AclRule = { filter, read: access.read, write: access.write, line: number };
    if (isPattern) rules.patterns.push(rule);
    else if (user === null) rules.anonymous.push(rule);
    else rules.users.get(user)!.push(rule);
  }
  if (problems.length > 0) throw new SecurityFileError('EDGEMQTT_ACL_FILE_INVALID', file, problems);
  return rules;
}
