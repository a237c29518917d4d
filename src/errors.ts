/**
 * Every failure the daemon reports has a stable `code` that callers and tests
 * match on (message text may change) and keeps the raw failure as `cause`.
 */
export type ErrorCode =
  | 'EDGEMQTT_CONFIG_INVALID'
  | 'EDGEMQTT_LISTEN_FAILED'
  | 'EDGEMQTT_DATA_DIR'
  | 'EDGEMQTT_START_FAILED'
  | 'EDGEMQTT_STOP_TIMEOUT'
  | 'EDGEMQTT_STORE_LOCKED'
  | 'EDGEMQTT_STORE_CORRUPT'
  | 'EDGEMQTT_STORE_UNREADABLE'
  | 'EDGEMQTT_STORE_INCOMPATIBLE'
  | 'EDGEMQTT_STORE_FULL'
  | 'EDGEMQTT_STORE_WRITE_FAILED'
  | 'EDGEMQTT_STORE_CLOSED'
  // The installed aedes is not the release src/broker/aedes-seam/ was written for.
  | 'EDGEMQTT_AEDES_VERSION'
  // Security (src/auth, src/transports/tls*): a file the daemon relies on is unusable.
  | 'EDGEMQTT_PASSWORD_FILE_INVALID'
  | 'EDGEMQTT_ACL_FILE_INVALID'
  | 'EDGEMQTT_TLS_INVALID'
  // The admin API's bearer token file (src/admin).
  | 'EDGEMQTT_TOKEN_FILE_INVALID'
  | 'EDGEMQTT_LOGIN_BUSY';

export class EdgeMqttError extends Error {
  override name = 'EdgeMqttError';
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** A configuration with one or more problems; `problems` lists each of them. */
export class ConfigError extends EdgeMqttError {
  override name = 'ConfigError';
  readonly problems: readonly string[];

  constructor(problems: readonly string[], options?: { cause?: unknown }) {
    super('EDGEMQTT_CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`, options);
    this.problems = problems;
  }
}

/** A listener could not bind its address (in use, no permission, bad host). */
export class ListenError extends EdgeMqttError {
  override name = 'ListenError';

  constructor(listener: string, address: string, cause: unknown) {
    const reason = (cause as NodeJS.ErrnoException | undefined)?.code ?? String(cause);
    super('EDGEMQTT_LISTEN_FAILED', `${listener} listener cannot bind ${address}: ${reason}`, { cause });
  }
}

export type SecurityFileCode = Extract<
  ErrorCode,
  'EDGEMQTT_PASSWORD_FILE_INVALID' | 'EDGEMQTT_ACL_FILE_INVALID' | 'EDGEMQTT_TLS_INVALID' | 'EDGEMQTT_TOKEN_FILE_INVALID'
>;

/**
 * A password file, ACL file or TLS certificate the daemon cannot use. At
 * start-up it stops the start (exit 78, like a bad config: restarting will
 * not help); on reload the file in use is kept and the problems are logged.
 * Here rather than in src/auth because the TLS listeners (src/transports)
 * refuse their certificate files with it too.
 */
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
