/**
 * Coalesces one connection's output into one write per event-loop turn.
 *
 * Why: aedes delivers every message in its own setImmediate, and
 * mqtt-packet's writeToStream writes a PUBLISH as ~5 separate chunks and
 * corks the stream only until the next tick. So every delivered message
 * costs one writev syscall on TCP (52% of the broker's CPU in the QoS 0
 * TCP → TCP profile), one TLS record on TLS, and over WebSocket five frames
 * (ws' createWebSocketStream sends one frame per write()), which a browser
 * then has to parse one by one. Collecting a connection's chunks and
 * writing them as one buffer once per turn cut the broker's CPU per message
 * by 45–50% on TCP, 65–70% on WebSocket and ~54% on fan-out (bench/ prototype,
 * `coalesceWrites` in bench/variants.ts).
 *
 * What stays the same for the callers (aedes, flow-control.ts):
 * - Order: chunks leave in the order written; a write with a callback, or
 *   one on an ended or destroyed stream, first flushes what is pending and
 *   then goes to the stream as it is.
 * - Latency: nothing waits past the current turn. One setImmediate, shared
 *   by all connections, flushes them; it is queued at the first write of the
 *   turn, so it runs before any callback aedes queues after that write
 *   (aedes calls a write's `done` in setImmediate and closes the connection
 *   from there).
 * - Backpressure: write() returns what the stream's own write() would have
 *   returned for that chunk (false once its buffer plus the pending bytes
 *   reach its highWaterMark). Whenever it returns false, the pending bytes
 *   have just been handed to the stream, whose own write() returned false,
 *   so the stream emits 'drain' as before (aedes then waitForDrain()s).
 * - Bounded: pending bytes are flushed at once at the stream's highWaterMark
 *   or at 64 KiB, whichever comes first; an idle connection holds nothing.
 * - `writableLength` includes the pending bytes, so the per-client output
 *   budget (flow-control.ts) counts them.
 * - end() and destroy() flush first, so a CONNACK with a refusal code or a
 *   SUBACK written just before a close still goes out.
 *
 * Like the packet-size and protocol guards, it overrides methods on the one
 * connection object (no extra stream stage), and like them it lives in
 * src/broker, which applies it to every connection it handles (limits.ts):
 * it answers how aedes writes, whatever transport carries the bytes.
 */
import type { Duplex, Writable } from 'node:stream';

/** Pending output beyond this is written at once rather than at the end of the turn. */
export const COALESCE_LIMIT_BYTES = 64 * 1024;

const COALESCER = Symbol('edgemqtt.coalescer');

type WriteFn = (chunk: unknown, encoding?: unknown, callback?: unknown) => boolean;
type Coalesced = (Duplex | Writable) & { [COALESCER]?: Coalescer };

/**
 * One connection's pending output and the stream's own methods. The methods
 * installed on the stream are module functions that find this through a
 * symbol, so an idle connection holds this one object and no closures.
 */
class Coalescer {
  /** Created at the first write of a turn, handed on whole by flush(): Buffers, or plain views (fast-publish.ts). */
  chunks: Uint8Array[] | null = null;
  pendingBytes = 0;
  scheduled = false;

  constructor(
    readonly stream: Duplex | Writable,
    readonly write: WriteFn,
    readonly end: (...args: unknown[]) => Writable,
    readonly destroy: (error?: Error) => Writable,
    readonly length: () => number,
    /** The stream's writableHighWaterMark, read once (a getter on Node's streams). */
    readonly highWaterMark: number,
  ) {}

  /** Hands the pending bytes to the stream as one chunk; returns the stream's answer. */
  flush(): boolean {
    const { chunks, pendingBytes, stream } = this;
    if (chunks === null || pendingBytes === 0) return !stream.writableNeedDrain;
    const out = chunks.length === 1 ? asBuffer(chunks[0] as Uint8Array) : Buffer.concat(chunks, pendingBytes);
    // Cleared first: the stream's write() may re-enter (an 'error' listener that destroys it).
    this.chunks = null;
    this.pendingBytes = 0;
    return this.write.call(stream, out);
  }

