/**
 * Every command reads its config from the same sources: `check-config`
 * takes `--config`, `$EDGEMQTT_CONFIG`, `EDGEMQTT_*` and the flags as
 * `start` and `print-config` do; `start` says which file it read; the
 * variables Kubernetes injects for a Service named edgemqtt are ignored
 * with a warning instead of stopping the daemon.
 */
import path from 'node:path';
import t from 'tap';
import { assertBuilt, CliProcess, execCli, staleBuildNote, writeConfig } from './helpers/process.js';

assertBuilt();
const stale = staleBuildNote();
if (stale) t.comment(`warning: ${stale}`);

/** What Kubernetes puts in every pod of a namespace with a Service `edgemqtt` on 1883. */
const KUBERNETES_ENV = {
  EDGEMQTT_SERVICE_HOST: '10.96.0.17',
  EDGEMQTT_SERVICE_PORT: '1883',
  EDGEMQTT_PORT: 'tcp://10.96.0.17:1883',
  EDGEMQTT_PORT_1883_TCP: 'tcp://10.96.0.17:1883',
  EDGEMQTT_PORT_1883_TCP_PROTO: 'tcp',
  EDGEMQTT_PORT_1883_TCP_PORT: '1883',
  EDGEMQTT_PORT_1883_TCP_ADDR: '10.96.0.17',
};
const KUBERNETES_NAMES = Object.keys(KUBERNETES_ENV).sort();

const LOOPBACK_ENV = {
  EDGEMQTT_MQTT_HOST: '127.0.0.1',
  EDGEMQTT_MQTT_PORT: '0',
  EDGEMQTT_HTTP_HOST: '127.0.0.1',
  EDGEMQTT_HTTP_PORT: '0',
};

t.test('check-config reads FILE, --config and $EDGEMQTT_CONFIG, with EDGEMQTT_* and flags over the file', async (t) => {
  const dir = t.testdir();
  // Invalid alone; valid once the environment or a flag sets the port.
  const file = await writeConfig(dir, 'mqtt:\n  port: 70000\n');
  const [positional, option, fromEnvFile, envFixes, flagFixes, envBreaks] = await Promise.all([
    execCli(t, ['check-config', file], { cwd: dir }),
    execCli(t, ['check-config', '--config', file], { cwd: dir }),
    execCli(t, ['check-config'], { cwd: dir, env: { EDGEMQTT_CONFIG: file } }),
    execCli(t, ['check-config', '--config', file], { cwd: dir, env: { EDGEMQTT_MQTT_PORT: '1884' } }),
    execCli(t, ['check-config', file, '--mqtt-port', '1884'], { cwd: dir }),
    execCli(t, ['check-config', file, '--mqtt-port', '1884'], { cwd: dir, env: { EDGEMQTT_HTTP_PORT: 'eighty' } }),
  ]);
  for (const [name, result] of [
    ['check-config FILE', positional],
    ['check-config --config FILE', option],
    ['EDGEMQTT_CONFIG=FILE check-config', fromEnvFile],
  ] as const) {
    t.equal(result.code, 78, `${name}: exit 78`);
    t.equal(result.stderrLines[0], `${file}: 1 problem(s)`, `${name}: names the file`);
    t.match(result.stderrLines[1], /^ {2}- mqtt\.port: .*65535 \(.* line 2\)$/, `${name}: the problem and its line`);
  }
  t.equal(envFixes.code, 0, 'EDGEMQTT_MQTT_PORT overrides the file: exit 0');
  t.equal(envFixes.stdout, `${file}: ok\n`);
  t.equal(flagFixes.code, 0, '--mqtt-port overrides the file: exit 0');
  t.equal(envBreaks.code, 78, 'a bad EDGEMQTT_* variable is found too');
  t.match(envBreaks.stderr, /EDGEMQTT_HTTP_PORT: cannot read "eighty" as a number for http\.port/);

  const defaults = await execCli(t, ['check-config'], { cwd: dir, env: { EDGEMQTT_MQTT_PORT: '1884' } });
  t.equal(defaults.code, 0, 'no file: the embedded defaults and the environment are checked');
  t.equal(defaults.stdout, 'embedded defaults (no config file): ok\n');
});

t.test('check-config and print-config ignore the Kubernetes variables with a warning on stderr', async (t) => {
  const dir = t.testdir();
  const file = await writeConfig(dir, { mqtt: { port: 1884 } });
  const env = { ...KUBERNETES_ENV, EDGEMQTT_HTTP_PORT: '8081' };
  const [check, print] = await Promise.all([
    execCli(t, ['check-config', file], { cwd: dir, env }),
    execCli(t, ['print-config', '--json', '--config', file], { cwd: dir, env }),
  ]);
  const warning = `edgemqtt: warning: ignoring ${KUBERNETES_NAMES.join(', ')}: they name no config section (Kubernetes sets such variables for a Service named edgemqtt)`;
  t.equal(check.code, 0, 'check-config: exit 0');
  t.equal(check.stdout, `${file}: ok\n`);
  t.same(check.stderrLines, [warning], 'check-config: one warning naming them');
  t.equal(print.code, 0, 'print-config: exit 0');
  t.same(print.stderrLines, [warning], 'print-config: the same warning');
  const printed = JSON.parse(print.stdout) as { mqtt: { port: number }; http: { port: number } };
  t.equal(printed.mqtt.port, 1884, 'the file applies');
  t.equal(printed.http.port, 8081, 'and the real variables');

  const typo = await execCli(t, ['check-config', file], { cwd: dir, env: { ...KUBERNETES_ENV, EDGEMQTT_MQTT_PROT: '1' } });
  t.equal(typo.code, 78, 'a typo under a real section is still refused');
  t.match(typo.stderr, /EDGEMQTT_MQTT_PROT: not a configuration variable/);
});

t.test('start in a pod with a Service named edgemqtt: warns about its variables and runs', async (t) => {
  const dir = t.testdir();
  const cli = new CliProcess(t, ['start', '--data-dir', path.join(dir, 'data')], { cwd: dir, env: { ...KUBERNETES_ENV, ...LOOPBACK_ENV } });
  const source = await cli.waitForLog('no config file: embedded defaults');
  t.same(source.environment, Object.keys(LOOPBACK_ENV).sort(), 'names the variables that applied');
  const warning = await cli.waitForLog('ignored EDGEMQTT_* variables that name no config section (Kubernetes sets such variables for a Service named edgemqtt)');
  t.same(warning.ignored, KUBERNETES_NAMES, 'the warning names every ignored variable');
  await cli.waitForLog('edgemqtt ready');
  cli.signal('SIGTERM');
  const status = await cli.waitForExit();
  t.equal(status.code, 0, 'exit 0');
  t.equal(cli.stderr, '', 'nothing on stderr');
});

t.test('start logs the config file it read, by its full path', async (t) => {
  const dir = t.testdir();
  await writeConfig(dir, { mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, dataDir: 'data' }, 'site.yaml');
  const cli = new CliProcess(t, ['start', '--config', 'site.yaml'], { cwd: dir });
  const read = await cli.waitForLog('config file read');
  t.equal(read.file, path.join(dir, 'site.yaml'), 'the file, resolved from the working directory');
  t.same(read.environment, [], 'no variables applied');
  await cli.waitForLog('edgemqtt ready');
  cli.signal('SIGTERM');
  t.equal((await cli.waitForExit()).code, 0, 'exit 0');
});
