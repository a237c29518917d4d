/**
 * Experimental broker set-ups for `npm run bench -- --brokers=edgemqtt,NAME,mosquitto`,
 * used to measure what an optimisation would gain before anyone changes src/,
 * and what Node itself costs. Each is edgemqtt (or bare aedes) with one thing
 * changed, or the Node floor of relay-floor.ts; none is shipped.
 * Patches act on shared module objects at run time (node_modules and src/
 * stay untouched).
 */
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Writable } from 'node:stream';
import { Aedes } from 'aedes';
import mqttPacket from 'mqtt-packet';
import { WebSocketServer, createWebSocketStream } from 'ws';
import { coalesceWrites } from '../src/broker/write-coalescer.js';

export interface BenchServer {
  tcpPort: number;
  wsPort: number;
  wsPath: string;
  stop(): Promise<void>;
}

export interface Variant {
  /**
   * What runs: edgemqtt's createDaemon, bare aedes on net + ws as its README
   * wires it, or the Node floor of relay-floor.ts (relay: WebSocket writes
   * through ws' send; relay-raw: frames written to the socket directly).
   */
  base: 'daemon' | 'aedes' | 'relay' | 'relay-raw';
  /** Cork each socket on its first MQTT write in an event-loop turn and uncork once, in setImmediate. */
  batchWrites?: boolean;
  /** Serialise each outgoing packet into one buffer (mqtt-packet generate) instead of 3–5 stream writes. */
  singleBuffer?: boolean;
  /** Copy every write on a connection into one buffer, written once per event-loop turn (coalesceWrites). */
  coalesce?: boolean;
  /** Extra node flags for the broker process. */
  nodeFlags?: string[];
  description: string;
}

/** edgemqtt as shipped, run with other node flags (replacing none of the shipped ones: these come after them). */
function withNodeFlags(nodeFlags: string[], why: string): Variant {
  return { base: 'daemon', nodeFlags, description: `edgemqtt with node ${nodeFlags.join(' ')} (${why})` };
}

export const VARIANTS: Record<string, Variant> = {
  daemon: { base: 'daemon', description: 'edgemqtt as shipped (createDaemon)' },
  aedes: {
    base: 'aedes',
    description: 'bare aedes on net + ws: no protocol guard, no delivery rules, no hooks',
  },
  relay: {
    base: 'relay',
    description: 'the Node floor: QoS 0 PUBLISH bytes forwarded to every subscriber as read, no MQTT beyond the handshake (relay-floor.ts)',
  },
  'relay-raw': {
    base: 'relay-raw',
    description: 'the Node floor with WebSocket frames written to the socket directly instead of through ws (relay-floor.ts)',
  },
  batch: {
    base: 'daemon',
    batchWrites: true,
    description: 'edgemqtt + one writev per socket per event-loop turn instead of one per packet',
  },
  'batch-1buf': {
    base: 'daemon',
    batchWrites: true,
    singleBuffer: true,
    description: 'edgemqtt + batched writes + each packet serialised into one buffer',
  },
  coalesce: {
    base: 'daemon',
    coalesce: true,
    description: 'edgemqtt + writes copied into one buffer per connection, one write (one WebSocket frame) per event-loop turn',
  },
  'aedes-coalesce': {
    base: 'aedes',
    coalesce: true,
    description: 'bare aedes + coalesced writes',
  },
  'coalesce-semi32': {
    base: 'daemon',
    coalesce: true,
    nodeFlags: ['--max-semi-space-size=32'],
    description: 'coalesce + node --max-semi-space-size=32',
  },
  'coalesce-semi64': {
    base: 'daemon',
    coalesce: true,
    nodeFlags: ['--max-semi-space-size=64'],
    description: 'coalesce + node --max-semi-space-size=64',
  },
  semi64: withNodeFlags(['--max-semi-space-size=64'], 'fewer young-generation GCs'),
  semi1: withNodeFlags(['--max-semi-space-size=1'], 'a smaller young generation: less idle memory, more scavenges'),
  semi2: withNodeFlags(['--max-semi-space-size=2'], 'a smaller young generation: less idle memory, more scavenges'),
  semi4: withNodeFlags(['--max-semi-space-size=4'], 'a smaller young generation: less idle memory, more scavenges'),
  'semi4-size': withNodeFlags(['--max-semi-space-size=4', '--optimize-for-size'], 'V8 trades speed for heap size'),
  'semi4-grow20': withNodeFlags(['--max-semi-space-size=4', '--heap-growing-percent=20'], 'old space grows by 1.2× its live size before a major GC'),
  'semi4-grow50': withNodeFlags(['--max-semi-space-size=4', '--heap-growing-percent=50'], 'old space grows by 1.5× its live size before a major GC'),
  'semi4-sparkplug': withNodeFlags(['--max-semi-space-size=4', '--always-sparkplug'], "every function compiled by V8's baseline compiler on its first call"),
};

