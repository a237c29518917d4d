/**
 * MQTT 5 session lifetimes and delayed wills, with the store as the
 * authority (it survives a restart; aedes 2.0.0-beta.1 keeps both as timers
 * in memory, aedes #839). What is corrected, and how:
 *
 * - Session expiry (aedes.js scheduleSessionExpiry, _armIdTimer,
 *   expiringSessions). aedes arms a timer per disconnected MQTT 5 session
 *   and wipes it when it fires; a restart forgets the timer and the session
 *   lives on until the configured expiry. Here aedes never arms one: the
 *   client's Session Expiry Interval (aedes has clamped it to
 *   persistence.sessionExpirySec, its sessionExpiryIntervalLimit, and echoes
 *   a clamped value in CONNACK, MQTT 5 §3.2.2.3.2) goes to the store at
 *   CONNECT and again when the connection closes (a DISCONNECT may change it,
 *   MQTT 5 §3.14.2.2.2); the store expires the session (persistence/
 *   session-expiry.ts), restart or not. aedes' 'sessionExpired' event is
 *   never emitted, and its pendingSessionsLimit never applies (it is 0).
 * - A session that ends with its connection (Session Expiry Interval 0
 *   [MQTT-3.1.2-23]): aedes' _wipeSession streams the queue through
 *   outgoingStream to clear it message by message (client.emptyOutgoingQueue),
 *   which the persistence answers with the resend stream, numbering entries
 *   right before they are cleared. Here the store drops the session in one
 *   write (endSession).
 * - Clean Start 0 resumes the stored session whatever Session Expiry the new
 *   connection sets [MQTT-3.1.2-5]; only its lifetime after this connection
 *   follows the new value. aedes makes a client whose CONNECT has Session
 *   Expiry 0 (Home Assistant's way: MQTT 5, Clean Start 0, no Session
 *   Expiry) `clean`, and then clears the resumed queue instead of sending it
 *   (handlers/connect.js emptyQueueFilter) and stores nothing of the
 *   session while connected. Here such a client, when a stored session
 *   exists, is not `clean` for its connection: its queue is sent, its
 *   in-flight messages completed; at close, Session Expiry 0 ends the
 *   session (above). Clean Start 1 discards a stored session
 *   [MQTT-3.1.2-4]: the store drops it in one write as the CONNECT is
 *   accepted (aedes would stream the queue to clear it).
 * - Will Delay Interval (aedes.js scheduleWill, delayedWills): aedes times
 *   the delay in memory only. Here the will is stored again with when it
 *   falls due (persistence delayWill); after a restart the broker times the
 *   wills whose delay was running (timeDelayedWills) and publishes each
 *   when due, unless its client reconnected first, which replaces or deletes
 *   it [MQTT-3.1.3-9]. A will is published at min(Will Delay Interval,
 *   Session Expiry Interval) after its connection closed (aedes computes
 *   that, lib/client.js close); time the broker was down does not count,
 *   as for sessions. The Will Delay Interval property itself never reaches
 *   subscribers (seam.ts, aedes #1098).
 */
import type { Aedes, Client, PublishPacket } from 'aedes';
import type { Logger } from '../../observability/logger.js';

type Stored = Record<string, unknown>;

/** What the store does for sessions and delayed wills (persistence/level-persistence.ts). */
export interface SessionAuthority {
  /** The Session Expiry Interval (s) of an MQTT 5 client's session; undefined for 3.1.1. */
  sessionExpiry(clientId: string, expirySec: number | undefined): void;
  /** Ends a session with its connection: subscriptions, queue and QoS 2 state go. */
  endSession(clientId: string): Promise<void>;
  /** Whether a stored session (subscriptions, queue, QoS 2 state) exists. */
  hasSession(clientId: string): boolean;
  /** Stores the will again with when it falls due (ms since epoch). */
  delayWill(clientId: string, will: Stored, dueAt: number): void;
  /** The wills an earlier run left with their delay running: client id and due time. */
  delayedWills(): Array<[string, number]>;
  /** Such a will once due, unless the client stored another since. */
  dueWill(clientId: string): Promise<Stored | undefined>;
  /** aedes' delWill: with brokerId, only a will stored by that broker. */
  delWill(client: { id: string; brokerId?: unknown }): Promise<unknown>;
}

type Done = (error?: Error | null) => void;
type Authenticate = (client: Client, username: string | undefined, password: Buffer | undefined, done: (error: Error | null, success: boolean | null) => void) => void;

/** aedes instance internals (aedes.js); not in its typings. */
interface Internals {
  closed: boolean;
  clients: Record<string, Client>;
  _takingOver: Set<string>;
  delayedWills: Map<string, unknown>;
  scheduleSessionExpiry(client: Client): void;
  scheduleWill(client: Client, will: Stored, delaySeconds: number): void;
  authenticate: Authenticate;
  authorizePublish(client: Client | null, packet: PublishPacket, done: Done): void;
  publish(packet: PublishPacket, done: Done): void;
}

/** Client fields aedes sets at CONNECT (handlers/connect.js init); `clean` is read-only in its typings. */
interface ClientSession {
  clean: boolean;
  /** MQTT 5 only: the CONNECT's Clean Start flag. */
  _cleanStart?: boolean;
}

