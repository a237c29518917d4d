/**
 * Authorization: Mosquitto-style ACL files (user, topic, pattern with %u and
 * %c), a denied SUBSCRIBE answered 0x80, a denied PUBLISH dropped and counted
 * with the connection kept, $SYS read-only, and ACLs reloaded live. Against
 * the running daemon over TCP and WebSocket.
 */
import t from 'tap';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import { Acl, filterCovers, parseAclRules } from '../src/auth/acl.js';
import { hashPassword } from '../src/auth/password-file.js';
import { tempDir } from './helpers/daemon.js';
import { MessageLog, connectClient, connectRaw, connectWithLogin, eventually } from './helpers/mqtt.js';
import { startSecureDaemon } from './helpers/security.js';

const DENIED = 128;

const ACL = `# Anonymous clients: before any user line.
topic read public/#

user alice
topic readwrite plant/#
topic write commands/+/set
topic read spaced topic/with words

user admin
topic read #
topic readwrite $SYS/#

# Every client, user name and client id substituted.
pattern readwrite devices/%u/#
pattern write clients/%c/status
`;

/**
 * SUBSCRIBEs on a connection of its own and returns the SUBACK's return codes
 * (mqtt.js turns a 0x80 into an error and hides the others).
 */
async function granted(t: Parameters<typeof connectRaw>[0], url: string, user: string | null, filters: string[]): Promise<number[]> {
  const { raw, returnCode } = await connectWithLogin(t, url, user !== null ? { username: user, password: `${user}-pw` } : {});
  if (returnCode !== 0) throw new Error(`CONNACK ${returnCode}`);
  raw.send({ cmd: 'subscribe', messageId: 7, subscriptions: filters.map((topic) => ({ topic, qos: 1 })) });
  const suback = await raw.waitForPacket('suback');
  t.equal(raw.isClosed, false, 'the connection stays open after the SUBACK');
  return suback.granted as number[];
}

t.test('filterCovers: a SUBSCRIBE filter is granted only when a rule covers all of it', async (t) => {
  const cases: Array<[string, string, boolean]> = [
    ['plant/#', 'plant/#', true],
    ['plant/#', 'plant', true], // # matches the parent level [MQTT-4.7.1-2]
    ['plant/#', 'plant/+/temp', true],
    ['plant/+/temp', 'plant/line1/temp', true],
    ['plant/+/temp', 'plant/+/temp', true],
    ['plant/+/temp', 'plant/#', false],
    ['plant/+', 'plant', false],
    ['plant/line1', 'plant/+', false],
    ['#', '$SYS/#', false], // wildcards never match $ topics [MQTT-4.7.2-1]
    ['+/x', '$SYS/x', false],
    ['$SYS/#', '$SYS/broker/+', true],
    ['#', '#', true],
    ['a/+/c', 'a/b/c/d', false],
  ];
  for (const [rule, filter, covers] of cases) t.equal(filterCovers(rule, filter), covers, `${rule} ${covers ? 'covers' : 'does not cover'} ${filter}`);
});

t.test('parsing: sections, access, patterns, and every problem with its line', async (t) => {
  const rules = parseAclRules(ACL);
  t.same(rules.anonymous.map((rule) => [rule.filter, rule.read, rule.write]), [['public/#', true, false]]);
  t.same([...rules.users.keys()], ['alice', 'admin']);
  t.same(
    rules.users.get('alice')!.map((rule) => [rule.filter, rule.read, rule.write]),
    [
      ['plant/#', true, true],
      ['commands/+/set', false, true],
      ['spaced topic/with words', true, false],
    ],
    'access defaults to readwrite; a filter may contain spaces',
  );
  t.same(rules.patterns.map((rule) => rule.filter), ['devices/%u/#', 'clients/%c/status']);

  const bad = 'topic read\nuser\nfrobnicate x\ntopic deny secret/#\ntopic read a/#/b\ntopic read a+/b\ntopic devices/%u\npattern write x/%c#\ntopic read fine/#';
  const error = (() => {
    try {
      parseAclRules(bad, 'acl.conf');
    } catch (caught) {
      return caught as { code: string; problems: string[]; file: string };
    }
    return null;
  })();
  t.equal(error?.code, 'EDGEMQTT_ACL_FILE_INVALID');
  t.equal(error?.file, 'acl.conf');
  t.same(
    error?.problems.map((problem) => problem.split(':')[0]),
    ['line 2', 'line 3', 'line 4', 'line 5', 'line 6', 'line 7', 'line 8'],
    'every bad line reported (line 1 is `topic read`: a topic named "read", as in Mosquitto)',
  );
  t.throws(() => Acl.load('/nonexistent/acl'), { code: 'EDGEMQTT_ACL_FILE_INVALID' });
});

