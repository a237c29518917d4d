/**
 * The Aedes broker as a component: builds it from config, wires the hooks
 * through the seam to aedes (aedes-seam/), logs client lifecycle, and
 * closes it on stop.
 */
import type { Aedes, AedesOptions, Client, PublishPacket } from 'aedes';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import {
  AedesSeam,
  assignOutgoingTopicAliases,
  FastPublish,
  connectWill,
  disconnectWithReason,
  imposeServerKeepAlive,
  installBatchResend,
  installConnectPath,
  installDirectDeliveries,
  installIncomingCleanup,
  installSessionAuthority,
  installSubscribeOutcomes,
  onParseError,
  onPublishWritten,
  onTakeover,
  type PublishPolicy,
  type QoS,
  type SessionAuthority,
} from './aedes-seam/index.js';
import { checkConnect, PendingRejections, serverKeepAlive } from './connect-rules.js';
import { installDeliveryRules } from './delivery-rules.js';
import type { ClaimOutgoing, DiscardOutgoing } from './flow-control.js';
import { withholdWills } from './planned-stop.js';
import { createLimits, type Limits } from './limits.js';
import { SharedSubscriptions, type SharedSubscriptionStore } from './shared-subscriptions.js';
import type { AccessHooks } from '../auth/authorizer.js';
import { Traffic, type ProtocolName } from './traffic.js';
import { ClientLifecycle } from './client-lifecycle.js';

export interface Broker {
  /** The running Aedes instance; only valid between start() and stop(). */
  readonly aedes: Aedes;
  readonly running: boolean;
  /** Connection admission, limit counters and per-client flow control (src/broker/limits.ts). */
  readonly limits: Limits;
  /** Clients connected per listener and protocol, disconnect reasons, messages and bytes in and out (traffic.ts). */
  readonly traffic: Traffic;
  start(): Promise<void>;
  stop(): Promise<void>;
  /**
   * Publishes a message as the broker's own (the bridge's imports). It is
   * numbered with the broker's counter first, and `register` hears the
   * number before anything is published.
   */
  publishOwn(packet: OwnMessage, register: (brokerCounter: number) => void): Promise<void>;
  /** The clients connected now; none while the broker is not running. */
  connectedClients(): Client[];
}

export interface OwnMessage {
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: boolean;
}

/**
 * An aedes persistence; when it numbers a session's messages itself
 * (LevelPersistence), the flow control asks it, and shared subscriptions
 * queue and move messages through it; when it keeps session lifetimes and
 * delayed wills (LevelPersistence), it is their authority
 * (aedes-seam/sessions.ts).
 */
export interface BrokerPersistence extends Partial<SharedSubscriptionStore>, Partial<SessionAuthority> {
  claimOutgoing?: ClaimOutgoing;
  /** aedes' persistence API: removes the queued message sent under a packet identifier. */
  outgoingClearMessageId?(client: Client, packet: { messageId: number }): Promise<unknown>;
  /** Whether anything may be queued for a client id, from memory (LevelPersistence): the connect path skips an empty resend. */
  outgoingQueued?(clientId: string): boolean;
}

/** MQTT 5 DISCONNECT Reason Code 0x8D Keep Alive timeout (3.14.2.1). */
const KEEP_ALIVE_TIMEOUT = 0x8d;

function sharedStoreOf(persistence: BrokerPersistence | undefined): SharedSubscriptionStore | undefined {
  const needed = [persistence?.subscriptionsWithPrefix, persistence?.holdsSubscription, persistence?.outgoingMove, persistence?.subscriptionsByClient, persistence?.outgoingStream, persistence?.outgoingQueued, persistence?.beforeSessionsExpire];
  if (persistence === undefined || needed.some((method) => typeof method !== 'function')) return undefined;
  return persistence as SharedSubscriptionStore;
}

function isSessionAuthority(persistence: BrokerPersistence | undefined): persistence is SessionAuthority {
  const keys: Array<keyof SessionAuthority> = ['sessionExpiry', 'endSession', 'hasSession', 'delayWill', 'delayedWills', 'dueWill', 'delWill'];
  return persistence !== undefined && keys.every((key) => typeof persistence[key] === 'function');
}

