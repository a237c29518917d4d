/** MQTT over plain TCP [MQTT-4.2]. */
import { createServer } from 'node:net';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import type { ConnectionBroker, Listener } from './listener.js';
import { ServerLifecycle } from './server-lifecycle.js';

export interface TcpListenerDeps {
  broker: ConnectionBroker;
  logger: Logger;
}

export function createTcpListener(config: Config, deps: TcpListenerDeps): Listener {
  const { host, port, maxConnections } = config.mqtt;
  const log = deps.logger.child({ component: 'listener', listener: 'mqtt' });
  // Small MQTT packets must not wait for Nagle's algorithm.
  const server = createServer({ noDelay: true });
  const lifecycle = new ServerLifecycle('mqtt', server);
  if (maxConnections > 0) server.maxConnections = maxConnections;
  server.on('drop', (info) =>
    deps.broker.limits.hit('listenerMaxConnections', { listener: 'mqtt', remote: info?.remoteAddress, maxConnections }),
  );
  // Set up at once, unlike WebSocket upgrades (admission.ts): libuv (1.46 on)
  // accepts one connection per event-loop turn, so they never pile up here.
  server.on('connection', (socket) => {
    lifecycle.track(socket);
    // Refused before aedes builds any state for it (counted and logged there).
    if (deps.broker.limits.admit('mqtt', socket.remoteAddress) !== null) {
      socket.destroy();
      return;
    }
    // The broker guards every connection it handles: packet size, MQTT
    // 3.1.1 conformance, CONNECT timeout, bounded output (src/broker/limits.ts).
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
