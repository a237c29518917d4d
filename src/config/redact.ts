import { configKeys } from './load.js';
import { getPath, setPath } from './keys.js';
import type { Config } from './schema.js';

export const REDACTED = '[redacted]';

/** A copy of the config with every key marked secret in the schema replaced. */
export function redactConfig(config: Config): Config {
  const copy = structuredClone(config) as unknown as Record<string, unknown>;
  for (const key of configKeys) {
    if (key.secret && getPath(copy, key.path)) setPath(copy, key.path, REDACTED);
  }
  return copy as unknown as Config;
}
