/**
 * The one configuration schema. Types, defaults, validation, the `EDGEMQTT_*`
 * environment names and the JSON Schema for editors are all derived from it,
 * so a default is written exactly once (here).
 *
 * Conventions: units are in key names (`…Sec`, `…Bytes`), 0 means "no limit"
 * where a limit is optional, and every key has a description. The annotated
 * example in `config/edgemqtt.yaml` must document every key; a test enforces it.
 */
import { z } from 'zod';
import { secret } from './keys.js';
import { persistenceDefaults } from '../persistence/options.js';
import { LOG_LEVELS } from '../observability/logger.js';
import { bridgeSchema } from './bridge-schema.js';
import { limitsSchema } from './limits-schema.js';

const port = (what: string) =>
  z.number().int().min(0).max(65535).describe(`${what} TCP port (0 picks a free port)`);

const host = z
  .string()
  .min(1)
  .describe('Address to bind; 0.0.0.0 for all IPv4 interfaces, :: for all interfaces');

const logLevel = z.enum(LOG_LEVELS);

/** Larger than this cannot be encoded in MQTT 3.1.1's Remaining Length [MQTT-2.2.3]. */
export const MQTT_MAX_REMAINING_LENGTH = 268_435_455;

const listenerMaxConnections = z
  .number()
  .int()
  .min(0)
  .default(0)
  .describe('Connections this listener accepts at once; 0 = unlimited');

const mqttListener = z
  .strictObject({
    enabled: z.boolean().default(true).describe('Accept MQTT over plain TCP'),
    host: host.default('0.0.0.0'),
    port: port('MQTT').default(1883),
    maxConnections: listenerMaxConnections,
  })
  .prefault({});

// ---- TLS (src/transports/tls*.ts): shared by the MQTT-over-TLS listener and HTTPS.
const tlsVersion = z.enum(['TLSv1.2', 'TLSv1.3']);

/** Certificate and client-certificate settings; file contents reload on SIGHUP. */
const tlsSettingsShape = {
  certFile: z
    .string()
    .default('')
    .describe('PEM certificate chain, server certificate first; re-read on SIGHUP'),
  keyFile: z.string().default('').describe('PEM private key of certFile; re-read on SIGHUP'),
  keyPassphrase: secret(z.string().default('').describe('Passphrase of an encrypted keyFile; empty = not encrypted')),
  caFile: z
    .string()
    .default('')
    .describe('PEM CA certificate(s) that sign client certificates; empty = no client certificates asked for'),
  requireClientCert: z
    .boolean()
    .default(false)
    .describe('Refuse TLS handshakes without a client certificate signed by caFile'),
  useCnAsUsername: z
    .boolean()
    .default(false)
    .describe("A verified client certificate's subject CN is the MQTT user name; CONNECT's user name and password are ignored"),
  minVersion: tlsVersion.default('TLSv1.2').describe('Oldest TLS version accepted'),
};

interface TlsSettingsInput {
  enabled: boolean;
  certFile: string;
  keyFile: string;
  caFile: string;
  requireClientCert: boolean;
  useCnAsUsername: boolean;
}

/** Cross-key rules of a TLS section: what an enabled one needs. */
function checkTlsSettings(value: TlsSettingsInput, ctx: z.RefinementCtx): void {
  if (!value.enabled) return;
  for (const key of ['certFile', 'keyFile'] as const) {
    if (value[key] === '') ctx.addIssue({ code: 'custom', path: [key], message: 'required when TLS is enabled' });
  }
  for (const key of ['requireClientCert', 'useCnAsUsername'] as const) {
    if (value[key] && value.caFile === '') {
      ctx.addIssue({ code: 'custom', path: ['caFile'], message: `required by ${key}: the CA that signs client certificates` });
    }
  }
}

const tlsListener = z
  .strictObject({
    enabled: z.boolean().default(false).describe('Accept MQTT over TLS'),
    host: host.default('0.0.0.0'),
    port: port('MQTT over TLS').default(8883),
    maxConnections: listenerMaxConnections,
    ...tlsSettingsShape,
  })
  .superRefine(checkTlsSettings)
  .prefault({});

