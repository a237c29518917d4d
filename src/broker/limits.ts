/**
 * What one client, or one source address, may cost everyone else: connection
 * admission (total, rate per address), the protocol guard in front of each
 * connection, nothing after a CONNECT handled before it is accepted
 * (connect-hold.ts), one coalesced write per connection per event-loop turn
 * (write-coalescer.ts), per-client output bounds (flow-control.ts), and the limits on
 * subscriptions. Every limit hit is counted in stats() and logged, at most one
 * line per limit per 10 s, so an attacker cannot flood the journal.
 *
 * Installed through the seam to aedes (aedes-seam/) by the broker: every
 * connection aedes handles (TCP, TLS, WebSocket) passes through here,
 * whichever listener calls `aedes.handle`. Admission is the listeners' call (`admit`), so that a
 * refused connection costs no MQTT state at all.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { AedesOptions, Client, Subscription } from 'aedes';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { RateLimitedLog, type LogFields } from '../util/rate-limited-log.js';
import { createAddressMatcher, LOOPBACK_RANGES } from '../util/address-list.js';
import {
  connackAccepted,
  disconnectWithReason,
  onDrainTimeout,
  refuseFilter,
  SUBACK_QUOTA_EXCEEDED,
  SUBACK_TOPIC_FILTER_INVALID,
  subscriptionsOf,
  type AedesSeam,
  type DeliveredPacket,
} from './aedes-seam/index.js';
import { FlowControl, type ClientFlow, type ClaimOutgoing, type DiscardOutgoing, type FlowControlStats, type FlowEvent } from './flow-control.js';
import { CONNECT, DISCONNECT, guardConnection, MQTT_MAX_STRING_BYTES, PUBACK, PUBCOMP, PUBREC, type GuardOwner, type ProtocolGuard, type Violation } from './protocol-guard/index.js';
import { holdUntilConnack } from './connect-hold.js';
import { coalesceWrites } from './write-coalescer.js';
import type { DisconnectDetail, DisconnectReason } from './traffic.js';

export type LimitName =
  /** limits.maxConnections */
  | 'maxConnections'
  /** mqtt.maxConnections, tls.maxConnections, http.websocket.maxConnections */
  | 'listenerMaxConnections'
  /** limits.connectRatePerAddressPerSec / connectBurstPerAddress (not for connectRateExempt* addresses) */
  | 'connectRate'
  /** broker.connectTimeoutSec */
  | 'connectTimeout'
  /** broker.minKeepaliveSec */
  | 'minKeepalive'
  /** broker.maxKeepaliveSec */
  | 'maxKeepalive'
  /** broker.maxPacketSizeBytes */
  | 'maxPacketSize'
  /** broker.maxClientIdLength */
  | 'maxClientIdLength'
  | 'maxTopicLength'
  | 'maxTopicLevels'
  | 'maxSubscriptions'
  /** limits.maxInflightMessages: a delivery waited for the client's window */
  | 'maxInflight'
  /** limits.maxOutgoingBufferBytes: a QoS 0 delivery dropped or a QoS 1/2 one queued */
  | 'outgoingBufferFull'
  /** persistence.maxQueued*PerClient reached by a connected client's queue */
  | 'outgoingQueueFull'
  /** broker.drainTimeoutSec: a client whose socket stayed full was disconnected */
  | 'slowClient'
  /** an MQTT 5 client's Maximum Packet Size: a message too large for it was not sent to it */
  | 'clientMaxPacketSize'
  /** limits.maxIncomingAwaitingRelease: too many incoming QoS 2 messages awaiting PUBREL */
  | 'maxAwaitingRelease';

const LIMIT_NAMES: readonly LimitName[] = [
  'maxConnections', 'listenerMaxConnections', 'connectRate', 'connectTimeout', 'minKeepalive', 'maxKeepalive', 'maxPacketSize', 'maxClientIdLength',
  'maxTopicLength', 'maxTopicLevels', 'maxSubscriptions', 'maxInflight', 'outgoingBufferFull', 'outgoingQueueFull', 'slowClient',
  'clientMaxPacketSize', 'maxAwaitingRelease',
];

