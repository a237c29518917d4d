/**
 * Who may call the admin API: users named in `admin.users`, proved with HTTP
 * Basic authentication against the password file (their MQTT password), or
 * whoever holds the bearer token in `admin.tokenFile`; and, unless
 * `admin.allowRemote`, only from loopback (the gateway itself, or an SSH
 * tunnel). Failed logins count into the same failed-login limits as MQTT
 * logins (src/auth/login-limiter.ts), so the API is no side door for
 * guessing passwords.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Config } from '../config/schema.js';
import type { LoginBlock } from '../auth/login-limiter.js';
import type { PasswordCheck, ReloadFailure } from '../auth/authorizer.js';
import { SecurityFileError } from '../errors.js';
import { readSecurityFile } from '../util/read-security-file.js';

export type AdminConfig = Config['admin'];

/** What the API needs of the authorizer (src/auth/authorizer.ts, which the daemon passes). */
export interface AdminLogins {
  checkPassword(remote: string | undefined, username: string, password: Buffer): Promise<PasswordCheck>;
  loginWaitSec(remote: string | undefined, username: string): number;
  recordFailedLogin(remote: string | undefined, username: string): void;
  loginBlocks(): LoginBlock[];
  unblockLogins(address: string, username?: string): number;
}

/** The name bearer-token failures are limited (and listed) under: no user name, so one no real user has. */
export const TOKEN_LOGIN = '(bearer token)';

/** Whether an address is this machine: 127.0.0.0/8 and ::1, also IPv4-mapped on a dual-stack socket. */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (!address) return false;
  const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1] ?? address;
  return /^127\.\d+\.\d+\.\d+$/.test(v4) || address === '::1' || /^0*:0*:0*:0*:0*:0*:0*:0*1$/.test(address);
}

/** A bearer token read from a file, compared in constant time. */
export class TokenFile {
  /** SHA-256 of the token: equal lengths for timingSafeEqual, whatever the candidate's length. */
  readonly #digest: Buffer;

  private constructor(digest: Buffer) {
    this.#digest = digest;
  }

  /** Reads the token (the file's content, trimmed); throws a SecurityFileError when unreadable or empty. */
  static load(file: string): TokenFile {
    const token = readSecurityFile('EDGEMQTT_TOKEN_FILE_INVALID', file).toString('utf8').trim();
    if (token === '') throw new SecurityFileError('EDGEMQTT_TOKEN_FILE_INVALID', file, ['the file is empty: write the token in it']);
    return new TokenFile(digest(token));
  }

  matches(candidate: string): boolean {
    return timingSafeEqual(this.#digest, digest(candidate));
  }
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

export type AccessDecision =
  | { ok: true; who: string }
  | { ok: false; status: number; error: string; who: string | null; headers?: Record<string, string> };

const CHALLENGE = { 'WWW-Authenticate': 'Basic realm="edgemqtt"' };

export class AdminAccess {
  #settings: AdminConfig;
  #token: TokenFile | null = null;
  readonly #logins: AdminLogins;

  constructor(settings: AdminConfig, logins: AdminLogins) {
    this.#settings = settings;
    this.#logins = logins;
  }

  /** Reads the token file; throws a SecurityFileError. Call before the HTTP listener starts. */
  load(): void {
    this.#token = this.#settings.tokenFile !== '' ? TokenFile.load(this.#settings.tokenFile) : null;
  }

  /**
   * Applies `next` (users, allowRemote) and re-reads its token file; a token
   * file that fails keeps the one in use, as for the password file.
   */
  reload(next: AdminConfig): { applied: string[]; failed: ReloadFailure[]; effective: AdminConfig } {
    const applied: string[] = [];
    const failed: ReloadFailure[] = [];
    const effective = { ...next };
    try {
      this.#token = next.tokenFile !== '' ? TokenFile.load(next.tokenFile) : null;
      if (next.tokenFile !== '' || this.#settings.tokenFile !== '') applied.push('admin.tokenFile');
    } catch (error) {
      if (!(error instanceof SecurityFileError)) throw error;
      failed.push({ key: 'admin.tokenFile', code: error.code, file: error.file, problems: error.problems });
      effective.tokenFile = this.#settings.tokenFile;
    }
    if (JSON.stringify(next.users) !== JSON.stringify(this.#settings.users)) applied.push('admin.users');
    if (next.allowRemote !== this.#settings.allowRemote) applied.push('admin.allowRemote');
    this.#settings = effective;
    return { applied, failed, effective };
  }

  /** Decides a request: who makes it, or the refusal to send. */
  async check(request: IncomingMessage): Promise<AccessDecision> {
    const remote = request.socket.remoteAddress;
    if (!this.#settings.allowRemote && !isLoopbackAddress(remote)) {
      return { ok: false, status: 403, error: 'the admin API answers callers on this machine only (admin.allowRemote is false)', who: null };
    }
    const header = request.headers.authorization ?? '';
    const [scheme = '', credentials = ''] = header.trim().split(/\s+/, 2);
    if (/^bearer$/i.test(scheme)) return this.#checkToken(remote, credentials);
    if (/^basic$/i.test(scheme)) return this.#checkPassword(remote, credentials);
    return { ok: false, status: 401, error: 'authentication required: HTTP Basic (an admin.users user) or a bearer token', who: null, headers: CHALLENGE };
  }

  #checkToken(remote: string | undefined, token: string): AccessDecision {
    const wait = this.#logins.loginWaitSec(remote, TOKEN_LOGIN);
    if (wait > 0) return tooMany(wait, 'token');
    if (this.#token?.matches(token)) return { ok: true, who: 'token' };
    this.#logins.recordFailedLogin(remote, TOKEN_LOGIN);
    return { ok: false, status: 401, error: 'bad bearer token', who: 'token', headers: CHALLENGE };
  }

  async #checkPassword(remote: string | undefined, credentials: string): Promise<AccessDecision> {
    const decoded = Buffer.from(credentials, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 1) return { ok: false, status: 401, error: 'malformed Basic credentials: expected base64 of user:password', who: null, headers: CHALLENGE };
    const user = decoded.slice(0, colon);
    const result = await this.#logins.checkPassword(remote, user, Buffer.from(decoded.slice(colon + 1), 'utf8'));
    if (result.ok) {
      if (this.#settings.users.includes(user)) return { ok: true, who: user };
      return { ok: false, status: 403, error: `user ${user} may not use the admin API (admin.users)`, who: user };
    }
    switch (result.reason) {
      case 'blocked':
        return tooMany(result.retryAfterSec, user);
      case 'busy':
        return { ok: false, status: 503, error: 'too many logins waiting for a password check', who: user, headers: { 'Retry-After': '1' } };
      default:
        return { ok: false, status: 401, error: 'bad user name or password', who: user, headers: CHALLENGE };
    }
  }
}

function tooMany(retryAfterSec: number, who: string): AccessDecision {
  return {
    ok: false,
    status: 429,
    error: `too many failed logins from this address: retry after ${retryAfterSec} s`,
    who,
    headers: { 'Retry-After': String(retryAfterSec) },
  };
}
