/**
 * A password file, ACL file or TLS certificate the daemon cannot use. At
 * start-up it stops the start (exit 78, like a bad config: restarting will
 * not help); on reload the file in use is kept and the problems are logged.
 */
import { readFileSync } from 'node:fs';
import { EdgeMqttError, type ErrorCode } from '../errors.js';

export type SecurityFileCode = Extract<
  ErrorCode,
  'EDGEMQTT_PASSWORD_FILE_INVALID' | 'EDGEMQTT_ACL_FILE_INVALID' | 'EDGEMQTT_TLS_INVALID'
>;

export class SecurityFileError extends EdgeMqttError {
  override name = 'SecurityFileError';
  /** The file that failed. */
  readonly file: string;
  /** Each problem, with its line number where there is one. */
  readonly problems: readonly string[];

  constructor(code: SecurityFileCode, file: string, problems: readonly string[], options?: { cause?: unknown }) {
    super(code, `${file}: ${problems.join('; ')}`, options);
    this.file = file;
    this.problems = problems;
  }
}

/** Why a file could not be read: its errno code when there is one. */
function readFailure(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code ? `cannot read the file (${code})` : `cannot read the file (${String(error)})`;
}

/**
 * Reads a password, ACL or certificate file, or throws a SecurityFileError
 * with `code`. Synchronous: small local files, read at start and on SIGHUP.
 */
export function readSecurityFile(code: SecurityFileCode, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (cause) {
    throw new SecurityFileError(code, file, [readFailure(cause)], { cause });
  }
}
