/**
 * The `bridge:` section of the config schema (see schema.ts): the NATS
 * JetStream bridge that exports local MQTT messages to a stream shared by the
 * sites and imports the other sites' messages. Off by default, so the broker
 * runs without NATS.
 *
 * Secrets are never written inline: the NATS password, token, NKey seed and
 * credentials are read from the files named here (the paths are not secret).
 */
import { z } from 'zod';

/** Why a string is not a valid MQTT topic filter, or undefined when it is. */
export function topicFilterProblem(filter: string): string | undefined {
  if (filter === '') return 'must not be empty';
  if (filter.includes('\u0000')) return 'must not contain NUL (U+0000)';
  if (Buffer.byteLength(filter, 'utf8') > 65535) return 'longer than 65535 UTF-8 bytes';
  const levels = filter.split('/');
  for (const [index, level] of levels.entries()) {
    if (level.includes('#') && (level !== '#' || index !== levels.length - 1)) {
      return "'#' must be alone in the last level, as in plant/#";
    }
    if (level.includes('+') && level !== '+') return "'+' must be alone in its level, as in plant/+/temperature";
  }
  return undefined;
}

/** Why a string is not a NATS server address, or undefined when it is. */
export function natsServerProblem(server: string): string | undefined {
  const expected = 'must be nats://host[:port], tls://host[:port] or host:port';
  if (/^(nats|tls):\/\//i.test(server)) {
    let url: URL;
    try {
      url = new URL(server);
    } catch {
      return expected;
    }
    if (url.username !== '' || url.password !== '') {
      return 'must not hold credentials: set bridge.nats.user with passwordFile, or a token, NKey or creds file';
    }
    if (url.hostname === '' || url.port === '0' || (url.pathname !== '' && url.pathname !== '/') || url.search !== '' || url.hash !== '') {
      return expected;
    }
    return undefined;
  }
  const match = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})$/.exec(server);
  const port = Number(match?.[2]);
  return match && port >= 1 && port <= 65535 ? undefined : expected;
}

/** Turns a `(value) => problem | undefined` check into a zod refinement. */
const checkedBy = (problem: (value: string) => string | undefined) => (value: string, ctx: z.RefinementCtx) => {
  const message = problem(value);
  if (message !== undefined) ctx.addIssue({ code: 'custom', message });
};

const topicFilter = (what: string) => z.string().superRefine(checkedBy(topicFilterProblem)).describe(what);

const qosLevel = z.literal([0, 1, 2]);

const exportRule = z.strictObject({
  filter: topicFilter("MQTT topic filter of the local messages to export, e.g. plant/# ('+' and '#' wildcards)"),
  qos: z
    .array(qosLevel)
    .min(1, 'must list at least one QoS level (0, 1, 2)')
    .refine((levels) => new Set(levels).size === levels.length, 'lists a QoS level twice')
    .default([0, 1, 2])
    .describe('QoS levels, as published, of the messages exported; e.g. [1, 2] leaves QoS 0 telemetry local'),
  retained: z.boolean().default(true).describe('Export retained messages too; false exports only ones published without the retain flag'),
});

const importRule = z.strictObject({
  filter: topicFilter("MQTT topic filter of the other sites' messages to import, e.g. plant/# ('+' and '#' wildcards)"),
  qos: qosLevel.default(1).describe('QoS the imported messages are published with locally: 0, 1 or 2, never above the QoS they were published with'),
});

/** Secret-holding file; the path itself is not a secret. */
const secretFile = (what: string) => z.string().default('').describe(`${what}; empty = not used`);

