/**
 * Bounds how deep aedes' message bus (mqemitter 7.1.0, aedes.js `this.mq`)
 * recurses when it drains its queue.
 *
 * Past `concurrency` messages in flight (aedes: 100), mqemitter queues what
 * is emitted; each message that completes starts the next queued one from
 * its own completion (mqemitter.js `released` → `_do` → fastparallel). A
 * queued message that completes synchronously (no subscriber matches it, or
 * every handler calls back at once) starts the next one on the same stack:
 * ten thousand queued messages are ten thousand nested frames, and
 * `RangeError: Maximum call stack size exceeded` ends the process
 * (mcollina/mqemitter#204, open; test/aedes-canaries.test.ts shows it on a
 * plain aedes). Here `_do` runs at most MAX_DEPTH deep; past that, and
 * behind anything already waiting, messages wait for a setImmediate, in
 * order [MQTT-4.6.0-6].
 */

const MAX_DEPTH = 64;

type Do = (message: unknown, callback: unknown) => unknown;

/** mqemitter internals (mqemitter.js): the method that delivers one message. */
interface EmitterInternals {
  _do: Do;
}

export function boundEmitterRecursion(mq: object): void {
  const emitter = mq as EmitterInternals;
  const inner = emitter._do;
  const waiting: Array<[unknown, unknown]> = [];
  let head = 0;
  let depth = 0;
  let scheduled = false;

  function run(message: unknown, callback: unknown): void {
    depth++;
    try {
      inner.call(emitter, message, callback);
    } finally {
      depth--;
    }
  }

  function drain(): void {
    scheduled = false;
    while (head < waiting.length) {
      if (depth >= MAX_DEPTH) break;
      const [message, callback] = waiting[head]!;
      waiting[head++] = undefined as never;
      run(message, callback);
    }
    if (head < waiting.length) schedule();
    else {
      waiting.length = 0;
      head = 0;
    }
  }

  function schedule(): void {
    if (scheduled) return;
    scheduled = true;
    setImmediate(drain);
  }

  emitter._do = function boundedDo(message: unknown, callback: unknown) {
    if (head < waiting.length || depth >= MAX_DEPTH) {
      waiting.push([message, callback]);
      schedule();
    } else {
      run(message, callback);
    }
    return emitter;
  };
}
