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

const port = (what: string) =>
  z.number().int().min(0).max(65535).describe(`${what} TCP port (0 picks a free port)`);

const host = z
  .string()
  .min(1)
  .describe('Address to bind; 0.0.0.0 for all IPv4 interfaces, :: for all interfaces');

const logLevel = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

/** Larger than this cannot be encoded in MQTT 3.1.1's Remaining Length [MQTT-2.2.3]. */
export const MQTT_MAX_REMAINING_LENGTH = 268_435_455;

const mqttListener = z
  .strictObject({
    enabled: z.boolean().default(true).describe('Accept MQTT over plain TCP'),
    host: host.default('0.0.0.0'),
    port: port('MQTT').default(1883),
    maxConnections: z
      .number()
      .int()
      .min(0)
      .default(0)
      .describe('Connections this listener accepts at once; 0 = unlimited'),
  })
  .prefault({});

const websocket = z
  .strictObject({
    enabled: z.boolean().default(true).describe('Accept MQTT over WebSocket on the HTTP listener'),
    path: z
      .string()
      .regex(/^\/[^\s?#]*$/, 'must be an absolute URL path such as /mqtt')
      .default('/mqtt')
      .describe('URL path that upgrades to MQTT over WebSocket; every other path is refused'),
    allowedOrigins: z
      .array(z.string().min(1))
      .default([])
      .describe(
        'Origins (scheme://host[:port]) whose pages may connect. Empty: same-origin pages and ' +
          'clients that send no Origin (devices, servers). "*" allows any origin.',
      ),
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
    websocket,
  })
  .prefault({});

export const configSchema = z
  .strictObject({
    dataDir: z
      .string()
      .min(1)
      .default('./data')
      .describe('Directory for persistent state; relative paths resolve from the working directory'),
    log: z
      .strictObject({
        level: logLevel.default('info').describe('Least severe log level written; reloads on SIGHUP'),
      })
      .prefault({}),
    mqtt: mqttListener,
    http: httpListener,
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
          .describe('Refuse CONNECTs asking for a longer keep-alive (or none); 0 = accept any'),
        maxClientIdLength: z
          .number()
          .int()
          .min(23)
          .max(65535)
          .default(23)
          .describe('Longest client id accepted from MQTT 3.1 clients (3.1.1 clients are not limited)'),
        heartbeatIntervalSec: z
          .number()
          .min(1)
          .default(60)
          .describe('Interval of the $SYS/<id>/heartbeat message'),
        drainTimeoutSec: z
          .number()
          .min(0)
          .default(60)
          .describe('A client whose socket stays full this long is disconnected; 0 = wait forever'),
      })
      .prefault({}),
    shutdown: z
      .strictObject({
        timeoutSec: z
          .number()
          .min(0.1)
          .default(10)
          .describe('Longest a graceful stop may take before remaining connections are cut'),
      })
      .prefault({}),
  })
  .describe('edgemqtt configuration');

/** The config as the daemon uses it: every default filled in. */
export type Config = z.output<typeof configSchema>;
/** The config as a user may write it: every key optional. */
export type ConfigInput = z.input<typeof configSchema>;
export type LogLevel = z.output<typeof logLevel>;
