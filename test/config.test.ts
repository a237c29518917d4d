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
  const error = await loadConfig({ file, env: { EDGEMQTT_HTTP_PORT: 'eighty', EDGEMQTT_MQTT_NOPE: '1' } }).then(
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
  t.ok(problems.some((p) => p.startsWith('EDGEMQTT_MQTT_NOPE: not a configuration variable')), 'unknown env variable under a section');
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

// ---- bridge: the NATS JetStream bridge section.

/** The problems of a config that is refused, or [] when it is accepted. */
async function problemsOf(sources: Parameters<typeof loadConfig>[0]): Promise<readonly string[]> {
  try {
    await loadConfig(sources);
    return [];
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
}

t.test('the bridge is off by default, so the quick start needs no NATS', async (t) => {
  const { bridge } = validateConfig({});
  t.equal(bridge.enabled, false);
  t.same(bridge.export, []);
  t.same(bridge.import, []);
  t.same(bridge.nats.servers, ['nats://127.0.0.1:4222']);
  t.equal(bridge.subjectPrefix, 'mqtt');
  t.equal(bridge.stream.name, 'EDGEMQTT');
  t.equal(bridge.outbox.overflow, 'drop-oldest');
  t.equal(bridge.sender.window, 256);
  t.same(await problemsOf({ env: {} }), [], 'no file, no env: valid');
  t.same(
    await problemsOf({ env: { EDGEMQTT_BRIDGE_SITE_ID: '', EDGEMQTT_BRIDGE_NATS_SERVERS: '' } }),
    [],
    'what an enabled bridge needs is not required while it is off',
  );
  const keys = new Map(configKeys.map((key) => [key.name, key]));
  t.match(keys.get('bridge.export'), { envName: 'EDGEMQTT_BRIDGE_EXPORT', kind: 'json', defaultValue: [] });
  t.match(keys.get('bridge.import'), { envName: 'EDGEMQTT_BRIDGE_IMPORT', kind: 'json', defaultValue: [] });
  t.equal(keys.get('bridge.nats.nkeySeedFile')?.envName, 'EDGEMQTT_BRIDGE_NATS_NKEY_SEED_FILE');
  t.notOk(keys.has('bridge.export.filter'), 'a rule list is one key');
});

t.test('an enabled bridge: rules get their defaults', async (t) => {
  const file = path.join(tempDir(t), 'bridge.yaml');
  await writeFile(
    file,
    [
      'bridge:',
      '  enabled: true',
      '  siteId: plant-berlin',
      '  subjectPrefix: acme.mqtt',
      '  nats:',
      '    servers: ["tls://nats-1.example.com:4222", "nats-2.example.com:4222", "nats://[::1]"]',
      '    user: edge',
      '    passwordFile: /etc/edgemqtt/nats.pass',
      '    tls: { caFile: /etc/ca.pem, certFile: /etc/c.pem, keyFile: /etc/k.pem }',
      '  stream: { name: PLANTS, create: false, replicas: 3 }',
      '  export:',
      '    - filter: "plant/#"',
      '    - { filter: "alarms/+/state", qos: [1, 2], retained: false }',
      '  import:',
      '    - filter: "commands/plant-berlin/#"',
      '    - { filter: "#", qos: 0 }',
      '  outbox: { overflow: drop-new }',
      '',
    ].join('\n'),
  );
  const { bridge } = await loadConfig({ file });
  t.equal(bridge.enabled, true);
  t.equal(bridge.siteId, 'plant-berlin');
  t.equal(bridge.nats.servers.length, 3);
  t.same(bridge.export, [
    { filter: 'plant/#', qos: [0, 1, 2], retained: true },
    { filter: 'alarms/+/state', qos: [1, 2], retained: false },
  ]);
  t.same(bridge.import, [
    { filter: 'commands/plant-berlin/#', qos: 1 },
    { filter: '#', qos: 0 },
  ]);
  t.match(bridge.stream, { name: 'PLANTS', create: false, replicas: 3, duplicateWindowSec: 120 });
  t.equal(bridge.outbox.overflow, 'drop-new');
  t.same(
    validateConfig({ bridge: { enabled: true, siteId: 'a', import: [{ filter: 'x' }] } }).bridge.export,
    [],
    'import rules alone are enough',
  );
});

t.test('every problem of an enabled bridge is listed at once, with its line', async (t) => {
  const file = path.join(tempDir(t), 'bridge.yaml');
  await writeFile(
    file,
    [
      'bridge:', // 1
      '  enabled: true', // 2: no siteId, no rules
      '  subjectPrefix: "mqtt..x"', // 3
      '  nats:', // 4
      '    servers: []', // 5
      '    passwordFile: /etc/p', // 6: no user
      '    credsFile: /etc/c.creds', // 7: a second credential
      '    tls:', // 8
      '      certFile: /etc/c.pem', // 9: no keyFile
      '  stream:', // 10
      '    name: "a.b"', // 11
      '',
    ].join('\n'),
  );
  const problems = await problemsOf({ file });
  const expected: [RegExp, number][] = [
    [/^bridge\.subjectPrefix: .*single dots/, 3],
    [/^bridge\.stream\.name: /, 11],
    // A key the file leaves out: the line of its section's key.
    [/^bridge\.siteId: required when the bridge is enabled/, 1],
    [/^bridge\.nats\.servers: at least one NATS server/, 5],
    [/^bridge\.nats\.credsFile: conflicts with passwordFile/, 7],
    [/^bridge\.nats\.passwordFile: needs user/, 6],
    [/^bridge\.nats\.tls\.certFile: needs keyFile/, 9],
    [/^bridge: enabled, but there are no export or import rules, so nothing would be bridged/, 1],
  ];
  t.equal(problems.length, expected.length, problems.join('\n'));
  for (const [pattern, line] of expected) {
    const problem = problems.find((p) => pattern.test(p));
    t.ok(problem, `reports ${pattern}`);
    t.match(problem ?? '', `(${file} line ${line})`, `${pattern} points at line ${line}`);
  }
  const env = {
    EDGEMQTT_BRIDGE_ENABLED: 'true',
    EDGEMQTT_BRIDGE_SITE_ID: 's',
    EDGEMQTT_BRIDGE_EXPORT: '[{"filter":"a"}]',
    EDGEMQTT_BRIDGE_NATS_USER: 'u',
    EDGEMQTT_BRIDGE_NATS_TLS_KEY_FILE: '/k',
  };
  t.same(
    (await problemsOf({ env })).map((p) => p.split(':')[0]),
    ['bridge.nats.user', 'bridge.nats.tls.keyFile'],
    'the rules that pair keys work both ways',
  );
});

t.test('bridge values are checked: topic filters, QoS levels, servers, names', async (t) => {
  const problems = await problemsOf({
    overrides: {
      'bridge.siteId': 'plant berlin',
      'bridge.nats.servers': ['nats://user:secret@h:4222', 'h', 'nats://h:99999', 'tls://h', '[::1]:4222'],
      'bridge.export': [
        { filter: 'plant/#/x' },
        { filter: 'a+/b', qos: [0, 0] },
        { filter: '', qos: [] },
        { filter: 'a\u0000', qos: [3] },
        { filter: 'ok/+/#', colour: 'red' },
      ],
      'bridge.import': [{ qos: 1 }, { filter: 'x', qos: 5 }],
    },
  });
  const expected = [
    /^bridge\.siteId: must be 1-64 characters/,
    /^bridge\.nats\.servers\.0: must not hold credentials/,
    /^bridge\.nats\.servers\.1: must be nats:\/\/host/,
    /^bridge\.nats\.servers\.2: must be nats:\/\/host/,
    /^bridge\.export\.0\.filter: '#' must be alone in the last level/,
    /^bridge\.export\.1\.filter: '\+' must be alone in its level/,
    /^bridge\.export\.1\.qos: lists a QoS level twice/,
    /^bridge\.export\.2\.filter: must not be empty/,
    /^bridge\.export\.2\.qos: must list at least one QoS level/,
    /^bridge\.export\.3\.filter: must not contain NUL/,
    /^bridge\.export\.3\.qos\.0: /,
    /^bridge\.export\.4\.colour: unknown key/,
    /^bridge\.import\.0\.filter: /,
    /^bridge\.import\.1\.qos: /,
  ];
  t.equal(problems.length, expected.length, problems.join('\n'));
  for (const pattern of expected) t.ok(problems.some((p) => pattern.test(p)), `reports ${pattern}`);
  t.notOk(problems.some((p) => p.includes('secret')), 'a password in a server address is not echoed');
});

t.test('EDGEMQTT_BRIDGE_EXPORT and _IMPORT take a JSON array of rules', async (t) => {
  const file = path.join(tempDir(t), 'bridge.yaml');
  await writeFile(file, 'bridge:\n  enabled: true\n  siteId: s1\n  export:\n    - filter: from/file/#\n');
  const env = {
    EDGEMQTT_BRIDGE_EXPORT: '[{"filter":"plant/#","qos":[1,2]},{"filter":"alarms/#","retained":false}]',
    EDGEMQTT_BRIDGE_IMPORT: ' [ {"filter": "commands/#", "qos": 2} ] ',
  };
  const { bridge } = await loadConfig({ file, env });
  t.same(
    bridge.export,
    [
      { filter: 'plant/#', qos: [1, 2], retained: true },
      { filter: 'alarms/#', qos: [0, 1, 2], retained: false },
    ],
    'the variable replaces the file rules',
  );
  t.same(bridge.import, [{ filter: 'commands/#', qos: 2 }]);

  const bad = await problemsOf({
    file,
    env: { EDGEMQTT_BRIDGE_EXPORT: '[{filter: "plant/#"}]', EDGEMQTT_BRIDGE_IMPORT: '{"filter":"x"}' },
  });
  t.match(bad, [
    /^EDGEMQTT_BRIDGE_EXPORT: cannot read .* as a JSON array of objects.*\(not valid JSON: /,
    /^EDGEMQTT_BRIDGE_IMPORT: cannot read .* as a JSON array of objects.*\(not an array\)/,
  ]);
  t.equal(bad.length, 2, bad.join('\n'));

  const invalidRule = await problemsOf({ file, env: { EDGEMQTT_BRIDGE_IMPORT: '[{"filter":"a/#/b","qos":1}]' } });
  t.same(invalidRule, [
    "bridge.import.0.filter: '#' must be alone in the last level, as in plant/# (from EDGEMQTT_BRIDGE_IMPORT)",
  ]);
});
