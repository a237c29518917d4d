/**
 * The password file: one `user:hash` per line, the hash in the form
 * `$scrypt$N=16384,r=8,p=1$<salt>$<key>` (base64, no padding), `#` comments
 * and blank lines allowed. scrypt (RFC 7914, `node:crypto`) is memory-hard,
 * so a stolen file is costly to brute-force on GPUs; the parameters travel
 * with each hash, so they can be raised later without breaking old entries.
 *
 * Managed with `edgemqtt passwd add|rm|list FILE [USER]`; see
 * src/cli/commands/passwd.ts.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { EdgeMqttError, SecurityFileError } from '../errors.js';
import { readSecurityFile } from '../util/read-security-file.js';

export interface ScryptParams {
  /** CPU/memory cost, a power of two. */
  N: number;
  /** Block size. */
  r: number;
  /** Parallelism. */
  p: number;
}

/**
 * 16 MiB and ~50 ms per hash on a Raspberry Pi 4 class CPU: the cost an
 * attacker pays per guess, and the daemon per login (in libuv's thread pool,
 * off the event loop). Failed logins are rate-limited per source
 * (login-limiter.ts), so a flood cannot turn this into a CPU sink.
 */
export const DEFAULT_SCRYPT: Readonly<ScryptParams> = { N: 16384, r: 8, p: 1 };
const SALT_BYTES = 16;
const KEY_BYTES = 32;
/**
 * scrypt needs 128·N·r bytes. A hand-edited (or hostile) file must not make
 * one login allocate gigabytes: larger parameters are refused when the file
 * is read.
 */
const MAX_SCRYPT_MEMORY_BYTES = 64 * 1024 * 1024;
const MAX_P = 16;

export interface PasswordHash {
  params: ScryptParams;
  salt: Buffer;
  key: Buffer;
}

const HASH_PATTERN = /^\$scrypt\$N=(\d{1,10}),r=(\d{1,4}),p=(\d{1,4})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/;

/**
 * Hashes run in libuv's thread pool (4 threads by default), which LevelDB and
 * file I/O share: a burst of logins must not queue the writes that gate
 * acknowledgements behind seconds of hashing. At most this many at once; the
 * rest wait their turn (their clients wait for a CONNACK meanwhile).
 */
const MAX_CONCURRENT_HASHES = 2;
/**
 * Logins that may wait for a hash slot. Beyond it a login is refused at once
 * (CONNACK 3, server unavailable: the client retries later) instead of
 * queueing: a burst of CONNECTs with passwords from many addresses would
 * otherwise queue seconds of hashing, for clients long gone, ahead of real
 * logins. 64 waiting ≈ 1.3 s of hashing at N=16384 on two threads.
 */
export const MAX_WAITING_HASHES = 64;
// Process-wide on purpose: the libuv thread pool these hashes occupy is.
let hashing = 0;
const waiting: Array<() => void> = [];

/** Too many logins are already waiting for a password hash. */
export class LoginBusyError extends EdgeMqttError {
  override name = 'LoginBusyError';

  constructor() {
    super('EDGEMQTT_LOGIN_BUSY', `more than ${MAX_WAITING_HASHES} logins are waiting for a password check`);
  }
}

async function withHashSlot<T>(work: () => Promise<T>): Promise<T> {
  // A finished hash hands its slot straight to the next in line, so a
  // newcomer cannot slip in between and exceed the bound.
  if (hashing >= MAX_CONCURRENT_HASHES) {
    if (waiting.length >= MAX_WAITING_HASHES) throw new LoginBusyError();
    await new Promise<void>((resolve) => waiting.push(resolve));
  } else hashing += 1;
  try {
    return await work();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else hashing -= 1;
  }
}

function scryptAsync(password: Uint8Array, salt: Uint8Array, keyLength: number, params: ScryptParams): Promise<Buffer> {
  return withHashSlot(() => scryptUnbounded(password, salt, keyLength, params));
}

function scryptUnbounded(password: Uint8Array, salt: Uint8Array, keyLength: number, params: ScryptParams): Promise<Buffer> {
  const options: ScryptOptions = {
    N: params.N,
    r: params.r,
    p: params.p,
    maxmem: 128 * params.N * params.r + 1024 * 1024,
  };
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keyLength, options, (error, key) => (error ? reject(error) : resolve(key)));
  });
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64').replace(/=+$/, '');
}

/** Hashes a password for the file: `$scrypt$N=…,r=…,p=…$salt$key`. */
export async function hashPassword(password: string | Uint8Array, params: ScryptParams = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const bytes = typeof password === 'string' ? Buffer.from(password, 'utf8') : password;
  const key = await scryptAsync(bytes, salt, KEY_BYTES, params);
  return `$scrypt$N=${params.N},r=${params.r},p=${params.p}$${base64(salt)}$${base64(key)}`;
}

/** Parses an encoded hash; returns why it is unusable instead when it is. */
export function parseHash(encoded: string): PasswordHash | string {
  if (/^\$[67]\$/.test(encoded)) return 'a mosquitto_passwd hash; add the user again with `edgemqtt passwd add`';
  const match = HASH_PATTERN.exec(encoded);
  if (!match) return 'not a $scrypt$N=…,r=…,p=…$salt$key hash';
  const [N, r, p] = [Number(match[1]), Number(match[2]), Number(match[3])];
  if (N < 2 || (N & (N - 1)) !== 0) return `scrypt N=${N} is not a power of two`;
  if (r < 1 || p < 1 || p > MAX_P) return `scrypt r=${r}, p=${p} out of range (r ≥ 1, 1 ≤ p ≤ ${MAX_P})`;
  if (128 * N * r > MAX_SCRYPT_MEMORY_BYTES) {
    return `scrypt N=${N}, r=${r} needs ${(128 * N * r) / 1048576} MiB per login; at most ${MAX_SCRYPT_MEMORY_BYTES / 1048576} MiB allowed`;
  }
  const salt = Buffer.from(match[4]!, 'base64');
  const key = Buffer.from(match[5]!, 'base64');
  if (salt.length < 8) return 'salt shorter than 8 bytes';
  if (key.length < 16) return 'key shorter than 16 bytes';
  return { params: { N, r, p }, salt, key };
}

