import { stringify } from 'yaml';
import { loadConfig, type ConfigSources } from '../../config/load.js';
import { redactConfig } from '../../config/redact.js';
import { ignoredEnvWarning } from '../config-options.js';
import { ExitCode, type CliIo } from '../io.js';

/** Prints the effective config (defaults < file < env < flags), secrets redacted. */
export async function printConfig(io: CliIo, sources: ConfigSources, format: 'yaml' | 'json'): Promise<number> {
  const warning = ignoredEnvWarning(sources.env ?? {});
  if (warning) io.stderr.write(`edgemqtt: warning: ${warning}\n`);
  const config = redactConfig(await loadConfig(sources));
  io.stdout.write(format === 'json' ? `${JSON.stringify(config, null, 2)}\n` : stringify(config));
  return ExitCode.ok;
}