const LIMIT_MESSAGES: Record<LimitName, string> = {
  maxConnections: 'connection refused: limits.maxConnections reached',
  listenerMaxConnections: 'connection refused: listener full',
  connectRate: 'connection refused: source address over limits.connectRatePerAddressPerSec',
  connectTimeout: 'connection closed: no CONNECT within broker.connectTimeoutSec',
  minKeepalive: 'connect refused: keep-alive below broker.minKeepaliveSec',
  maxKeepalive: 'connect refused: keep-alive above broker.maxKeepaliveSec, or none',
  maxPacketSize: 'connection closed: packet over broker.maxPacketSizeBytes',
  maxClientIdLength: 'connect refused: client id over broker.maxClientIdLength',
  maxTopicLength: 'topic over limits.maxTopicLengthBytes',
  maxTopicLevels: 'topic over limits.maxTopicLevels',
  maxSubscriptions: 'subscription refused: limits.maxSubscriptionsPerClient reached',
  maxInflight: 'delivery waits: client inflight window (limits.maxInflightMessages) full',
  outgoingBufferFull: 'slow client: outgoing buffer (limits.maxOutgoingBufferBytes) full',
  outgoingQueueFull: 'slow client: queue full, oldest messages dropped',
  slowClient: 'slow client disconnected: socket full for broker.drainTimeoutSec',
  clientMaxPacketSize: "message not sent: larger than the client's Maximum Packet Size",
  maxAwaitingRelease: 'connection closed: incoming QoS 2 messages awaiting PUBREL over limits.maxIncomingAwaitingRelease',
};

/** Flow events that are routine back-pressure rather than a client misbehaving: info, not warn. */
const INFO_LIMITS = new Set<LimitName>(['maxInflight']);

/** Addresses whose connection rate is tracked at once; the least recently seen is forgotten first. */
const MAX_TRACKED_ADDRESSES = 10_000;

/** MQTT 5 Reason Codes of 0x80 and above report a failure [MQTT-2.4]. */
const FAILURE = 0x80;

export interface LimitsStats {
  /** MQTT connections open now (every listener). */
  openConnections: number;
  /** Hits per limit since start. */
  limitHits: Record<LimitName, number>;
  /** Connections closed for breaking MQTT 3.1.1 or 5.0. */
  protocolViolations: number;
  /** The same, per clause (e.g. `MQTT-2.3.1-1`). */
  protocolViolationsByRule: Record<string, number>;
  flow: FlowControlStats;
}

export interface Limits {
  /**
   * Whether a new connection from `remoteAddress` may proceed to MQTT
   * (limits.maxConnections, connection rate per address). Returns why not, or
   * null. Listeners call it before any MQTT state exists for the connection.
   */
  admit(listener: string, remoteAddress: string | undefined): Refusal | null;
  /** Counts and logs a limit hit found elsewhere (a listener's own maxConnections, a refused CONNECT). */
  hit(limit: LimitName, fields: Record<string, unknown>): void;
  /**
   * Guards and bounds every connection aedes handles from now on; call once,
   * after listen(), before installDeliveryRules.
   */
  install(seam: AedesSeam): void;
  /**
   * The subscribe hook for aedes' options: topic filter limits first, then
   * `inner` (the ACL) decides, then the limit on subscriptions per client.
   */
  authorizeSubscribe(inner: AuthorizeSubscribe | undefined): AuthorizeSubscribe;
  stats(): LimitsStats;
  /** A connected client's flow: QoS 1/2 messages in flight, and waiting for room (the admin API). */
  flowOf(client: Client): { inflight: number; waiting: number } | undefined;
  /** The inflight window as the resend after CONNECT uses it (aedes-seam/resend.ts): see ClientFlow.reserveResend. */
  reserveResend(client: Client): boolean;
  roomForResend(client: Client): Promise<void>;
  /** Whether a stored PUBLISH the resend after CONNECT is about to write fits the client's Maximum Packet Size: see ClientFlow.admitResend. */
  admitResend(client: Client, packet: DeliveredPacket): boolean;
  /** The flow control's say on a QoS 0 message of `bytes` the fast path writes to `client` (ClientFlow.admitQoS0). */
  admitQoS0(client: Client, bytes: number): boolean;
}