/**
 * Why a name cannot be a user in the file, or null when it can. ':' ends the
 * name in a line; control characters and edge spaces would not survive an
 * editor; a leading '#' would read as a comment.
 */
export function usernameProblem(user: string): string | null {
  if (user === '') return 'the user name is empty';
  if (user.includes(':')) return 'the user name contains ":"';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(user)) return 'the user name contains a control character';
  if (user !== user.trim()) return 'the user name starts or ends with white space';
  if (user.startsWith('#')) return 'the user name starts with "#"';
  if (Buffer.byteLength(user, 'utf8') > 65535) return 'the user name is longer than 65535 bytes [MQTT-1.5.3]';
  return null;
}

/** One meaningful line of the file. */
interface Entry {
  user: string;
  hash: PasswordHash;
}

/**
 * A stand-in hash for unknown users. A login for a user that does not exist
 * still derives a key (and fails), so its timing does not tell an attacker
 * which user names exist.
 */
let dummyHash: PasswordHash | undefined;
function dummy(): PasswordHash {
  dummyHash ??= { params: { ...DEFAULT_SCRYPT }, salt: randomBytes(SALT_BYTES), key: randomBytes(KEY_BYTES) };
  return dummyHash;
}

export class PasswordFile {
  readonly #users: Map<string, PasswordHash>;

  private constructor(users: Map<string, PasswordHash>) {
    this.#users = users;
  }

  /** Parses the file's text; throws a SecurityFileError listing every bad line. */
  static parse(text: string, file = 'password file'): PasswordFile {
    const problems: string[] = [];
    const users = new Map<string, PasswordHash>();
    for (const line of meaningfulLines(text)) {
      const entry = parseLine(line.text);
      if (typeof entry === 'string') {
        problems.push(`line ${line.number}: ${entry}`);
        continue;
      }
      if (users.has(entry.user)) {
        problems.push(`line ${line.number}: user ${JSON.stringify(entry.user)} appears twice`);
        continue;
      }
      users.set(entry.user, entry.hash);
    }
    if (problems.length > 0) throw new SecurityFileError('EDGEMQTT_PASSWORD_FILE_INVALID', file, problems);
    return new PasswordFile(users);
  }

  /** Reads and parses a file. */
  static load(file: string): PasswordFile {
    return PasswordFile.parse(readSecurityFile('EDGEMQTT_PASSWORD_FILE_INVALID', file).toString('utf8'), file);
  }

  get size(): number {
    return this.#users.size;
  }

  users(): string[] {
    return [...this.#users.keys()];
  }

  has(user: string): boolean {
    return this.#users.has(user);
  }

  /**
   * Whether `password` is `user`'s. Constant-time comparison; an unknown
   * user costs a full hash too.
   */
  async verify(user: string, password: string | Uint8Array): Promise<boolean> {
    const entry = this.#users.get(user);
    const hash = entry ?? dummy();
    const bytes = typeof password === 'string' ? Buffer.from(password, 'utf8') : password;
    const derived = await scryptAsync(bytes, hash.salt, hash.key.length, hash.params);
    return timingSafeEqual(derived, hash.key) && entry !== undefined;
  }
}

interface NumberedLine {
  number: number;
  text: string;
}

function* meaningfulLines(text: string): Generator<NumberedLine> {
  const lines = text.split(/\r?\n/);
  for (let index = 0; index < lines.length; index++) {
    const line = (lines[index] ?? '').trimEnd();
    if (line.trim() === '' || line.trimStart().startsWith('#')) continue;
    yield { number: index + 1, text: line };
  }
}

function parseLine(line: string): Entry | string {
  const colon = line.indexOf(':');
  if (colon < 0) return 'expected user:hash';
  const user = line.slice(0, colon);
  const problem = usernameProblem(user);
  if (problem) return problem;
  const hash = parseHash(line.slice(colon + 1));
  if (typeof hash === 'string') return `user ${JSON.stringify(user)}: ${hash}`;
  return { user, hash };
}

/**
 * Edits the file's text for `edgemqtt passwd`: keeps comments, blank lines
 * and the order of users; a new user goes at the end.
 */
export function setUserLine(text: string, user: string, encodedHash: string): { text: string; existed: boolean } {
  const lines = splitKeepingEnd(text);
  const index = lines.findIndex((line) => lineUser(line) === user);
  const entry = `${user}:${encodedHash}`;
  if (index >= 0) {
    lines[index] = entry;
    return { text: joinLines(lines), existed: true };
  }
  lines.push(entry);
  return { text: joinLines(lines), existed: false };
}

export function removeUserLine(text: string, user: string): { text: string; existed: boolean } {
  const lines = splitKeepingEnd(text);
  const kept = lines.filter((line) => lineUser(line) !== user);
  return { text: joinLines(kept), existed: kept.length !== lines.length };
}

function lineUser(line: string): string | undefined {
  if (line.trim() === '' || line.trimStart().startsWith('#')) return undefined;
  const colon = line.indexOf(':');
  return colon < 0 ? undefined : line.slice(0, colon);
}

function splitKeepingEnd(text: string): string[] {
  if (text === '') return [];
  return text.replace(/\r?\n$/, '').split(/\r?\n/);
}

function joinLines(lines: string[]): string {
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}
