/**
 * What the authorizer (authorizer.ts) offers and needs: its interface and the
 * hooks it gives aedes, the results of a reload or a password check, its
 * counters, and its dependencies.
 */
import type { AuthenticateError, Client, PublishPacket, Subscription } from 'aedes';
import type { Config } from '../config/schema.js';
import type { ErrorCode } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { LoginBlock } from './login-limiter.js';

export type AuthConfig = Config['auth'];

export interface AuthStats {
  loginsSucceeded: number;
  /** Wrong password or unknown user. */
  loginsFailed: number;
  /** Logins refused because too many were waiting for a password hash. */
  loginsBusy: number;
  /** Refused without checking: the source had too many recent failures. */
  loginsRateLimited: number;
  /** No user name while anonymous access is off (or no password file to check one). */
  anonymousRefused: number;
  /** PUBLISHes (and wills) dropped: ACL or $SYS. */
  publishesDenied: number;
  /** SUBSCRIBE filters answered with 0x80. */
  subscriptionsDenied: number;
  /** Messages withheld from a subscriber the ACL no longer lets read them. */
  deliveriesDenied: number;
  /** Sources currently tracked by the failed-login limiter. */
  limitedSources: number;
}

/** A password check for another way in (the admin API), under the same failed-login limits as MQTT logins. */
export type PasswordCheck =
  | { ok: true }
  /** Wrong password, unknown user, or no password file to check against. */
  | { ok: false; reason: 'bad' }
  /** The source (or this user from it) has failed too often: try again after retryAfterSec. */
  | { ok: false; reason: 'blocked'; retryAfterSec: number }
  /** Too many logins are waiting for a password hash. */
  | { ok: false; reason: 'busy' };

export interface ReloadFailure {
  /** Config key of the file, e.g. `auth.aclFile`. */
  key: string;
  code: ErrorCode;
  file: string;
  problems: readonly string[];
}

export interface AuthReloadResult {
  /** Config keys now in effect (files re-read, settings applied). */
  applied: string[];
  /** Files that could not be used; the previous one stays in effect. */
  failed: ReloadFailure[];
  /** The auth settings now in effect: `next`, except the path of a failed file. */
  effective: AuthConfig;
}

/**
 * What to do with a PUBLISH or a will: publish it, or acknowledge it as
 * usual and drop it, keeping the connection (MQTT 3.1.1 has no negative
 * acknowledgement).
 */
export type PublishDecision = 'allow' | 'drop';

/** The hooks createBroker installs on aedes. */
export interface AccessHooks {
  /**
   * `will` is the will of the CONNECT, the very object aedes stores: the
   * owner's user name is added to it, so that a later run checks it as its owner.
   */
  authenticate(
    client: Client,
    username: Readonly<string | undefined>,
    password: Readonly<Buffer | undefined>,
    will: StoredWill | null,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
  ): void;
  /** Decides a PUBLISH from `client`, or a will (`client` null: a will left by an earlier run); counts and logs what it drops. */
  checkPublish(client: Client | null, packet: PublishPacket): PublishDecision;
  authorizeSubscribe(client: Client, sub: Subscription, done: (error: Error | null, sub?: Subscription | null) => void): void;
  authorizeForward<P extends { topic: string }>(client: Client, packet: P): P | null;
  /** The user an authenticated client was verified as (its certificate's CN, or a checked user name); null: anonymous. */
  userOf(client: Client): string | null;
}

export interface Authorizer {
  readonly hooks: AccessHooks;
  /** Reads the password and ACL files; throws a SecurityFileError. Call before listeners start. */
  load(): void;
  /** Re-reads the files and applies `next`; a file that fails keeps its predecessor. */
  reload(next: AuthConfig): AuthReloadResult;
  stats(): AuthStats;
  /** Summary for the start-up log. */
  describe(): Record<string, unknown>;
  /**
   * Checks a user name and password from `remote` against the password file,
   * counting a failure into the failed-login limits (admin API logins).
   * Hashing runs off the event loop, as for CONNECT.
   */
  checkPassword(remote: string | undefined, username: string, password: Buffer): Promise<PasswordCheck>;
  /** Seconds `remote` must wait before a login as `username` is checked (counted as refused when above 0); 0 = now. */
  loginWaitSec(remote: string | undefined, username: string): number;
  /** Counts a failed login of `username` from `remote` that was checked elsewhere (a wrong admin API token). */
  recordFailedLogin(remote: string | undefined, username: string): void;
  /** Sources, and users from a source, refused for now after failed logins. */
  loginBlocks(): LoginBlock[];
  /** Lifts the blocks of an address (of one user from it, when given); returns how many. */
  unblockLogins(address: string, username?: string): number;
  /**
   * Logs what is open or cannot work: anonymous access on a listener other
   * than loopback, ACL user sections that no verified user can reach,
   * anonymous access off with no way to log in.
   */
  warnAboutExposure(listeners: ReadonlyArray<{ name: string; host: string }>): void;
}

/**
 * The user each connection's verified client certificate names, as the TLS
 * listeners recorded it (CertIdentities, src/transports/cert-identity.ts,
 * which the daemon passes in); null = a certificate without a (single) CN.
 */
export interface CertUsernames {
  get(connection: object): { username: string | null } | undefined;
}

export interface AuthorizerDeps {
  logger: Logger;
  identities: CertUsernames;
  /** Whether a listener maps client certificates to user names. */
  certificateUsers: boolean;
  /** Milliseconds clock for the login limiter. */
  now?: () => number;
}

/** A will as stored: the owner's user name travels with it (null: anonymous). */
export interface StoredWill {
  topic?: string;
  clientId?: string;
  ownerUsername?: string | null;
}
