/**
 * Builds the effective config from its layers, lowest first:
 * schema defaults < YAML file < `EDGEMQTT_*` environment < command-line flags.
 * Every problem in every layer is collected, so one run shows them all.
 */
import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { LineCounter, isMap, isScalar, isSeq, parseDocument, type Document } from 'yaml';
import { configSchema, type Config } from './schema.js';
import { ENV_PREFIX, envNameFor, getPath, listConfigKeys, setPath, type ConfigKey } from './keys.js';
import { ConfigError } from '../errors.js';

/** Environment variables with the prefix that are not config keys: the config file, and `edgemqtt ctl`'s own. */
export const NON_KEY_ENV = new Set([`${ENV_PREFIX}CONFIG`, `${ENV_PREFIX}CTL_URL`, `${ENV_PREFIX}CTL_USER`, `${ENV_PREFIX}CTL_PASSWORD`]);

/**
 * The first word of each top-level key's variable (`MQTT`, `DATA` for
 * dataDir): a variable whose first word after the prefix is none of them
 * cannot name a config key, whatever follows.
 */
const sectionWords = new Set(Object.keys(configSchema.shape).map((key) => firstWord(envNameFor([key]))));

/** The first word after the prefix: `MQTT` of `EDGEMQTT_MQTT_PORT`. */
function firstWord(envName: string): string | undefined {
  return envName.slice(ENV_PREFIX.length).split('_')[0];
}

/** The `EDGEMQTT_*` variables set in `env` that may be meant as config keys (the CLI's own excepted). */
function keyLikeEnvNames(env: Record<string, string | undefined>): string[] {
  return Object.keys(env).filter((name) => name.startsWith(ENV_PREFIX) && !NON_KEY_ENV.has(name) && env[name] !== undefined);
}

/** The `EDGEMQTT_*` variables that are read as config keys (a wrong one is a problem), in `env`'s order. */
export function appliedEnvNames(env: Record<string, string | undefined>): string[] {
  return keyLikeEnvNames(env).filter((name) => sectionWords.has(firstWord(name)));
}

/**
 * `EDGEMQTT_*` variables that cannot be config keys, because their first
 * word is that of no top-level key: ignored (the caller warns about them).
 * Kubernetes injects `EDGEMQTT_SERVICE_HOST`, `EDGEMQTT_PORT`,
 * `EDGEMQTT_PORT_1883_TCP_ADDR` and others into every pod of a namespace with
 * a Service named `edgemqtt`; refusing them would stop the daemon from ever
 * starting there. A variable under a real section (`EDGEMQTT_MQTT_PROT`,
 * `EDGEMQTT_DATA_DIRECTORY`) is still an error: that is a typo of a key, and
 * ignoring it would run the broker on a setting the operator did not mean.
 */
export function ignoredEnvNames(env: Record<string, string | undefined>): string[] {
  return keyLikeEnvNames(env)
    .filter((name) => !sectionWords.has(firstWord(name)))
    .sort();
}

export interface ConfigSources {
  /** Path of a YAML file; omitted = defaults only. */
  file?: string;
  env?: Record<string, string | undefined>;
  /** Overrides by dotted key, e.g. `{ 'mqtt.port': 1884 }`. */
  overrides?: Record<string, unknown>;
}

const configKeys = listConfigKeys(configSchema);
const keysByEnv = new Map(configKeys.map((key) => [key.envName, key]));
const keysByName = new Map(configKeys.map((key) => [key.name, key]));

export async function loadConfig(sources: ConfigSources): Promise<Config> {
  const problems: string[] = [];
  const origin = new Map<string, string>();
  let raw: Record<string, unknown> = {};
  let lineOf: ((path: readonly PropertyKey[]) => number | undefined) | undefined;

  if (sources.file !== undefined) {
    ({ raw, lineOf } = await readConfigFile(sources.file, problems));
  }
  const env = sources.env ?? {};
  for (const envName of appliedEnvNames(env)) {
    const text = env[envName]!;
    const key = keysByEnv.get(envName);
    if (!key) {
      problems.push(`${envName}: not a configuration variable`);
      continue;
    }
    const parsed = parseEnvValue(key, text);
    if (!parsed.ok) {
      const reason = parsed.reason ? ` (${parsed.reason})` : '';
      problems.push(`${envName}: cannot read ${JSON.stringify(text)} as ${describeKind(key)} for ${key.name}${reason}`);
      continue;
    }
    setPath(raw, key.path, parsed.value);
    origin.set(key.name, envName);
  }
  for (const [name, value] of Object.entries(sources.overrides ?? {})) {
    if (value === undefined) continue;
    const key = keysByName.get(name);
    if (!key) throw new Error(`no config key ${name}`);
    setPath(raw, key.path, value);
    origin.set(key.name, 'command line');
  }
  return validateConfig(raw, { problems, origin, fileName: sources.file, lineOf });
}

/**
 * Checks a config object against the schema and fills in defaults. Throws a
 * ConfigError listing every problem, including any passed in from earlier layers.
 */