export interface BrokerDeps {
  logger: Logger;
  /** aedes persistence instance; memory when omitted. */
  persistence?: BrokerPersistence;
  /** Authentication and ACL hooks (src/auth/authorizer.ts); without them every client may do anything but publish to $SYS. */
  access?: AccessHooks;
}

/** aedes' own rule without an ACL (aedes.js defaultAuthorizePublish): clients do not publish to $SYS. */
const refuseSys: PublishPolicy = (_client, packet) => (packet.topic.startsWith('$SYS/') ? 'refuse' : 'allow');

export function createBroker(config: Config, deps: BrokerDeps): Broker {
  const log = deps.logger.child({ component: 'broker' });
  const rejections = new PendingRejections();
  const connectRules = {
    minKeepaliveSec: config.broker.minKeepaliveSec,
    maxKeepaliveSec: config.broker.maxKeepaliveSec,
    maxClientIdBytes: config.broker.maxClientIdLength,
  };
  const persistence = deps.persistence;
  const claimOutgoing = persistence?.claimOutgoing;
  const discardOutgoing: DiscardOutgoing | undefined = persistence?.outgoingClearMessageId
    ? (client, messageId) => persistence.outgoingClearMessageId!(client, { messageId })
    : undefined;
  const limits = createLimits(config, {
    logger: deps.logger,
    claimOutgoing: claimOutgoing?.bind(persistence),
    discardOutgoing: claimOutgoing ? discardOutgoing : undefined,
    leaving: (client, reason, detail) => lifecycle.leaving(client, reason, detail),
  });
  let seam: AedesSeam | undefined;
  const traffic = new Traffic();
  const access = deps.access;
  const lifecycle = new ClientLifecycle({
    traffic,
    logger: deps.logger,
    userOf: (client) => (access ? access.userOf(client) : null),
    remoteOf,
    listenerOf,
    protocolOf,
  });
  const shared = new SharedSubscriptions(deps.logger, sharedStoreOf(persistence));

  const options: AedesOptions = {
    id: config.broker.id || undefined,
    persistence: deps.persistence,
    // limits.ts closes a connection without CONNECT at connectTimeoutSec, and
    // counts it; aedes' own timer is only the backstop.
    connectTimeout: config.broker.connectTimeoutSec * 1000 + 1000,
    heartbeatInterval: config.broker.heartbeatIntervalSec * 1000,
    maxClientsIdLength: config.broker.maxClientIdLength,
    // The longest an MQTT 5 session may outlive its connection, "never"
    // (0xFFFFFFFF) included: the configured expiry of every persistent
    // session (0 = none). aedes clamps the client's Session Expiry Interval
    // to it and then echoes the clamped value in CONNACK (MQTT 5 §3.2.2.3.2).
    sessionExpiryIntervalLimit: config.persistence.sessionExpirySec,
    // "Forever" is 2^31-1 ms (24.8 days), so that aedes keeps coalescing a
    // full socket's waiting writes on one timer instead of one 'drain'
    // listener per write.
    drainTimeout: config.broker.drainTimeoutSec > 0 ? config.broker.drainTimeoutSec * 1000 : 2 ** 31 - 1,
    // What MQTT 5 clients are told in CONNACK (3.2.2.3) besides Shared
    // Subscription Available: the Topic Alias Maximum the broker accepts
    // (aliases a client may set up for what it publishes; aedes resolves them,
    // lib/handlers/publish.js) [MQTT-3.2.2-17]; the Maximum Packet Size the
    // protocol guard enforces (limits.ts, before aedes' own check of the same
    // bound); as Receive Maximum, the bound on incoming QoS 2 messages
    // awaiting PUBREL, which the guard enforces too (QoS 1 is acknowledged
    // once durable and never waits on the client). Maximum QoS 2, Retain,
    // Wildcard and Subscription Identifiers Available are all true, the
    // defaults, so not announced.
    topicAliasMaximum: config.broker.topicAliasMaximum,
    maximumPacketSize: config.broker.maxPacketSizeBytes,
    receiveMaximum: config.limits.maxIncomingAwaitingRelease,
    // MQTT 5: sent in CONNACK only to a client that asks for it
    // (lib/handlers/connect.js doConnack) [MQTT-3.1.2.11.6].
    responseInformation: responseInformationFor(config.broker.responseInformation),
    preConnect(client, packet, done) {
      // MQTT 5: the broker's aliases for what it sends this connection, up
      // to the client's Topic Alias Maximum [MQTT-3.3.2-9]; none when the
      // client announced none or the setting is off.
      const aliasMaximum = Math.min(config.broker.outgoingTopicAliases, packet.properties?.topicAliasMaximum ?? 0);
      if (packet.protocolVersion === 5 && aliasMaximum > 0) assignOutgoingTopicAliases(client, aliasMaximum);
      const imposed = serverKeepAlive(packet, connectRules);
      if (imposed !== undefined) imposeServerKeepAlive(client, imposed);
      lifecycle.connecting(client, packet, imposed ?? packet.keepalive ?? 0);
      const rejection = checkConnect(packet, connectRules);
      if (rejection) {
        rejections.remember(client, rejection);
        if (rejection.limit) limits.hit(rejection.limit, { clientId: packet.clientId, remote: remoteOf(client), reason: rejection.reason });
      }
      done(null, true);
    },
    authenticate(client, username, password, done) {
      const rejection = rejections.take(client);
      if (rejection) {
        log.info({ reason: rejection.reason, remote: remoteOf(client) }, 'connect refused');
        done(Object.assign(new Error(rejection.reason), { returnCode: rejection.returnCode }), false);
        return;
      }
      if (deps.access) deps.access.authenticate(client, username, password, connectWill(client), done);
      else done(null, true);
    },
    // Membership of a shared group is taken once every check allowed the subscription.
    authorizeSubscribe: shared.track(limits.authorizeSubscribe(shared.aclView(deps.access?.authorizeSubscribe))),
    ...(deps.access ? { authorizeForward: deps.access.authorizeForward } : {}),
  };
  const publishPolicy: PublishPolicy = deps.access?.checkPublish ?? refuseSys;

  function attachLogging(instance: Aedes): void {
    instance.on('client', (client) => lifecycle.connected(client));
    instance.on('clientDisconnect', (client) => lifecycle.gone(client));
    instance.on('publish', (packet, client) => {
      if (client) traffic.messageIn(client, packet.qos, packet.payload.length);
    });
    instance.on('keepaliveTimeout', (client) => {
      lifecycle.leaving(client, 'keepalive_timeout');
      // aedes closes the connection right after (an 'error'); an MQTT 5 client
      // is told why first [MQTT-3.14.2-1]: the coalesced write is flushed before the close.
      if (client.version === 5) disconnectWithReason(client, KEEP_ALIVE_TIMEOUT);
    });
    // A protocol error or a reset socket ends that one connection; aedes has
    // already closed it. It goes on the client's disconnect line: a flaky
    // sensor is no daemon fault, and one line per departure is enough.
    instance.on('clientError', (client, error) => lifecycle.error(client, error));
    instance.on('connectionError', (client, error) =>
      log.info({ remote: remoteOf(client), err: error.message }, 'connection error before CONNECT'),
    );
    onTakeover(instance, (taken) => lifecycle.leaving(taken, 'taken_over'));
    // aedes emits 'error' for persistence failures; an unheard 'error' would crash the process.
    (instance as NodeJS.EventEmitter).on('error', (error: Error) => log.error({ err: error }, 'broker error'));
  }

  return {
    get aedes() {
      if (!seam) throw new Error('broker is not running');
      return seam.aedes;
    },
    get running() {
      return seam !== undefined && !seam.aedes.closed;
    },
    limits,
    traffic,
    async start() {
      if (seam) return;
      // Refuses to start on an aedes release other than the one it was written for.
      const started = new AedesSeam(options, publishPolicy);
      const instance = started.aedes;
      attachLogging(instance);
      await instance.listen();
      // First, the lowest layer of each client's deliveries: QoS 1 written in
      // the call (direct-deliveries.ts), with aedes as the reference when
      // fastPublish is off. Then shared subscriptions watch what it writes,
      // under the flow control's wrapper (shared-subscriptions.ts, watchDeliveries).
      if (config.broker.fastPublish) await installDirectDeliveries(started);
      shared.install(started);
      // Before the delivery rules: their per-client wrappers must run on top of the flow control's.
      limits.install(started);
      // Over the protocol guard's reads, under the connect hold's (limits.ts installs both).
      if (config.broker.fastPublish) {
        new FastPublish(started, { admitQoS0: (client, bytes) => limits.admitQoS0(client, bytes), taken: () => traffic.fastPathMessageIn() });
      }
      installDeliveryRules(started);
      installIncomingCleanup(instance, deps.logger);
      // The resend after CONNECT, many stored messages per turn (aedes-seam/resend.ts).
      await installBatchResend(instance, {
        reserve: (client) => limits.reserveResend(client),
        room: (client) => limits.roomForResend(client),
        fits: (client, packet) => limits.admitResend(client, packet),
      });
      // 3.1/3.1.1 CONNECTs with aedes' steps but no per-CONNECT stream pipeline (aedes-seam/connect.ts).
      await installConnectPath(started, persistence?.outgoingQueued?.bind(persistence));
      // PUBLISH packets really written to each client (traffic.ts), and what its parser refuses:
      // one function each for all clients.
      onPublishWritten(instance, (client, qos, payloadBytes) => traffic.messageOut(client, qos, payloadBytes));
      onParseError(instance, (client, error) => lifecycle.leaving(client, 'protocol_violation', { error: error.message }));
      // A refused filter is not kept with a persistent session, and an MQTT 5 SUBACK says which limit refused it.
      installSubscribeOutcomes(instance);
      if (isSessionAuthority(persistence)) installSessionAuthority(instance, persistence, deps.logger);
      seam = started;
      log.info({ brokerId: instance.id }, 'broker started');
    },
    async stop() {
      const stopping = seam;
      if (!stopping) return;
      for (const client of stopping.connectedClients()) lifecycle.leaving(client, 'server_stop');
      const withheld = withholdWills(stopping);
      if (withheld > 0) log.info({ withheld }, 'planned stop: the wills of connected clients are not published');
      await new Promise<void>((resolve) => stopping.aedes.close(() => resolve()));
      seam = undefined;
      log.info('broker stopped');
    },
    connectedClients() {
      return seam?.connectedClients() ?? [];
    },
    publishOwn(message, register) {
      if (!seam) return Promise.reject(new Error('broker is not running'));
      const { aedes } = seam;
      // aedes keeps a packet's brokerId and brokerCounter (aedes-packet).
      const brokerCounter = seam.nextBrokerCounter();
      register(brokerCounter);
      const packet = { cmd: 'publish', dup: false, brokerId: aedes.id, brokerCounter, ...message } as PublishPacket;
      return new Promise<void>((resolve, reject) => aedes.publish(packet, (error?: Error) => (error ? reject(error) : resolve())));
    },
  };
}

/** aedes' responseInformation option from the config's pattern: `{clientId}` becomes the client's id; null (off) when empty. */
function responseInformationFor(pattern: string): ((client: Client) => string) | null {
  if (pattern === '') return null;
  return (client) => pattern.replaceAll('{clientId}', client.id);
}

function remoteOf(client: Client): string | undefined {
  const conn = client.conn as { remoteAddress?: string; remotePort?: number };
  const req = client.req as { socket?: { remoteAddress?: string; remotePort?: number } } | undefined;
  const address = conn.remoteAddress ?? req?.socket?.remoteAddress;
  const port = conn.remotePort ?? req?.socket?.remotePort;
  return address ? `${address}:${port ?? '?'}` : undefined;
}

/** The listener a client came through: WebSocket connections carry their HTTP request, TLS sockets are encrypted. */
function listenerOf(client: Client): string {
  if (client.req) return 'http';
  return (client.conn as { encrypted?: boolean }).encrypted ? 'tls' : 'mqtt';
}

function protocolOf(client: Client): ProtocolName {
  const version = (client as { version?: number }).version;
  return version === 5 ? '5' : version === 3 ? '3.1' : '3.1.1';
}
