import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { LineCounter, parseDocument } from 'yaml';
import { configSchema } from '../src/config/schema.js';
import { loadConfig, validateConfig, configKeys } from '../src/config/load.js';
import { listConfigKeys, secret, getPath } from '../src/config/keys.js';
import { configJsonSchema } from '../src/config/json-schema.js';
import { ConfigError } from '../src/errors.js';
import { tempDir } from './helpers/daemon.js';

const EXAMPLE = 'config/edgemqtt.yaml';

t.test('the embedded defaults are the quick start: MQTT 1883, HTTP 8080 with /mqtt, data under ./data', async (t) => {
  const config = validateConfig({});
  t.equal(config.mqtt.port, 1883);
  t.equal(config.http.port, 8080);
  t.equal(config.http.websocket.path, '/mqtt');
  t.equal(config.dataDir, './data');
  t.equal(config.mqtt.enabled && config.http.enabled && config.http.websocket.enabled, true);
});

t.test('the example config documents every key, with a comment, at its default', async (t) => {
  const text = await readFile(EXAMPLE, 'utf8');
  const lines = text.split('\n');
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter });
  const defaults = validateConfig({});
  const values: unknown = document.toJS();
  for (const key of configKeys) {
    const node = document.getIn(key.path, true) as { range?: [number, number, number] } | undefined;
    if (!t.ok(node?.range, `${key.name} is in ${EXAMPLE}`)) continue;
    // The key's own line is the line before its value node.
    const keyLine = lineCounter.linePos(node!.range![0]).line;
    const keyIndex = lines.findIndex((line, index) => index < keyLine && new RegExp(`^\\s*${key.path.at(-1)}:`).test(line) && index >= keyLine - 2);
    t.match(lines[keyIndex - 1] ?? '', /^\s*#/, `${key.name} has a comment above it`);
    t.same(getPath(values, key.path), getPath(defaults, key.path), `${key.name} shows its default`);
  }
  t.same(await loadConfig({ file: EXAMPLE }), defaults, 'loading the example yields exactly the defaults');
});

t.test('config/edgemqtt.schema.json is generated from the schema (run `npm run schema` after changing it)', async (t) => {
  const committed: unknown = JSON.parse(await readFile('config/edgemqtt.schema.json', 'utf8'));
  t.same(committed, configJsonSchema());
});

t.test('layers: defaults < file < EDGEMQTT_* env < flags', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'edgemqtt.yaml');
  await writeFile(file, 'mqtt:\n  port: 1001\n  host: 127.0.0.1\nhttp:\n  port: 2001\nlog:\n  level: warn\n');
  const fileOnly = await loadConfig({ file });
  t.equal(fileOnly.mqtt.port, 1001, 'file beats default');
  t.equal(fileOnly.broker.connectTimeoutSec, 30, 'defaults fill what the file leaves out');

  const env = {
    EDGEMQTT_MQTT_PORT: '1002',
    EDGEMQTT_HTTP_PORT: '2002',
    EDGEMQTT_HTTP_WEBSOCKET_ALLOWED_ORIGINS: 'https://a.example, https://b.example',
    EDGEMQTT_HTTP_WEBSOCKET_ENABLED: 'false',
    PATH: '/usr/bin',
  };
  const withEnv = await loadConfig({ file, env });
  t.equal(withEnv.mqtt.port, 1002, 'env beats file');
  t.equal(withEnv.mqtt.host, '127.0.0.1', 'the file still sets what env leaves alone');
  t.same(withEnv.http.websocket.allowedOrigins, ['https://a.example', 'https://b.example'], 'lists are comma-separated');
  t.equal(withEnv.http.websocket.enabled, false, 'booleans parse');

  const withFlags = await loadConfig({ file, env, overrides: { 'mqtt.port': 1003 } });
  t.equal(withFlags.mqtt.port, 1003, 'flags beat env');
  t.equal(withFlags.http.port, 2002);
});

t.test('every problem of every layer is listed at once, with where it came from', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'bad.yaml');
  await writeFile(file, 'mqtt:\n  port: 70000\n  prot: 1\nlog:\n  level: loud\nbrokr: {}\n');
  const error = await loadConfig({ file, env: { EDGEMQTT_HTTP_PORT: 'eighty', EDGEMQTT_NOPE: '1' } }).then(
    () => null,
    (caught: unknown) => caught,
  );
  t.ok(error instanceof ConfigError, 'a ConfigError');
  const problems = (error as ConfigError).problems;
  t.equal((error as ConfigError).code, 'EDGEMQTT_CONFIG_INVALID');
  t.equal(problems.length, 6, problems.join('\n'));
  t.ok(problems.some((p) => p.startsWith('mqtt.port:') && p.includes('line 2')), 'out-of-range port, with its line');
  t.ok(problems.some((p) => p.startsWith('mqtt.prot: unknown key')), 'unknown nested key');
  t.ok(problems.some((p) => p.startsWith('brokr: unknown key')), 'unknown top-level key');
  t.ok(problems.some((p) => p.startsWith('log.level:')), 'bad enum');
  t.ok(problems.some((p) => p.startsWith('EDGEMQTT_HTTP_PORT:')), 'unparseable env value');
  t.ok(problems.some((p) => p.startsWith('EDGEMQTT_NOPE: not a configuration variable')), 'unknown env variable');
});

t.test('a key written in the wrong case gets a suggestion', async (t) => {
  const error = (() => {
    try {
      validateConfig({ mqtt: { Port: 1 } });
    } catch (caught) {
      return caught as ConfigError;
    }
    return null;
  })();
  t.same(error?.problems, ['mqtt.Port: unknown key (did you mean mqtt.port?)']);
});

t.test('a missing file and a YAML syntax error are config problems, not crashes', async (t) => {
  await t.rejects(loadConfig({ file: '/nonexistent/edgemqtt.yaml' }), {
    code: 'EDGEMQTT_CONFIG_INVALID',
    problems: ['/nonexistent/edgemqtt.yaml: cannot read the config file (ENOENT)'],
  });
  const file = path.join(tempDir(t), 'broken.yaml');
  await writeFile(file, 'mqtt:\n  port: [1883\n');
  const error = (await loadConfig({ file }).catch((caught: unknown) => caught)) as ConfigError;
  t.equal(error.code, 'EDGEMQTT_CONFIG_INVALID');
  t.match(error.problems[0], /^.*broken\.yaml: /);
});

t.test('environment names derive from key paths', async (t) => {
  const names = new Map(configKeys.map((key) => [key.name, key.envName]));
  t.equal(names.get('mqtt.port'), 'EDGEMQTT_MQTT_PORT');
  t.equal(names.get('broker.maxPacketSizeBytes'), 'EDGEMQTT_BROKER_MAX_PACKET_SIZE_BYTES');
  t.equal(names.get('http.websocket.allowedOrigins'), 'EDGEMQTT_HTTP_WEBSOCKET_ALLOWED_ORIGINS');
  t.equal(new Set(names.values()).size, configKeys.length, 'no two keys share an environment variable');
});

t.test('keys marked secret are known as secret', async (t) => {
  const schema = z.strictObject({ user: z.string().default('u'), password: secret(z.string().default('')) });
  const keys = listConfigKeys(schema);
  t.same(
    keys.map((key) => [key.name, key.secret]),
    [
      ['user', false],
      ['password', true],
    ],
  );
  t.ok(listConfigKeys(configSchema).length > 10);
});
