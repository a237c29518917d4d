/**
 * `edgemqtt passwd add|rm|list`, and the whole operator loop through the real
 * CLI process: add a user, `kill -HUP`, the user logs in; renew the
 * certificate, `kill -HUP`, new handshakes get it while connections stay; a
 * broken file on reload keeps the one in force and says why; a broken file
 * at start exits 78.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmod, copyFile, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { runCli } from '../src/cli/run.js';
import type { CliIo } from '../src/cli/io.js';
import { PasswordFile } from '../src/auth/password-file.js';
import { tempDir } from './helpers/daemon.js';
import { connectClient, MessageLog } from './helpers/mqtt.js';
import { CliProcess, NotifySocket, assertBuilt, childEnv, cliPath, execCli, staleBuildNote, writeConfig } from './helpers/process.js';
import { makePki } from './helpers/pki.js';

assertBuilt();
const stale = staleBuildNote();
if (stale) t.comment(`warning: ${stale}`);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in-process with `stdin` as standard input (a pipe, not a terminal). */
async function passwd(args: string[], stdin?: string): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const io: CliIo = {
    argv: ['passwd', ...args],
    env: {},
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
    pid: process.pid,
    onSignal: () => undefined,
    ...(stdin !== undefined ? { stdin: Readable.from([Buffer.from(stdin)]) } : {}),
  };
  const code = await runCli(io);
  return { code, stdout, stderr };
}

t.test('passwd add, update, list, rm: the file stays a valid, private password file', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'passwd');
  const added = await passwd(['add', file, 'alice'], 'first password\n');
  t.same(added, { code: 0, stdout: `added alice in ${file}\n`, stderr: '' });
  t.equal((await stat(file)).mode & 0o777, 0o600, 'a new file is readable by its owner only');
  t.equal(await PasswordFile.load(file).verify('alice', 'first password'), true, 'the first line of standard input is the password');

  const passwordFile = path.join(dir, 'secret');
  await writeFile(passwordFile, 'from a file\nignored second line\n');
  t.equal((await passwd(['add', file, 'bob', '--password-file', passwordFile])).code, 0, '--password-file');
  t.equal(await PasswordFile.load(file).verify('bob', 'from a file'), true);

  await chmod(file, 0o640);
  await writeFile(file, `# managed by provisioning\n${await readFile(file, 'utf8')}`);
  const updated = await passwd(['add', file, 'alice'], 'second password');
  t.equal(updated.stdout, `updated alice in ${file}\n`);
  const afterUpdate = PasswordFile.load(file);
  t.equal(await afterUpdate.verify('alice', 'second password'), true, 'the password changed');
  t.equal(await afterUpdate.verify('alice', 'first password'), false);
  t.equal((await stat(file)).mode & 0o777, 0o640, 'the mode is kept');
  t.match(await readFile(file, 'utf8'), /^# managed by provisioning\nalice:/, 'comments and order are kept');

  t.equal((await passwd(['add', file, 'fleet', '--scrypt-n', '1024'], 'cheap\n')).code, 0, '--scrypt-n sets the cost');
  t.match(await readFile(file, 'utf8'), /^fleet:\$scrypt\$N=1024,r=8,p=1\$/m);
  t.equal(await PasswordFile.load(file).verify('fleet', 'cheap'), true);
  t.equal((await passwd(['add', file, 'fleet', '--scrypt-n', '1000'], 'x\n')).code, 64, 'a cost that is not a power of two');
  t.equal((await passwd(['rm', file, 'fleet'])).code, 0);

  t.same(await passwd(['list', file]), { code: 0, stdout: 'alice\nbob\n', stderr: '' });
  t.same(await passwd(['rm', file, 'bob']), { code: 0, stdout: `removed bob from ${file}\n`, stderr: '' });
  t.same(PasswordFile.load(file).users(), ['alice']);
  t.notOk((await readFile(file, 'utf8')).includes('second password'), 'no password in clear, of course');
});

t.test('passwd refuses what would make a bad file, with sysexits codes', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'passwd');
  t.equal((await passwd(['add', file, 'a:b'], 'x\n')).code, 64, 'a user name with ":"');
  t.equal((await passwd(['add', file, ' padded'], 'x\n')).code, 64, 'a user name with edge spaces');
  t.equal((await passwd(['add', file, 'alice'], '\n')).code, 64, 'an empty password');
  t.equal((await passwd(['add', file, 'alice'])).code, 64, 'no password source at all');
  t.equal((await passwd(['add', file, 'alice', '--password-file', path.join(dir, 'missing')])).code, 1, 'an unreadable --password-file');
  t.equal((await passwd(['rm', file, 'alice'])).code, 1, 'rm on a missing file');
  await passwd(['add', file, 'alice'], 'pw\n');
  t.equal((await passwd(['rm', file, 'nobody'])).code, 1, 'rm of an unknown user');
  await writeFile(file, 'garbage line\n');
  const broken = await passwd(['add', file, 'bob'], 'pw\n');
  t.equal(broken.code, 78, 'a file that is not a password file is not rewritten');
  t.equal(await readFile(file, 'utf8'), 'garbage line\n');
  t.equal((await passwd([])).code, 64, 'passwd without a subcommand');
});

