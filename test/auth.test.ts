/**
 * Authentication: the scrypt password file, anonymous access as an explicit
 * choice, failed logins rate-limited per source and logged without the
 * password, and users reloaded without a restart. Against the running daemon
 * over TCP and WebSocket.
 */
import t from 'tap';
import path from 'node:path';
import { writeFile } from 'node:fs/promises';
import { PasswordFile, hashPassword, parseHash, MAX_WAITING_HASHES } from '../src/auth/password-file.js';
import { LoginLimiter, sourceKey } from '../src/auth/login-limiter.js';
import { tempDir } from './helpers/daemon.js';
import { connectRaw, connectWithLogin, type RawLogin } from './helpers/mqtt.js';
import { connackFrom, startSecureDaemon } from './helpers/security.js';

/** Sends a CONNECT and returns the CONNACK's return code. */
async function connack(t: Parameters<typeof connectRaw>[0], url: string, login: RawLogin = {}): Promise<number> {
  return (await connectWithLogin(t, url, login)).returnCode;
}

async function passwordFile(t: Parameters<typeof tempDir>[0], users: Record<string, string>): Promise<string> {
  const file = path.join(tempDir(t), 'passwd');
  const lines = ['# edgemqtt users', ''];
  for (const [user, password] of Object.entries(users)) lines.push(`${user}:${await hashPassword(password)}`);
  await writeFile(file, `${lines.join('\n')}\n`);
  return file;
}

const ACCEPTED = 0;
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;

t.test('password file: scrypt hashes with their parameters, verified in constant time', async (t) => {
  const encoded = await hashPassword('s3cret');
  t.match(encoded, /^\$scrypt\$N=16384,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/, 'format $scrypt$N=…,r=…,p=…$salt$key');
  t.not(await hashPassword('s3cret'), encoded, 'a fresh salt each time');
  const file = PasswordFile.parse(`# users\n\nalice:${encoded}\r\nbob:${await hashPassword('other', { N: 1024, r: 8, p: 1 })}\n`);
  t.same(file.users(), ['alice', 'bob'], 'comments and blank lines skipped, CRLF accepted');
  t.equal(await file.verify('alice', 's3cret'), true);
  t.equal(await file.verify('alice', Buffer.from('s3cret')), true, 'MQTT passwords are bytes');
  t.equal(await file.verify('alice', 's3cret '), false);
  t.equal(await file.verify('bob', 'other'), true, 'each hash carries its own parameters');
  t.equal(await file.verify('carol', 's3cret'), false, 'unknown user');

  // An unknown user must cost a hash too, or timing tells which users exist.
  const time = async (user: string) => {
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const started = performance.now();
      await file.verify(user, 'wrong');
      best = Math.min(best, performance.now() - started);
    }
    return best;
  };
  const known = await time('alice');
  const unknown = await time('nobody');
  t.ok(unknown > known * 0.1, `an unknown user costs a hash like a known one (${unknown.toFixed(1)} ms vs ${known.toFixed(1)} ms)`);
});

t.test('password checks wait in a bounded line: a burst beyond it is refused at once, not queued', async (t) => {
  const file = PasswordFile.parse(`alice:${await hashPassword('s3cret', { N: 1024, r: 8, p: 1 })}\n`);
  const burst = MAX_WAITING_HASHES + 40;
  const outcomes = await Promise.allSettled(Array.from({ length: burst }, () => file.verify('alice', 's3cret')));
  const refused = outcomes.filter((o) => o.status === 'rejected');
  const checked = outcomes.filter((o) => o.status === 'fulfilled');
  t.ok(refused.length > 0, `${refused.length} of ${burst} refused`);
  t.ok(refused.every((o) => (o as PromiseRejectedResult).reason?.code === 'EDGEMQTT_LOGIN_BUSY'), 'with EDGEMQTT_LOGIN_BUSY');
  t.ok(checked.length >= MAX_WAITING_HASHES, `at least the line's length were checked (${checked.length})`);
  t.ok(checked.every((o) => (o as PromiseFulfilledResult<boolean>).value === true), 'those that waited were checked correctly');
  t.equal(await file.verify('alice', 's3cret'), true, 'once the burst is over, logins are checked again');
});

t.test('password file: every bad line is reported with its code, none is guessed at', async (t) => {
  const good = await hashPassword('x', { N: 1024, r: 8, p: 1 });
  const text = [
    `alice:${good}`,
    'no-colon-here',
    'bob:$6$c2FsdA==$aGFzaA==', // mosquitto_passwd's format
    `alice:${good}`,
    'carol:$scrypt$N=1048576,r=16,p=1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5', // 2 GiB per login
    'dave:$scrypt$N=1000,r=8,p=1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5', // N not a power of two
  ].join('\n');
  const error = (() => {
    try {
      PasswordFile.parse(text, 'users.txt');
    } catch (caught) {
      return caught as { code: string; problems: string[] };
    }
    return null;
  })();
  t.equal(error?.code, 'EDGEMQTT_PASSWORD_FILE_INVALID');
  t.same(
    error?.problems.map((problem) => problem.split(':')[0]),
    ['line 2', 'line 3', 'line 4', 'line 5', 'line 6'],
    'one problem per bad line, with its number',
  );
  t.type(parseHash(good), 'object');
  t.type(parseHash('$7$101$salt$hash'), 'string', 'mosquitto PBKDF2 hashes are named, not accepted');
  t.throws(() => PasswordFile.load('/nonexistent/passwd'), { code: 'EDGEMQTT_PASSWORD_FILE_INVALID' });
});