export function validateConfig(
  raw: unknown,
  context: {
    problems?: string[];
    /** Which layer set a key, by dotted name, when not the file. */
    origin?: Map<string, string>;
    fileName?: string | undefined;
    /** Line of a key in the file, for pointing at it. */
    lineOf?: ((path: readonly PropertyKey[]) => number | undefined) | undefined;
  } = {},
): Config {
  const problems = context.problems ?? [];
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    for (const issue of result.error.issues) {
      const at = issue.path.join('.');
      // A problem inside a key (an entry of a rule list) came from where the key
      // was set; one about a key the file leaves out points at its closest
      // enclosing section in the file.
      const where = (path: readonly PropertyKey[]) => {
        for (let length = path.length; length > 0; length--) {
          const from = context.origin?.get(path.slice(0, length).join('.'));
          if (from) return ` (from ${from})`;
        }
        let line: number | undefined;
        for (let length = path.length; length > 0 && line === undefined; length--) line = context.lineOf?.(path.slice(0, length));
        return context.fileName ? ` (${context.fileName}${line ? ` line ${line}` : ''})` : '';
      };
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) {
          const name = at ? `${at}.${key}` : key;
          problems.push(`${name}: unknown key${suggest(name)}${where([...issue.path, key])}`);
        }
        continue;
      }
      problems.push(`${at || '(top level)'}: ${describeIssue(issue, raw)}${where(issue.path)}`);
    }
  }
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);
  return result.data;
}

interface ConfigFile {
  raw: Record<string, unknown>;
  lineOf?: (path: readonly PropertyKey[]) => number | undefined;
}

async function readConfigFile(file: string, problems: string[]): Promise<ConfigFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? String(error);
    problems.push(`${file}: cannot read the config file (${code})`);
    return { raw: {} };
  }
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true, lineCounter });
  if (document.errors.length > 0) {
    for (const error of document.errors) problems.push(`${file}: ${(error.message.split('\n')[0] ?? '').replace(/:$/, '')}`);
    return { raw: {} };
  }
  const value: unknown = document.toJS();
  if (value === null || value === undefined) return { raw: {} };
  if (typeof value !== 'object' || Array.isArray(value)) {
    problems.push(`${file}: the top level must be a mapping of keys`);
    return { raw: {} };
  }
  const lineOf = (path: readonly PropertyKey[]) => {
    const offset = keyOffset(document, path);
    return offset === undefined ? undefined : lineCounter.linePos(offset).line;
  };
  return { raw: value as Record<string, unknown>, lineOf };
}

/**
 * Where the key at `path` is written: the offset of the key itself, not of
 * its value. A key whose value is a block mapping has that value start on
 * the next line, so pointing at the value put the problem one line too low.
 * For an entry of a list, the offset of the entry.
 */
function keyOffset(document: Document, path: readonly PropertyKey[]): number | undefined {
  let node: unknown = document.contents;
  let offset: number | undefined;
  for (const segment of path) {
    if (isMap(node)) {
      const pair = node.items.find((item) => (isScalar(item.key) ? String(item.key.value) : String(item.key)) === String(segment));
      if (!pair) return undefined;
      offset = isScalar(pair.key) ? pair.key.range?.[0] : undefined;
      node = pair.value;
    } else if (isSeq(node)) {
      const item = node.items[Number(segment)] as { range?: [number, number, number] } | undefined;
      if (!item) return undefined;
      offset = item.range?.[0];
      node = item;
    } else {
      return undefined;
    }
  }
  return offset;
}

/**
 * A zod issue in the operator's terms. For a boolean, one rule for the file
 * and the environment: `true` or `false` only. YAML 1.2 (what the file is
 * read as) has no other booleans, so `yes`, `on` or `1` arrive as a string
 * or a number, and the JSON Schema editors check the file with says boolean;
 * accepting more only from the environment would let the same setting work
 * in one place and be refused in the other.
 */
function describeIssue(issue: z.core.$ZodIssue, raw: unknown): string {
  if (issue.code === 'invalid_type' && issue.expected === 'boolean') {
    const value = getPath(raw, issue.path.map(String));
    if (value !== undefined) return `expected true or false, not ${JSON.stringify(value)} (booleans are true and false only, as in YAML 1.2)`;
  }
  return issue.message;
}

type ParsedEnvValue = { ok: true; value: unknown } | { ok: false; reason?: string };

function parseEnvValue(key: ConfigKey, text: string): ParsedEnvValue {
  const ok = (value: unknown): ParsedEnvValue => ({ ok: true, value });
  switch (key.kind) {
    case 'number': {
      const value = Number(text);
      return text.trim() !== '' && Number.isFinite(value) ? ok(value) : { ok: false };
    }
    // The spellings YAML 1.2 reads as booleans, and only those (see describeIssue).
    case 'boolean':
      if (/^(true|True|TRUE)$/.test(text)) return ok(true);
      if (/^(false|False|FALSE)$/.test(text)) return ok(false);
      return { ok: false, reason: 'booleans are true and false only, as in YAML 1.2' };
    case 'string-list':
      return ok(
        text
          .split(',')
          .map((item) => item.trim())
          .filter((item) => item !== ''),
      );
    case 'json': {
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (error) {
        return { ok: false, reason: `not valid JSON: ${(error as Error).message}` };
      }
      return Array.isArray(value) ? ok(value) : { ok: false, reason: 'not an array' };
    }
    default:
      return ok(text);
  }
}

function describeKind(key: ConfigKey): string {
  switch (key.kind) {
    case 'number':
      return 'a number';
    case 'boolean':
      return 'true or false';
    case 'json':
      return 'a JSON array of objects, e.g. [{"filter":"plant/#"}]';
    default:
      return key.kind;
  }
}

/** Points at the intended key when an unknown one differs only in case or `_`. */
function suggest(name: string): string {
  const folded = name.toLowerCase().replace(/[_-]/g, '');
  const match = configKeys.find((key) => key.name.toLowerCase() === folded);
  return match ? ` (did you mean ${match.name}?)` : '';
}

export { configKeys };