const nats = z
  .strictObject({
    servers: z
      .array(z.string().superRefine(checkedBy(natsServerProblem)))
      .default(['nats://127.0.0.1:4222'])
      .describe('NATS servers to connect to (nats://host:port, tls://host:port or host:port); more than one for a cluster, tried in turn'),
    user: z.string().default('').describe('NATS user name, with passwordFile; empty = no user/password login'),
    passwordFile: secretFile('File holding the NATS password of user'),
    tokenFile: secretFile('File holding a NATS authentication token'),
    nkeySeedFile: secretFile('File holding an NKey seed (SU...), for NKey authentication'),
    credsFile: secretFile('NATS credentials file (.creds: user JWT and NKey seed), for decentralized JWT authentication'),
    tls: z
      .strictObject({
        enabled: z
          .boolean()
          .default(false)
          .describe('Require TLS to the NATS servers (tls:// server addresses require it too)'),
        caFile: z
          .string()
          .default('')
          .describe("PEM CA certificate(s) that sign the NATS servers' certificates; empty = the system's CAs"),
        certFile: z
          .string()
          .default('')
          .describe('PEM client certificate, for servers that verify clients; needs keyFile; empty = none'),
        keyFile: z.string().default('').describe('PEM private key of certFile; needs certFile; empty = none'),
      })
      .prefault({}),
    jetstreamDomain: z
      .string()
      .regex(/^[^\s.*>]*$/, "must not contain spaces, '.', '*' or '>'")
      .default('')
      .describe('JetStream domain of the stream, for a leaf node whose JetStream is separate from the hub; empty = the default domain'),
  })
  .prefault({});

const stream = z
  .strictObject({
    name: z
      .string()
      .min(1)
      .max(255)
      .regex(/^[^\s.*>/\\\u0000-\u001f\u007f]+$/, "must not contain spaces, '.', '*', '>', '/' or '\\'")
      .default('EDGEMQTT')
      .describe('Name of the JetStream stream every site exports to and imports from; the same at every site'),
    create: z
      .boolean()
      .default(true)
      .describe("Create the stream if it is missing (subjects <subjectPrefix>.>, or '>' when the prefix is empty); false = it must exist and is used as is"),
    replicas: z
      .number()
      .int()
      .min(1)
      .max(5)
      .default(1)
      .describe('Copies of the stream kept by a NATS cluster, when the bridge creates it; 3 survives the loss of one server'),
    maxAgeSec: z
      .number()
      .int()
      .min(0)
      .default(604_800)
      .describe('Messages older than this are removed from the stream, when the bridge creates it; 0 = unlimited'),
    duplicateWindowSec: z
      .number()
      .int()
      .min(1)
      .default(120)
      .describe('JetStream duplicate window: a message resent within it (same id) is stored once; when the bridge creates the stream'),
  })
  .prefault({});

const outbox = z
  .strictObject({
    maxMessages: z
      .number()
      .int()
      .min(0)
      .default(1_000_000)
      .describe('Exported messages waiting to be sent to NATS (e.g. while it is unreachable); beyond it, overflow applies; 0 = unlimited'),
    maxBytes: z
      .number()
      .int()
      .min(0)
      .default(1_073_741_824)
      .describe('Bytes of exported messages waiting to be sent to NATS; beyond it, overflow applies; 0 = unlimited'),
    overflow: z
      .enum(['drop-oldest', 'drop-new'])
      .default('drop-oldest')
      .describe('What a full outbox does with one more message: drop-oldest (drop the oldest waiting; fresh data wins) or drop-new (drop the new one)'),
  })
  .prefault({});

const sender = z
  .strictObject({
    window: z
      .number()
      .int()
      .min(1)
      .max(10_000)
      .default(256)
      .describe('JetStream publishes in flight (sent, not yet acknowledged) at once; more is faster over a high-latency link, and holds more in memory'),
    publishTimeoutMs: z
      .number()
      .int()
      .min(100)
      .default(5000)
      .describe('Milliseconds after which a publish without a JetStream acknowledgement is resent, with the same id (deduplicated within stream.duplicateWindowSec)'),
  })
  .prefault({});

const CREDENTIAL_FILES = ['passwordFile', 'tokenFile', 'nkeySeedFile', 'credsFile'] as const;

/** A field's value when it is a non-empty string; '' otherwise (defensive: runs on invalid input too). */
const setString = (record: unknown, key: string): string => {
  const value = record !== null && typeof record === 'object' ? (record as Record<string, unknown>)[key] : undefined;
  return typeof value === 'string' ? value : '';
};

const field = (record: unknown, key: string): unknown =>
  record !== null && typeof record === 'object' ? (record as Record<string, unknown>)[key] : undefined;

/**
 * What an enabled bridge needs. Runs even when other keys have problems, so
 * that one run lists them all; every value may therefore be of the wrong type.
 */
