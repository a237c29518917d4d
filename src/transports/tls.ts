/**
 * MQTT over TLS [MQTT-4.2], by default on 8883 (IANA's secure-mqtt port).
 * TLS 1.2 is the oldest version accepted. With a CA file, clients may (or
 * with requireClientCert, must) present a certificate it signed; with
 * useCnAsUsername that certificate's CN is their user name.
 */
import type { Socket } from 'node:net';
import { createServer, type TLSSocket } from 'node:tls';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import type { CertIdentities } from './cert-identity.js';
import type { ConnectionBroker, Listener } from './listener.js';
import { ServerLifecycle } from './server-lifecycle.js';
import { ServerCertificate, tlsServerOptions, type CertificateReloadable, type TlsSettings } from './tls-context.js';

export interface TlsListenerDeps {
  broker: ConnectionBroker;
  logger: Logger;
  identities: CertIdentities;
}

export function createTlsListener(config: Config, deps: TlsListenerDeps): Listener & CertificateReloadable {
  const settings = config.tls;
  const { host, port, maxConnections } = settings;
  const log = deps.logger.child({ component: 'listener', listener: 'tls' });
  // A handshake must finish within the time a client has to send CONNECT.
  const server = createServer({ ...tlsServerOptions(settings, config.broker.connectTimeoutSec * 1000), noDelay: true });
  const certificate = new ServerCertificate(server, settings, log);
  const lifecycle = new ServerLifecycle('tls', server);
  if (maxConnections > 0) server.maxConnections = maxConnections;
  server.on('drop', (info) =>
    deps.broker.limits.hit('listenerMaxConnections', { listener: 'tls', remote: info?.remoteAddress, maxConnections }),
  );
  // Raw TCP sockets, before any TLS: tracked from accept, so that stop() also
  // cuts handshakes in progress; admitted (connection count, rate per address)
  // before a handshake costs any CPU.
  const refused = new WeakSet<Socket>();
  // Read at accept: once a handshake has failed the TLS socket's own
  // remoteAddress and remotePort are undefined (its handle is gone).
  const remotes = new WeakMap<Socket, string>();
  server.on('connection', (socket: Socket) => {
    lifecycle.track(socket);
    remotes.set(socket, `${socket.remoteAddress}:${socket.remotePort}`);
    if (deps.broker.limits.admit('tls', socket.remoteAddress) !== null) {
      refused.add(socket);
      socket.destroy();
    }
  });
  server.on('tlsClientError', (error: NodeJS.ErrnoException, socket: TLSSocket) => {
    const raw = (socket as unknown as { _parent?: Socket })._parent;
    if (raw && refused.has(raw)) return;
    const remote = (raw && remotes.get(raw)) ?? (socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : undefined);
    // Scanners, expired or foreign client certificates, old TLS versions.
    log.info({ remote, code: error.code, reason: error.message }, 'TLS handshake failed');
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.setNoDelay(true);
    if (settings.useCnAsUsername) deps.identities.record(socket, socket);
    // The broker guards every connection it handles: packet size, MQTT
    // 3.1.1 conformance, CONNECT timeout, bounded output (src/broker/limits.ts).
    deps.broker.aedes.handle(socket);
  });

  return {
    name: 'tls',
    tlsConfigKey: 'tls',
    async start() {
      const summary = certificate.load();
      await lifecycle.listen(host, port);
      log.info(
        { address: lifecycle.address(), certificate: summary, clientCertificates: clientCertMode(settings) },
        'listening for MQTT over TLS',
      );
    },
    stopAccepting: () => lifecycle.stopAccepting(),
    stop: () => lifecycle.stop(),
    address: () => lifecycle.address(),
    reloadCertificates(next) {
      const summary = certificate.load(next);
      log.info({ certificate: summary }, 'TLS certificate reloaded');
      return certificate.keys('tls');
    },
  };
}

export function clientCertMode(settings: TlsSettings): string {
  if (settings.caFile === '') return 'not requested';
  return `${settings.requireClientCert ? 'required' : 'optional'}${settings.useCnAsUsername ? ', CN is the user name' : ''}`;
}
