/**
 * The Aedes broker as a component: builds it from config, wires the hooks,
 * logs client lifecycle, and closes it on stop.
 */
import { Aedes, type AedesOptions, type Client } from 'aedes';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { checkConnect, PendingRejections } from './connect-rules.js';
import { installDeliveryFixes } from './delivery-fixes.js';

export interface Broker {
  /** The running Aedes instance; only valid between start() and stop(). */
  readonly aedes: Aedes;
  readonly running: boolean;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface BrokerDeps {
  logger: Logger;
  /** aedes persistence instance; memory when omitted. */
  persistence?: unknown;
}

export function createBroker(config: Config, deps: BrokerDeps): Broker {
  const log = deps.logger.child({ component: 'broker' });
  const rejections = new PendingRejections();
  let aedes: Aedes | undefined;

  const options: AedesOptions = {
    id: config.broker.id || undefined,
    persistence: deps.persistence,
    connectTimeout: config.broker.connectTimeoutSec * 1000,
    heartbeatInterval: config.broker.heartbeatIntervalSec * 1000,
    keepaliveLimit: config.broker.maxKeepaliveSec,
    maxClientsIdLength: config.broker.maxClientIdLength,
    drainTimeout: config.broker.drainTimeoutSec * 1000,
    preConnect(client, packet, done) {
      const rejection = checkConnect(packet);
      if (rejection) rejections.remember(client, rejection);
      done(null, true);
    },
    authenticate(client, _username, _password, done) {
      const rejection = rejections.take(client);
      if (rejection) {
        log.info({ reason: rejection.reason, remote: remoteOf(client) }, 'connect refused');
        done(Object.assign(new Error(rejection.reason), { returnCode: rejection.returnCode }), false);
        return;
      }
      done(null, true);
    },
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
    async start() {
      if (aedes) return;
      const instance = new Aedes(options);
      attachLogging(instance);
      await instance.listen();
      installDeliveryFixes(instance, deps.logger);
      aedes = instance;
      log.info({ brokerId: instance.id }, 'broker started');
    },
    async stop() {
      const instance = aedes;
      if (!instance) return;
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
