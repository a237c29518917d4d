/**
 * The command-line flags that override config keys, shared by `start`,
 * `check-config` and `print-config`. Each flag names the key it overrides, so precedence stays
 * in one place (config/load.ts).
 */
import type { Argv } from 'yargs';
import { ignoredEnvNames, type ConfigSources } from '../config/load.js';

const FLAG_KEYS = {
  'mqtt-port': 'mqtt.port',
  'http-port': 'http.port',
  'data-dir': 'dataDir',
  'log-level': 'log.level',
} as const;

export interface ConfigFlags {
  config?: string;
  'mqtt-port'?: number;
  'http-port'?: number;
  'data-dir'?: string;
  'log-level'?: string;
}

export function withConfigOptions<T>(yargs: Argv<T>): Argv<T & ConfigFlags> {
  return yargs
    .option('config', {
      alias: 'c',
      type: 'string',
      describe: 'YAML config file (also $EDGEMQTT_CONFIG); without one, the embedded defaults apply',
    })
    .option('mqtt-port', { type: 'number', describe: 'MQTT TCP port (mqtt.port)' })
    .option('http-port', { type: 'number', describe: 'HTTP/WebSocket port (http.port)' })
    .option('data-dir', { type: 'string', describe: 'Directory for persistent state (dataDir)' })
    .option('log-level', {
      type: 'string',
      describe: 'fatal, error, warn, info, debug, trace or silent (log.level)',
    }) as Argv<T & ConfigFlags>;
}

export function configSourcesFrom(flags: ConfigFlags, env: Record<string, string | undefined>): ConfigSources {
  const overrides: Record<string, unknown> = {};
  for (const [flag, key] of Object.entries(FLAG_KEYS)) {
    const value = flags[flag as keyof typeof FLAG_KEYS];
    if (value !== undefined) overrides[key] = value;
  }
  const file = flags.config ?? env.EDGEMQTT_CONFIG;
  return { ...(file !== undefined ? { file } : {}), env, overrides };
}

/**
 * The warning for `EDGEMQTT_*` variables that cannot be config keys and are
 * ignored (config/load.ts), or undefined when there are none.
 */
export function ignoredEnvWarning(env: Record<string, string | undefined>): string | undefined {
  const ignored = ignoredEnvNames(env);
  if (ignored.length === 0) return undefined;
  return (
    `ignoring ${ignored.join(', ')}: they name no config section ` +
    '(Kubernetes sets such variables for a Service named edgemqtt)'
  );
}
