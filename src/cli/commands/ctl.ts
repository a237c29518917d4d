/**
 * `edgemqtt ctl`: the admin API (src/admin/api.ts) from the shell. Each
 * subcommand is one API call; the answer is printed as a table or lines
 * (`--json`: the raw response). Exit codes: 0 ok, 69 the daemon cannot be
 * reached, 77 the API refused the credentials (401, 403), 1 not found or any
 * other API error, each with one line on stderr.
 */
import http from 'node:http';
import https from 'node:https';
import type { Argv } from 'yargs';
import { loadConfig } from '../../config/load.js';
import type { Config } from '../../config/schema.js';
import { configSourcesFrom, type ConfigFlags } from '../config-options.js';
import { ExitCode, type CliIo } from '../io.js';
import { readFirstLine } from '../first-line.js';

/** Longest wait for an answer; a reload or a kick answers in well under a second. */
const REQUEST_TIMEOUT_MS = 15_000;

interface CtlFlags extends ConfigFlags {
  url?: string;
  login?: string;
  'password-file'?: string;
  'token-file'?: string;
  json?: boolean;
}

interface Call {
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  query?: Record<string, string | number | undefined>;
}

class CtlError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

type Row = Record<string, unknown>;

export function withCtlCommands<T>(yargs: Argv<T>, io: CliIo, setExitCode: (code: number) => void): Argv<T> {
  const run = (argv: CtlFlags, call: Call, print: (body: any) => string) =>
    execute(io, argv, call, print).then(setExitCode, (error: unknown) => {
      if (!(error instanceof CtlError)) throw error;
      io.stderr.write(`edgemqtt ctl: ${error.message}\n`);
      setExitCode(error.exitCode);
    });
  const id = (y: Argv<CtlFlags>) => y.positional('id', { type: 'string', demandOption: true, describe: 'Client id' });
  const filter = (y: Argv<CtlFlags>) => y.positional('filter', { type: 'string', demandOption: true, describe: 'Topic filter, e.g. plant/# (quote # in the shell)' });

  const options = yargs
    .option('config', { alias: 'c', type: 'string', describe: 'Config file to find the HTTP listener in (also $EDGEMQTT_CONFIG)' })
    .option('http-port', { type: 'number', describe: 'HTTP port (http.port), instead of the one in the config' })
    .option('url', { type: 'string', describe: 'Base URL of the daemon (also $EDGEMQTT_CTL_URL); default: the HTTP listener of the config' })
    .option('login', { type: 'string', describe: 'Admin user (also $EDGEMQTT_CTL_USER); password from $EDGEMQTT_CTL_PASSWORD or --password-file' })
    .option('password-file', { type: 'string', describe: 'Read the password of --login from the first line of this file' })
    .option('token-file', { type: 'string', describe: 'Send the bearer token in this file (admin.tokenFile) instead of a user' })
    .option('json', { type: 'boolean', default: false, describe: 'Print the raw JSON response' }) as unknown as Argv<CtlFlags>;
  return options
    .command('status', 'Version, uptime, clients, traffic, store and bridge', (y) => y, (argv) =>
      run(argv, { method: 'GET', path: 'status' }, formatStatus),
    )
    .command(
      'clients',
      'List connected clients (filters are substrings)',
      (y) =>
        y
          .option('id', { type: 'string', describe: 'Client id contains' })
          .option('user', { type: 'string', describe: 'User name contains' })
          .option('address', { type: 'string', describe: 'Address (ip:port) contains' })
          .option('limit', { type: 'number', describe: 'At most this many (1-1000, default 100)' })
          .option('offset', { type: 'number', describe: 'Skip this many' }),
      (argv) =>
        run(
          argv,
          { method: 'GET', path: 'clients', query: { id: argv.id, user: argv.user, address: argv.address, limit: argv.limit, offset: argv.offset } },
          formatClients,
        ),
    )
    .command('client <id>', 'Show one connected client with its subscriptions', id, (argv) =>
      run(argv, { method: 'GET', path: `clients/${encodeURIComponent(argv.id)}` }, formatClient),
    )
    .command('disconnect <id>', 'Disconnect a client (MQTT 5: reason 0x98; its will is published)', id, (argv) =>
      run(argv, { method: 'POST', path: `clients/${encodeURIComponent(argv.id)}/disconnect` }, (body) => `disconnected ${body.disconnected}\n`),
    )
    .command('delete-session <id>', "Delete a client's stored session (subscriptions, queue); disconnects it first", id, (argv) =>
      run(argv, { method: 'DELETE', path: `sessions/${encodeURIComponent(argv.id)}` }, (body) => `deleted the session of ${body.deleted}\n`),
    )
    .command(
      'retained <filter>',
      'List retained messages under a topic filter',
      (y) => filter(y).option('limit', { type: 'number', describe: 'At most this many (1-1000, default 100)' }),
      (argv) => run(argv, { method: 'GET', path: 'retained', query: { filter: argv.filter, limit: argv.limit } }, formatRetained),
    )
    .command('clear-retained <filter>', 'Clear the retained messages under a topic filter', filter, (argv) =>
      run(argv, { method: 'DELETE', path: 'retained', query: { filter: argv.filter } }, (body) => `cleared ${body.cleared} retained message(s)\n`),
    )
    .command('blocks', 'List sources (and users from them) refused after failed logins', (y) => y, (argv) =>
      run(argv, { method: 'GET', path: 'login-blocks' }, formatBlocks),
    )
    .command(
      'unblock <address>',
      'Lift the failed-login blocks of an address (of one user with --user)',
      (y) =>
        y
          .positional('address', { type: 'string', demandOption: true, describe: 'Source address, as `ctl blocks` lists it' })
          .option('user', { type: 'string', describe: 'Only this user name' }),
      (argv) =>
        run(argv, { method: 'DELETE', path: 'login-blocks', query: { address: argv.address, user: argv.user } }, (body) => `lifted ${body.unblocked} block(s)\n`),
    )
    .command('reload', 'Reload the configuration, as SIGHUP does', (y) => y, (argv) => run(argv, { method: 'POST', path: 'reload' }, formatReload))
    .demandCommand(1, 'Name a ctl command: status, clients, client, disconnect, delete-session, retained, clear-retained, blocks, unblock or reload') as unknown as Argv<T>;
}