t.test('login limiter: a token bucket per source, bounded memory, IPv6 per /64', async (t) => {
  let now = 0;
  const limiter = new LoginLimiter({ burst: 3, refillSec: 10, maxSources: 2, now: () => now });
  t.equal(limiter.allows('a'), true);
  t.same(limiter.recordFailure('a'), { blocked: false, retryAfterSec: 0 });
  limiter.recordFailure('a');
  t.same(limiter.recordFailure('a'), { blocked: true, retryAfterSec: 10 }, 'the third failure empties the bucket');
  t.equal(limiter.allows('a'), false, 'blocked');
  t.equal(limiter.allows('b'), true, 'other sources are not affected');
  now += 5_000;
  t.equal(limiter.allows('a'), false, 'still blocked half a refill later');
  now += 5_000;
  t.equal(limiter.allows('a'), true, 'one attempt again after refillSec');
  t.equal(limiter.recordFailure('a').blocked, true, 'and only one');
  limiter.recordFailure('b');
  limiter.recordFailure('c');
  t.equal(limiter.trackedSources, 2, 'never more than maxSources');
  t.equal(limiter.allows('a'), true, 'the idlest source was dropped to make room');
  now += 60_000;
  t.equal(limiter.allows('b'), true);
  t.equal(limiter.trackedSources, 1, 'a source whose bucket is full again is forgotten');
  t.same(new LoginLimiter({ burst: 0, refillSec: 1, maxSources: 1 }).recordFailure('x'), { blocked: false, retryAfterSec: 0 }, 'burst 0 = no limit');

  t.equal(sourceKey('::ffff:192.0.2.7'), '192.0.2.7', 'IPv4-mapped addresses count as IPv4');
  t.equal(sourceKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  t.equal(sourceKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64', 'one /64, one bucket');
  t.equal(sourceKey('2001:db8::1'), '2001:db8:0:0::/64');
  t.equal(sourceKey('::1'), '0:0:0:0::/64');
});

t.test('anonymous access is on by default (the quick start works) and warned about off loopback', async (t) => {
  const open = await startSecureDaemon(t, { mqtt: { host: '0.0.0.0' } });
  const port = open.daemon.addresses().mqtt!.port;
  t.equal(await connack(t, `mqtt://127.0.0.1:${port}`), ACCEPTED, 'anonymous over TCP');
  t.equal(await connack(t, open.wsUrl), ACCEPTED, 'anonymous over WebSocket');
  const warning = open.log.find(/^anonymous access is on/);
  t.equal(warning?.level, 'warn', 'a warning at start');
  t.same(warning?.listeners, ['mqtt on 0.0.0.0'], 'naming the listener that is reachable from the network');

  const local = await startSecureDaemon(t);
  t.equal(local.log.find(/^anonymous access is on/), undefined, 'no warning when every listener is loopback');
});

t.test('with a password file and anonymous access off: CONNACK 0, 4 or 5, over TCP and WebSocket', async (t) => {
  const passwordFilePath = await passwordFile(t, { alice: 'correct horse', bob: 'battery staple' });
  const { daemon, log, mqttUrl, wsUrl } = await startSecureDaemon(t, {
    // Six failures from one address: the limiter (tested below) would step in.
    auth: { allowAnonymous: false, passwordFile: passwordFilePath, failedLogins: { burst: 0 } },
  });
  for (const url of [mqttUrl, wsUrl]) {
    const transport = url.split(':')[0];
    t.equal(await connack(t, url, { username: 'alice', password: 'correct horse' }), ACCEPTED, `${transport}: right password`);
    t.equal(await connack(t, url, { username: 'bob', password: 'battery staple' }), ACCEPTED, `${transport}: each user their own`);
    t.equal(await connack(t, url, { username: 'alice', password: 'battery staple' }), BAD_USERNAME_OR_PASSWORD, `${transport}: wrong password`);
    t.equal(await connack(t, url, { username: 'mallory', password: 'correct horse' }), BAD_USERNAME_OR_PASSWORD, `${transport}: unknown user, same answer`);
    t.equal(await connack(t, url, { username: 'alice' }), BAD_USERNAME_OR_PASSWORD, `${transport}: no password`);
    t.equal(await connack(t, url), NOT_AUTHORIZED, `${transport}: anonymous refused`);
  }
  t.match(daemon.authStats(), { loginsSucceeded: 4, loginsFailed: 6, anonymousRefused: 2 });
  const failure = log.find('login failed', (record) => record.user === 'mallory');
  t.equal(failure?.level, 'warn', 'a failed login is a warning');
  t.equal(failure?.reason, 'unknown user', 'that says why (to the operator, not the client)');
  t.match(failure?.remote, /^(::ffff:)?127\.0\.0\.1$/, 'and where from');
  t.notOk(log.raw.includes('correct horse') || log.raw.includes('battery staple'), 'no password is ever logged');
  t.match(log.find('client connected', (record) => record.user === 'alice'), { level: 'info', listener: 'mqtt' }, 'the connected line names the verified user');
  t.notOk(
    log.records.some((record) => record.msg === 'connection error before CONNACK' && record.level === 'info'),
    'a refused login is logged once, as such, not again as a connection error',
  );
});

t.test('without an ACL file, anyone may subscribe to $SYS (what lists clients is withheld: sys-topics.test.ts)', async (t) => {
  const passwordFilePath = await passwordFile(t, { ops: 'monitor' });
  const { mqttUrl } = await startSecureDaemon(t, { auth: { passwordFile: passwordFilePath } });
  const subackFor = async (login: RawLogin) => {
    const { raw, returnCode } = await connectWithLogin(t, mqttUrl, login);
    t.equal(returnCode, ACCEPTED);
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$SYS/#', qos: 0 }, { topic: 'plant/#', qos: 0 }] });
    return (await raw.waitForPacket('suback')).granted;
  };
  t.same(await subackFor({}), [0, 0], 'anonymous: $SYS granted, as in mosquitto');
  t.same(await subackFor({ username: 'ops', password: 'monitor' }), [0, 0], 'a logged-in user too');
});

t.test('failed logins are rate-limited per source and user: even the right password waits', async (t) => {
  const passwordFilePath = await passwordFile(t, { alice: 'right' });
  const { daemon, log, mqttUrl } = await startSecureDaemon(t, {
    auth: { allowAnonymous: false, passwordFile: passwordFilePath, failedLogins: { burst: 2, refillSec: 3600 } },
  });
  const port = Number(new URL(mqttUrl).port);
  t.equal(await connackFrom('127.0.0.2', port, 'alice', 'guess1'), BAD_USERNAME_OR_PASSWORD);
  t.equal(await connackFrom('127.0.0.2', port, 'alice', 'guess2'), BAD_USERNAME_OR_PASSWORD);
  t.equal(await connackFrom('127.0.0.2', port, 'alice', 'right'), NOT_AUTHORIZED, 'blocked source: refused before the check');
  t.equal(await connackFrom('127.0.0.3', port, 'alice', 'right'), ACCEPTED, 'another source is not affected');
  t.match(daemon.authStats(), { loginsFailed: 2, loginsRateLimited: 1, loginsSucceeded: 1, limitedSources: 1 });
  const blocked = log.find(/^too many failed logins/);
  t.match(blocked, { level: 'warn', source: '127.0.0.2', retryAfterSec: 3600 }, 'the block is logged once, with the source');
});

t.test('a will the client could not publish is refused at CONNECT', async (t) => {
  const { mqttUrl } = await startSecureDaemon(t);
  t.equal(await connack(t, mqttUrl, { will: { topic: '$SYS/fake/alarm' } }), NOT_AUTHORIZED, '$SYS is read-only, wills included');
  t.equal(await connack(t, mqttUrl, { will: { topic: 'plant/alarm' } }), ACCEPTED, 'an ordinary will is fine');
});

t.test('users reload without a restart; a broken file keeps the users in force and says why', async (t) => {
  const file = await passwordFile(t, { alice: 'one' });
  const { daemon, log, mqttUrl } = await startSecureDaemon(t, { auth: { allowAnonymous: false, passwordFile: file } });
  t.equal(await connack(t, mqttUrl, { username: 'carol', password: 'two' }), BAD_USERNAME_OR_PASSWORD, 'carol is not a user yet');

  await writeFile(file, `alice:${await hashPassword('one')}\ncarol:${await hashPassword('two')}\n`);
  const result = daemon.reload(daemon.config);
  t.same(result, { applied: ['auth.passwordFile'], needsRestart: [] }, 'the re-read file is reported as applied');
  t.equal(await connack(t, mqttUrl, { username: 'carol', password: 'two' }), ACCEPTED, 'carol can log in now');

  await writeFile(file, `alice:${await hashPassword('one')}\nthis line is broken\n`);
  const refused = daemon.reload(daemon.config);
  t.same(refused.applied, [], 'nothing applied');
  t.match(refused.failed, [{ key: 'auth.passwordFile', code: 'EDGEMQTT_PASSWORD_FILE_INVALID', file, problems: [/^line 2:/] }]);
  t.equal(await connack(t, mqttUrl, { username: 'carol', password: 'two' }), ACCEPTED, 'the users in force stay in force');
  t.match(log.find(/^reload: auth\.passwordFile refused/), { level: 'error', code: 'EDGEMQTT_PASSWORD_FILE_INVALID' }, 'an error line says why');

  const broken = await startSecureDaemon(t, { auth: { passwordFile: file } }, { start: false });
  await t.rejects(broken.daemon.start(), { code: 'EDGEMQTT_PASSWORD_FILE_INVALID' }, 'at start, a broken file stops the start');
});
