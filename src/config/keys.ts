/**
 * Flattens the config schema into its leaf keys, so that environment
 * variables, documentation checks and redaction are all derived from the one
 * schema instead of repeating its key list.
 */
import type { z } from 'zod';

/** `json`: a list of objects (such as bridge.export), one key whose environment variable holds a JSON array. */
export type LeafKind = 'number' | 'boolean' | 'string' | 'enum' | 'string-list' | 'json';

export interface ConfigKey {
  /** Path of the key in the config object, e.g. `['mqtt', 'port']`. */
  path: string[];
  /** Dotted path, e.g. `mqtt.port`. */
  name: string;
  /** Environment variable that overrides it, e.g. `EDGEMQTT_MQTT_PORT`. */
  envName: string;
  kind: LeafKind;
  defaultValue: unknown;
  description: string;
  /** Values allowed for an enum key. */
  choices?: string[];
  secret: boolean;
}

export const ENV_PREFIX = 'EDGEMQTT_';

const secretSchemas = new WeakSet<object>();

/** Marks a schema as holding a secret: `print-config` and logs redact it. */
export function secret<T extends z.ZodType>(schema: T): T {
  secretSchemas.add(schema);
  return schema;
}

interface ZodInternals {
  _zod: { def: { type: string; innerType?: z.ZodType; defaultValue?: unknown; element?: z.ZodType; entries?: Record<string, string>; shape?: Record<string, z.ZodType> } };
  description?: string;
}

const internals = (schema: z.ZodType) => schema as unknown as ZodInternals;

function screamingSnake(segment: string): string {
  return segment.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

export function envNameFor(path: readonly string[]): string {
  return ENV_PREFIX + path.map(screamingSnake).join('_');
}

/** Lists every leaf key of an object schema, depth first, in declaration order. */
export function listConfigKeys(schema: z.ZodType, path: string[] = []): ConfigKey[] {
  let current = schema;
  let defaultValue: unknown;
  let description = internals(schema).description;
  let isSecret = secretSchemas.has(schema);
  // Unwrap default/prefault/optional wrappers to reach the value's own type.
  for (;;) {
    const def = internals(current)._zod.def;
    if ((def.type === 'default' || def.type === 'prefault' || def.type === 'optional') && def.innerType) {
      if (def.type === 'default' && defaultValue === undefined) defaultValue = def.defaultValue;
      current = def.innerType;
      description ??= internals(current).description;
      isSecret ||= secretSchemas.has(current);
      continue;
    }
    break;
  }
  const def = internals(current)._zod.def;
  if (def.type === 'object' && def.shape) {
    return Object.entries(def.shape).flatMap(([key, child]) => listConfigKeys(child, [...path, key]));
  }
  const kind = leafKind(def.type, def.element);
  const key: ConfigKey = {
    path,
    name: path.join('.'),
    envName: envNameFor(path),
    kind,
    defaultValue,
    description: description ?? '',
    secret: isSecret,
  };
  if (kind === 'enum' && def.entries) key.choices = Object.values(def.entries);
  return [key];
}

function leafKind(type: string, element: z.ZodType | undefined): LeafKind {
  switch (type) {
    case 'number':
      return 'number';
    case 'boolean':
      return 'boolean';
    case 'string':
      return 'string';
    case 'enum':
      return 'enum';
    case 'array':
      if (element && internals(element)._zod.def.type === 'string') return 'string-list';
      if (element && internals(element)._zod.def.type === 'object') return 'json';
      break;
  }
  throw new Error(`config schema: unsupported leaf type ${type}`);
}

export function getPath(value: unknown, path: readonly string[]): unknown {
  let current = value;
  for (const segment of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string, unknown>)[segment];
  }
  return current;
}

export function setPath(target: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let current = target;
  for (const segment of path.slice(0, -1)) {
    const next = current[segment];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) {
      current[segment] = {};
    }
    current = current[segment] as Record<string, unknown>;
  }
  const last = path[path.length - 1];
  if (last !== undefined) current[last] = value;
}