t.test('the real CLI reads the password from a pipe, not from argv', async (t) => {
  const file = path.join(tempDir(t), 'passwd');
  const child = spawn(process.execPath, [cliPath, 'passwd', 'add', file, 'carol'], { env: childEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stdin.end('piped secret\n');
  const code = await new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('passwd did not exit within 15 s')), 15_000);
    child.once('close', (exitCode) => {
      clearTimeout(timer);
      resolve(exitCode);
    });
  });
  t.equal(code, 0);
  t.equal(stdout, `added carol in ${file}\n`);
  t.equal(await PasswordFile.load(file).verify('carol', 'piped secret'), true);
});

function fingerprint(port: number, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.destroy();
    });
    socket.once('error', reject);
  });
}

t.test('SIGHUP to the running CLI: new users, renewed certificates, broken files refused', async (t) => {
  const dir = t.testdir();
  const pki = await makePki(t);
  const certFile = path.join(dir, 'server.crt');
  const keyFile = path.join(dir, 'server.key');
  await copyFile(pki.server.certFile, certFile);
  await copyFile(pki.server.keyFile, keyFile);
  const passwordFile = path.join(dir, 'passwd');
  const aclFile = path.join(dir, 'acl');
  await passwd(['add', passwordFile, 'alice'], 'alice-pw\n');
  await writeFile(aclFile, 'user alice\ntopic readwrite plant/#\nuser bob\ntopic readwrite plant/#\n');
  const configPath = await writeConfig(dir, {
    dataDir: path.join(dir, 'data'),
    mqtt: { host: '127.0.0.1', port: 0 },
    tls: { enabled: true, host: '127.0.0.1', port: 0, certFile, keyFile },
    http: { enabled: false },
    auth: { allowAnonymous: false, passwordFile, aclFile },
  });
  const notify = await NotifySocket.open(t);
  const cli = new CliProcess(t, ['start', '--config', configPath], { cwd: dir, env: { NOTIFY_SOCKET: notify.path } });
  const ready = await cli.waitForLog('edgemqtt ready');
  const addresses = ready.addresses as { mqtt: { port: number }; tls: { port: number } };
  const mqttUrl = `mqtt://127.0.0.1:${addresses.mqtt.port}`;
  const mqttsUrl = `mqtts://127.0.0.1:${addresses.tls.port}`;

  const alice = await connectClient(t, mqttsUrl, { ca: pki.ca.cert, username: 'alice', password: 'alice-pw' });
  const seen = new MessageLog(alice);
  await alice.subscribeAsync('plant/#', { qos: 1 });
  await t.rejects(connectClient(t, mqttUrl, { username: 'bob', password: 'bob-pw' }), { code: 4 }, 'bob is not a user yet');

  // 1. A new user and a renewed certificate, picked up by one SIGHUP.
  const certBefore = await fingerprint(addresses.tls.port, pki.ca.cert);
  t.equal((await passwd(['add', passwordFile, 'bob'], 'bob-pw\n')).code, 0);
  const renewed = await pki.issue('renewed', 'localhost', { usage: 'server' });
  await copyFile(renewed.certFile, certFile);
  await copyFile(renewed.keyFile, keyFile);
  let from = cli.logs.items.length;
  cli.signal('SIGHUP');
  const reloaded = await cli.waitForLog('configuration reloaded', { from });
  t.same(reloaded.applied, ['auth.passwordFile', 'auth.aclFile', 'tls.certFile', 'tls.keyFile'], 'the log says what was re-read');
  const bob = await connectClient(t, mqttUrl, { username: 'bob', password: 'bob-pw' });
  t.pass('bob logs in without a restart');
  t.not(await fingerprint(addresses.tls.port, pki.ca.cert), certBefore, 'new handshakes get the renewed certificate');
  await bob.publishAsync('plant/line1', 'hello alice', { qos: 1 });
  await seen.waitForCount(1);
  t.equal(alice.connected, true, "alice's TLS connection from before the reload carries on");

  // 2. A broken ACL: refused, the rules in force stay, the log says why.
  await writeFile(aclFile, 'user bob\ntopic readwrite #\ntopic sometimes plant/#\nwhat is this\n');
  from = cli.logs.items.length;
  cli.signal('SIGHUP');
  const refused = await cli.waitForLog('reload: auth.aclFile refused, the one in use stays', { from });
  t.match(refused, { level: 'error', code: 'EDGEMQTT_ACL_FILE_INVALID', file: aclFile, problems: [/^line 4:/] });
  await cli.waitForLog('configuration reloaded', { from });
  const status = await notify.messages.waitFor(
    (message) => message.assignments.some((item) => item.startsWith('STATUS=') && item.includes('kept the previous auth.aclFile')),
    'a STATUS naming the refused file',
  );
  t.ok(status, 'systemctl status says so too');
  await bob.publishAsync('plant/line1', 'still allowed', { qos: 1 });
  await seen.waitForCount(2);
  t.equal(cli.exitStatus, undefined, 'the daemon runs on');

  cli.signal('SIGTERM');
  t.equal((await cli.waitForExit()).code, 0);

  // 3. check-config reads the files too, so an operator can check before reloading.
  const checked = await execCli(t, ['check-config', configPath], { cwd: dir });
  t.equal(checked.code, 78, 'check-config: exit 78');
  t.match(checked.stderr, /auth\.aclFile: .*acl: line 4: /, 'naming the key, the file and the line');

  // 4. At start, a broken file is a configuration error: exit 78, no restart loop.
  const exit = await execCli(t, ['start', '--config', configPath], { cwd: dir });
  t.equal(exit.code, 78, 'exit 78 (EX_CONFIG)');
  t.match(exit.stderr, aclFile, 'naming the file');
});