type AuthorizeSubscribe = NonNullable<AedesOptions['authorizeSubscribe']>;

export interface Refusal {
  limit: 'maxConnections' | 'connectRate';
  reason: string;
}

interface Bucket {
  tokens: number;
  at: number;
}

export interface LimitsDeps {
  logger: Logger;
  /** Monotonic clock in ms; performance.now by default. */
  now?: () => number;
  /** The session store's lookup for a persistent session's live messages (client-flow.ts #claim); none with aedes' memory persistence. */
  claimOutgoing?: ClaimOutgoing;
  /** The session store's removal of a queued message that can never be sent (client-flow.ts #dropOversize). */
  discardOutgoing?: DiscardOutgoing;
  /** Told why a client is leaving, before its connection closes: it sent DISCONNECT, broke the protocol, or stopped reading (client-lifecycle.ts). */
  leaving?: (client: Client, reason: DisconnectReason, detail?: DisconnectDetail) => void;
}

const LIMITED = Symbol('edgemqtt.limited');
type Limited = Duplex & { [LIMITED]?: LimitedConnectionState };
/** What a connection's 'close' needs of its LimitedConnection (declared inside createLimits). */
interface LimitedConnectionState {
  readonly connectTimer: NodeJS.Timeout | undefined;
}

/** A client's flow control, in a symbol-keyed field of the client (cheaper than a WeakMap's entry). */
const FLOW = Symbol('edgemqtt.clientFlow');
type WithFlow = Client & { [FLOW]?: ClientFlow };

