/**
 * The parts of aedes 2.0.0-beta.1 the connect path (connect.ts) runs and
 * the fields it reads and sets: handlers/connect.js' view of the aedes
 * instance, of a Client (lib/client.js) and of its mqtt-packet parser, none
 * of them in aedes' typings, and the lib files it calls (write.js,
 * qos-packet.js, handlers/subscribe.js, constants.js), loaded by path from
 * aedes' own location (aedes-lib.ts).
 */
import type { Readable } from 'node:stream';
import type { Client } from 'aedes';
import type { ConnectWill } from './client.js';
import { loadAedesLib, loadAedesWrites } from './aedes-lib.js';

export type Done = (error?: Error | null) => void;
export type Packet = Record<string, unknown> & { cmd?: string; messageExpiry?: number; properties?: Record<string, unknown>; writeCallback?: Done };

/** A CONNECT as mqtt-packet parses it (parser.js _parseConnect). */
export interface ConnectPacket {
  cmd: 'connect';
  protocolVersion: number;
  clientId: string;
  clean: boolean;
  keepalive: number;
  username?: string;
  password?: Buffer;
  will?: ConnectWill | null;
  /** Remaining length. */
  length: number;
}

/** What aedes' handlers/connect.js reads and sets on the aedes instance; not in its typings. */
export interface BrokerInternals {
  closed: boolean;
  maxClientsIdLength: number;
  keepaliveLimit: number;
  maximumPacketSize: number;
  clampSessionExpiry(seconds: number): number;
  preConnect(client: Client, packet: ConnectPacket, done: (error: Error | null, success: boolean) => void): void;
  authenticate(client: Client, username: string | undefined, password: Buffer | undefined, done: (error: (Error & { returnCode?: number }) | null, success: boolean | null) => void): void;
  registerClient(client: Client): void;
  authorizeForward(client: Client, packet: Packet): unknown;
  emit(event: string, ...args: unknown[]): boolean;
  persistence: {
    subscriptionsByClient(client: { id: string }): Promise<unknown[]>;
    cleanSubscriptions(client: Client): Promise<unknown>;
    delWill(client: Client): Promise<unknown>;
    putWill(client: Client, will: ConnectWill): Promise<unknown>;
    outgoingStream(client: Client): Readable;
    outgoingUpdate(client: Client, packet: Packet): Promise<unknown>;
    outgoingClearMessageId(client: Client, packet: Packet): Promise<unknown>;
  };
}

/** The Client fields handlers/connect.js and lib/write.js read and set (lib/client.js); not in its typings. */
export interface ClientInternals {
  broker: BrokerInternals;
  conn: { write(chunk: Uint8Array): boolean };
  _parser: ParserInternals;
  _parsingBatch: number;
  _nextBatch: Done;
  _connectTimer: NodeJS.Timeout | null;
  _keepaliveInterval: number;
  _keepaliveTimer: NodeJS.Timeout | null;
  _serverKeepAlive?: number;
  id: string | null;
  version: number | null;
  _wireVersion: number | null;
  _assignedClientId: string | undefined;
  _connectSessionExpiryInterval: number;
  sessionExpiryInterval: number;
  _sessionExpiryClamped: boolean;
  clean: boolean;
  _cleanStart: boolean;
  maximumPacketSize: number | undefined;
  receiveMaximum: number;
  _requestProblemInformation: boolean;
  _requestResponseInformation: boolean;
  _will: ConnectWill | null | undefined;
  will: ConnectWill | null | undefined;
  _authorized: boolean;
  connecting: boolean;
  connected: boolean;
  connackSent: boolean;
  closed: boolean;
  errored: boolean;
  pause(): void;
  resume(): void;
  close(done?: () => void): void;
  waitForDrain(done: Done): void;
  emit(event: string, ...args: unknown[]): boolean;
}

export type PacketListener = (this: ParserInternals, packet: Packet) => void;

/** mqtt-packet's parser as aedes keeps it: its Client, and EventEmitter's listener table. */
export interface ParserInternals {
  client?: Client;
  _events: Record<string, PacketListener | PacketListener[] | undefined>;
}

/** aedes' lib files the steps use (not in its package exports: loaded by path from aedes' own location). */
export interface AedesParts {
  write: (client: Client, packet: Packet, done: Done) => void;
  QoSPacket: new (original: Packet, client: Client) => Packet;
  handleSubscribe: (client: Client, packet: { subscriptions: unknown[] }, restore: boolean, done: Done) => void;
  constants: { SESSION_NEVER_EXPIRES: number; RECEIVE_MAXIMUM_DEFAULT: number };
}

export async function loadAedesParts(): Promise<AedesParts> {
  const [writes, subscribe, constants] = await Promise.all([
    loadAedesWrites(),
    loadAedesLib<{ default: AedesParts['handleSubscribe'] }>('handlers/subscribe.js'),
    loadAedesLib<AedesParts['constants']>('constants.js'),
  ]);
  return {
    write: writes.write as AedesParts['write'],
    QoSPacket: writes.QoSPacket as unknown as AedesParts['QoSPacket'],
    handleSubscribe: subscribe.default,
    constants,
  };
}
