/**
 * Reads a password, ACL or certificate file for src/auth and the TLS
 * listeners (src/transports/tls-context.ts), turning a failure into the
 * SecurityFileError they report. Synchronous: small local files, read at
 * start and on SIGHUP.
 */
import { readFileSync } from 'node:fs';
import { SecurityFileError, type SecurityFileCode } from '../errors.js';

/** Why a file could not be read: its errno code when there is one. */
function readFailure(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code ? `cannot read the file (${code})` : `cannot read the file (${String(error)})`;
}

/** The file's bytes, or a SecurityFileError with `code` when it cannot be read. */
export function readSecurityFile(code: SecurityFileCode, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (cause) {
    throw new SecurityFileError(code, file, [readFailure(cause)], { cause });
  }
}
