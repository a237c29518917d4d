/**
 * The admin API under /api/v1 on the HTTP listener: list and show connected
 * clients, disconnect one, delete a persistent session, list and clear
 * retained messages, list and lift failed-login blocks, reload, status.
 * JSON in the answers, JSON errors (`{"error": "..."}`); every call is
 * logged at info with who made it. Access: access.ts. `edgemqtt ctl`
 * (src/cli/commands/ctl.ts) drives the same endpoints from the shell.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Client } from 'aedes';
import type { Broker } from '../broker/broker.js';
import type { BridgeStats } from '../bridge/bridge.js';
import { clientTable, disconnectWithReason } from '../broker/aedes-seam/index.js';
import { topicFilterProblem } from '../config/bridge-schema.js';
import type { Logger } from '../observability/logger.js';
import { sendJson } from '../observability/health.js';
import type { PersistenceStats, StoreWriteFailure } from '../persistence/index.js';
import type { HttpRoute } from '../transports/http.js';
import { packageVersion } from '../util/package-version.js';
import { AdminAccess, type AdminConfig, type AdminLogins } from './access.js';
import { connectedClients, detail, findClient, matches, summarize, type ClientSources } from './clients.js';
import { clearRetained, listRetained, type RetainedStore } from './retained.js';

export const API_PREFIX = '/api/v1';

/** MQTT 5 DISCONNECT Reason Code 0x98 Administrative action (3.14.2.1). */
const ADMINISTRATIVE_ACTION = 0x98;
/** Longest a kicked client may take to close before its session is deleted anyway. */
const CLOSE_WAIT_MS = 5000;
const MAX_LIMIT = 1000;

/** The parts of the session store the API reads and changes (src/persistence/level-persistence.ts). */
export interface AdminStore extends RetainedStore {
  queuedFor(clientId: string): number;
  hasSession(clientId: string): boolean;
  endSession(clientId: string): Promise<void>;
  stats(): PersistenceStats;
  /** Set while store writes fail (a full disk). */
  readonly writeFailure: StoreWriteFailure | undefined;
}

export interface AdminDeps {
  logger: Logger;
  broker: Broker;
  store: AdminStore;
  /** The authorizer (src/auth/authorizer.ts): password checks, login blocks, the user of each client. */
  logins: AdminLogins;
  /** The user a connected client logged in with (the authorizer's hooks.userOf); null = anonymous. */
  userOf(client: Client): string | null;
  bridgeStats(): BridgeStats;
  /** The daemon's reload, with the config re-read as on SIGHUP; its ReloadResult. */
  reload(): Promise<object>;
}

export interface AdminApi {
  /** Mounted on the HTTP listener: takes every request under /api/v1. */
  readonly route: HttpRoute;
  /** Reads the token file; throws a SecurityFileError. Before the HTTP listener starts. */
  start(): Promise<void>;
  stop(): Promise<void>;
  reload: AdminAccess['reload'];
}

/** An answer to send: a status and a JSON body. */
interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

type Handler = (params: string[], query: URLSearchParams) => Promise<Reply> | Reply;

interface Endpoint {
  pattern: RegExp;
  methods: Partial<Record<'GET' | 'POST' | 'DELETE', Handler>>;
}

