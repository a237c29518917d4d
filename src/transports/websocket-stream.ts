/**
 * One MQTT-over-WebSocket connection as the byte stream aedes reads and
 * writes: a Duplex whose writes are sent as binary frames and which pushes
 * each binary message's bytes [MQTT-6.0.0-2].
 *
 * It replaces ws' createWebSocketStream, which builds nine closures per
 * connection: here the listeners on the WebSocket are module functions that
 * find their stream through a symbol, and the Duplex's methods live on its
 * prototype, so an idle connection holds its WebSocket, this stream and their
 * states, nothing more. Semantics kept from createWebSocketStream: a message
 * that does not fit the readable buffer pauses the WebSocket until aedes
 * reads (`read()`/'readable', which the QoS 0 fast path wraps, are
 * Readable's own); a write's callback runs once the frame is handed to the
 * socket, so the writable side's buffer is the backpressure aedes and the
 * output limit see; the WebSocket's close ends the readable side, its error
 * destroys the stream; destroying the stream terminates the WebSocket and
 * 'close' follows the WebSocket's own.
 *
 * One touch of ws' internals (ws 8.23.0, pinned; test/ws-canaries.test.ts):
 * its Receiver (lib/receiver.js dataMessage) hands each message's fragment
 * list on and starts the next message with a new empty `_fragments` array,
 * which then lives until that next message. On a client publishing once a
 * second that is long enough for V8 to promote the array to the old space;
 * the next message's fragment (a view of the socket's read buffer) is
 * pushed into it, and an old object pointing at young ones keeps them alive
 * through every young-generation collection until a major one finds the
 * array dead: the read buffers and views of every WebSocket message were
 * promoted and collected as old-space garbage (2/3 of what a heap profile
 * of 10,000 clients at 1 msg/s found dying in major collections,
 * `BENCH_HEAP_SAMPLE`, bench/edgemqtt-server.ts). So each connection keeps
 * the array its Receiver was made with, emptied after each message and put
 * back in place of the new one (`recycleFragments`), synchronously, before
 * the Receiver reads the next frame of the same chunk. What helps is that
 * the one long-lived array points at nothing between messages: `length = 0`
 * drops its element store (V8 puts the shared empty one in its place), so
 * each message's small store, and the fragments in it, die young with the
 * message. Keep it that way: an array emptied by splice, or shrunk to a
 * length above 0, could keep an old store that points at young fragments.
 * (A message whose frames arrive across several young-generation
 * collections is live meanwhile and is promoted, as with plain ws.)
 */
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { compactListeners } from '../util/fast-object.js';

/** What the stream reports to the listener that accepted it (shared by all its connections). */
export interface WebSocketStreamHooks {
  /** A text frame arrived; the stream closes with 1003 and drops it [MQTT-6.0.0-1]. */
  onTextFrame(remote: string | undefined): void;
  /** A message over maxPayload closed the WebSocket (1009). */
  onOversize(remote: string | undefined): void;
  /** The stream has closed. */
  onClose(): void;
}

const STREAM = Symbol('edgemqtt.webSocketStream');
type Carrier = WebSocket & { [STREAM]: WebSocketStream };

/** ws 8.23.0's WebSocket#_receiver (set once the socket is attached) and the one Receiver field touched (see the header). */
interface ReceiverInternals {
  _fragments: unknown;
}
type WithReceiver = WebSocket & { _receiver?: ReceiverInternals | null };

/** The Receiver's fragment list as it was made (empty), when it is the plain array this file expects. */
function fragmentsOf(ws: WebSocket): unknown[] | undefined {
  const fragments = (ws as WithReceiver)._receiver?._fragments;
  return Array.isArray(fragments) && fragments.length === 0 ? fragments : undefined;
}

export class WebSocketStream extends Duplex {
  private terminateOnDestroy = true;
  /** The Receiver's first fragment list, put back after every message (see the header); undefined if ws is not as expected. */
  private readonly fragments: unknown[] | undefined;