async function execute(io: CliIo, argv: CtlFlags, call: Call, print: (body: any) => string): Promise<number> {
  const base = argv.url ?? io.env.EDGEMQTT_CTL_URL ?? defaultUrl(await loadConfig(configSourcesFrom(argv, io.env)));
  const url = new URL(`api/v1/${call.path}`, base.endsWith('/') ? base : `${base}/`);
  for (const [name, value] of Object.entries(call.query ?? {})) if (value !== undefined) url.searchParams.set(name, String(value));
  const authorization = await credentials(io, argv);
  const { status, body } = await request(call.method, url, authorization);
  if (status >= 200 && status < 300) {
    io.stdout.write(argv.json ? `${JSON.stringify(body, null, 2)}\n` : print(body));
    return ExitCode.ok;
  }
  const message = typeof body === 'object' && body !== null && typeof (body as Row).error === 'string' ? String((body as Row).error) : `HTTP ${status}`;
  if (argv.json) io.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  if (status === 401) throw new CtlError(`${message} (give --login with $EDGEMQTT_CTL_PASSWORD or --password-file, or --token-file)`, ExitCode.noPermission);
  if (status === 403) throw new CtlError(message, ExitCode.noPermission);
  const problems = Array.isArray((body as Row).problems) ? `: ${((body as Row).problems as string[]).join('; ')}` : '';
  throw new CtlError(`${message}${problems}`, ExitCode.failure);
}

/** The config's HTTP listener, on loopback when it listens on every address. */
function defaultUrl(config: Config): string {
  if (!config.http.enabled) throw new CtlError('http.enabled is false in this config: the admin API needs the HTTP listener (or give --url)', ExitCode.failure);
  const wildcard = ['0.0.0.0', '::', ''].includes(config.http.host);
  const host = wildcard ? '127.0.0.1' : config.http.host.includes(':') ? `[${config.http.host}]` : config.http.host;
  return `${config.http.tls.enabled ? 'https' : 'http'}://${host}:${config.http.port}/`;
}

