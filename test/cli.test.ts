/**
 * The command line as an operator (or systemd) meets it: the built CLI in a
 * child process; assertions on exit codes (sysexits), stderr and stdout.
 */
import { chmodSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import t from 'tap';
import { assertBuilt, execCli, staleBuildNote, writeConfig } from './helpers/process.js';

assertBuilt();
const stale = staleBuildNote();
if (stale) t.comment(`warning: ${stale}`);

const isRoot = process.getuid?.() === 0;

t.test('--help lists every command, the config flags and the exit codes', async (t) => {
  const dir = t.testdir();
  const top = await execCli(t, ['--help'], { cwd: dir });
  t.equal(top.code, 0, 'exit 0');
  for (const command of ['start', 'check-config [file]', 'print-config', 'schema']) {
    t.match(top.stdout, new RegExp(`edgemqtt ${command.replace(/[[\]]/g, '\\$&')}\\s`), `lists ${command}`);
  }
  t.match(top.stdout, /EDGEMQTT_MQTT_PORT/, 'explains the environment variables');
  t.match(top.stdout, /78 invalid config/, 'lists the exit codes');

  const commands = ['start', 'check-config', 'print-config'];
  const helps = await Promise.all(commands.map((command) => execCli(t, [command, '--help'], { cwd: dir })));
  for (const [index, command] of commands.entries()) {
    const help = helps[index]!;
    t.equal(help.code, 0, 'exit 0');
    for (const flag of ['--config', '--mqtt-port', '--http-port', '--data-dir', '--log-level']) {
      t.match(help.stdout, flag, `${command} --help lists ${flag}`);
    }
  }
});

t.test('usage errors exit 64 and start nothing', async (t) => {
  const dir = t.testdir();
  const none = await execCli(t, [], { cwd: dir });
  t.equal(none.code, 64, 'no command');
  t.match(none.stderr, /Name a command/);
  const twoFiles = await execCli(t, ['check-config', 'a.yaml', '--config', 'b.yaml'], { cwd: dir });
  t.equal(twoFiles.code, 64, 'check-config with two different files');
  t.match(twoFiles.stderr, /two config files named \(a\.yaml and --config b\.yaml\): name one/);
  // A mistyped flag must not start a broker on the defaults (it used to, and
  // reported the typo only once stopped).
  const typo = await execCli(t, ['start', '--mqtt-prot', '1884'], {
    cwd: dir,
    env: { EDGEMQTT_MQTT_HOST: '127.0.0.1', EDGEMQTT_MQTT_PORT: '0', EDGEMQTT_HTTP_HOST: '127.0.0.1', EDGEMQTT_HTTP_PORT: '0' },
  });
  t.equal(typo.code, 64, 'unknown flag');
  t.match(typo.stderr, /Unknown arguments?: .*mqtt-prot/);
  t.equal(typo.stdout, '', 'no daemon was started');
});

t.test('check-config lists every problem and exits 78', async (t) => {
  const dir = t.testdir();
  const file = await writeConfig(
    dir,
    [
      'data_dir: /var/lib/x', // unknown key with a near miss
      'mqtt:',
      '  port: 70000', // out of range
      '  colour: blue', // unknown key
      'log:',
      '  level: loud', // not an allowed level
      'broker:',
      '  connectTimeoutSec: soon', // wrong type
      '',
    ].join('\n'),
  );
  const result = await execCli(t, ['check-config', file], { cwd: dir });
  t.equal(result.code, 78, 'exit 78');
  t.equal(result.stdout, '', 'nothing on stdout');
  t.equal(result.stderrLines[0], `${file}: 5 problem(s)`);
  const problems = result.stderrLines.slice(1);
  t.equal(problems.length, 5, 'one line per problem');
  const expected = [
    /^ {2}- data_dir: unknown key \(did you mean dataDir\?\)/,
    /^ {2}- mqtt\.port: .*65535/,
    /^ {2}- mqtt\.colour: unknown key/,
    /^ {2}- log\.level: .*"debug"/,
    /^ {2}- broker\.connectTimeoutSec: .*expected number/,
  ];
  for (const pattern of expected) {
    t.ok(problems.some((line) => pattern.test(line)), `reports ${pattern}`);
  }
});

t.test('check-config passes a good file with exit 0', async (t) => {
  const dir = t.testdir();
  const file = await writeConfig(dir, {
    dataDir: '/var/lib/edgemqtt',
    log: { level: 'warn' },
    mqtt: { host: '::', port: 1883, maxConnections: 1000 },
    http: { port: 8080, websocket: { allowedOrigins: ['https://hmi.example'] } },
    shutdown: { timeoutSec: 5 },
  });
  const result = await execCli(t, ['check-config', file], { cwd: dir });
  t.equal(result.code, 0, 'exit 0');
  t.equal(result.stdout, `${file}: ok\n`);
  t.equal(result.stderr, '', 'nothing on stderr');
});

t.test('check-config reports YAML syntax errors and unreadable files with exit 78', async (t) => {
  const dir = t.testdir();
  const broken = await writeConfig(dir, 'mqtt:\n  port: 1883\n   host: x\n', 'broken.yaml');
  const syntax = await execCli(t, ['check-config', broken], { cwd: dir });
  t.equal(syntax.code, 78, 'exit 78');
  t.match(syntax.stderr, new RegExp(`${broken}: .*at line \\d+, column \\d+`), 'names the file and the position');

  const missing = await execCli(t, ['check-config', path.join(dir, 'missing.yaml')], { cwd: dir });
  t.equal(missing.code, 78, 'exit 78');
  t.match(missing.stderr, /missing\.yaml: cannot read the config file \(ENOENT\)/);
});

t.test('print-config layers defaults < file < EDGEMQTT_* env < flags', async (t) => {
  const dir = t.testdir();
  const file = await writeConfig(dir, { mqtt: { port: 1001 }, http: { port: 2001 } });
  const effective = async (args: string[], env: Record<string, string> = {}) => {
    const result = await execCli(t, ['print-config', '--json', ...args], { cwd: dir, env });
    t.equal(result.code, 0, `print-config ${args.join(' ')} exits 0`);
    return JSON.parse(result.stdout) as { mqtt: { port: number; host: string }; http: { port: number } };
  };

  // mqtt.port is set in every layer at once in the last run; each earlier run drops the top layer.
  const [defaults, fromFile, fromEnv, fromFlag, viaEnvFile, yaml] = await Promise.all([
    effective([]),
    effective(['--config', file]),
    effective(['--config', file], { EDGEMQTT_MQTT_PORT: '1002' }),
    effective(['--config', file, '--mqtt-port', '1003'], { EDGEMQTT_MQTT_PORT: '1002' }),
    effective([], { EDGEMQTT_CONFIG: file }),
    execCli(t, ['print-config', '--config', file], { cwd: dir }),
  ]);
  t.equal(defaults.mqtt.port, 1883, 'the default');
  t.equal(fromFile.mqtt.port, 1001, 'the file beats the default');
  t.equal(fromFile.mqtt.host, '0.0.0.0', 'keys the file omits keep their defaults');
  t.equal(fromEnv.mqtt.port, 1002, 'the environment beats the file');
  t.equal(fromEnv.http.port, 2001, 'other keys from the file stay');
  t.equal(fromFlag.mqtt.port, 1003, 'the flag beats the environment');
  t.equal(viaEnvFile.mqtt.port, 1001, '$EDGEMQTT_CONFIG names the file');
  t.match(yaml.stdout, /^mqtt:\n(?: {2}.*\n)*? {2}port: 1001$/m, 'YAML by default');
});

t.test('print-config rejects unknown and unreadable EDGEMQTT_* variables, listing both', async (t) => {
  const dir = t.testdir();
  const result = await execCli(t, ['print-config'], {
    cwd: dir,
    env: { EDGEMQTT_MQTT_FOO: '1', EDGEMQTT_MQTT_PORT: 'eighteen' },
  });
  t.equal(result.code, 78, 'exit 78');
  t.equal(result.stdout, '', 'nothing on stdout');
  t.match(result.stderr, /EDGEMQTT_MQTT_FOO: not a configuration variable/);
  t.match(result.stderr, /EDGEMQTT_MQTT_PORT: cannot read "eighteen" as a number/);
});

t.test('start on a port in use exits 69 with one stderr line naming the port and EADDRINUSE', async (t) => {
  const dir = t.testdir();
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const { port } = blocker.address() as AddressInfo;

  const result = await execCli(t, ['start', '--mqtt-port', String(port), '--http-port', '0'], {
    cwd: dir,
    env: { EDGEMQTT_MQTT_HOST: '127.0.0.1', EDGEMQTT_HTTP_HOST: '127.0.0.1' },
  });
  t.equal(result.code, 69, 'exit 69');
  t.equal(result.stderrLines.length, 1, 'one line on stderr');
  t.match(result.stderrLines[0], new RegExp(`^edgemqtt: mqtt listener cannot bind 127\\.0\\.0\\.1:${port}: EADDRINUSE$`));
  const fatal = result.logs.find((line) => line.msg === 'start failed');
  t.equal(fatal?.level, 'fatal', 'the log has it as fatal too');
  t.notOk(result.logs.some((line) => line.msg === 'edgemqtt ready'), 'never ready');
});

t.test('start with a missing or unreadable config file exits 78', async (t) => {
  const dir = t.testdir();
  const missing = path.join(dir, 'missing.yaml');
  const noFile = await execCli(t, ['start', '--config', missing], { cwd: dir });
  t.equal(noFile.code, 78, 'exit 78');
  t.match(noFile.stderr, `${missing}: cannot read the config file (ENOENT)`);
  t.equal(noFile.stdout, '', 'no daemon log: it never got that far');

  // A directory cannot be read as a file, whoever runs the test.
  const isDir = await execCli(t, ['start', '--config', dir], { cwd: dir });
  t.equal(isDir.code, 78, 'exit 78');
  t.match(isDir.stderr, `${dir}: cannot read the config file (EISDIR)`);

  if (isRoot) {
    t.comment('running as root: a mode 000 file is readable, so EACCES is not tested');
  } else {
    const locked = path.join(dir, 'locked.yaml');
    writeFileSync(locked, 'log:\n  level: info\n');
    chmodSync(locked, 0o000);
    const denied = await execCli(t, ['start', '--config', locked], { cwd: dir });
    t.equal(denied.code, 78, 'exit 78');
    t.match(denied.stderr, `${locked}: cannot read the config file (EACCES)`);
  }
});

t.test('start stops at an unknown key with exit 78', async (t) => {
  const dir = t.testdir();
  const file = await writeConfig(dir, 'mqtt:\n  host: 127.0.0.1\n  port: 0\n  prot: 1884\n');
  const result = await execCli(t, ['start', '--config', file], { cwd: dir });
  t.equal(result.code, 78, 'exit 78');
  t.match(result.stderr, /mqtt\.prot: unknown key/);
  t.equal(result.stdout, '', 'nothing started, nothing logged');
});

t.test('start with an unusable data directory exits 73', async (t) => {
  const dir = t.testdir();
  const plainFile = path.join(dir, 'not-a-dir');
  writeFileSync(plainFile, '');
  const dataDir = path.join(plainFile, 'data');
  const result = await execCli(t, ['start', '--data-dir', dataDir, '--mqtt-port', '0', '--http-port', '0'], {
    cwd: dir,
    env: { EDGEMQTT_MQTT_HOST: '127.0.0.1', EDGEMQTT_HTTP_HOST: '127.0.0.1' },
  });
  t.equal(result.code, 73, 'exit 73');
  t.equal(result.stderrLines.length, 1, 'one line on stderr');
  t.match(result.stderrLines[0], `edgemqtt: data directory ${dataDir} is not usable: ENOTDIR`);
  t.notOk(result.logs.some((line) => line.msg === 'edgemqtt ready'), 'never ready');
});
