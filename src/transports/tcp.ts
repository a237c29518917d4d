/** MQTT over plain TCP [MQTT-4.2]. */
import { createServer } from 'node:net';
import type { Config } from '../config/schema.js';
import type { Broker } from '../broker/broker.js';
import type { Logger } from '../observability/logger.js';
import type { Listener } from './listener.js';
import { ServerLifecycle } from './server-lifecycle.js';
import { guardPacketSize } from './packet-size-guard.js';

export interface TcpListenerDeps {
  broker: Broker;
  logger: Logger;
}

export function createTcpListener(config: Config, deps: TcpListenerDeps): Listener {
  const { host, port, maxConnections } = config.mqtt;
  const log = deps.logger.child({ component: 'listener', listener: 'mqtt' });
  // Small MQTT packets must not wait for Nagle's algorithm.
  const server = createServer({ noDelay: true });
  const lifecycle = new ServerLifecycle('mqtt', server);
  if (maxConnections > 0) server.maxConnections = maxConnections;
  server.on('drop', (info) => log.warn({ remote: info?.remoteAddress, maxConnections }, 'connection refused: listener full'));
  server.on('connection', (socket) => {
    lifecycle.track(socket);
    guardPacketSize(socket, config.broker.maxPacketSizeBytes, (reason) =>
      log.info({ remote: `${socket.remoteAddress}:${socket.remotePort}`, reason }, 'connection closed: packet too large'),
    );
    deps.broker.aedes.handle(socket);
  });

  return {
    name: 'mqtt',
    async start() {
      await lifecycle.listen(host, port);
      log.info({ address: lifecycle.address() }, 'listening for MQTT over TCP');
    },
    stopAccepting: () => lifecycle.stopAccepting(),
    stop: () => lifecycle.stop(),
    address: () => lifecycle.address(),
  };
}