async function credentials(io: CliIo, argv: CtlFlags): Promise<string | undefined> {
  if (argv['token-file'] !== undefined) return `Bearer ${(await readSecret(argv['token-file'])).trim()}`;
  const user = argv.login ?? io.env.EDGEMQTT_CTL_USER;
  if (user === undefined) return undefined;
  const password = argv['password-file'] !== undefined ? await readSecret(argv['password-file']) : io.env.EDGEMQTT_CTL_PASSWORD;
  if (password === undefined) throw new CtlError(`no password for ${user}: set $EDGEMQTT_CTL_PASSWORD or give --password-file`, ExitCode.usage);
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

/** The first line of a password or token file. */
function readSecret(file: string): Promise<string> {
  return readFirstLine(file, (message) => new CtlError(message, ExitCode.failure));
}

function request(method: string, url: URL, authorization: string | undefined): Promise<{ status: number; body: unknown }> {
  const client = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(url, { method, headers: authorization ? { Authorization: authorization } : {}, timeout: REQUEST_TIMEOUT_MS }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        try {
          resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) as unknown });
        } catch {
          resolve({ status: response.statusCode ?? 0, body: { error: `HTTP ${response.statusCode}: not a JSON answer (is ${url.origin} edgemqtt?)` } });
        }
      });
      response.on('error', reject);
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`), { code: 'ETIMEDOUT' })));
    req.on('error', (error: NodeJS.ErrnoException) =>
      reject(new CtlError(`cannot reach the daemon at ${url.origin}: ${error.code ?? error.message}`, ExitCode.unavailable)),
    );
    req.end();
  });
}

/** Columns padded to their widest cell. */
function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]) => `${cells.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd()}\n`;
  return line(headers) + rows.map(line).join('');
}

function formatClients(body: { total: number; offset: number; clients: Row[] }): string {
  const rows = body.clients.map((c) => [
    String(c.id),
    c.user === null ? '-' : String(c.user),
    String(c.address),
    `${c.listener}/${c.protocol}`,
    c.clean ? 'yes' : 'no',
    String(c.subscriptions),
    String(c.queued),
    String(c.inflight),
    String(c.messagesIn),
    String(c.messagesOut),
    String(c.connectedAt),
  ]);
  const footer = `${body.clients.length} of ${body.total} client(s)${body.offset > 0 ? `, from ${body.offset}` : ''}\n`;
  return table(['ID', 'USER', 'ADDRESS', 'LISTENER', 'CLEAN', 'SUBS', 'QUEUED', 'INFLIGHT', 'MSGS IN', 'MSGS OUT', 'CONNECTED'], rows) + footer;
}

function formatClient(c: Row & { subscriptions: Row[] }): string {
  const fields = ['id', 'user', 'address', 'listener', 'protocol', 'clean', 'keepAliveSec', 'connectedAt', 'queued', 'inflight', 'messagesIn', 'messagesOut', 'bytesIn', 'bytesOut'];
  const lines = fields.map((field) => `${field}: ${c[field] === null ? '-' : String(c[field])}\n`).join('');
  const subscriptions = c.subscriptions.map((s) => {
    const options = ['noLocal', 'retainAsPublished'].filter((option) => s[option] === true);
    if (typeof s.retainHandling === 'number' && s.retainHandling > 0) options.push(`retainHandling=${s.retainHandling}`);
    return [String(s.filter), String(s.qos), options.join(' ')];
  });
  return `${lines}\n${subscriptions.length === 0 ? 'no subscriptions\n' : table(['FILTER', 'QOS', 'OPTIONS'], subscriptions)}`;
}

function formatRetained(body: { total: number; messages: Row[] }): string {
  const rows = body.messages.map((m) => {
    const text = typeof m.payload === 'string' ? JSON.stringify(m.payload) : `<${m.payloadBytes} bytes, binary>`;
    return [String(m.topic), String(m.qos), String(m.payloadBytes), text.length > 60 ? `${text.slice(0, 57)}...` : text];
  });
  return `${table(['TOPIC', 'QOS', 'BYTES', 'PAYLOAD'], rows)}${body.messages.length} of ${body.total} retained message(s)\n`;
}

function formatBlocks(body: { blocks: Row[] }): string {
  if (body.blocks.length === 0) return 'no login blocks\n';
  return table(
    ['ADDRESS', 'USER', 'RETRY AFTER (s)'],
    body.blocks.map((b) => [String(b.address), b.user === null ? '(every user)' : String(b.user), String(b.retryAfterSec)]),
  );
}

function formatReload(body: { applied: string[]; needsRestart: string[]; failed?: Array<{ key: string; file: string; problems: string[] }> }): string {
  let text = `applied: ${body.applied.join(', ') || '-'}\nneeds a restart: ${body.needsRestart.join(', ') || '-'}\n`;
  for (const failure of body.failed ?? []) text += `refused ${failure.key} (${failure.file}), the previous one stays: ${failure.problems.join('; ')}\n`;
  return text;
}

function formatStatus(body: {
  version: string;
  uptimeSec: number;
  traffic: { connected: Array<{ count: number }>; messagesIn: number[]; messagesOut: number[] };
  store: Row;
  bridge: Row;
}): string {
  const sum = (values: number[]) => values.reduce((total, value) => total + value, 0);
  return [
    `version: ${body.version}`,
    `uptime: ${body.uptimeSec} s`,
    `clients connected: ${sum(body.traffic.connected.map((entry) => entry.count))}`,
    `messages in: ${sum(body.traffic.messagesIn)}, out: ${sum(body.traffic.messagesOut)}`,
    `store: ${body.store.sessions} session(s), ${body.store.queuedMessages} queued, ${body.store.retainedMessages} retained${body.store.writesFailing ? ', WRITES FAILING' : ''}`,
    `bridge: ${body.bridge.state}${body.bridge.state === 'disabled' ? '' : `, outbox ${body.bridge.outboxDepth} (oldest ${body.bridge.oldestAgeMs} ms), exported ${body.bridge.exported}, imported ${body.bridge.imported}`}`,
    '',
  ].join('\n');
}