t.test('matching: users, anonymous, patterns, $ topics, and 1,000 rules', async (t) => {
  const acl = Acl.parse(ACL);
  const alice = acl.forClient('alice', 'alice-laptop');
  t.ok(alice.canRead('plant/line1/temp') && alice.canWrite('plant/line1/temp'));
  t.ok(alice.canWrite('commands/pump/set') && !alice.canRead('commands/pump/set'), 'write-only');
  t.ok(alice.canRead('spaced topic/with words'));
  t.notOk(alice.canWrite('public/news'), 'anonymous rules are not everyone’s rules');
  t.ok(alice.canWrite('devices/alice/x') && !alice.canWrite('devices/bob/x'), '%u');
  t.ok(alice.canWrite('clients/alice-laptop/status') && !alice.canWrite('clients/other/status'), '%c');
  t.ok(alice.canSubscribe('plant/+/temp') && !alice.canSubscribe('#') && !alice.canSubscribe('commands/#'));

  const admin = acl.forClient('admin', 'console');
  t.ok(admin.canRead('anything/at/all'));
  t.ok(admin.canRead('$SYS/broker/uptime'), 'only because of its $SYS rule');
  t.notOk(acl.forClient('alice', 'x').canRead('$SYS/broker/uptime'));

  const anonymous = acl.forClient(null, 'anon-1');
  t.ok(anonymous.canRead('public/a') && !anonymous.canWrite('public/a'));
  t.notOk(anonymous.canWrite('devices//x'), '%u patterns do not apply without a user name');
  t.ok(anonymous.canWrite('clients/anon-1/status'), '%c patterns do');

  const sneaky = acl.forClient('mallory', 'x/#');
  t.equal(sneaky.patternsSkipped, true, 'a client id with + # / would widen a pattern');
  t.notOk(sneaky.canWrite('clients/x/#/status') || sneaky.canWrite('clients/x/y/status'));
  t.notOk(acl.forClient('a+b', 'c').canWrite('devices/a+b/x'), 'a user name too');
  t.notOk(acl.forClient('nobody', 'c').canRead('plant/x'), 'no rules: nothing');

  const many = ['user site'];
  for (let i = 0; i < 1000; i++) many.push(`topic ${i % 2 ? 'read' : 'write'} site/area${i}/+/value`);
  const big = Acl.parse(many.join('\n')).forClient('site', 'c');
  t.equal(Acl.parse(many.join('\n')).ruleCount, 1000);
  let right = 0;
  for (let i = 0; i < 1000; i++) {
    const topic = `site/area${i}/pump/value`;
    if (big.canRead(topic) === (i % 2 === 1) && big.canWrite(topic) === (i % 2 === 0)) right += 1;
  }
  t.equal(right, 1000, 'each of 1,000 rules decides its own topics');
  t.notOk(big.canRead('site/area1000/pump/value') || big.canRead('site/area1/pump/value/extra'));
});

async function securedDaemon(t: Parameters<typeof tempDir>[0], acl = ACL) {
  const dir = tempDir(t);
  const passwordFile = path.join(dir, 'passwd');
  const users = ['alice', 'admin', 'sensor', 'mallory'];
  await writeFile(passwordFile, (await Promise.all(users.map(async (user) => `${user}:${await hashPassword(`${user}-pw`, { N: 1024, r: 8, p: 1 })}`))).join('\n'));
  const aclFile = path.join(dir, 'acl');
  await writeFile(aclFile, acl);
  const running = await startSecureDaemon(t, { auth: { passwordFile, aclFile }, broker: { heartbeatIntervalSec: 1 } });
  const login = (user: string, options: { url?: string; clientId?: string } = {}) =>
    connectClient(t, options.url ?? running.mqttUrl, { username: user, password: `${user}-pw`, ...(options.clientId ? { clientId: options.clientId } : {}) });
  return { ...running, aclFile, login };
}