export function createAdminApi(settings: AdminConfig, deps: AdminDeps): AdminApi {
  const log = deps.logger.child({ component: 'admin' });
  const access = new AdminAccess(settings, deps.logins);
  const startedAt = Date.now();
  const version = packageVersion();
  const sources: ClientSources = {
    broker: deps.broker,
    userOf: deps.userOf,
    queuedFor: (clientId) => deps.store.queuedFor(clientId),
  };

  function connected(id: string): Client {
    const client = findClient(sources, id);
    if (!client) throw new ApiError(404, `no connected client with id ${JSON.stringify(id)}`);
    return client;
  }

  /** Closes a client as an operator's action: counted as kicked; MQTT 5 clients are told 0x98. */
  function kick(client: Client): Promise<void> {
    deps.broker.traffic.tagDisconnect(client, 'kicked');
    const gone = new Promise<void>((resolve) => {
      if (client.closed && clientTable(deps.broker.aedes)[client.id] !== client) return resolve();
      const timer = setTimeout(done, CLOSE_WAIT_MS);
      timer.unref();
      function done() {
        clearTimeout(timer);
        deps.broker.aedes.removeListener('clientDisconnect', onGone);
        resolve();
      }
      function onGone(gone: Client) {
        if (gone === client) done();
      }
      deps.broker.aedes.on('clientDisconnect', onGone);
    });
    // Not a DISCONNECT from the client: its will is published [MQTT-3.1.2-8]
    // (aedes lib/client.js close publishes it unless the client sent DISCONNECT).
    disconnectWithReason(client, ADMINISTRATIVE_ACTION);
    return gone;
  }

  const endpoints: Endpoint[] = [
    {
      pattern: /^\/clients$/,
      methods: {
        GET: (_params, query) => {
          const limit = integer(query, 'limit', 100, 1, MAX_LIMIT);
          const offset = integer(query, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
          const filter = { id: query.get('id') ?? '', user: query.get('user') ?? '', address: query.get('address') ?? '' };
          const all = connectedClients(sources)
            .map((client) => summarize(sources, client))
            .filter((summary) => matches(summary, filter));
          return { status: 200, body: { total: all.length, offset, limit, clients: all.slice(offset, offset + limit) } };
        },
      },
    },
    {
      pattern: /^\/clients\/([^/]+)$/,
      methods: { GET: ([id]) => ({ status: 200, body: detail(sources, connected(id!)) }) },
    },
    {
      pattern: /^\/clients\/([^/]+)\/disconnect$/,
      methods: {
        POST: async ([id]) => {
          await kick(connected(id!));
          return { status: 200, body: { disconnected: id } };
        },
      },
    },
    {
      pattern: /^\/sessions\/([^/]+)$/,
      methods: {
        DELETE: async ([id]) => {
          const client = findClient(sources, id!);
          if (!client && !deps.store.hasSession(id!)) throw new ApiError(404, `no session with client id ${JSON.stringify(id)}`);
          // Closed first: a connection still open would write its session back.
          if (client) await kick(client);
          await deps.store.endSession(id!);
          return { status: 200, body: { deleted: id } };
        },
      },
    },
    {
      pattern: /^\/retained$/,
      methods: {
        GET: async (_params, query) => {
          const limit = integer(query, 'limit', 100, 1, MAX_LIMIT);
          const { topics, messages } = await listRetained(deps.store, topicFilter(query), limit);
          return { status: 200, body: { total: topics.length, messages } };
        },
        DELETE: async (_params, query) => {
          const { topics } = await listRetained(deps.store, topicFilter(query), 0);
          return { status: 200, body: { cleared: await clearRetained(topics, (message, register) => deps.broker.publishOwn(message, register)) } };
        },
      },
    },
    {
      pattern: /^\/login-blocks$/,
      methods: {
        GET: () => ({ status: 200, body: { blocks: deps.logins.loginBlocks() } }),
        DELETE: (_params, query) => {
          const address = query.get('address') ?? '';
          if (address === '') throw new ApiError(400, 'address is required (a source address as listed by GET /api/v1/login-blocks)');
          const user = query.get('user');
          return { status: 200, body: { unblocked: deps.logins.unblockLogins(address, user === null || user === '' ? undefined : user) } };
        },
      },
    },
    {
      pattern: /^\/reload$/,
      methods: { POST: async () => ({ status: 200, body: await deps.reload() }) },
    },
    {
      pattern: /^\/status$/,
      methods: {
        GET: () => {
          const store = deps.store.stats();
          const bridge = deps.bridgeStats();
          return {
            status: 200,
            body: {
              version,
              uptimeSec: Math.floor((Date.now() - startedAt) / 1000),
              traffic: deps.broker.traffic.stats(),
              store: {
                state: store.state,
                sessions: store.sessions,
                queuedMessages: store.queuedEntries,
                retainedMessages: store.retainedMessages,
                writesFailing: deps.store.writeFailure !== undefined,
              },
              bridge: {
                state: bridge.state,
                outboxDepth: bridge.outbox.depth,
                oldestAgeMs: bridge.outbox.oldestAgeMs,
                exported: bridge.exported,
                imported: bridge.imported,
              },
            },
          };
        },
      },
    },
  ];

  async function answer(request: IncomingMessage, url: URL): Promise<Reply & { who: string | null }> {
    const decision = await access.check(request);
    if (!decision.ok) {
      return { status: decision.status, body: { error: decision.error }, who: decision.who, ...(decision.headers ? { headers: decision.headers } : {}) };
    }
    const who = decision.who;
    const rest = url.pathname.slice(API_PREFIX.length);
    for (const endpoint of endpoints) {
      const match = endpoint.pattern.exec(rest);
      if (!match) continue;
      const handler = endpoint.methods[request.method as keyof Endpoint['methods']];
      if (!handler) {
        const allow = Object.keys(endpoint.methods).join(', ');
        return { status: 405, body: { error: `${request.method} is not allowed here; use ${allow}` }, headers: { Allow: allow }, who };
      }
      let params: string[];
      try {
        params = match.slice(1).map((part) => decodeURIComponent(part));
      } catch {
        return { status: 400, body: { error: 'malformed percent-encoding in the path' }, who };
      }
      try {
        return { ...(await handler(params, url.searchParams)), who };
      } catch (error) {
        if (error instanceof ApiError) return { status: error.status, body: { error: error.message, ...error.extra }, who };
        const problems = (error as { problems?: unknown }).problems;
        if (Array.isArray(problems)) {
          // A reload whose config does not validate: nothing was changed.
          log.warn({ problems }, 'reload refused: keeping the running configuration');
          return { status: 422, body: { error: 'invalid configuration: nothing was reloaded', problems }, who };
        }
        throw error;
      }
    }
    return { status: 404, body: { error: `no such endpoint: ${url.pathname}` }, who };
  }

  const route: HttpRoute = (request, response) => {
    const url = new URL(request.url ?? '/', 'http://localhost');
    if (url.pathname !== API_PREFIX && !url.pathname.startsWith(`${API_PREFIX}/`)) return false;
    // No endpoint takes a body: read and drop whatever comes, so the connection stays usable.
    request.resume();
    answer(request, url).then(
      (reply) => respond(request, response, reply, reply.who),
      (error: unknown) => {
        log.error({ err: error, method: request.method, path: request.url }, 'admin API call failed');
        respond(request, response, { status: 500, body: { error: 'internal error (see the log)' } }, null);
      },
    );
    return true;
  };

  function respond(request: IncomingMessage, response: ServerResponse, reply: Reply, who: string | null): void {
    log.info({ who, remote: request.socket.remoteAddress, method: request.method, path: request.url, status: reply.status }, 'admin API call');
    if (!response.headersSent) sendJson(response, reply.status, reply.body, reply.headers);
  }

  return {
    route,
    async start() {
      access.load();
    },
    async stop() {},
    reload: (next) => access.reload(next),
  };
}

/** An integer query parameter within bounds, or a 400 saying what is expected. */
function integer(query: URLSearchParams, name: string, fallback: number, min: number, max: number): number {
  const text = query.get(name);
  if (text === null || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) throw new ApiError(400, `${name} must be an integer from ${min} to ${max}`);
  return value;
}

function topicFilter(query: URLSearchParams): string {
  const filter = query.get('filter');
  if (filter === null || filter === '') throw new ApiError(400, 'filter is required: a topic filter such as plant/# (# for every topic)');
  const problem = topicFilterProblem(filter);
  if (problem) throw new ApiError(400, `filter ${problem}`);
  return filter;
}
