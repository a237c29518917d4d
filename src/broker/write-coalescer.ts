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

const COALESCED = Symbol('edgemqtt.coalesced');

type WriteFn = (chunk: unknown, encoding?: unknown, callback?: unknown) => boolean;

let pendingFlushes: Array<() => void> = [];

function flushAll(): void {
  const flushes = pendingFlushes;
  pendingFlushes = [];
  for (const flush of flushes) flush();
}

/** The getter `key` has on the object's prototype chain (Writable's own `writableLength`). */
function inheritedGetter(object: object, key: string): () => number {
  for (let proto: object | null = Object.getPrototypeOf(object) as object | null; proto; proto = Object.getPrototypeOf(proto) as object | null) {
    const getter = Object.getOwnPropertyDescriptor(proto, key)?.get;
    if (getter) return getter as () => number;
  }
  throw new TypeError(`stream has no ${key} getter`);
}

function toBuffer(chunk: unknown, encoding: unknown): Buffer | null {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return null;
}

/** Installs coalescing on one connection; call before anything writes to it. Idempotent. */
export function coalesceWrites(stream: Duplex | Writable): void {
  const marked = stream as { [COALESCED]?: true };
  if (marked[COALESCED]) return;
  marked[COALESCED] = true;
  const originalWrite = stream.write as WriteFn;
  const originalEnd = stream.end as (...args: unknown[]) => Writable;
  const originalDestroy = stream.destroy as (error?: Error) => Writable;
  const streamLength = inheritedGetter(stream, 'writableLength');
  let chunks: Buffer[] = [];
  let pendingBytes = 0;
  let scheduled = false;

  /** Hands the pending bytes to the stream as one chunk; returns the stream's answer. */
  const flush = (): boolean => {
    if (pendingBytes === 0) return !stream.writableNeedDrain;
    const out = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, pendingBytes);
    // Cleared first: the stream's write() may re-enter (an 'error' listener that destroys it).
    chunks = [];
    pendingBytes = 0;
    return originalWrite.call(stream, out);
  };
  const scheduledFlush = (): void => {
    scheduled = false;
    flush();
  };

  Object.defineProperty(stream, 'writableLength', {
    configurable: true,
    enumerable: false,
    get: () => streamLength.call(stream) + pendingBytes,
  });

  stream.write = function coalescedWrite(chunk: unknown, encoding?: unknown, callback?: unknown): boolean {
    const buffer = toBuffer(chunk, encoding);
    if (buffer === null || typeof encoding === 'function' || typeof callback === 'function' || stream.destroyed || stream.writableEnded) {
      // Callers that wait for a write's callback (none in aedes' data path),
      // and writes the stream will refuse, get the stream's own behaviour.
      flush();
      return originalWrite.call(stream, chunk, encoding, callback);
    }
    if (buffer.length === 0) return !stream.writableNeedDrain;
    chunks.push(buffer);
    pendingBytes += buffer.length;
    if (pendingBytes >= COALESCE_LIMIT_BYTES || streamLength.call(stream) + pendingBytes >= stream.writableHighWaterMark) {
      // The stream's own write() answers false here (it has reached its
      // highWaterMark) and will emit 'drain'; large writes pass straight on.
      return flush();
    }
    if (!scheduled) {
      scheduled = true;
      if (pendingFlushes.length === 0) setImmediate(flushAll);
      pendingFlushes.push(scheduledFlush);
    }
    return true;
  } as Writable['write'];

  stream.end = function coalescedEnd(...args: unknown[]) {
    flush();
    return originalEnd.apply(stream, args);
  } as Writable['end'];

  stream.destroy = function coalescedDestroy(error?: Error) {
    if (!stream.destroyed) flush();
    return originalDestroy.call(stream, error);
  } as Writable['destroy'];
}