export function createLimits(config: Config, deps: LimitsDeps): Limits {
  const log = deps.logger.child({ component: 'limits' });
  const now = deps.now ?? (() => performance.now());
  const rateLimited = new RateLimitedLog(log, undefined, now);
  const settings = config.limits;
  const hits = Object.fromEntries(LIMIT_NAMES.map((name) => [name, 0])) as Record<LimitName, number>;
  const violationsByRule: Record<string, number> = Object.create(null) as Record<string, number>;
  let violations = 0;
  let openConnections = 0;
  const buckets = new Map<string, Bucket>();
  // Many clients behind one address (a local or reverse proxy, a NAT) would
  // share one bucket: after a broker restart their reconnect storm would be
  // refused for minutes. These addresses count against maxConnections only.
  const rateExempt = createAddressMatcher([
    ...(settings.connectRateExemptLoopback ? LOOPBACK_RANGES : []),
    ...settings.connectRateExemptAddresses,
  ]);
  // Subscriptions granted but maybe not yet in client.subscriptions (aedes adds them asynchronously).
  const reservedFilters = new WeakMap<Client, Set<string>>();

  function hit(limit: LimitName, fields: LogFields): void {
    hits[limit]++;
    const message = LIMIT_MESSAGES[limit];
    const withLimit = typeof fields === 'function' ? () => ({ limit, ...fields() }) : { limit, ...fields };
    if (INFO_LIMITS.has(limit)) rateLimited.info(limit, withLimit, message);
    else rateLimited.warn(limit, withLimit, message);
  }

  const flow = new FlowControl(
    {
      maxOutgoingBufferBytes: settings.maxOutgoingBufferBytes,
      maxInflightMessages: settings.maxInflightMessages,
      maxQueuedMessagesPerClient: config.persistence.maxQueuedMessagesPerClient,
      maxQueuedBytesPerClient: config.persistence.maxQueuedBytesPerClient,
      drainTimeoutMs: config.broker.drainTimeoutSec * 1000,
    },
    (event: FlowEvent, fields) => hit(event, fields),
    deps.claimOutgoing,
    deps.discardOutgoing,
  );

  /** Token bucket per source address: `connectBurstPerAddress` at once, refilled at `connectRatePerAddressPerSec`. */
  function takeConnectToken(address: string): boolean {
    const rate = settings.connectRatePerAddressPerSec;
    if (rate === 0) return true;
    const burst = settings.connectBurstPerAddress;
    const at = now();
    const bucket = buckets.get(address) ?? { tokens: burst, at };
    bucket.tokens = Math.min(burst, bucket.tokens + ((at - bucket.at) / 1000) * rate);
    bucket.at = at;
    // Re-inserting keeps the map in least-recently-seen order.
    buckets.delete(address);
    buckets.set(address, bucket);
    if (buckets.size > MAX_TRACKED_ADDRESSES) buckets.delete(buckets.keys().next().value as string);
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  function onViolation(violation: Violation, remote: string | undefined): void {
    if (violation.kind === 'limit') {
      hit(violation.limit, { remote, reason: violation.reason });
      return;
    }
    violations++;
    violationsByRule[violation.rule] = (violationsByRule[violation.rule] ?? 0) + 1;
    // Rule ids come from the guard's fixed set, so the keys stay bounded.
    rateLimited.info(`protocol:${violation.rule}`, { remote, rule: violation.rule, reason: violation.reason }, 'connection closed: MQTT protocol violation');
  }

  /** A reason to refuse a topic filter in SUBSCRIBE, or null. */
  function filterLimit(filter: string): { limit: LimitName; reason: string } | null {
    const maxBytes = settings.maxTopicLengthBytes || MQTT_MAX_STRING_BYTES;
    const bytes = Buffer.byteLength(filter);
    if (bytes > maxBytes) return { limit: 'maxTopicLength', reason: `topic filter of ${bytes} bytes exceeds the limit of ${maxBytes}` };
    const levels = filter.split('/').length;
    if (levels > settings.maxTopicLevels) {
      return { limit: 'maxTopicLevels', reason: `topic filter of ${levels} levels exceeds the limit of ${settings.maxTopicLevels}` };
    }
    return null;
  }

  /** Reserves a place for `filter` among the client's subscriptions; false when it is full. */
  function reserveSubscription(client: Client, filter: string): boolean {
    const max = settings.maxSubscriptionsPerClient;
    if (max === 0) return true;
    const current = subscriptionsOf(client);
    if (filter in current) return true;
    let reserved = reservedFilters.get(client);
    if (!reserved) {
      reserved = new Set();
      reservedFilters.set(client, reserved);
    }
    for (const pending of reserved) if (pending in current) reserved.delete(pending);
    if (reserved.has(filter)) return true;
    if (Object.keys(current).length + reserved.size >= max) return false;
    reserved.add(filter);
    return true;
  }

  function install(seam: AedesSeam): void {
    const guardLimits = {
      maxPacketBytes: config.broker.maxPacketSizeBytes,
      maxTopicLengthBytes: settings.maxTopicLengthBytes,
      maxTopicLevels: settings.maxTopicLevels,
      maxAwaitingRelease: settings.maxIncomingAwaitingRelease,
      // aedes 2 speaks MQTT 5: the guard follows and checks its packets too.
      mqtt5: true,
    };
    const connectTimeoutMs = config.broker.connectTimeoutSec * 1000;
    const leaving = deps.leaving;
    // One pair for all the broker's clients. The departure's reason first, then the flow
    // control's count, both before aedes' close (onDrainTimeout runs the latest first).
    onDrainTimeout(seam.aedes, flow.slowClient);
    if (leaving) onDrainTimeout(seam.aedes, (slow: Client) => leaving(slow, 'slow_consumer'));

    /**
     * One connection under the limits: its guard's owner and the state its
     * close needs, one object with shared methods instead of closures per
     * connection (found from the connection's 'close' through a symbol).
     */
    class LimitedConnection implements GuardOwner {
      client: Client | undefined = undefined;
      clientFlow: ClientFlow | undefined = undefined;
      readonly guard: ProtocolGuard;
      /**
       * Slowloris: the whole CONNECT must be in within the time allowed, however slowly it trickles in.
       * (aedes' own timer is the backstop.) Let go once the CONNECT is in: a cleared Timeout kept
       * for the connection's life would cost it ~150 bytes.
       */
      connectTimer: NodeJS.Timeout | undefined;

      constructor(
        readonly conn: Duplex,
        readonly remote: string | undefined,
      ) {
        // The guard sees bytes from the first one; aedes' Client only starts reading on 'readable'.
        this.guard = guardConnection(conn, guardLimits, this);
        this.connectTimer = setTimeout(connectTimedOut, connectTimeoutMs, this);
        this.connectTimer.unref();
        (conn as Limited)[LIMITED] = this;
        // A stream emits 'close' once: `on`, not `once`, spares a wrapper per connection.
        conn.on('close', connectionClosed);
      }

      onViolation(violation: Violation): void {
        onViolation(violation, this.remote);
      }

      closeFor(violation: Violation): void {
        closeFor(violation, this.conn, this.guard, this.client);
      }

      onPacket(type: number, reasonCode: number): void {
        if (type === CONNECT) {
          clearTimeout(this.connectTimer);
          this.connectTimer = undefined;
        }
        // The guard has read it whole; aedes closes the connection next [MQTT-3.14.4-1].
        else if (type === DISCONNECT) {
          if (this.client) leaving?.(this.client, 'client_disconnect');
        }
        // An MQTT 5 PUBREC of 0x80 or more ends the QoS 2 flow: no PUBREL, no PUBCOMP (4.3.3, 4.9).
        else if (type === PUBACK || type === PUBCOMP || (type === PUBREC && reasonCode >= FAILURE)) this.clientFlow?.acknowledged();
      }

      /** aedes made the connection's Client. */
      made(client: Client): void {
        this.client = client;
        // Over the guard's read hook: nothing after the CONNECT reaches aedes before it accepts it [MQTT-3.1.4-5].
        holdUntilConnack(this.conn, client);
        this.clientFlow = flow.attach(client, this.conn);
        (client as WithFlow)[FLOW] = this.clientFlow;
      }
    }

    function connectTimedOut(limited: LimitedConnection): void {
      if (limited.conn.destroyed) return;
      hit('connectTimeout', { remote: limited.remote, connectTimeoutSec: config.broker.connectTimeoutSec });
      limited.conn.destroy();
    }

    function connectionClosed(this: Limited): void {
      const limited = this[LIMITED];
      if (limited === undefined) return;
      this[LIMITED] = undefined;
      openConnections--;
      clearTimeout(limited.connectTimer);
    }

    seam.onConnection((conn: Duplex, request?: IncomingMessage) => {
      openConnections++;
      // One write (one syscall, one TLS record, one WebSocket frame) per
      // connection per event-loop turn instead of one per packet piece: see
      // write-coalescer.ts. Before aedes or flow control touch the stream, so
      // both see the coalesced write() and writableLength.
      coalesceWrites(conn);
      const limited = new LimitedConnection(conn, remoteAddressOf(conn, request));
      return (made: Client) => limited.made(made);
    });
  }

  /**
   * Closes a connection the guard found at fault. An MQTT 5 client is told
   * why first [MQTT-4.13.1-1]: in a CONNACK when the fault is in its CONNECT
   * (aedes never saw that CONNECT, so the guard's own CONNACK is the only
   * one), in a DISCONNECT once aedes has accepted it [MQTT-3.14.2-1]. Between
   * the two (a packet pipelined behind a CONNECT aedes is still
   * authenticating) a DISCONNECT may not precede the CONNACK
   * [MQTT-3.14.0-1]: it just closes, as for 3.1.1, which has no way to say
   * why (the guard gives a 3.1.1 violation no Reason Code).
   */
  function closeFor(violation: Violation, conn: Duplex, guard: ProtocolGuard, client: Client | undefined): void {
    const { reasonCode } = violation;
    if (client !== undefined) {
      const detail = violation.kind === 'protocol' ? { rule: violation.rule } : { limit: violation.limit };
      deps.leaving?.(client, 'protocol_violation', { ...detail, error: violation.reason });
    }
    if (reasonCode !== undefined && client !== undefined && connackAccepted(client)) {
      disconnectWithReason(client, reasonCode);
      return;
    }
    // CONNACK: Session Present 0, the Reason Code, no properties (3.2.2); the coalescer flushes it before the close.
    if (reasonCode !== undefined && !guard.connectRead) conn.write(Buffer.from([0x20, 0x03, 0x00, reasonCode, 0x00]));
    conn.destroy();
  }

  function authorizeSubscribe(inner: AuthorizeSubscribe | undefined): AuthorizeSubscribe {
    return function limitSubscribe(client, subscription: Subscription, done) {
      const problem = filterLimit(subscription.topic);
      if (problem) {
        hit(problem.limit, { clientId: client.id, reason: problem.reason });
        // MQTT 5: 0x8F Topic Filter invalid rather than aedes' 0x87 (3.9.3).
        refuseFilter(subscription, SUBACK_TOPIC_FILTER_INVALID);
        done(null, null);
        return;
      }
      const granted = (error: Error | null, sub?: Subscription | null) => {
        if (error || !sub) {
          done(error, sub);
          return;
        }
        if (!reserveSubscription(client, subscription.topic)) {
          hit('maxSubscriptions', { clientId: client.id, maxSubscriptionsPerClient: settings.maxSubscriptionsPerClient });
          // MQTT 5: 0x97 Quota exceeded rather than aedes' 0x87 (3.9.3).
          refuseFilter(subscription, SUBACK_QUOTA_EXCEEDED);
          done(null, null);
          return;
        }
        done(null, sub);
      };
      if (inner) inner(client, subscription, granted);
      else granted(null, subscription);
    };
  }

  return {
    admit(listener, remoteAddress) {
      if (settings.maxConnections > 0 && openConnections >= settings.maxConnections) {
        hit('maxConnections', { listener, remote: remoteAddress, maxConnections: settings.maxConnections });
        return { limit: 'maxConnections', reason: `the broker holds limits.maxConnections (${settings.maxConnections}) connections` };
      }
      if (!rateExempt.has(remoteAddress) && !takeConnectToken(remoteAddress ?? 'unknown')) {
        hit('connectRate', {
          listener,
          remote: remoteAddress,
          connectRatePerAddressPerSec: settings.connectRatePerAddressPerSec,
          connectBurstPerAddress: settings.connectBurstPerAddress,
        });
        return { limit: 'connectRate', reason: `${remoteAddress ?? 'this address'} opens connections faster than limits.connectRatePerAddressPerSec` };
      }
      return null;
    },
    hit,
    install,
    authorizeSubscribe,
    admitQoS0(client, bytes) {
      return (client as WithFlow)[FLOW]?.admitQoS0(bytes) ?? false;
    },
    reserveResend(client) {
      return (client as WithFlow)[FLOW]?.reserveResend() ?? true;
    },
    roomForResend(client) {
      return (client as WithFlow)[FLOW]?.roomForResend() ?? Promise.resolve();
    },
    admitResend(client, packet) {
      return (client as WithFlow)[FLOW]?.admitResend(packet) ?? true;
    },
    flowOf(client) {
      const clientFlow = (client as WithFlow)[FLOW];
      return clientFlow && { inflight: clientFlow.inflight, waiting: clientFlow.waiting };
    },
    stats() {
      return {
        openConnections,
        limitHits: { ...hits },
        protocolViolations: violations,
        protocolViolationsByRule: { ...violationsByRule },
        flow: flow.stats(),
      };
    },
  };
}

function remoteAddressOf(conn: Duplex, request: IncomingMessage | undefined): string | undefined {
  const socket = (request?.socket ?? conn) as { remoteAddress?: string; remotePort?: number };
  return socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort ?? '?'}` : undefined;
}
