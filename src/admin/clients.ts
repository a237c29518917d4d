/**
 * What the admin API shows of connected clients: one summary per client,
 * read when asked from aedes' client table, the traffic counters
 * (src/broker/traffic.ts), the flow control and the session store. Nothing
 * here runs on the message path.
 */
import type { Client } from 'aedes';
import type { Broker } from '../broker/broker.js';
import { clientTable, keepAliveOf, subscriptionsOf } from '../broker/aedes-seam/index.js';

export interface SubscriptionView {
  filter: string;
  qos: number;
  /** MQTT 5 Subscription Options (3.8.3.1); absent for 3.1.1 clients. */
  noLocal?: boolean;
  retainAsPublished?: boolean;
  retainHandling?: number;
}

export interface ClientSummary<S = number> {
  id: string;
  user: string | null;
  /** ip:port */
  address: string;
  listener: string;
  protocol: string;
  /** Whether the session ends with the connection. */
  clean: boolean;
  keepAliveSec: number;
  /** ISO 8601 */
  connectedAt: string;
  /** Their count in lists; each one in the view of one client. */
  subscriptions: S;
  /** QoS 1/2 messages waiting for the client: a persistent session's queue (its in-flight ones included); a clean session's wait for room. */
  queued: number;
  /** QoS 1/2 messages sent and not yet acknowledged. */
  inflight: number;
  messagesIn: number;
  messagesOut: number;
  bytesIn: number;
  bytesOut: number;
}

/** What the views need: the broker, the user each client logged in as, a session's queue length. */
export interface ClientSources {
  broker: Broker;
  userOf(client: Client): string | null;
  queuedFor(clientId: string): number;
}

export interface ClientFilter {
  id: string;
  user: string;
  address: string;
}

/** Connected clients (CONNACK 0 sent, not gone), sorted by id. */
export function connectedClients(sources: ClientSources): Client[] {
  const { traffic } = sources.broker;
  const clients = Object.values(clientTable(sources.broker.aedes)).filter((client): client is Client => client !== undefined && traffic.ofClient(client) !== undefined);
  return clients.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** The connected client with this id, if any. */
export function findClient(sources: ClientSources, id: string): Client | undefined {
  const client = clientTable(sources.broker.aedes)[id];
  return client && sources.broker.traffic.ofClient(client) ? client : undefined;
}

export function addressOf(client: Client): string {
  const conn = client.conn as { remoteAddress?: string; remotePort?: number };
  const socket = client.req?.socket;
  const address = conn.remoteAddress ?? socket?.remoteAddress ?? 'unknown';
  const port = conn.remotePort ?? socket?.remotePort;
  return address.includes(':') ? `[${address}]:${port ?? '?'}` : `${address}:${port ?? '?'}`;
}

/** Substring matches; an empty filter matches everything, a user filter never matches an anonymous client. */
export function matches(summary: Pick<ClientSummary, 'id' | 'user' | 'address'>, filter: ClientFilter): boolean {
  if (filter.id !== '' && !summary.id.includes(filter.id)) return false;
  if (filter.user !== '' && !(summary.user ?? '').includes(filter.user)) return false;
  return filter.address === '' || summary.address.includes(filter.address);
}

export function summarize(sources: ClientSources, client: Client): ClientSummary {
  // A list of clients counts subscriptions; only one client's detail lists them.
  return { ...describe(sources, client), subscriptions: Object.keys(subscriptionsOf(client)).length };
}

export function detail(sources: ClientSources, client: Client): ClientSummary<SubscriptionView[]> {
  const v5 = client.version === 5;
  const subscriptions = Object.entries(subscriptionsOf(client))
    .map(([filter, sub]): SubscriptionView => ({
      filter,
      qos: sub.qos,
      ...(v5 ? { noLocal: sub.nl === true, retainAsPublished: sub.rap === true, retainHandling: sub.rh ?? 0 } : {}),
    }))
    .sort((a, b) => (a.filter < b.filter ? -1 : a.filter > b.filter ? 1 : 0));
  return { ...describe(sources, client), subscriptions };
}

function describe(sources: ClientSources, client: Client): Omit<ClientSummary, 'subscriptions'> {
  const traffic = sources.broker.traffic.ofClient(client);
  const flow = sources.broker.limits.flowOf(client);
  return {
    id: client.id,
    user: sources.userOf(client),
    address: addressOf(client),
    listener: traffic?.listener ?? 'unknown',
    protocol: traffic?.protocol ?? 'unknown',
    clean: client.clean,
    keepAliveSec: keepAliveOf(client),
    connectedAt: new Date(traffic?.connectedAt ?? Date.now()).toISOString(),
    queued: client.clean ? (flow?.waiting ?? 0) : sources.queuedFor(client.id),
    inflight: flow?.inflight ?? 0,
    messagesIn: traffic?.messagesIn ?? 0,
    messagesOut: traffic?.messagesOut ?? 0,
    bytesIn: traffic?.bytesIn ?? 0,
    bytesOut: traffic?.bytesOut ?? 0,
  };
}
