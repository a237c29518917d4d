/**
 * The Aedes broker as a component: builds it from config, wires the hooks,
 * logs client lifecycle, and closes it on stop.
 */
import { Aedes, type AedesOptions, type Client } from 'aedes';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { checkConnect, PendingRejections } from './connect-rules.js';
import { installDeliveryFixes } from './delivery-rules.js';
import { installDurableAck } from './durable-ack.js';
import { withholdWills } from './planned-stop.js';
import { createLimits, type Limits } from './limits.js';
import type { AccessHooks } from '../auth/authorizer.js';

export interface Broker {
  /** The running Aedes instance; only valid between start() and stop(). */
  readonly aedes: Aedes;
  readonly running: boolean;
  /** Connection admission, limit counters and per-client flow control (src/broker/limits.ts). */
  readonly limits: Limits;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface BrokerDeps {
  logger: Logger;
  /** aedes persistence instance; memory when omitted. */
  persistence?: unknown;
  /** Authentication and ACL hooks (src/auth/authorizer.ts); without them every client may do anything but publish to $SYS. */
  access?: AccessHooks;
}

export function createBroker(config: Config, deps: BrokerDeps): Broker {
  const log = deps.logger.child({ component: 'broker' });
  const rejections = new PendingRejections();
  const limits = createLimits(config, { logger: deps.logger });
  let aedes: Aedes | undefined;

  const options: AedesOptions = {
    id: config.broker.id || undefined,
    persistence: deps.persistence,
    // limits.ts closes a connection without CONNECT at connectTimeoutSec, and
    // counts it; aedes' own timer is only the backstop.
    connectTimeout: config.broker.connectTimeoutSec * 1000 + 1000,
    heartbeatInterval: config.broker.heartbeatIntervalSec * 1000,
    maxClientsIdLength: config.broker.maxClientIdLength,
    // "Forever" is 2^31-1 ms (24.8 days), so that aedes keeps coalescing a
    // full socket's waiting writes on one timer instead of one 'drain'
    // listener per write.
    drainTimeout: config.broker.drainTimeoutSec > 0 ? config.broker.drainTimeoutSec * 1000 : 2 ** 31 - 1,
    preConnect(client, packet, done) {
      const rejection = checkConnect(packet, { minKeepaliveSec: config.broker.minKeepaliveSec, maxKeepaliveSec: config.broker.maxKeepaliveSec });
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
      if (deps.access) deps.access.authenticate(client, username, password, done);
      else done(null, true);
    },
    ...(deps.access
      ? {
          authorizePublish: deps.access.authorizePublish,
          authorizeSubscribe: deps.access.authorizeSubscribe,
          authorizeForward: deps.access.authorizeForward,
        }
      : {}),
  };

  function attachLogging(instance: Aedes): void {
    instance.on('client', (client) => log.debug({ clientId: client.id, remote: remoteOf(client) }, 'client connected'));
    instance.on('clientDisconnect', (client) => log.debug({ clientId: client.id }, 'client disconnected'));
    instance.on('keepaliveTimeout', (client) => log.info({ clientId: client.id }, 'keep-alive timeout'));
    // A protocol error or a reset socket ends that one connection; aedes
    // has already closed it. Logged at info: a flaky sensor is no daemon fault.
    instance.on('clientError', (client, error) =>
      log.info({ clientId: client.id, err: error.message }, 'client connection error'),
    );
    instance.on('connectionError', (client, error) =>
      log.info({ remote: remoteOf(client), err: error.message }, 'connection error before CONNECT'),
    );
    // aedes emits 'error' for persistence failures; an unheard 'error' would crash the process.
    (instance as NodeJS.EventEmitter).on('error', (error: Error) => log.error({ err: error }, 'broker error'));
  }

  return {
    get aedes() {
      if (!aedes) throw new Error('broker is not running');
      return aedes;
    },
    get running() {
      return aedes !== undefined && !aedes.closed;
    },
    limits,
    async start() {
      if (aedes) return;
      const instance = new Aedes(options);
      attachLogging(instance);
      await instance.listen();
      // Before the delivery fixes: their per-client wrappers must run on top of the flow control's.
      limits.install(instance);
      installDeliveryFixes(instance, deps.logger);
      deps.access?.install(instance);
      installDurableAck(instance);
      aedes = instance;
      log.info({ brokerId: instance.id }, 'broker started');
    },
    async stop() {
      const instance = aedes;
      if (!instance) return;
      const withheld = withholdWills(instance);
      if (withheld > 0) log.info({ withheld }, 'planned stop: the wills of connected clients are not published');
      await new Promise<void>((resolve) => instance.close(() => resolve()));
      aedes = undefined;
      log.info('broker stopped');
    },
  };
}

function remoteOf(client: Client): string | undefined {
  const conn = client.conn as { remoteAddress?: string; remotePort?: number };
  const req = client.req as { socket?: { remoteAddress?: string; remotePort?: number } } | undefined;
  const address = conn.remoteAddress ?? req?.socket?.remoteAddress;
  const port = conn.remotePort ?? req?.socket?.remotePort;
  return address ? `${address}:${port ?? '?'}` : undefined;
}