t.test('SUBSCRIBE: a filter no read rule covers gets 0x80 in its SUBACK, over TCP and WebSocket', async (t) => {
  const { daemon, log, mqttUrl, wsUrl } = await securedDaemon(t);
  t.same(
    await granted(t, mqttUrl, 'alice', ['plant/#', 'plant/line1/temp', 'commands/x/set', '#', '$SYS/#', 'devices/alice/#', 'devices/bob/#']),
    [1, 1, DENIED, DENIED, DENIED, 1, DENIED],
    'granted where covered, 0x80 elsewhere, in one SUBACK',
  );
  t.same(await granted(t, wsUrl, 'alice', ['plant/+/temp', 'secret/#']), [1, DENIED], 'the same over WebSocket');
  t.equal(daemon.authStats().subscriptionsDenied, 5);
  t.ok(log.find('subscription denied', (record) => record.filter === 'devices/bob/#' && record.user === 'alice'), 'each denial is logged');
});

t.test('PUBLISH: denied ones are acknowledged, dropped, counted; the connection stays', async (t) => {
  const { daemon, log, login, wsUrl } = await securedDaemon(t);
  const admin = await login('admin');
  const seen = new MessageLog(admin);
  await admin.subscribeAsync('#', { qos: 1 });
  const alice = await login('alice');

  await alice.publishAsync('secret/plans', 'no', { qos: 1 });
  t.pass('a denied QoS 1 publish is still acknowledged (3.1.1 has no negative PUBACK)');
  await alice.publishAsync('secret/plans', 'no', { qos: 2 });
  t.pass('and QoS 2 completes its handshake');
  await alice.publishAsync('secret/plans', 'no', { qos: 0, retain: true });
  await alice.publishAsync('plant/line1/temp', '21.5', { qos: 1 });
  await seen.waitFor((messages) => messages.some((m) => m.topic === 'plant/line1/temp'), 5000, 'the allowed message');
  t.same(seen.messages.map((m) => m.topic), ['plant/line1/temp'], 'only the allowed message arrived; the denied ones, sent first, never do');
  t.equal(alice.connected, true, 'alice is still connected');

  const aliceWs = await login('alice', { url: wsUrl, clientId: 'alice-ws' });
  await aliceWs.publishAsync('secret/ws', 'no', { qos: 1 });
  await aliceWs.publishAsync('plant/ws', 'yes', { qos: 1 });
  await seen.waitFor((messages) => messages.some((m) => m.topic === 'plant/ws'), 5000, 'the allowed WebSocket message');
  t.notOk(seen.messages.some((m) => m.topic.startsWith('secret/')), 'over WebSocket too');

  const late = await login('admin', { clientId: 'late-admin' });
  const lateSeen = new MessageLog(late);
  await late.subscribeAsync('secret/#', { qos: 1 });
  await late.subscribeAsync('plant/line1/temp', { qos: 1 });
  await alice.publishAsync('plant/line1/temp', 'marker', { qos: 1 });
  await lateSeen.waitFor((messages) => messages.some((m) => m.payload === 'marker'), 5000, 'the marker');
  t.notOk(lateSeen.messages.some((m) => m.topic.startsWith('secret/')), 'a denied retained publish was not retained');

  t.equal(daemon.authStats().publishesDenied, 4, 'every denied publish is counted');
  const denials = log.records.filter((record) => record.msg.startsWith('publish denied'));
  t.equal(denials.filter((record) => record.level === 'info').length, 2, 'logged at info once per connection, then at debug');
});

t.test('$SYS is read-only, even for a user whose ACL says readwrite', async (t) => {
  const { daemon, login, mqttUrl } = await securedDaemon(t);
  t.same(await granted(t, mqttUrl, 'alice', ['$SYS/#']), [DENIED], 'alice may not read $SYS');
  const admin = await login('admin');
  const seen = new MessageLog(admin);
  t.same(await granted(t, mqttUrl, 'admin', ['$SYS/#']), [1], 'admin may');
  await admin.subscribeAsync('$SYS/#', { qos: 1 });
  await admin.publishAsync('$SYS/fake/uptime', 'forged', { qos: 1 });
  await seen.waitFor((messages) => messages.some((m) => m.topic.endsWith('/heartbeat')), 5000, 'a heartbeat from the broker itself');
  t.notOk(seen.messages.some((m) => m.topic === '$SYS/fake/uptime'), 'the forged $SYS message was dropped');
  t.equal(admin.connected, true, 'and the connection kept (aedes alone would have closed it)');
  t.equal(daemon.authStats().publishesDenied, 1);
});

