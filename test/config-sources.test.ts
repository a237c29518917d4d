/**
 * How the config loader reads its sources where a newcomer tripped: the line
 * a problem points at, booleans (one rule for the file and the environment),
 * and the `EDGEMQTT_*` variables Kubernetes injects for a Service named
 * edgemqtt, which are no config keys.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { ignoredEnvNames, loadConfig } from '../src/config/load.js';
import { ConfigError } from '../src/errors.js';
import { tempDir } from './helpers/daemon.js';

/** The problems of a config that is refused; fails the test when it is accepted. */
async function problemsOf(sources: Parameters<typeof loadConfig>[0]): Promise<readonly string[]> {
  const error = await loadConfig(sources).then(
    () => new Error('the config was accepted'),
    (caught: unknown) => caught,
  );
  if (error instanceof ConfigError) return error.problems;
  throw error;
}

/** What Kubernetes puts in every pod of a namespace with a Service `edgemqtt` exposing 1883 and 8080. */
const KUBERNETES_ENV = {
  EDGEMQTT_SERVICE_HOST: '10.96.0.17',
  EDGEMQTT_SERVICE_PORT: '1883',
  EDGEMQTT_SERVICE_PORT_MQTT: '1883',
  EDGEMQTT_PORT: 'tcp://10.96.0.17:1883',
  EDGEMQTT_PORT_1883_TCP: 'tcp://10.96.0.17:1883',
  EDGEMQTT_PORT_1883_TCP_PROTO: 'tcp',
  EDGEMQTT_PORT_1883_TCP_PORT: '1883',
  EDGEMQTT_PORT_1883_TCP_ADDR: '10.96.0.17',
  EDGEMQTT_PORT_8080_TCP: 'tcp://10.96.0.17:8080',
};

t.test('an unknown key whose value is a mapping is reported on its own line', async (t) => {
  const file = path.join(tempDir(t), 'edgemqtt.yaml');
  await writeFile(
    file,
    [
      'mqtt:', // 1
      '  port: 1883', // 2
      'metrix:', // 3: unknown, its value a mapping starting on line 4
      '  enabled: true', // 4
      'http:', // 5
      '  websocket:', // 6
      '    origins:', // 7: unknown, its value a list starting on line 8
      '      - https://a.example', // 8
      '  tls: { enabled: true, certFile: /nonexistent/c.pem }', // 9: keyFile missing
      '',
    ].join('\n'),
  );
  const problems = await problemsOf({ file });
  const lineOf = (prefix: string) => /line (\d+)\)$/.exec(problems.find((p) => p.startsWith(prefix)) ?? '')?.[1];
  t.equal(lineOf('metrix: unknown key'), '3', 'a top-level key: its own line, not the line below');
  t.equal(lineOf('http.websocket.origins: unknown key'), '7', 'a nested key with a list value: its own line');
  t.equal(lineOf('http.tls.keyFile:'), '9', 'a key the file leaves out: the line of the section that lacks it');
  t.equal(problems.length, 3, problems.join('\n'));
});

t.test('booleans: true or false only, in the file and in the environment alike', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'yes.yaml');
  await writeFile(file, 'mqtt:\n  enabled: yes\nhttp:\n  websocket:\n    enabled: 1\n');
  const fromFile = await problemsOf({ file });
  t.same(
    fromFile,
    [
      `mqtt.enabled: expected true or false, not "yes" (booleans are true and false only, as in YAML 1.2) (${file} line 2)`,
      `http.websocket.enabled: expected true or false, not 1 (booleans are true and false only, as in YAML 1.2) (${file} line 5)`,
    ],
    'the file: each key named, with the value found and the line',
  );

  const fromEnv = await problemsOf({ env: { EDGEMQTT_MQTT_ENABLED: 'yes', EDGEMQTT_TLS_ENABLED: 'on', EDGEMQTT_HTTP_ENABLED: '0' } });
  t.same(
    [...fromEnv].sort(),
    [
      'EDGEMQTT_HTTP_ENABLED: cannot read "0" as true or false for http.enabled (booleans are true and false only, as in YAML 1.2)',
      'EDGEMQTT_MQTT_ENABLED: cannot read "yes" as true or false for mqtt.enabled (booleans are true and false only, as in YAML 1.2)',
      'EDGEMQTT_TLS_ENABLED: cannot read "on" as true or false for tls.enabled (booleans are true and false only, as in YAML 1.2)',
    ],
    'the environment: refused the same way, each variable named with its key',
  );

  // The spellings YAML 1.2 reads as booleans work in both.
  const spelled = path.join(dir, 'spelled.yaml');
  await writeFile(spelled, 'mqtt:\n  enabled: False\nhttp:\n  websocket:\n    enabled: TRUE\n');
  const config = await loadConfig({ file: spelled, env: { EDGEMQTT_TLS_ENABLED: 'false', EDGEMQTT_HTTP_ENABLED: 'False' } });
  t.equal(config.mqtt.enabled, false, 'False in the file');
  t.equal(config.http.websocket.enabled, true, 'TRUE in the file');
  t.equal(config.tls.enabled, false, 'false from the environment');
  t.equal(config.http.enabled, false, 'False from the environment');
});

t.test('EDGEMQTT_* variables that name no config section are ignored; a typo under a section is not', async (t) => {
  t.same(ignoredEnvNames({ ...KUBERNETES_ENV, EDGEMQTT_MQTT_PORT: '1884', EDGEMQTT_CONFIG: '/etc/e.yaml', PATH: '/bin' }), Object.keys(KUBERNETES_ENV).sort(), 'the Kubernetes set, and only it');

  const config = await loadConfig({ env: { ...KUBERNETES_ENV, EDGEMQTT_MQTT_PORT: '1884', EDGEMQTT_DATA_DIR: '/var/lib/e' } });
  t.equal(config.mqtt.port, 1884, 'the real variables still apply beside them');
  t.equal(config.dataDir, '/var/lib/e', 'a top-level key of several words too');

  const problems = await problemsOf({ env: { ...KUBERNETES_ENV, EDGEMQTT_MQTT_PROT: '1884', EDGEMQTT_DATA_DIRECTORY: '/x' } });
  t.same(
    [...problems].sort(),
    ['EDGEMQTT_DATA_DIRECTORY: not a configuration variable', 'EDGEMQTT_MQTT_PROT: not a configuration variable'],
    'a misspelt key under a real section (or a real top-level key) is still an error',
  );
});