/** setTimeout's longest delay; longer ones are chained. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Installs the corrections above; call after `listen()`. */
export function installSessionAuthority(aedes: Aedes, authority: SessionAuthority, logger: Logger): void {
  const log = logger.child({ component: 'broker' });
  const instance = aedes as unknown as Internals;

  const end = (clientId: string) =>
    authority.endSession(clientId).catch((error: unknown) => log.warn({ err: error, clientId }, 'could not end a session'));

  instance.scheduleSessionExpiry = function scheduleSessionExpiry(client) {
    // aedes' own guards: a stop closes every client (their sessions keep the
    // expiry declared at CONNECT), 3.1.1 has no Session Expiry Interval, and
    // during a takeover the new connection owns the session.
    // aedes' own timer (expiringSessions) is never armed, and its
    // _wipeSession, called only from here, is not needed: the store ends the
    // session in one write.
    if (this.closed || client.version !== 5 || this._takingOver.has(client.id)) return;
    if (client.sessionExpiryInterval === 0) void end(client.id);
    else authority.sessionExpiry(client.id, client.sessionExpiryInterval);
  };

  const authenticate = instance.authenticate;
  instance.authenticate = function resumeOnCleanStart0(client, username, password, done) {
    authenticate.call(this, client, username, password, (error, success) => {
      // Before fetchSubs, restoreSubs and emptyQueue (handlers/connect.js), which read `clean`.
      const session = client as unknown as ClientSession;
      if (!error && success && client.version === 5 && authority.hasSession(client.id)) {
        if (session._cleanStart === false) {
          if (session.clean) session.clean = false;
        } else {
          // Clean Start 1 discards the stored session [MQTT-3.1.2-4]: in one
          // write, before aedes would clear its queue message by message.
          void end(client.id);
        }
      }
      done(error, success);
    });
  };

  aedes.on('client', (client) => authority.sessionExpiry(client.id, client.version === 5 ? client.sessionExpiryInterval : undefined));

  const scheduleWill = instance.scheduleWill;
  instance.scheduleWill = function scheduleDurableWill(client, will, delaySeconds) {
    scheduleWill.call(this, client, will, delaySeconds);
    // aedes armed its timer (not closing, no takeover, under its cap): the store keeps the due time too.
    if (this.delayedWills.has(client.id)) authority.delayWill(client.id, will, Date.now() + delaySeconds * 1000);
  };

  timeDelayedWills(instance, aedes, authority, log);
}

/**
 * After a restart: publishes each will whose delay was running when the
 * earlier run stopped, when it falls due, unless its client has connected
 * again (its CONNECT replaced or deleted the will). The publish follows
 * aedes' for a will of a dead broker (aedes.js _clearWills): authorized with
 * no client, published, then deleted; one the policy refuses is deleted.
 */
function timeDelayedWills(instance: Internals, aedes: Aedes, authority: SessionAuthority, log: Logger): void {
  const timers = new Map<string, NodeJS.Timeout>();
  const publishDue = async (clientId: string) => {
    timers.delete(clientId);
    if (instance.closed || instance.clients[clientId]) return;
    const will = await authority.dueWill(clientId);
    if (!will) return;
    const packet = will as unknown as PublishPacket;
    const remove = () => authority.delWill({ id: clientId, brokerId: will.brokerId });
    instance.authorizePublish(null, packet, (refused) => {
      if (refused) {
        void remove();
        return;
      }
      instance.publish(packet, (error) => {
        if (error) log.warn({ err: error, clientId }, 'could not publish a delayed will');
        else void remove();
      });
    });
  };
  const arm = (clientId: string, dueAt: number) => {
    const delay = dueAt - Date.now();
    const timer = setTimeout(() => {
      // Not yet due by the wall clock the store judges with (dueWill): after
      // a timer capped at MAX_TIMER_MS, or one that fired a millisecond early
      // (timers run on the monotonic clock), wait again rather than ask too soon.
      if (Date.now() < dueAt) arm(clientId, dueAt);
      else publishDue(clientId).catch((error: unknown) => log.warn({ err: error, clientId }, 'could not publish a delayed will'));
    }, Math.min(Math.max(0, delay), MAX_TIMER_MS));
    timer.unref();
    timers.set(clientId, timer);
  };
  for (const [clientId, dueAt] of authority.delayedWills()) arm(clientId, dueAt);
  if (timers.size === 0) return;
  aedes.on('client', (client) => {
    clearTimeout(timers.get(client.id));
    timers.delete(client.id);
  });
  (aedes as unknown as NodeJS.EventEmitter).once('closed', () => {
    for (const timer of timers.values()) clearTimeout(timer);
    timers.clear();
  });
}

/** A will as published: without its Will Delay Interval, a property of the will alone [MQTT-3.1.3-9] (aedes #1098). */
export function withoutWillDelay<T extends object>(packet: T): T {
  const properties = (packet as { properties?: Record<string, unknown> }).properties;
  if (!properties || !Object.hasOwn(properties, 'willDelayInterval')) return packet;
  const { willDelayInterval: _, ...rest } = properties;
  return { ...packet, properties: rest };
}
