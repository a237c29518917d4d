/**
 * The Node floor of a QoS 0 scenario: a process that does no more with MQTT
 * than the load generator needs to run, so that a row where edgemqtt trails a
 * C broker can be split into what Node itself costs and what edgemqtt adds.
 * Not a broker: no topic matching (every PUBLISH goes to every connection that
 * has subscribed to anything), no sessions, no QoS 1/2, no checks.
 *
 * It answers CONNECT with CONNACK and SUBSCRIBE with a SUBACK granting QoS 0
 * (in the connection's protocol level, 3.1.1 or 5), PINGREQ with PINGRESP,
 * closes on DISCONNECT, and forwards each PUBLISH's bytes unchanged (one
 * copy, out of the load generator's packet reader, bench/common.ts) as soon
 * as they are read: what one read brought, in one write per subscriber (the
 * latency scenario's publisher sends two messages a millisecond, which
 * often arrive in one read; edgemqtt writes them once too):
 *  - over TCP with `socket.write`;
 *  - over WebSocket with ws' `send` (`raw: false`), or (`raw: true`) with a
 *    binary frame it builds itself and writes to the upgraded socket in one
 *    `socket.write`, what a broker could do going around ws' Sender.
 * Both listen on loopback, TCP via `net` and WebSocket via `http` + ws, as
 * edgemqtt does, with edgemqtt's listen backlog.
 */
import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer, type Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { variableByteIntegerBytes } from '../src/broker/aedes-seam/publish-frames.js';
import { PacketReader, webSocketHeader } from './common.js';
import { listenOnLoopback, type BenchServer } from './variants.js';

const CONNECT = 1;
const PUBLISH = 3;
const SUBSCRIBE = 8;
const PINGREQ = 12;
const DISCONNECT = 14;

/** A WebSocket binary frame, unmasked (server to client, RFC 6455 5.1), FIN set: one buffer. */
function binaryFrame(payload: Buffer): Buffer {
  const header = webSocketHeader(payload.length, false);
  return Buffer.concat([header, payload], header.length + payload.length);
}

interface Peer {
  level: number;
  /** PUBLISH frames of the current read, written once it is done. */
  out: Buffer[];
  send(bytes: Buffer): void;
  close(): void;
}

export async function startRelayFloor(options: { raw: boolean }): Promise<BenchServer> {
  const subscribers = new Set<Peer>();
  const sockets = new Set<Socket>();
  const written = new Set<Peer>();
  const flush = (): void => {
    for (const peer of written) {
      peer.send(peer.out.length === 1 ? (peer.out[0] as Buffer) : Buffer.concat(peer.out));
      peer.out = [];
    }
    written.clear();
  };

  /** Reads a connection's packets; after each read, what it brought goes out. */
  const reader = (peer: Peer): ((chunk: Buffer) => void) => {
    const packets = new PacketReader((type, buf, body, end) => {
      if (type === PUBLISH) {
        // The whole frame: the fixed header's type byte and Remaining Length (1-4 bytes) before the body.
        const frame = Buffer.from(buf.subarray(body - 1 - variableByteIntegerBytes(end - body), end));
        for (const subscriber of subscribers) {
          subscriber.out.push(frame);
          written.add(subscriber);
        }
      } else if (type === CONNECT) {
        // The protocol level follows the protocol name "MQTT" (3.1.2.2): 4 or 5.
        peer.level = buf[body + 6] as number;
        peer.send(Buffer.from(peer.level === 5 ? [0x20, 3, 0, 0, 0] : [0x20, 2, 0, 0]));
      } else if (type === SUBSCRIBE) {
        // Packet Identifier, then (v5) the properties, then filter + options pairs (3.8.3).
        let at = body + 2;
        if (peer.level === 5) at += 1 + (buf[at] as number);
        let filters = 0;
        while (at < end) {
          at += 2 + buf.readUInt16BE(at) + 1;
          filters++;
        }
        const codes = Array<number>(filters).fill(0);
        const props = peer.level === 5 ? [0] : [];
        peer.send(Buffer.from([0x90, 2 + props.length + filters, buf[body] as number, buf[body + 1] as number, ...props, ...codes]));
        subscribers.add(peer);
      } else if (type === PINGREQ) {
        peer.send(Buffer.from([0xd0, 0]));
      } else if (type === DISCONNECT) {
        peer.close();
      }
    }, 256);
    return (chunk) => {
      packets.push(chunk, 0, chunk.length);
      flush();
    };
  };

  const tcp = createNetServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    const peer: Peer = { level: 4, out: [], send: (bytes) => socket.write(bytes), close: () => socket.end() };
    socket.on('data', reader(peer));
    socket.on('error', () => socket.destroy());
    socket.once('close', () => {
      sockets.delete(socket);
      subscribers.delete(peer);
    });
  });

  const http = createHttpServer();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  http.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  http.on('upgrade', (request, socket: Socket, head: Buffer) => {
    wss.handleUpgrade(request, socket, head, (ws: WebSocket) => {
      const peer: Peer = {
        level: 4,
        out: [],
        send: options.raw ? (bytes) => socket.write(binaryFrame(bytes)) : (bytes) => ws.send(bytes, { binary: true }),
        close: () => ws.close(),
      };
      ws.on('message', reader(peer));
      ws.on('error', () => ws.terminate());
      ws.once('close', () => subscribers.delete(peer));
    });
  });

  return listenOnLoopback(tcp, http, sockets);
}