t.test('patterns: %u and %c per client; a client id with wildcards gets no pattern rights', async (t) => {
  const { daemon, log, login } = await securedDaemon(t);
  const admin = await login('admin');
  const seen = new MessageLog(admin);
  await admin.subscribeAsync('#', { qos: 1 });
  const sensor = await login('sensor', { clientId: 'dev-7' });
  for (const topic of ['devices/sensor/temp', 'clients/dev-7/status', 'clients/dev-8/status', 'devices/alice/temp']) {
    await sensor.publishAsync(topic, 'x', { qos: 1 });
  }
  // Substituted, `clients/%c/status` would let evil/1 write clients/evil/1/status.
  const evil = await login('mallory', { clientId: 'evil/1' });
  await evil.publishAsync('clients/evil/1/status', 'x', { qos: 1 });
  await evil.publishAsync('devices/mallory/marker', 'x', { qos: 1 });
  await sensor.publishAsync('devices/sensor/done', 'x', { qos: 1 });
  await seen.waitFor((messages) => messages.some((m) => m.topic === 'devices/sensor/done'), 5000, 'the last allowed message');
  t.same(seen.messages.map((m) => m.topic), ['devices/sensor/temp', 'clients/dev-7/status', 'devices/sensor/done']);
  t.equal(daemon.authStats().publishesDenied, 4);
  t.ok(log.find(/^ACL patterns do not apply/, (record) => record.clientId === 'evil/1'), 'the skipped patterns are logged');
});

t.test('anonymous clients get the rules before the first user line', async (t) => {
  const { mqttUrl } = await securedDaemon(t);
  t.same(await granted(t, mqttUrl, null, ['public/#', 'plant/#']), [1, DENIED]);
  const unverified = await connectClient(t, mqttUrl, { username: 'alice', password: 'wrong' }).catch((error: { code?: number }) => error);
  t.equal((unverified as { code?: number }).code, 4, 'claiming a user name needs its password');
});

t.test('a reloaded ACL applies to live connections and subscriptions; a broken one is refused', async (t) => {
  const { daemon, log, login, aclFile, mqttUrl } = await securedDaemon(t);
  const alice = await login('alice');
  const seen = new MessageLog(alice);
  await alice.subscribeAsync('plant/#', { qos: 1 });
  const admin = await login('admin');
  await alice.publishAsync('plant/a', 'before', { qos: 1 });
  await seen.waitForCount(1);

  // alice may still write plant/#, but no longer read it.
  await writeFile(aclFile, ACL.replace('topic readwrite plant/#', 'topic write plant/#'));
  t.same(daemon.reload(daemon.config), { applied: ['auth.passwordFile', 'auth.aclFile'], needsRestart: [] }, 'both files re-read');
  await alice.publishAsync('plant/a', 'after', { qos: 1 });
  await eventually(() => daemon.authStats().deliveriesDenied === 1, 5000, 'the delivery to be withheld');
  t.same(await granted(t, mqttUrl, 'alice', ['plant/#']), [DENIED], 'and the filter cannot be subscribed again');
  t.same(seen.messages.map((m) => m.payload), ['before'], 'the subscription made earlier no longer delivers');
  t.ok(admin.connected && alice.connected);

  await writeFile(aclFile, 'user alice\ntopic readwrite #\nnonsense here\n');
  const refused = daemon.reload(daemon.config);
  t.same(refused.applied, ['auth.passwordFile'], 'the password file, fine, is applied');
  t.match(refused.failed, [{ key: 'auth.aclFile', code: 'EDGEMQTT_ACL_FILE_INVALID', file: aclFile, problems: [/^line 3:/] }]);
  t.equal(refused.failed?.length, 1, 'the ACL file alone is refused');
  t.same(await granted(t, mqttUrl, 'alice', ['plant/#']), [DENIED], 'the ACL in force stays in force (the broken file would grant #)');
  t.ok(log.find(/^reload: auth\.aclFile refused/), 'and the refusal is logged');
});