function checkEnabledBridge(bridge: unknown, ctx: z.RefinementCtx): void {
  if (field(bridge, 'enabled') !== true) return;
  const problem = (path: string[], message: string) => ctx.addIssue({ code: 'custom', path, message });

  if (setString(bridge, 'siteId') === '') {
    problem(['siteId'], "required when the bridge is enabled: this gateway's name among the sites, e.g. plant-berlin");
  }
  const nats = field(bridge, 'nats');
  const servers = field(nats, 'servers');
  if (Array.isArray(servers) && servers.length === 0) {
    problem(['nats', 'servers'], 'at least one NATS server is required when the bridge is enabled');
  }
  const credentials = CREDENTIAL_FILES.filter((key) => setString(nats, key) !== '');
  for (const key of credentials.slice(1)) {
    problem(
      ['nats', key],
      `conflicts with ${credentials[0]}: set at most one NATS credential (passwordFile with user, tokenFile, nkeySeedFile or credsFile)`,
    );
  }
  if (setString(nats, 'passwordFile') !== '' && setString(nats, 'user') === '') {
    problem(['nats', 'passwordFile'], 'needs user, the NATS user name it is the password of');
  }
  if (setString(nats, 'user') !== '' && setString(nats, 'passwordFile') === '') {
    problem(['nats', 'user'], 'needs passwordFile, the file holding its password');
  }
  const tls = field(nats, 'tls');
  const certFile = setString(tls, 'certFile');
  const keyFile = setString(tls, 'keyFile');
  if (certFile !== '' && keyFile === '') problem(['nats', 'tls', 'certFile'], 'needs keyFile, its private key');
  if (keyFile !== '' && certFile === '') problem(['nats', 'tls', 'keyFile'], 'needs certFile, the certificate it is the key of');

  const stream = field(bridge, 'stream');
  const maxAgeSec = field(stream, 'maxAgeSec');
  const duplicateWindowSec = field(stream, 'duplicateWindowSec');
  if (
    field(stream, 'create') === true &&
    typeof maxAgeSec === 'number' &&
    typeof duplicateWindowSec === 'number' &&
    maxAgeSec > 0 &&
    duplicateWindowSec > maxAgeSec
  ) {
    problem(['stream', 'duplicateWindowSec'], `must not exceed stream.maxAgeSec (${maxAgeSec}): JetStream refuses such a stream`);
  }

  const exportRules = field(bridge, 'export');
  const importRules = field(bridge, 'import');
  if (Array.isArray(exportRules) && Array.isArray(importRules) && exportRules.length + importRules.length === 0) {
    problem(
      [],
      'enabled, but there are no export or import rules, so nothing would be bridged: add a topic filter under ' +
        'bridge.export (local messages to send to NATS) or bridge.import (other sites\' messages to receive)',
    );
  }
}

export const bridgeSchema = z
  .strictObject({
    enabled: z
      .boolean()
      .default(false)
      .describe('Bridge MQTT messages to and from a NATS JetStream stream shared by the sites; needs siteId and export or import rules'),
    siteId: z
      .string()
      .regex(/^([A-Za-z0-9_-]{1,64})?$/, 'must be 1-64 characters of A-Z, a-z, 0-9, _ and -')
      .default('')
      .describe("This gateway's name among the sites, e.g. plant-berlin; unique per site, as it tells the sites' messages apart; required when enabled"),
    subjectPrefix: z
      .string()
      .regex(/^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)?$/, 'must be tokens of A-Z, a-z, 0-9, _ and - separated by single dots, e.g. mqtt or acme.mqtt')
      .default('mqtt')
      .describe("NATS subject prefix of bridged topics, e.g. mqtt or acme.mqtt; the same at every site; '' = none"),
    nats,
    stream,
    export: z
      .array(exportRule)
      .default([])
      .describe('Rules choosing the local MQTT messages sent to the stream, each {filter, qos, retained}; env: a JSON array; empty = none'),
    import: z
      .array(importRule)
      .default([])
      .describe("Rules choosing the other sites' messages published locally, each {filter, qos}; env: a JSON array; empty = none"),
    outbox,
    sender,
  })
  .superRefine(checkEnabledBridge, { when: () => true })
  .prefault({});

export type BridgeConfig = z.output<typeof bridgeSchema>;
export type BridgeExportRule = BridgeConfig['export'][number];
export type BridgeImportRule = BridgeConfig['import'][number];
