/**
 * The MQTT topic <-> NATS subject mapping of src/bridge/subjects.ts: a table
 * of known conversions both ways, nats-server's character-level algorithm as
 * an oracle over generated topics, the refusals and the filter subscriptions.
 */
import t from 'tap';
import { filterToSubjects, isValidPrefix, subjectToTopic, topicToSubject } from '../src/bridge/subjects.js';
import { random } from './helpers/random.js';

/**
 * nats-server 2.10+ mqttToNATSSubjectConversion, restated character by
 * character (server/mqtt.go), independent of the per-level implementation
 * under test: a '/' is '/.' first or after a '.', './' last or before a '/',
 * '.' otherwise; a '.' is '//'; a trailing '.' gets a '/' appended.
 */
function natsServerTopicToSubject(topic: string): string {
  let out = '';
  for (let i = 0; i < topic.length; i++) {
    const c = topic[i];
    if (c === '/') {
      if (i === 0 || out.endsWith('.')) out += '/.';
      else if (i === topic.length - 1 || topic[i + 1] === '/') out += './';
      else out += '.';
    } else if (c === '.') out += '//';
    else out += c;
  }
  return out.endsWith('.') ? `${out}/` : out;
}

/** nats-server natsSubjectToMQTTTopic: '/.' -> '/', '//' -> '.', other '/' dropped, '.' -> '/'. */
function natsServerSubjectToTopic(subject: string): string {
  let out = '';
  for (let i = 0; i < subject.length; i++) {
    const c = subject[i];
    if (c === '/') {
      const next = subject[i + 1];
      if (next === '.' || next === '/') {
        out += next === '.' ? '/' : '.';
        i++;
      }
    } else if (c === '.') out += '/';
    else out += c;
  }
  return out;
}

/** MQTT filter matching [MQTT-4.7.1] (no '$' topics are generated here). */
function mqttMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const l = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= l.length || (f[i] !== '+' && f[i] !== l[i])) return false;
  }
  return f.length === l.length;
}