const httpTls = z
  .strictObject({
    enabled: z.boolean().default(false).describe('Serve HTTPS (and WSS) instead of HTTP on the HTTP listener'),
    ...tlsSettingsShape,
  })
  .superRefine(checkTlsSettings)
  .prefault({});

// ---- Authentication and authorization (src/auth).
const auth = z
  .strictObject({
    allowAnonymous: z
      .boolean()
      .default(true)
      .describe('Accept clients that send no user name; on by default so the quick start works, logged as a warning'),
    passwordFile: z
      .string()
      .default('')
      .describe('Users and scrypt hashes (edgemqtt passwd); empty = user names are not verified; re-read on SIGHUP'),
    aclFile: z
      .string()
      .default('')
      .describe('Mosquitto-style topic ACL file; empty = every client may use every topic but $SYS; re-read on SIGHUP'),
    failedLogins: z
      .strictObject({
        burst: z
          .number()
          .int()
          .min(0)
          .default(5)
          .describe('Failed logins one user name may make in a row from one source address (IPv6: /64); 0 = no limit'),
        refillSec: z
          .number()
          .min(0.001)
          .default(30)
          .describe('Seconds after which that user may fail one more login from that source'),
        addressBurst: z
          .number()
          .int()
          .min(0)
          .default(100)
          .describe(
            'Failed logins one source address may make in a row over every user name (against password spraying); ' +
              'it refills completely in burst × refillSec; 0 = no such bound',
          ),
        maxSources: z
          .number()
          .int()
          .min(1)
          .default(10_000)
          .describe('Source addresses (and, apart, pairs of source and user name) remembered at once; the longest idle is forgotten first'),
      })
      .prefault({}),
  })
  .prefault({});

