import { loadConfig } from '../../config/load.js';
import { ConfigError } from '../../errors.js';
import { checkSecurityFiles } from '../check-security-files.js';
import { ExitCode, type CliIo } from '../io.js';

/**
 * Validates one file (with the defaults under it) and the password, ACL and
 * certificate files it names, and lists every problem.
 */
export async function checkConfig(io: CliIo, file: string): Promise<number> {
  try {
    const config = await loadConfig({ file });
    // The files it names too: what start, or a reload, would refuse.
    const problems = checkSecurityFiles(config);
    if (problems.length > 0) throw new ConfigError(problems);
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr.write(`${file}: ${error.problems.length} problem(s)\n`);
      for (const problem of error.problems) io.stderr.write(`  - ${problem}\n`);
      return ExitCode.config;
    }
    throw error;
  }
  io.stdout.write(`${file}: ok\n`);
  return ExitCode.ok;
}