export function variantOf(name: string): Variant {
  const variant = VARIANTS[name];
  if (!variant) throw new Error(`unknown variant ${name}; known: ${Object.keys(VARIANTS).join(', ')}`);
  return variant;
}

type WriteToStream = (packet: mqttPacket.Packet, stream: NodeJS.WritableStream, options?: object) => boolean;

/** Applies a variant's run-time patches; call before the broker starts. */
export function applyPatches(variant: Variant): void {
  const packets = mqttPacket as unknown as { writeToStream: WriteToStream };
  const original = packets.writeToStream;
  let write: WriteToStream = original;
  if (variant.singleBuffer) {
    // The options carry the connection's protocolVersion: v5 packets differ on the wire.
    write = (packet, stream, options) => stream.write(mqttPacket.generate(packet, options));
  }
  if (variant.coalesce) {
    const inner = write;
    const wrapped = new WeakSet<object>();
    write = (packet, stream, options) => {
      if (!wrapped.has(stream)) {
        wrapped.add(stream);
        coalesceWrites(stream as unknown as Writable);
      }
      return inner(packet, stream, options);
    };
  }
  if (variant.batchWrites) {
    const inner = write;
    const corked = new Set<Writable>();
    let scheduled = false;
    const flush = (): void => {
      scheduled = false;
      for (const stream of corked) stream.uncork();
      corked.clear();
    };
    write = (packet, stream, options) => {
      const writable = stream as unknown as Writable;
      if (typeof writable.cork === 'function' && !corked.has(writable)) {
        writable.cork();
        corked.add(writable);
        if (!scheduled) {
          scheduled = true;
          setImmediate(flush);
        }
      }
      return inner(packet, stream, options);
    };
  }
  packets.writeToStream = write;
}

function listen(server: NetServer): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    // edgemqtt's backlog (src/transports/server-lifecycle.ts), not Node's 511: a connect storm would measure SYN retransmits.
    server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => resolve((server.address() as AddressInfo).port));
  });
}

/**
 * A bench server's TCP and HTTP (WebSocket) listeners on loopback ports;
 * stop() closes both, destroys `sockets` (every connection, tracked by the
 * caller) and then runs `after`.
 */
export async function listenOnLoopback(tcp: NetServer, http: NetServer, sockets: Set<Socket>, after?: () => Promise<void>): Promise<BenchServer> {
  const tcpPort = await listen(tcp);
  const wsPort = await listen(http);
  return {
    tcpPort,
    wsPort,
    wsPath: '/mqtt',
    async stop() {
      tcp.close();
      http.close();
      for (const socket of sockets) socket.destroy();
      await after?.();
    },
  };
}

/** Bare aedes on loopback: TCP via net, WebSocket via ws on any path. */
export async function startBareAedes(): Promise<BenchServer> {
  const aedes = await Aedes.createBroker();
  const sockets = new Set<Socket>();
  const tcp = createNetServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });
  const http = createHttpServer();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  http.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  http.on('upgrade', (request, socket, head) => {
    wss.handleUpgrade(request, socket, head, (ws) => aedes.handle(createWebSocketStream(ws), request));
  });
  return listenOnLoopback(tcp, http, sockets, () => new Promise<void>((resolve) => aedes.close(() => resolve())));
}