  constructor(
    readonly ws: WebSocket,
    private readonly hooks: WebSocketStreamHooks,
  ) {
    // autoDestroy and emitClose off, as in createWebSocketStream: the stream
    // is destroyed by its 'end' handler below or by aedes, and 'close' is
    // emitted once the WebSocket has closed.
    super({ autoDestroy: false, emitClose: false });
    this.fragments = fragmentsOf(ws);
    (ws as Carrier)[STREAM] = this;
    ws.on('message', onMessage);
    // Kept for the connection's life (not once): a later error must not go unheard.
    ws.on('error', onError);
    // `on`, not `once`: ws emits 'close' once (emitClose), and once() would keep a bound wrapper
    // and its state object for the connection's life (~100 B, bench/heap-census.ts).
    ws.on('close', onWebSocketClose);
    // The WebSocket's listener table, these three for the connection's life: a fast-mode object
    // instead of Node's 160-byte dictionary (util/fast-object.ts).
    compactListeners(ws);
    this.on('end', onEnd);
    this.on('error', onStreamError);
  }

  /** The peer's address, for logs. */
  get peerAddress(): string | undefined {
    return (this.ws as WebSocket & { _socket?: { remoteAddress?: string } | null })._socket?.remoteAddress;
  }

  override _read(): void {
    if (this.ws.isPaused) this.ws.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    // Accepted WebSockets are open: no CONNECTING state to wait for.
    this.ws.send(chunk, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    const socket = (this.ws as WebSocket & { _socket: Socket | null })._socket;
    if (socket === null) return;
    if (socket.writableFinished) {
      callback();
      if (this.readableEnded) this.destroy();
    } else {
      socket.once('finish', () => callback());
      this.ws.close();
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const ws = this.ws;
    if (ws.readyState === ws.CLOSED) {
      callback(error);
      process.nextTick(emitClose, this);
      return;
    }
    let called = false;
    ws.once('error', (wsError: Error) => {
      called = true;
      callback(wsError);
    });
    ws.once('close', () => {
      if (!called) callback(error);
      process.nextTick(emitClose, this);
    });
    if (this.terminateOnDestroy) ws.terminate();
  }

  /** @internal the WebSocket's 'error': an oversize message is reported, the stream destroyed with the error. */
  wsError(error: Error & { code?: string }): void {
    if (error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.hooks.onOversize(this.peerAddress);
    if (this.destroyed) return;
    this.terminateOnDestroy = false;
    this.destroy(error);
  }

  /**
   * Puts the connection's own fragment list back in place of the one the
   * Receiver just made (see the header), emptied: the Receiver made `data`
   * from this message's fragments (joined, or the one fragment itself, or
   * an empty buffer) and no longer reads the list. Left as ws made it when
   * the list is not a plain empty array, or when it is the message itself
   * (binaryType 'fragments', which this file never sets).
   */
  private recycleFragments(data: unknown): void {
    const own = this.fragments;
    if (own === undefined || own === data || fragmentsOf(this.ws) === undefined) return;
    own.length = 0;
    (this.ws as WithReceiver)._receiver!._fragments = own;
  }

  /** @internal a WebSocket message: binary bytes are pushed, a text frame closes the connection. */
  wsMessage(data: Buffer, isBinary: boolean): void {
    this.recycleFragments(data);
    if (!isBinary) {
      this.hooks.onTextFrame(this.peerAddress);
      // Close frame first: destroying the stream terminates the WebSocket,
      // after which close() is a no-op and the peer would only see 1006.
      this.ws.close(1003, 'MQTT requires binary frames');
      this.destroy();
      return;
    }
    if (this.destroyed) return;
    if (!this.push(data)) this.ws.pause();
  }

  /** @internal */
  wsClosed(): void {
    if (!this.destroyed) this.push(null);
  }

  /** @internal */
  emitClosed(): void {
    this.emit('close');
    this.hooks.onClose();
  }
}

// EventEmitter calls a listener with the emitter as `this`.
function onMessage(this: WebSocket, data: Buffer, isBinary: boolean): void {
  (this as Carrier)[STREAM].wsMessage(data, isBinary);
}

function onError(this: WebSocket, error: Error): void {
  (this as Carrier)[STREAM].wsError(error);
}

function onWebSocketClose(this: WebSocket): void {
  (this as Carrier)[STREAM].wsClosed();
}

function emitClose(stream: WebSocketStream): void {
  stream.emitClosed();
}

/** Both sides done: nothing more to read and everything written. */
function onEnd(this: WebSocketStream): void {
  if (!this.destroyed && this.writableFinished) this.destroy();
}

/** An error nobody else listens for is re-emitted after destroying, as createWebSocketStream does. */
function onStreamError(this: WebSocketStream, error: Error): void {
  this.removeListener('error', onStreamError);
  this.destroy();
  if (this.listenerCount('error') === 0) this.emit('error', error);
}