/** NATS subject matching: '*' one token, '>' one or more tokens. */
function natsMatches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (i >= s.length || (p[i] !== '*' && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

/** A test name: JSON with everything outside printable ASCII escaped, so U+2028 and friends cannot break TAP lines. */
function show(value: unknown): string {
  return String(JSON.stringify(value)).replace(/[^\x20-\x7e]/gu, (c) => `\\u{${(c.codePointAt(0) ?? 0).toString(16)}}`);
}

const longLevels = Array.from({ length: 200 }, (_, i) => `level${i}.x`);

// [prefix, topic, subject]
const table: [string, string, string][] = [
  ['', 'a', 'a'],
  ['', 'a/b', 'a.b'],
  ['', 'a/b/c', 'a.b.c'],
  ['', '/a', '/.a'], // leading '/' -> '/.'
  ['', 'a/', 'a./'], // trailing '/' -> './'
  ['', '/a/', '/.a./'],
  ['', 'a//b', 'a./.b'], // '/' before '/' -> './'
  ['', 'a///b', 'a././.b'],
  ['', 'a//', 'a././'],
  ['', '//a', '/./.a'], // '/' after '/.' -> '/.' again
  ['', '/', '/./'], // 2.10+: '/.' then the trailing-'.' fix-up
  ['', '//', '/././'],
  ['', '///', '/./././'],
  ['', 'a.b', 'a//b'], // '.' -> '//'
  ['', 'a.b/c.d', 'a//b.c//d'],
  ['', '.', '//'],
  ['', '..', '////'],
  ['', 'a/./b', 'a.//.b'],
  ['', 'a./b', 'a//.b'],
  ['', 'a/.b', 'a.//b'],
  ['', './', '//./'],
  ['', '/.', '/.//'],
  ['', 'température/salle-1', 'température.salle-1'],
  ['', '🌡/ü/温度', '🌡.ü.温度'],
  ['', 'a$b/c', 'a$b.c'], // '$' only reserved in first position
  ['', longLevels.join('/'), longLevels.map((l) => l.replace('.', '//')).join('.')],
  ['', 'x'.repeat(5000), 'x'.repeat(5000)],
  ['', 'a' + '/'.repeat(64), 'a' + './'.repeat(64)],
  ['mqtt', 'a', 'mqtt.a'],
  ['mqtt', 'a/b', 'mqtt.a.b'],
  ['mqtt', '/a', 'mqtt./.a'],
  ['mqtt', 'a/', 'mqtt.a./'],
  ['mqtt', 'a//b', 'mqtt.a./.b'],
  ['mqtt', '/', 'mqtt././'],
  ['mqtt', 'a.b', 'mqtt.a//b'],
  ['mqtt', 'mqtt', 'mqtt.mqtt'],
  ['site.mqtt', 'a/b', 'site.mqtt.a.b'],
  ['site.mqtt', 'sensors//temp', 'site.mqtt.sensors./.temp'],
  ['site.mqtt', 'x.y/', 'site.mqtt.x//y./'],
  ['site.mqtt', '/', 'site.mqtt././'],
  ['edge-1_A.b2', 'ü', 'edge-1_A.b2.ü'],
];

t.test('table of topics and subjects, both ways', async (t) => {
  t.ok(table.length >= 25);
  for (const [prefix, topic, subject] of table) {
    const label = `${show(prefix)} ${show(topic.slice(0, 40))}`;
    t.same(topicToSubject(prefix, topic), { ok: true, subject }, `export ${label}`);
    t.same(subjectToTopic(prefix, subject), { ok: true, topic }, `import ${label}`);
    // The table itself agrees with nats-server's character-level conversion.
    const bare = prefix === '' ? subject : subject.slice(prefix.length + 1);
    t.equal(natsServerTopicToSubject(topic), bare, `nats-server export ${label}`);
    t.equal(natsServerSubjectToTopic(bare), topic, `nats-server import ${label}`);
  }
});

t.test('generated topics round-trip and agree with nats-server', async (t) => {
  const rand = random(0x5b1ec7);
  // Weighted towards separators and dots, where the edge cases are; a few
  // characters that must be refused keep both branches exercised.
  const alphabet = ['a', 'b', 'Z', '0', '-', '_', '$', 'é', '🌡', '温', '/', '/', '/', '.', '.', ' ', '+', '#', '*', '>', '\t', '\u0085', '\ud800'];
  const prefixes = ['', 'mqtt', 'site.mqtt'];
  let accepted = 0;
  let refused = 0;
  let mismatches = 0;
  for (let n = 0; n < 5000; n++) {
    const length = 1 + Math.floor(rand() * 12);
    let topic = '';
    for (let i = 0; i < length; i++) {
      // Most topics only use the first 14 (always accepted unless led by '$').
      const pool = rand() < 0.9 ? 14 : alphabet.length;
      topic += alphabet[Math.floor(rand() * pool)];
    }
    const prefix = prefixes[n % prefixes.length] ?? '';
    const mapped = topicToSubject(prefix, topic);
    if (!mapped.ok) {
      refused++;
      continue;
    }
    accepted++;
    const back = subjectToTopic(prefix, mapped.subject);
    const bare = prefix === '' ? mapped.subject : mapped.subject.slice(prefix.length + 1);
    const expected = (prefix === '' ? '' : `${prefix}.`) + natsServerTopicToSubject(topic);
    if (!back.ok || back.topic !== topic || mapped.subject !== expected || natsServerSubjectToTopic(bare) !== topic) {
      mismatches++;
      if (mismatches <= 5) t.fail(`topic ${show(topic)} prefix ${show(prefix)}: ${show({ mapped, back, expected })}`);
    }
  }
  t.equal(mismatches, 0, 'every accepted topic round-trips and matches nats-server');
  t.ok(accepted > 3000, `most generated topics accepted (${accepted})`);
  t.ok(refused > 300, `some generated topics refused (${refused})`);
});

t.test('generated subjects either are refused or round-trip', async (t) => {
  const rand = random(0x0ddba11);
  // Tokens the mapping writes, and tokens it never writes or that stand for refused topics.
  const tokens = ['a', 'b1', '/', '//', 'a//b', '////', 'é', '/', 'a', '///', 'a/b', '/a', '', '*', '>', 'x*', '$x', 'a b', '+'];
  let accepted = 0;
  let refused = 0;
  let failures = 0;
  for (let n = 0; n < 5000; n++) {
    const length = 1 + Math.floor(rand() * 6);
    const subject = Array.from({ length }, () => tokens[Math.floor(rand() * (rand() < 0.7 ? 8 : tokens.length))]).join('.');
    const topic = subjectToTopic('', subject);
    if (!topic.ok) {
      refused++;
      continue;
    }
    accepted++;
    const again = topicToSubject('', topic.topic);
    if (!again.ok || again.subject !== subject || natsServerSubjectToTopic(subject) !== topic.topic) {
      failures++;
      if (failures <= 5) t.fail(`subject ${show(subject)} -> ${show(topic.topic)} -> ${show(again)}`);
    }
  }
  t.equal(failures, 0, 'an accepted subject is exactly the subject of its topic, read as nats-server reads it');
  t.ok(accepted > 1000, `enough subjects accepted (${accepted})`);
  t.ok(refused > 1000, `enough subjects refused (${refused})`);
});

t.test('topics that cannot be mapped are refused with a reason', async (t) => {
  const cases: [topic: string, reason: RegExp][] = [
    ['', /^empty topic \[MQTT-4\.7\.3-1\]$/],
    ['a b', /whitespace U\+0020 at index 1/],
    ['a\tb', /whitespace U\+0009/],
    ['a\u00a0b', /whitespace U\+00A0/],
    ['a/\u2028', /whitespace U\+2028/],
    ['\u3000', /whitespace U\+3000/],
    ['a\u0085', /whitespace U\+0085/],
    ['a\u0000b', /control character U\+0000 at index 1/],
    ['a/\u001f', /control character U\+001F/],
    ['\u007f', /control character U\+007F/],
    ['x\u0080', /control character U\+0080/],
    ['x\u009f', /control character U\+009F/],
    ['a\ud800b', /unpaired surrogate U\+D800/],
    ['\udc00', /unpaired surrogate U\+DC00/],
    ['a/*/b', /level "\*" has a NATS wildcard/],
    ['a/>', /level ">" has a NATS wildcard/],
    ['a*b', /level "a\*b" has a NATS wildcard/],
    ['x/y>z', /level "y>z" has a NATS wildcard/],
    ['$SYS/broker/uptime', /starts with '\$'/],
    ['$', /starts with '\$'/],
    ['a/+/b', /wildcard '\+' or '#' in topic name/],
    ['a/#', /wildcard '\+' or '#' in topic name/],
    ['a+b', /wildcard '\+' or '#' in topic name/],
    ['#', /wildcard '\+' or '#' in topic name/],
  ];
  for (const [topic, reason] of cases) {
    const mapped = topicToSubject('mqtt', topic);
    t.equal(mapped.ok, false, `${show(topic)} refused`);
    if (!mapped.ok) t.match(mapped.reason, reason, `${show(topic)} reason`);
    t.notOk('subject' in mapped, `${show(topic)} has no subject`);
  }
});

t.test('prefixes', async (t) => {
  const valid = ['', 'mqtt', 'site.mqtt', 'a-b_C9', 'a.b.c.d'];
  const invalid = ['.mqtt', 'mqtt.', 'a..b', 'a.*', 'a.>', '*', '>', '$MQTT', 'a b', 'é', 'a/b', '.'];
  for (const prefix of valid) t.equal(isValidPrefix(prefix), true, `${show(prefix)} valid`);
  for (const prefix of invalid) t.equal(isValidPrefix(prefix), false, `${show(prefix)} invalid`);
  for (const prefix of ['a..b', 'mqtt.>']) {
    const mapped = topicToSubject(prefix, 'a');
    t.match(mapped, { ok: false, reason: /invalid subject prefix/ }, `export under ${prefix}`);
    t.match(subjectToTopic(prefix, `${prefix}.a`), { ok: false, reason: /invalid subject prefix/ }, `import under ${prefix}`);
    t.match(filterToSubjects(prefix, 'a/#'), { ok: false, reason: /invalid subject prefix/ }, `filter under ${prefix}`);
  }
});

t.test('subjects that no topic maps to are refused on import', async (t) => {
  const cases: [prefix: string, subject: string, reason: RegExp][] = [
    ['mqtt', 'other.a', /not under prefix "mqtt"/],
    ['mqtt', 'mqttx.a', /not under prefix "mqtt"/],
    ['site.mqtt', 'site.a', /not under prefix "site\.mqtt"/],
    ['mqtt', 'mqtt', /not under prefix/],
    ['mqtt', 'mqtt.', /no topic after the prefix/],
    ['', '', /no topic after the prefix/],
    ['', 'a..b', /empty token/],
    ['', 'a.', /empty token/],
    ['mqtt', 'mqtt..a', /empty token/],
    ['', 'a/b', /token "a\/b" has a '\/' that is neither/],
    ['', 'a///b', /token "a\/\/\/b" has a '\/'/],
    ['', '/a', /token "\/a" has a '\/'/],
    ['', '/', /maps to a refused topic: empty topic/],
    ['', 'a.*', /maps to a refused topic: .*NATS wildcard/],
    ['mqtt', 'mqtt.>', /maps to a refused topic: .*NATS wildcard/],
    ['', '$SYS.x', /maps to a refused topic: .*starts with '\$'/],
    ['', 'a b', /maps to a refused topic: .*whitespace/],
    ['', 'a.+', /maps to a refused topic: .*wildcard '\+' or '#' in topic name/],
  ];
  for (const [prefix, subject, reason] of cases) {
    t.match(subjectToTopic(prefix, subject), { ok: false, reason }, `${show(prefix)} ${show(subject)}`);
  }
});

t.test('filters map to one subject, or two for a trailing #', async (t) => {
  const cases: [prefix: string, filter: string, subjects: string[]][] = [
    ['', '+', ['*']],
    ['mqtt', '+', ['mqtt.*']],
    ['', '#', ['>']],
    ['mqtt', '#', ['mqtt.>']],
    ['site.mqtt', '#', ['site.mqtt.>']],
    ['', 'a/#', ['a.>', 'a']], // '#' matches the parent level too
    ['mqtt', 'a/b/#', ['mqtt.a.b.>', 'mqtt.a.b']],
    ['', 'a/+/c', ['a.*.c']],
    ['', '+/+', ['*.*']],
    ['', '+/#', ['*.>', '*']],
    ['site.mqtt', 'a.b/#', ['site.mqtt.a//b.>', 'site.mqtt.a//b']],
    ['', 'a//#', ['a./.>', 'a./']],
    ['', '/#', ['/.>', '/']], // as nats-server; '/' is the empty topic's subject
    ['', '/+', ['/.*']],
    ['', 'a/', ['a./']],
    ['mqtt', 'a/b', ['mqtt.a.b']],
  ];
  for (const [prefix, filter, subjects] of cases) {
    t.same(filterToSubjects(prefix, filter), { ok: true, subjects }, `${show(prefix)} ${filter}`);
  }
});

t.test('filters that cannot be mapped are refused with a reason', async (t) => {
  const cases: [filter: string, reason: RegExp][] = [
    ['', /^empty topic filter \[MQTT-4\.7\.3-1\]$/],
    ['$SYS/#', /starts with '\$'/],
    ['$share/g/a', /starts with '\$'/],
    ['a/#/b', /'#' must be a whole level and the last one \[MQTT-4\.7\.1-2\]/],
    ['a#', /'#' must be a whole level/],
    ['a/b#', /'#' must be a whole level/],
    ['#/#', /'#' must be a whole level/],
    ['a+/b', /'\+' must be a whole level \[MQTT-4\.7\.1-3\]/],
    ['+a', /'\+' must be a whole level/],
    ['a/*', /NATS wildcard/],
    ['a/>/#', /NATS wildcard/],
    ['a b/#', /whitespace U\+0020/],
    ['a/\u0001', /control character U\+0001/],
  ];
  for (const [filter, reason] of cases) {
    t.match(filterToSubjects('mqtt', filter), { ok: false, reason }, show(filter));
  }
});

t.test('NATS matching of mapped filters is MQTT matching of topics', async (t) => {
  const rand = random(0xf117e5);
  const levels = ['a', 'b', '', 'a.b', '.'];
  const pick = () => levels[Math.floor(rand() * levels.length)] ?? 'a';
  const topics: string[] = [];
  for (let n = 0; n < 150; n++) topics.push(Array.from({ length: 1 + Math.floor(rand() * 4) }, pick).join('/'));
  let disagreements = 0;
  let matched = 0;
  for (let n = 0; n < 150; n++) {
    const filterLevels = Array.from({ length: 1 + Math.floor(rand() * 4) }, () => (rand() < 0.3 ? '+' : pick()));
    if (rand() < 0.4) filterLevels.push('#');
    const filter = filterLevels.join('/');
    const mapped = filterToSubjects('mqtt', filter);
    if (!mapped.ok) {
      t.fail(`filter ${show(filter)} refused: ${mapped.reason}`);
      continue;
    }
    for (const topic of topics) {
      const subject = topicToSubject('mqtt', topic);
      if (!subject.ok) continue; // '' only: an empty topic
      const nats = mapped.subjects.some((pattern) => natsMatches(pattern, subject.subject));
      const mqtt = mqttMatches(filter, topic);
      if (mqtt) matched++;
      if (nats !== mqtt && ++disagreements <= 5) t.fail(`${filter} vs ${show(topic)}: NATS ${nats}, MQTT ${mqtt}`);
    }
  }
  t.equal(disagreements, 0);
  t.ok(matched > 200, `enough matching pairs (${matched})`);
});
