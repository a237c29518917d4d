/**
 * What a reload (SIGHUP) does for security: re-reads the password file, the
 * ACL file and the TLS certificates, whether or not their paths changed (a
 * renewed certificate or an added user keeps its path), and applies each one
 * that is usable. One that is not keeps its predecessor in use and is
 * reported with its problems, so a typo in the ACL never opens or closes the
 * broker by accident. Part of the daemon's reload: it drives both the
 * authorizer (src/auth) and the TLS listeners (src/transports), which do not
 * import each other.
 */
import { configKeys } from '../config/load.js';
import { getPath, setPath } from '../config/keys.js';
import type { Config } from '../config/schema.js';
import type { CertificateReloadable, TlsSettings } from '../transports/tls-context.js';
import type { Authorizer, ReloadFailure } from '../auth/authorizer.js';
import { SecurityFileError } from '../errors.js';

/** TLS keys a running listener applies (the rest are fixed for its lifetime). */
const LIVE_TLS_KEYS = ['certFile', 'keyFile', 'keyPassphrase', 'minVersion', 'caFile'] as const;

export interface SecurityReload {
  /** Keys now in effect: files re-read, settings applied. */
  applied: string[];
  /** Files refused; their predecessors stay in use. */
  failed: ReloadFailure[];
  /** Keys this reload handled (applied, or refused with a reason): none of them needs a restart. */
  handled: Set<string>;
  /** `current` with what was applied. */
  config: Config;
}

export interface SecurityParts {
  authorizer: Authorizer;
  /** Listeners serving TLS. */
  certificates: readonly CertificateReloadable[];
}

export function reloadSecurity(current: Config, next: Config, parts: SecurityParts): SecurityReload {
  const applied: string[] = [];
  const failed: ReloadFailure[] = [];
  const handled = new Set<string>();
  const config = structuredClone(current);

  const auth = parts.authorizer.reload(next.auth);
  applied.push(...auth.applied);
  failed.push(...auth.failed);
  config.auth = auth.effective;
  for (const key of configKeys) if (key.name.startsWith('auth.')) handled.add(key.name);

  for (const listener of parts.certificates) {
    const prefix = listener.tlsConfigKey;
    const path = prefix.split('.');
    const before = getPath(current, path) as TlsSettings;
    const after = getPath(next, path) as TlsSettings;
    // Whether client certificates are asked for at all is fixed when the
    // server is created: turning caFile on or off needs a restart.
    const caModeChanges = (before.caFile === '') !== (after.caFile === '');
    const wanted: TlsSettings = {
      ...before,
      certFile: after.certFile,
      keyFile: after.keyFile,
      keyPassphrase: after.keyPassphrase,
      minVersion: after.minVersion,
      caFile: caModeChanges ? before.caFile : after.caFile,
    };
    for (const key of LIVE_TLS_KEYS) if (key !== 'caFile' || !caModeChanges) handled.add(`${prefix}.${key}`);
    try {
      applied.push(...listener.reloadCertificates(wanted));
      for (const key of ['keyPassphrase', 'minVersion'] as const) {
        if (before[key] !== wanted[key]) applied.push(`${prefix}.${key}`);
      }
      setPath(config as unknown as Record<string, unknown>, path, { ...(getPath(config, path) as object), ...wanted });
    } catch (error) {
      if (!(error instanceof SecurityFileError)) throw error;
      const fileKey = error.file === wanted.keyFile ? 'keyFile' : error.file === wanted.caFile ? 'caFile' : 'certFile';
      failed.push({ key: `${prefix}.${fileKey}`, code: error.code, file: error.file, problems: error.problems });
    }
  }
  return { applied, failed, handled, config };
}
