/**
 * Authentication and topic authorization as aedes hooks: who may connect
 * (password file, TLS client certificate, anonymous), what each client may
 * publish and subscribe to (ACL file), with the files re-read on reload.
 *
 * - CONNECT: a verified client certificate on a `useCnAsUsername` listener
 *   names the user; otherwise a user name must come with its password from
 *   the password file (CONNACK 4 when not), and no user name means anonymous
 *   (CONNACK 5 unless `allowAnonymous`). A source with too many recent
 *   failures is refused (CONNACK 5) before any hashing. A will the client
 *   could not publish itself is refused at CONNECT (CONNACK 5), as in
 *   Mosquitto 2.
 * - PUBLISH to a topic the ACL does not grant, or to `$SYS` (read-only for
 *   clients): dropped and counted, the connection kept. MQTT 3.1.1 has no
 *   negative acknowledgement, so QoS 1/2 are still acknowledged; otherwise
 *   the client would resend forever. `checkPublish` answers allow or drop,
 *   and the broker acts on it (src/broker/aedes-seam/seam.ts).
 * - SUBSCRIBE: granted only if a read rule covers the whole filter; else
 *   0x80 in the SUBACK [MQTT-3.9.3]. Each delivery is checked again, so a
 *   reloaded ACL applies to subscriptions made before it.
 */
import type { AuthenticateError, Client, PublishPacket } from 'aedes';
import type { Config } from '../config/schema.js';
import { Acl, type ClientAcl } from './acl.js';
import { SecurityFileError } from '../errors.js';
import { sourceKey } from './login-limiter.js';
import { FailedLogins } from './failed-logins.js';
import { LoginBusyError, PasswordFile } from './password-file.js';
import { RateLimitedLog } from '../util/rate-limited-log.js';
import type { AccessHooks, AuthConfig, Authorizer, AuthorizerDeps, PublishDecision, ReloadFailure, StoredWill } from './authorizer-api.js';

export type {
  AccessHooks,
  AuthConfig,
  AuthReloadResult,
  AuthStats,
  Authorizer,
  AuthorizerDeps,
  CertUsernames,
  PasswordCheck,
  PublishDecision,
  ReloadFailure,
  StoredWill,
} from './authorizer-api.js';

/** CONNACK return codes [MQTT-3.2.2.3]. */
const SERVER_UNAVAILABLE = 3;
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;

/** Whether a bind address only accepts connections from this machine. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

interface ClientState {
  /** Verified user name; null = anonymous. */
  username: string | null;
  acl: ClientAcl | undefined;
  /** The ACL generation `acl` was built from. */
  aclGeneration: number;
  /** A denied publish has been logged at info for this client (later ones at debug). */
  denialLogged: boolean;
  /** The same for denied subscriptions. */
  subscriptionDenialLogged: boolean;
}

const SYS_PREFIX = '$SYS/';
const DOLLAR = 0x24;
/** aedes' messages naming clients and their subscriptions: $SYS/<broker id>/new/clients, /new/subscribes, /new/unsubscribes, /disconnect/clients. */
const CLIENT_LISTING = /^\$SYS\/[^/]+\/(?:new|disconnect)\//;

function isSysTopic(topic: string): boolean {
  return topic === '$SYS' || topic.startsWith(SYS_PREFIX);
}

