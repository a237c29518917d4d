/**
 * Builds the effective config from its layers, lowest first:
 * schema defaults < YAML file < `EDGEMQTT_*` environment < command-line flags.
 * Every problem in every layer is collected, so one run shows them all.
 */
import { readFile } from 'node:fs/promises';
import { LineCounter, parseDocument } from 'yaml';
import { configSchema, type Config } from './schema.js';
import { ENV_PREFIX, listConfigKeys, setPath, type ConfigKey } from './keys.js';
import { ConfigError } from '../errors.js';

/** Environment variables with the prefix that are not config keys: the config file, and `edgemqtt ctl`'s own. */
export const NON_KEY_ENV = new Set([`${ENV_PREFIX}CONFIG`, `${ENV_PREFIX}CTL_URL`, `${ENV_PREFIX}CTL_USER`, `${ENV_PREFIX}CTL_PASSWORD`]);

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
  for (const [envName, text] of Object.entries(sources.env ?? {})) {
    if (!envName.startsWith(ENV_PREFIX) || NON_KEY_ENV.has(envName) || text === undefined) continue;
    const key = keysByEnv.get(envName);
    if (!key) {
      problems.push(`${envName}: not a configuration variable`);
      continue;
    }
    const parsed = parseEnvValue(key, text);
    if (!parsed.ok) {
      const reason = parsed.reason ? ` (${parsed.reason})` : '';
      problems.push(`${envName}: cannot read ${JSON.stringify(text)} as ${describeKind(key)}${reason}`);
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
      problems.push(`${at || '(top level)'}: ${issue.message}${where(issue.path)}`);
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
    const node = document.getIn(path.map(String), true) as { range?: [number, number, number] } | undefined;
    return node?.range ? lineCounter.linePos(node.range[0]).line : undefined;
  };
  return { raw: value as Record<string, unknown>, lineOf };
}

type ParsedEnvValue = { ok: true; value: unknown } | { ok: false; reason?: string };

function parseEnvValue(key: ConfigKey, text: string): ParsedEnvValue {
  const ok = (value: unknown): ParsedEnvValue => ({ ok: true, value });
  switch (key.kind) {
    case 'number': {
      const value = Number(text);
      return text.trim() !== '' && Number.isFinite(value) ? ok(value) : { ok: false };
    }
    case 'boolean':
      if (/^(true|1|yes|on)$/i.test(text)) return ok(true);
      if (/^(false|0|no|off)$/i.test(text)) return ok(false);
      return { ok: false };
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