/** An absolute URL path on the HTTP listener, `fallback` by default. */
const urlPath = (fallback: string) =>
  z
    .string()
    .regex(/^\/[^\s?#]*$/, `must be an absolute URL path such as ${fallback}`)
    .default(fallback);

const websocket = z
  .strictObject({
    enabled: z.boolean().default(true).describe('Accept MQTT over WebSocket on the HTTP listener'),
    path: urlPath('/mqtt')
      .describe('URL path that upgrades to MQTT over WebSocket; every other path is refused'),
    allowedOrigins: z
      .array(z.string().min(1))
      .default([])
      .describe(
        'Origins (scheme://host[:port]) whose pages may connect. Empty: same-origin pages and ' +
          'clients that send no Origin (devices, servers). "*" allows any origin.',
      ),
    maxConnections: z
      .number()
      .int()
      .min(0)
      .default(0)
      .describe('MQTT-over-WebSocket connections accepted at once; further upgrades get HTTP 503; 0 = unlimited'),
  })
  .prefault({});

const httpListener = z
  .strictObject({
    enabled: z
      .boolean()
      .default(true)
      .describe('Serve /healthz, /readyz and MQTT over WebSocket'),
    host: host.default('0.0.0.0'),
    port: port('HTTP').default(8080),
    tls: httpTls,
    websocket,
  })
  .prefault({});

// ---- Operations (src/metrics, src/admin): what an operator sees and steers.
const metrics = z
  .strictObject({
    enabled: z.boolean().default(true).describe('Serve Prometheus metrics (text format) at metrics.path'),
    path: urlPath('/metrics')
      .describe('URL path of the metrics'),
    ownListener: z
      .strictObject({
        enabled: z
          .boolean()
          .default(false)
          .describe('Serve the metrics on their own HTTP listener (host, port) instead of the HTTP listener'),
        host: host.default('127.0.0.1'),
        port: port('Metrics').default(9464),
      })
      .prefault({}),
  })
  .prefault({});

const admin = z
  .strictObject({
    enabled: z
      .boolean()
      .default(false)
      .describe('Serve the admin API under /api/v1 on the HTTP listener (needs users or tokenFile)'),
    users: z
      .array(z.string().min(1))
      .default([])
      .describe('User names of auth.passwordFile allowed to call the admin API (HTTP basic authentication)'),
    tokenFile: z
      .string()
      .default('')
      .describe('File holding a bearer token accepted by the admin API; empty = none; re-read on SIGHUP'),
    allowRemote: z
      .boolean()
      .default(false)
      .describe('Answer admin API calls from addresses other than loopback'),
  })
  .prefault({});

/** The admin API must name who may call it, and users need a password file to prove who they are. */
function checkAdminAccess(value: { admin: z.output<typeof admin>; auth: { passwordFile: string } }, ctx: z.RefinementCtx): void {
  if (!value.admin.enabled) return;
  if (value.admin.users.length === 0 && value.admin.tokenFile === '') {
    ctx.addIssue({ code: 'custom', path: ['admin', 'enabled'], message: 'the admin API needs admin.users or admin.tokenFile: nobody could call it' });
  }
  if (value.admin.users.length > 0 && value.auth.passwordFile === '') {
    ctx.addIssue({ code: 'custom', path: ['admin', 'users'], message: 'admin.users log in with their password from auth.passwordFile, which is not set' });
  }
}

const dashboard = z
  .strictObject({
    enabled: z
      .boolean()
      .default(true)
      .describe('Serve the live dashboard at / on the HTTP listener; it logs in over MQTT like any client'),
  })
  .prefault({});

export const configSchema = z
  .strictObject({
    dataDir: z
      .string()
      .min(1)
      .default('./data')
      .describe('Directory for persistent state; relative paths resolve from the working directory'),
    persistence: z
      .strictObject({
        sync: z
          .enum(['always', 'batch', 'os'])
          .default(persistenceDefaults.sync)
          .describe(
            'When a write that gates an acknowledgement counts as done: always (an fsync per event-loop turn, ' +
              'never shared with later writes), batch (writes share fsyncs: while one batch is written the next ' +
              'collects), os (no fsync; a power cut can lose about 30 s of acknowledged messages)',
          ),
        commitDelayMs: z
          .number()
          .min(0)
          .max(1000)
          .default(persistenceDefaults.commitDelayMs)
          .describe('Extra wait for more writes before a group commit; 0 = the end of the event-loop turn after the first write (always: of its own turn)'),
        maxQueuedMessagesPerClient: z
          .number()
          .int()
          .min(0)
          .default(persistenceDefaults.maxQueuedMessagesPerClient)
          .describe('QoS 1/2 messages a persistent session may hold, connected or not; the oldest not yet sent is dropped beyond it; 0 = unlimited'),
        maxQueuedBytesPerClient: z
          .number()
          .int()
          .min(0)
          .default(persistenceDefaults.maxQueuedBytesPerClient)
          .describe('Bytes a persistent session may hold, connected or not; the oldest not yet sent is dropped beyond it; 0 = unlimited'),
        queueCacheBytes: z
          .number()
          .int()
          .min(0)
          .default(persistenceDefaults.queueCacheBytes)
          .describe(
            'Memory over all sessions for copies of messages queued while their client is offline, so its backlog is resent ' +
              'without reading it back from disk (beyond it, it is); the disk holds every message either way; 0 = none',
          ),
        sessionExpirySec: z
          .number()
          .int()
          .min(0)
          .default(persistenceDefaults.sessionExpirySec)
          .describe('A persistent session unused this long is removed, and the longest Session Expiry Interval an MQTT 5 client gets; time the broker was stopped does not count; 0 = never'),
      })
      .prefault({}),
    log: z
      .strictObject({
        level: logLevel.default('info').describe('Least severe log level written; reloads on SIGHUP'),
      })
      .prefault({}),
    mqtt: mqttListener,
    tls: tlsListener,
    http: httpListener,
    auth,
    broker: z
      .strictObject({
        id: z
          .string()
          .default('')
          .describe('Broker id used in $SYS topics; empty = a random id per start'),
        maxPacketSizeBytes: z
          .number()
          .int()
          .min(64)
          .max(MQTT_MAX_REMAINING_LENGTH)
          .default(1_048_576)
          .describe('Largest MQTT packet accepted, fixed header included; a larger one closes the connection'),
        connectTimeoutSec: z
          .number()
          .min(0.1)
          .default(30)
          .describe('Time a new connection has to send CONNECT before it is closed'),
        maxKeepaliveSec: z
          .number()
          .int()
          .min(0)
          .max(65535)
          .default(0)
          .describe(
            'Refuse MQTT 3.1.1 CONNECTs (return code 2) asking for a longer keep-alive, or none; MQTT 5 clients are ' +
              'accepted and told this as Server Keep Alive; 0 = accept any',
          ),
        minKeepaliveSec: z
          .number()
          .int()
          .min(0)
          .max(65535)
          .default(0)
          .describe(
            'Refuse MQTT 3.1.1 CONNECTs asking for a shorter keep-alive than this (0, none, is left to maxKeepaliveSec); ' +
              'MQTT 5 clients are accepted and told this as Server Keep Alive; 0 = accept any',
          ),
        maxClientIdLength: z
          .number()
          .int()
          .min(23)
          .max(65535)
          .default(256)
          .describe('Longest client id accepted, in UTF-8 bytes, from every protocol version; a longer one is refused (CONNACK 2, MQTT 5: 0x85)'),
        heartbeatIntervalSec: z
          .number()
          .min(1)
          .default(60)
          .describe('Interval of the $SYS/<id>/heartbeat message'),
        sysIntervalSec: z
          .number()
          .int()
          .min(0)
          .default(10)
          .describe('Interval of the mosquitto-style $SYS/broker/... statistics messages (retained); 0 = not published'),
        fastPublish: z
          .boolean()
          .default(true)
          .describe('Plain QoS 0 PUBLISHes (no RETAIN, no properties, ASCII topic) go from the socket to the subscribers without aedes\' packet objects (src/broker/aedes-seam/fast-publish.ts), and every delivery is written in the call that hands it over rather than a turn later (direct-deliveries.ts); false sends every message through aedes'),
        drainTimeoutSec: z
          .number()
          .min(0)
          .default(60)
          .describe('A client whose socket stays full this long is disconnected; 0 = wait forever'),
        topicAliasMaximum: z
          .number()
          .int()
          .min(0)
          .max(65535)
          .default(10)
          .describe('MQTT 5: Topic Aliases a client may set up per connection for what it publishes (CONNACK Topic Alias Maximum); 0 = none'),
        outgoingTopicAliases: z
          .number()
          .int()
          .min(0)
          .max(65535)
          .default(0)
          .describe(
            'MQTT 5: Topic Aliases the broker assigns per connection to what it sends, at most the client\'s Topic Alias Maximum; recently used topics keep theirs; 0 = off (every PUBLISH carries its topic)',
          ),
        responseInformation: z
          .string()
          .max(65535)
          .default('')
          .describe(
            'MQTT 5: Response Information sent in CONNACK to a client that asks for it (Request Response Information), `{clientId}` replaced by its client id; empty = none',
          ),
      })
      .prefault({}),
    limits: limitsSchema,
    shutdown: z
      .strictObject({
        timeoutSec: z
          .number()
          .min(0.1)
          .default(10)
          .describe('Longest a graceful stop may take before remaining connections are cut'),
      })
      .prefault({}),
    bridge: bridgeSchema,
    metrics,
    admin,
    dashboard,
  })
  .superRefine(checkAdminAccess)
  .describe('edgemqtt configuration');

/** The config as the daemon uses it: every default filled in. */
export type Config = z.output<typeof configSchema>;
/** The config as a user may write it: every key optional. */
export type ConfigInput = z.input<typeof configSchema>;
export type { BridgeConfig, BridgeExportRule, BridgeImportRule } from './bridge-schema.js';
export { MAX_TOPIC_LEVELS } from './limits-schema.js';
