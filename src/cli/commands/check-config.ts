import { loadConfig, type ConfigSources } from '../../config/load.js';
import { ConfigError } from '../../errors.js';
import { checkSecurityFiles } from '../check-security-files.js';
import { ignoredEnvWarning } from '../config-options.js';
import { ExitCode, type CliIo } from '../io.js';

/**
 * Validates what `start` would read from the same sources (the file, with
 * the defaults under it, the `EDGEMQTT_*` environment and the flags) and the
 * password, ACL and certificate files it names, and lists every problem.
 */
export async function checkConfig(io: CliIo, sources: ConfigSources): Promise<number> {
  const label = sources.file ?? 'embedded defaults (no config file)';
  const warning = ignoredEnvWarning(sources.env ?? {});
  if (warning) io.stderr.write(`edgemqtt: warning: ${warning}\n`);
  try {
    const config = await loadConfig(sources);
    // The files it names too: what start, or a reload, would refuse.
    const problems = checkSecurityFiles(config);
    if (problems.length > 0) throw new ConfigError(problems);
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr.write(`${label}: ${error.problems.length} problem(s)\n`);
      for (const problem of error.problems) io.stderr.write(`  - ${problem}\n`);
      return ExitCode.config;
    }
    throw error;
  }
  io.stdout.write(`${label}: ok\n`);
  return ExitCode.ok;
}