  scheduledFlush(): void {
    this.scheduled = false;
    this.flush();
  }
}

let pendingFlushes: Coalescer[] = [];

function flushAll(): void {
  const flushes = pendingFlushes;
  pendingFlushes = [];
  for (const coalescer of flushes) coalescer.scheduledFlush();
}

/** The getter `key` has on the object's prototype chain (Writable's own `writableLength`). */
function inheritedGetter(object: object, key: string): () => number {
  for (let proto: object | null = Object.getPrototypeOf(object) as object | null; proto; proto = Object.getPrototypeOf(proto) as object | null) {
    const getter = Object.getOwnPropertyDescriptor(proto, key)?.get;
    if (getter) return getter as () => number;
  }
  throw new TypeError(`stream has no ${key} getter`);
}

/**
 * The bytes of a chunk: a Buffer, or a plain Uint8Array view as it is (the
 * fast path writes one per message: a third of the cost of a Buffer's
 * subarray, ~20 against ~65 ns here); they become one Buffer at the flush.
 */
function toBytes(chunk: unknown, encoding: unknown): Uint8Array | null {
  if (chunk instanceof Uint8Array) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  return null;
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Installs coalescing on one connection; call before anything writes to it. Idempotent. */
export function coalesceWrites(stream: Duplex | Writable): void {
  const marked = stream as Coalesced;
  if (marked[COALESCER]) return;
  marked[COALESCER] = new Coalescer(
    stream,
    stream.write as WriteFn,
    stream.end as (...args: unknown[]) => Writable,
    stream.destroy as (error?: Error) => Writable,
    inheritedGetter(stream, 'writableLength'),
    stream.writableHighWaterMark,
  );
  Object.defineProperty(stream, 'writableLength', { configurable: true, enumerable: false, get: coalescedLength });
  stream.write = coalescedWrite as Writable['write'];
  stream.end = coalescedEnd as Writable['end'];
  stream.destroy = coalescedDestroy as Writable['destroy'];
}

// The stream's methods from here on: `this` is the stream (callers invoke them as its methods).

function coalescedLength(this: Coalesced): number {
  const coalescer = this[COALESCER]!;
  return coalescer.length.call(this) + coalescer.pendingBytes;
}

function coalescedWrite(this: Coalesced, chunk: unknown, encoding?: unknown, callback?: unknown): boolean {
  const coalescer = this[COALESCER]!;
  const buffer = toBytes(chunk, encoding);
  if (buffer === null || typeof encoding === 'function' || typeof callback === 'function' || this.destroyed || this.writableEnded) {
    // Callers that wait for a write's callback (none in aedes' data path),
    // and writes the stream will refuse, get the stream's own behaviour.
    coalescer.flush();
    return coalescer.write.call(this, chunk, encoding, callback);
  }
  if (buffer.length === 0) return !this.writableNeedDrain;
  (coalescer.chunks ??= []).push(buffer);
  coalescer.pendingBytes += buffer.length;
  if (coalescer.pendingBytes >= COALESCE_LIMIT_BYTES || coalescer.length.call(this) + coalescer.pendingBytes >= coalescer.highWaterMark) {
    // The stream's own write() answers false here (it has reached its
    // highWaterMark) and will emit 'drain'; large writes pass straight on.
    return coalescer.flush();
  }
  if (!coalescer.scheduled) {
    coalescer.scheduled = true;
    if (pendingFlushes.length === 0) setImmediate(flushAll);
    pendingFlushes.push(coalescer);
  }
  return true;
}

function coalescedEnd(this: Coalesced, ...args: unknown[]): Writable {
  const coalescer = this[COALESCER]!;
  coalescer.flush();
  return coalescer.end.apply(this, args);
}

function coalescedDestroy(this: Coalesced, error?: Error): Writable {
  const coalescer = this[COALESCER]!;
  if (!this.destroyed) coalescer.flush();
  return coalescer.destroy.call(this, error);
}
