/**
 * Reads every password, ACL, certificate and admin token file a config names, as start
 * and reload would, and lists what is wrong with them: `edgemqtt
 * check-config` runs it, so a file can be checked before `systemctl reload`.
 * In the CLI because it asks both src/auth (password and ACL files) and
 * src/transports (certificates), which do not import each other, and src/admin (token).
 */
import type { Config } from '../config/schema.js';
import { loadSecureContextOptions } from '../transports/tls-context.js';
import { Acl } from '../auth/acl.js';
import { SecurityFileError } from '../errors.js';
import { PasswordFile } from '../auth/password-file.js';
import { TokenFile } from '../admin/access.js';

export function checkSecurityFiles(config: Config): string[] {
  const problems: string[] = [];
  const attempt = (key: string, load: () => unknown) => {
    try {
      load();
    } catch (error) {
      if (!(error instanceof SecurityFileError)) throw error;
      for (const problem of error.problems) problems.push(`${key}: ${error.file}: ${problem}`);
    }
  };
  if (config.auth.passwordFile !== '') attempt('auth.passwordFile', () => PasswordFile.load(config.auth.passwordFile));
  if (config.auth.aclFile !== '') attempt('auth.aclFile', () => Acl.load(config.auth.aclFile));
  if (config.admin.enabled && config.admin.tokenFile !== '') attempt('admin.tokenFile', () => TokenFile.load(config.admin.tokenFile));
  if (config.tls.enabled) attempt('tls', () => loadSecureContextOptions(config.tls));
  if (config.http.enabled && config.http.tls.enabled) attempt('http.tls', () => loadSecureContextOptions(config.http.tls));
  return problems;
}