function refusal(returnCode: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

function remoteAddress(client: Client): string | undefined {
  const conn = client.conn as { remoteAddress?: string };
  return conn.remoteAddress ?? client.req?.socket?.remoteAddress;
}

/**
 * Each client's state, in a field of aedes' Client (so that nothing outlives
 * it): a WeakMap cost an entry per client, and a lookup per PUBLISH and
 * delivery checked.
 */
const STATE = Symbol('edgemqtt.authState');
type WithState = Client & { [STATE]?: ClientState | undefined };
class ClientStates {
  get(client: Client): ClientState | undefined {
    return (client as WithState)[STATE];
  }
  set(client: Client, state: ClientState): void {
    (client as WithState)[STATE] = state;
  }
  delete(client: Client): void {
    // Not `delete`: a deleted field would turn the client into a dictionary.
    (client as WithState)[STATE] = undefined;
  }
}

export function createAuthorizer(config: Config, deps: AuthorizerDeps): Authorizer {
  const log = deps.logger.child({ component: 'auth' });
  let settings: AuthConfig = config.auth;
  let passwords: PasswordFile | null = null;
  let acl: Acl | null = null;
  /** Bumped on every ACL change; client ACLs are rebuilt lazily when stale. */
  let aclGeneration = 0;
  const logins = new FailedLogins(settings.failedLogins, log, deps.now);
  const clients = new ClientStates();
  // CONNECTs refused before any password check cost a client nothing to
  // repeat: one line per kind every 10 s, with a count of the rest.
  const refusals = new RateLimitedLog(log);
  const counters = {
    loginsSucceeded: 0,
    loginsBusy: 0,
    anonymousRefused: 0,
    publishesDenied: 0,
    subscriptionsDenied: 0,
    deliveriesDenied: 0,
  };

  function loadFiles(auth: AuthConfig): { passwords: PasswordFile | null; acl: Acl | null } {
    return {
      passwords: auth.passwordFile !== '' ? PasswordFile.load(auth.passwordFile) : null,
      acl: auth.aclFile !== '' ? Acl.load(auth.aclFile) : null,
    };
  }

  function stateOf(client: Client): ClientState {
    let state = clients.get(client);
    if (!state) {
      // Not authenticated by this authorizer: anonymous. Cannot happen through
      // CONNECT because src/broker/connect-hold.ts keeps every packet after it
      // from aedes until it is accepted; aedes alone handles some before.
      state = { username: null, acl: undefined, aclGeneration: -1, denialLogged: false, subscriptionDenialLogged: false };
      clients.set(client, state);
    }
    return state;
  }

  function clientAcl(client: Client, state: ClientState, current: Acl): ClientAcl {
    if (state.acl === undefined || state.aclGeneration !== aclGeneration) {
      state.acl = current.forClient(state.username, client.id);
      state.aclGeneration = aclGeneration;
      if (state.acl.patternsSkipped) {
        log.warn(
          { clientId: client.id, user: state.username },
          'ACL patterns do not apply to this client: its user name or client id contains +, # or /',
        );
      }
    }
    return state.acl;
  }

  function accept(
    client: Client,
    username: string | null,
    will: StoredWill | null,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
    how: string,
  ): void {
    const state: ClientState = { username, acl: undefined, aclGeneration: -1, denialLogged: false, subscriptionDenialLogged: false };
    // Stored with the will (the store keeps extra keys; aedes-packet drops them
    // before delivery), so that a will published by a later run is checked as
    // its owner against the ACL then in force.
    if (will) will.ownerUsername = username;
    clients.set(client, state);
    if (will?.topic !== undefined && !mayPublish(client, state, will.topic)) {
      clients.delete(client);
      refusals.info('will', { clientId: client.id, user: username, willTopic: will.topic, remote: remoteAddress(client) }, 'connect refused: will topic not allowed');
      done(refusal(NOT_AUTHORIZED, 'will topic not allowed'), false);
      return;
    }
    if (username !== null) counters.loginsSucceeded += 1;
    log.debug({ clientId: client.id, user: username, how }, 'client authenticated');
    done(null, true);
  }

  function mayPublish(client: Client, state: ClientState, topic: string): boolean {
    if (isSysTopic(topic)) return false;
    const current = acl;
    return current === null || clientAcl(client, state, current).canWrite(topic);
  }

  const hooks: AccessHooks = {
    authenticate(client, username, password, will, done) {
      const remote = remoteAddress(client);
      const refuse = (returnCode: number, message: string) => done(refusal(returnCode, message), false);
      const cert = deps.identities.get(client.conn);
      if (cert) {
        if (cert.username === null) {
          refusals.info('certificate', { clientId: client.id, remote }, 'connect refused: client certificate has no (single) CN');
          refuse(NOT_AUTHORIZED, 'client certificate has no CN');
          return;
        }
        accept(client, cert.username, will, done, 'certificate');
        return;
      }
      const current = passwords;
      if (username === undefined || current === null) {
        // No user name, or none can be checked (no password file): anonymous.
        if (settings.allowAnonymous) {
          if (username !== undefined) log.debug({ clientId: client.id, user: username }, 'no password file: user name not verified, client is anonymous');
          accept(client, null, will, done, 'anonymous');
          return;
        }
        counters.anonymousRefused += 1;
        refusals.info('anonymous', { clientId: client.id, remote, user: username }, 'connect refused: anonymous access is off');
        refuse(NOT_AUTHORIZED, 'anonymous access is off');
        return;
      }
      if (logins.refuses(remote, username) > 0) {
        log.debug({ clientId: client.id, user: username, source: sourceKey(remote) }, 'connect refused: too many failed logins from this source');
        refuse(NOT_AUTHORIZED, 'too many failed logins');
        return;
      }
      current.verify(username, password ?? Buffer.alloc(0)).then(
        (ok) => {
          if (ok) {
            accept(client, username, will, done, 'password');
            return;
          }
          // The user name is logged (sshd does too), the password never.
          log.warn(
            { clientId: client.id, user: username, remote, reason: current.has(username) ? 'wrong password' : 'unknown user' },
            'login failed',
          );
          logins.failed(remote, username);
          refuse(BAD_USERNAME_OR_PASSWORD, 'bad user name or password');
        },
        (error: unknown) => {
          if (error instanceof LoginBusyError) {
            counters.loginsBusy += 1;
            refusals.info('loginBusy', { clientId: client.id, remote }, 'connect refused: too many logins waiting for a password check');
            refuse(SERVER_UNAVAILABLE, 'too many logins waiting');
            return;
          }
          log.error({ err: error, clientId: client.id }, 'password check failed');
          refuse(NOT_AUTHORIZED, 'password check failed');
        },
      );
    },

    checkPublish(client, packet) {
      if (client === null) {
        // A will left by a previous run of the broker, published on its
        // owner's behalf. It passed the checks at its CONNECT, but the ACL may
        // have been narrowed since (a revoked device): check it again, as its
        // owner, against the rules in force now.
        const current = acl;
        const will = packet as PublishPacket & StoredWill;
        if (isSysTopic(packet.topic)) return drop(null, packet, '$SYS is read-only');
        if (current !== null && !current.forClient(will.ownerUsername ?? null, will.clientId ?? '').canWrite(packet.topic)) {
          return drop(null, packet, 'will not allowed by the ACL now in force');
        }
        return 'allow';
      }
      const state = stateOf(client);
      if (!mayPublish(client, state, packet.topic)) {
        return drop(client, packet, isSysTopic(packet.topic) ? '$SYS is read-only' : 'not allowed by the ACL', state);
      }
      return 'allow';
    },

    authorizeSubscribe(client, sub, done) {
      const current = acl;
      const state = stateOf(client);
      // Without an ACL file anyone may subscribe to $SYS (mosquitto_sub -t
      // '$SYS/#' works out of the box); what lists clients is withheld from
      // anonymous clients in authorizeForward. With an ACL file, its rules decide.
      if (current !== null && !clientAcl(client, state, current).canSubscribe(sub.topic)) {
        counters.subscriptionsDenied += 1;
        // At info once per connection, then at debug, as for publishes.
        const level = state.subscriptionDenialLogged ? 'debug' : 'info';
        state.subscriptionDenialLogged = true;
        log[level]({ clientId: client.id, user: state.username, filter: sub.topic }, 'subscription denied');
        done(null, null);
        return;
      }
      done(null, sub);
    },

    authorizeForward(client, packet) {
      const current = acl;
      if (current === null) {
        // aedes publishes every client id and subscription under
        // $SYS/<broker id>/new/... and /disconnect/...; an anonymous visitor
        // must not be able to list them. The charCode test keeps this off the
        // path of every other message.
        if (packet.topic.charCodeAt(0) === DOLLAR && CLIENT_LISTING.test(packet.topic) && stateOf(client).username === null) return null;
        return packet;
      }
      if (clientAcl(client, stateOf(client), current).canRead(packet.topic)) return packet;
      counters.deliveriesDenied += 1;
      return null;
    },

    userOf: (client) => clients.get(client)?.username ?? null,
  };

  /** Counts and logs a denied publish; the broker acknowledges it and publishes nothing. */
  function drop(client: Client | null, packet: PublishPacket, reason: string, state?: ClientState): PublishDecision {
    counters.publishesDenied += 1;
    const fields = { clientId: client?.id, user: state?.username, topic: packet.topic, qos: packet.qos, reason };
    // One line at info per connection; the rest at debug (a misconfigured
    // sensor publishing every second must not flood the journal).
    if (state && !state.denialLogged) {
      state.denialLogged = true;
      log.info(fields, 'publish denied (dropped; later denials for this client are logged at debug)');
    } else {
      log.debug(fields, 'publish denied');
    }
    return 'drop';
  }

  return {
    hooks,
    load() {
      ({ passwords, acl } = loadFiles(settings));
      aclGeneration += 1;
    },
    reload(next) {
      const applied: string[] = [];
      const failed: ReloadFailure[] = [];
      const effective: AuthConfig = { ...next };
      const attempt = <T>(key: 'passwordFile' | 'aclFile', load: () => T, apply: (value: T) => void) => {
        try {
          apply(load());
          if (next[key] !== '' || settings[key] !== '') applied.push(`auth.${key}`);
        } catch (error) {
          if (!(error instanceof SecurityFileError)) throw error;
          failed.push({ key: `auth.${key}`, code: error.code, file: error.file, problems: error.problems });
          effective[key] = settings[key];
        }
      };
      attempt(
        'passwordFile',
        () => (next.passwordFile !== '' ? PasswordFile.load(next.passwordFile) : null),
        (value) => (passwords = value),
      );
      attempt(
        'aclFile',
        () => (next.aclFile !== '' ? Acl.load(next.aclFile) : null),
        (value) => {
          acl = value;
          aclGeneration += 1;
        },
      );
      if (next.allowAnonymous !== settings.allowAnonymous) applied.push('auth.allowAnonymous');
      applied.push(...logins.reconfigure(next.failedLogins));
      settings = effective;
      return { applied, failed, effective };
    },
    stats() {
      return { ...counters, loginsFailed: logins.failures, loginsRateLimited: logins.refusals, limitedSources: logins.trackedSources };
    },
    warnAboutExposure(listeners) {
      const open = listeners.filter((listener) => !isLoopbackHost(listener.host));
      if (settings.allowAnonymous && open.length > 0) {
        log.warn(
          { listeners: open.map((listener) => `${listener.name} on ${listener.host}`) },
          'anonymous access is on for listeners reachable from the network: set auth.allowAnonymous=false and a passwordFile to require logins',
        );
      }
      const verifies = passwords !== null || deps.certificateUsers;
      if (acl !== null && acl.userCount > 0 && !verifies) {
        log.warn('the ACL file has user sections, but no user name can be verified (no passwordFile, no useCnAsUsername): they never apply');
      }
      if (!settings.allowAnonymous && !verifies) {
        log.warn('anonymous access is off and no user name can be verified (no passwordFile, no useCnAsUsername): no client can connect');
      }
    },
    async checkPassword(remote, username, password) {
      const retryAfterSec = logins.refuses(remote, username);
      if (retryAfterSec > 0) return { ok: false, reason: 'blocked', retryAfterSec };
      const current = passwords;
      let ok = false;
      try {
        ok = current !== null && (await current.verify(username, password));
      } catch (error) {
        if (!(error instanceof LoginBusyError)) throw error;
        counters.loginsBusy += 1;
        return { ok: false, reason: 'busy' };
      }
      if (ok) {
        counters.loginsSucceeded += 1;
        return { ok: true };
      }
      logins.failed(remote, username);
      return { ok: false, reason: 'bad' };
    },
    loginWaitSec: (remote, username) => logins.refuses(remote, username),
    recordFailedLogin: (remote, username) => logins.failed(remote, username),
    loginBlocks: () => logins.blocks(),
    unblockLogins: (address, username) => logins.unblock(address, username),
    describe() {
      return {
        allowAnonymous: settings.allowAnonymous,
        users: passwords?.size ?? null,
        aclRules: acl?.ruleCount ?? null,
        aclUsers: acl?.userCount ?? null,
        certificateUsers: deps.certificateUsers,
      };
    },
  };
}
