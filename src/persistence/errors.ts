/**
 * Store failures, each with a stable code (see src/errors.ts). Raw LevelDB
 * errors are converted here, at the boundary, and kept as `cause`.
 */
import { EdgeMqttError } from '../errors.js';

/** Another process (or another store object in this one) holds the LevelDB lock. */
export class StoreLockedError extends EdgeMqttError {
  override name = 'StoreLockedError';

  constructor(location: string, cause: unknown) {
    super(
      'EDGEMQTT_STORE_LOCKED',
      `store ${location} is locked: another edgemqtt instance is using this data directory`,
      { cause },
    );
  }
}

/** LevelDB reports corruption, or the directory holds store files without a CURRENT file. */
export class StoreCorruptError extends EdgeMqttError {
  override name = 'StoreCorruptError';

  constructor(location: string, detail: string, cause?: unknown) {
    super(
      'EDGEMQTT_STORE_CORRUPT',
      `store ${location} is corrupt (${detail}); restore it from a backup or move it aside to start empty`,
      { cause },
    );
  }
}

/** The store cannot be read for another reason: I/O error, permissions, not a directory. */
export class StoreUnreadableError extends EdgeMqttError {
  override name = 'StoreUnreadableError';

  constructor(location: string, cause: unknown) {
    super('EDGEMQTT_STORE_UNREADABLE', `store ${location} cannot be opened: ${describe(cause)}`, { cause });
  }
}

/** A LevelDB that is not an edgemqtt store, or one written by a newer format. */
export class StoreIncompatibleError extends EdgeMqttError {
  override name = 'StoreIncompatibleError';

  constructor(location: string, detail: string) {
    super('EDGEMQTT_STORE_INCOMPATIBLE', `store ${location} is not usable by this version: ${detail}`);
  }
}

/**
 * The file system holding the store is full (ENOSPC, or EDQUOT: a quota). At
 * start-up it is its own error (and exit code): freeing space fixes it, while
 * an unreadable store needs an operator to look at it.
 */
export class StoreFullError extends EdgeMqttError {
  override name = 'StoreFullError';

  constructor(location: string, cause: unknown) {
    super('EDGEMQTT_STORE_FULL', `store ${location} cannot be written: no space left on its file system (${describe(cause)}); free some space`, { cause });
  }
}

/**
 * True when `error` (or one of its causes) is an out-of-space failure. LevelDB
 * reports it as LEVEL_IO_ERROR with strerror's text ("IO error: <file>: No
 * space left on device"), Node's fs with the errno code.
 */
export function isNoSpace(error: unknown): boolean {
  let current: unknown = error;
  for (let depth = 0; current && depth < 5; depth++) {
    const code = (current as { code?: unknown }).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
    if (current instanceof Error && /No space left on device|Disk quota exceeded/i.test(current.message)) return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

/** A group commit failed; every writer of that batch gets this error. */
export class StoreWriteError extends EdgeMqttError {
  override name = 'StoreWriteError';

  constructor(cause: unknown) {
    super('EDGEMQTT_STORE_WRITE_FAILED', `store write failed: ${describe(cause)}`, { cause });
  }
}

/** A write or read arrived after stop() began. */
export class StoreClosedError extends EdgeMqttError {
  override name = 'StoreClosedError';

  constructor(what = 'store') {
    super('EDGEMQTT_STORE_CLOSED', `${what} is closed`);
  }
}

/**
 * Converts an error from opening or reading LevelDB into one of the errors
 * above. classic-level wraps open failures as LEVEL_DATABASE_NOT_OPEN with the
 * reason (LEVEL_LOCKED, LEVEL_CORRUPTION, LEVEL_IO_ERROR) as `cause`.
 */
export function classifyStoreError(location: string, error: unknown): EdgeMqttError {
  if (error instanceof EdgeMqttError) return error;
  const codes = levelCodes(error);
  if (codes.includes('LEVEL_LOCKED')) return new StoreLockedError(location, error);
  if (codes.includes('LEVEL_CORRUPTION')) return new StoreCorruptError(location, innermostMessage(error), error);
  // LevelDB writes while opening (a new MANIFEST, the recovered log as a table).
  if (isNoSpace(error)) return new StoreFullError(location, error);
  return new StoreUnreadableError(location, error);
}

function levelCodes(error: unknown): string[] {
  const codes: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current && depth < 5; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string') codes.push(code);
    current = (current as { cause?: unknown }).cause;
  }
  return codes;
}

function innermostMessage(error: unknown): string {
  let current: unknown = error;
  let message = String(error);
  for (let depth = 0; current && depth < 5; depth++) {
    if (current instanceof Error) message = current.message;
    current = (current as { cause?: unknown }).cause;
  }
  return message;
}

function describe(cause: unknown): string {
  return innermostMessage(cause);
}
